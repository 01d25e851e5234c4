"""Why steps run: featurize -> train in a chain, then a foreach whose join reads
one artifact of each input (`memoize explain`, `plan` and the end-of-run lines)."""

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step

OFFSET = 0  # edited by tests: featurize's output changes with it


def scale(x):
    return x * 2  # edited by tests: featurize's code changes, its output does not


class CausesFlow(FlowSpec):
    boost = Parameter("boost", default=1)

    @step
    def start(self):
        self.raw = [1, 2, 3]
        self.next(self.featurize)

    @memoize
    @step
    def featurize(self):
        record("featurize")
        self.features = [scale(x) // 2 + OFFSET for x in self.raw]
        self.next(self.train)

    @memoize
    @step
    def train(self):
        record("train")
        self.weights = sum(self.features)
        self.items = [0, 1, 2]
        self.next(self.fit, foreach="items")

    @memoize
    @step
    def fit(self):
        record("fit")
        # every item but the first depends on the parameter
        self.model = self.weights + self.input * self.boost
        self.next(self.pick)

    @memoize
    @step
    def pick(self, inputs):
        record("pick")
        self.best = max(i.model for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CausesFlow()
