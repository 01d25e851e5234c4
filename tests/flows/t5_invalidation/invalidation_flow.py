"""Template flow for the invalidation table: tests/test_key_invalidation.py edits it."""

from _counter import record
from helpers import clean_text
from metaflow import FlowSpec, Parameter, environment, memoize, step

THRESHOLD = 3  # a module constant the step reads


def unrelated_helper(x):
    return x + 1


class InvalidationFlow(FlowSpec):
    words = Parameter("words", default="alpha,beta,gamma")

    @memoize
    @step
    def start(self):
        record("start")
        self.raw = self.words.split(",")
        self.upstream = "v1"
        self.next(self.featurize)

    @memoize(version="1", ttl="1d", depends_on=["vocab.txt"])
    @environment(vars={"MODE": "fast"})
    @step
    def featurize(self):
        """Clean the words."""
        record("featurize")
        # a comment
        self.features = [clean_text(w) for w in self.raw if len(w) > THRESHOLD]
        self.next(self.end)

    @step
    def end(self):
        record("end")


if __name__ == "__main__":
    InvalidationFlow()
