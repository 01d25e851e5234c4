"""No @memoize anywhere: tests add it with `run --with memoize`."""

from _counter import record
from metaflow import FlowSpec, step


class T2PlainFlow(FlowSpec):
    @step
    def start(self):
        record("start")
        self.numbers = [1, 2, 3]
        self.next(self.a, self.b)

    @step
    def a(self):
        record("a")
        self.factor = 2
        self.next(self.body, foreach="numbers")

    @step
    def body(self):
        record("body", repr(self.input))
        self.scaled = self.input * self.factor
        self.next(self.join_body)

    @step
    def join_body(self, inputs):
        record("join_body")
        self.scaled_all = [i.scaled for i in inputs]
        self.next(self.join_ab)

    @step
    def b(self):
        record("b")
        self.count = len(self.numbers)
        self.next(self.join_ab)

    @step
    def join_ab(self, inputs):
        record("join_ab")
        self.summary = (inputs.b.count, inputs.join_body.scaled_all)
        self.next(self.end)

    @step
    def end(self):
        record("end")
        self.final = self.summary


if __name__ == "__main__":
    T2PlainFlow()
