"""For the memoize card (tests/test_card.py): a memoized step that hits in its
task (@catch keeps the orchestrator from cloning it), a foreach split and body
that hit by clones, a join that the test refreshes, and a step below it that
misses because the join re-ran; start and end are not memoized (the card goes
on end).
"""

import time

from _counter import record
from metaflow import FlowSpec, catch, memoize, step


class CardFlow(FlowSpec):
    @step
    def start(self):
        self.raw = [1, 2, 3]
        self.next(self.featurize)

    @catch(var="featurize_failed")
    @memoize
    @step
    def featurize(self):
        record("featurize")
        time.sleep(0.5)  # a body time the card shows as saved
        self.features = [x * 10 for x in self.raw]
        self.next(self.split)

    @memoize
    @step
    def split(self):
        record("split")
        self.items = list(self.features)
        self.next(self.train, foreach="items")

    @memoize
    @step
    def train(self):
        record("train", repr(self.input))
        time.sleep(0.2)
        self.model = self.input + 1
        self.next(self.pick)

    @memoize
    @step
    def pick(self, inputs):
        record("pick")
        self.best = max(i.model for i in inputs)
        self.picked_at = time.time()  # new on every run of the body
        self.next(self.report)

    @memoize
    @step
    def report(self):
        record("report")
        self.line = "best %s at %s" % (self.best, self.picked_at)
        self.next(self.end)

    @step
    def end(self):
        print(self.line)


if __name__ == "__main__":
    CardFlow()
