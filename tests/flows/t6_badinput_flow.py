"""Bad input: tests rewrite the decorator of `work` (marker: T6-DECORATOR)."""

from _counter import record
from metaflow import FlowSpec, memoize, step


class T6BadInputFlow(FlowSpec):
    @step
    def start(self):
        record("start")
        self.known = 1
        self.next(self.work)

    @memoize()  # T6-DECORATOR
    @step
    def work(self):
        record("work")
        self.result = self.known + 1
        self.next(self.end)

    @step
    def end(self):
        record("end")


if __name__ == "__main__":
    T6BadInputFlow()
