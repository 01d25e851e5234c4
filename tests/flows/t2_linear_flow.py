"""start -> middle -> end, all memoized. Tests edit the source (see the markers)."""

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class T2LinearFlow(FlowSpec):
    alpha = Parameter("alpha", default=1, type=int)

    @memoize
    @step
    def start(self):
        record("start")
        self.base = self.alpha * 10
        self.next(self.middle)

    @memoize  # MIDDLE-DECORATOR
    @step
    def middle(self):
        record("middle")
        self.doubled = self.base * 2  # MIDDLE-BODY
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")
        self.result = self.doubled + 1


if __name__ == "__main__":
    T2LinearFlow()
