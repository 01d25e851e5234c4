"""A foreach whose list comes from a module constant (tests rewrite ITEMS)."""

from _counter import record
from metaflow import FlowSpec, memoize, step

ITEMS = [3, 1, 2]


class T2ForeachFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        record("start")
        self.items = list(ITEMS)
        self.next(self.body, foreach="items")

    @memoize
    @step
    def body(self):
        record("body", repr(self.input))
        self.item = self.input
        self.out = self.input * 10
        self.next(self.join)

    @memoize
    @step
    def join(self, inputs):
        record("join")
        self.outs = [i.out for i in inputs]
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")
        self.total = sum(self.outs)


if __name__ == "__main__":
    T2ForeachFlow()
