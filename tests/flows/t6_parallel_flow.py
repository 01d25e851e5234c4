"""@memoize on a @parallel step: must be refused at start."""

from _counter import record
from metaflow import FlowSpec, memoize, parallel, step


class T6ParallelFlow(FlowSpec):
    @step
    def start(self):
        record("start")
        self.next(self.train, num_parallel=2)

    @memoize
    @parallel
    @step
    def train(self):
        record("train")
        self.next(self.join)

    @step
    def join(self, inputs):
        record("join")
        self.next(self.end)

    @step
    def end(self):
        record("end")


if __name__ == "__main__":
    T6ParallelFlow()
