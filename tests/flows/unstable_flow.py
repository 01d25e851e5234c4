"""A set of strings pickles differently in every process: a step keyed on it can never hit."""

from _counter import record
from metaflow import FlowSpec, memoize, step


class UnstableFlow(FlowSpec):
    @step
    def start(self):
        self.tags = {"alpha", "beta", "gamma", "delta", "epsilon"}
        self.next(self.count)

    @memoize
    @step
    def count(self):
        record("count")
        self.n = len(self.tags)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UnstableFlow()
