"""The step shapes every supported Metaflow release has (no switch, no recursion),
each memoized. Used by tests/test_compat.py, the suite `make test-compat` runs
against each Metaflow version."""

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class CompatFlow(FlowSpec):
    scale = Parameter("scale", default=2)

    @memoize
    @step
    def start(self):
        record("start")
        self.base = 10 * self.scale
        self.next(self.left, self.right)

    @memoize
    @step
    def left(self):
        record("left")
        self.left_value = self.base + 1
        self.next(self.branch_join)

    @memoize
    @step
    def right(self):
        record("right")
        self.right_value = self.base + 2
        self.next(self.branch_join)

    @memoize
    @step
    def branch_join(self, inputs):
        record("branch_join")
        self.total = inputs.left.left_value + inputs.right.right_value
        self.merge_artifacts(inputs, include=["base"])
        self.next(self.fan_out)

    @memoize
    @step
    def fan_out(self):
        record("fan_out")
        self.items = [1, 2, 3]
        self.next(self.body, foreach="items")

    @memoize
    @step
    def body(self):
        record("body", repr(self.input))
        self.square = self.input * self.input * self.scale
        self.next(self.fan_join)

    @memoize
    @step
    def fan_join(self, inputs):
        record("fan_join")
        self.squares = [i.square for i in inputs]
        self.merge_artifacts(inputs, include=["total"])
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")
        self.result = self.total + sum(self.squares)


if __name__ == "__main__":
    CompatFlow()
