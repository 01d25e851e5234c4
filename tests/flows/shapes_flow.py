"""Every step shape Metaflow has, each one memoized. Used by tests/test_shapes.py."""

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class ShapesFlow(FlowSpec):
    scale = Parameter("scale", default=2)
    items = Parameter("items", default="a,b,c")

    @memoize
    @step
    def start(self):
        record("start")
        self.base = 10 * self.scale
        self.letters = self.items.split(",")
        self.next(self.left, self.right)

    @memoize
    @step
    def left(self):
        record("left")
        self.side = "L"
        self.left_value = self.base + 1
        self.next(self.branch_join)

    @memoize
    @step
    def right(self):
        record("right")
        self.side = "R"
        self.right_value = self.base + 2
        self.next(self.branch_join)

    @memoize
    @step
    def branch_join(self, inputs):
        record("branch_join")
        self.total = inputs.left.left_value + inputs.right.right_value
        self.merge_artifacts(inputs, exclude=["side"])
        self.next(self.fan_out)

    @memoize
    @step
    def fan_out(self):
        record("fan_out")
        self.groups = [[1, 2], [3], [4, 5, 6]]
        self.next(self.outer, foreach="groups")

    @memoize
    @step
    def outer(self):
        record("outer", repr(self.input))
        self.group = self.input
        self.next(self.inner, foreach="group")

    @memoize
    @step
    def inner(self):
        record("inner", repr(self.input))
        self.squared = self.input * self.input * self.scale
        self.next(self.inner_join)

    @memoize
    @step
    def inner_join(self, inputs):
        record("inner_join")
        self.group_sum = sum(i.squared for i in inputs)
        self.merge_artifacts(inputs, include=["total"])
        self.next(self.outer_join)

    @memoize
    @step
    def outer_join(self, inputs):
        record("outer_join")
        self.sums = sorted(i.group_sum for i in inputs)
        self.merge_artifacts(inputs, include=["total"])
        self.next(self.choose)

    @memoize
    @step
    def choose(self):
        record("choose")
        self.route = "big" if sum(self.sums) > 100 else "small"
        self.next({"big": self.big, "small": self.small}, condition="route")

    @memoize
    @step
    def big(self):
        record("big")
        self.verdict = "big:%d" % sum(self.sums)
        self.next(self.end)

    @memoize
    @step
    def small(self):
        record("small")
        self.verdict = "small:%d" % sum(self.sums)
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")
        self.final = (self.verdict, self.total, self.sums)


if __name__ == "__main__":
    ShapesFlow()
