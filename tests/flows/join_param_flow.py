"""A join that ignores a parameter: the parameter must still be the current one downstream."""

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class JoinParamFlow(FlowSpec):
    noise = Parameter("noise", default=0)

    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.x = 1
        self.next(self.join)

    @step
    def b(self):
        self.x = 2
        self.next(self.join)

    @memoize(ignore=["noise"])
    @step
    def join(self, inputs):
        record("join")
        self.total = sum(i.x for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        self.seen_noise = self.noise


if __name__ == "__main__":
    JoinParamFlow()
