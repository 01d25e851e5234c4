"""Tests rewrite the decorator of `train_model` (marker: BAD-ARGS) with an invalid argument."""

from _counter import record
from metaflow import FlowSpec, memoize, step


class T2BadArgsFlow(FlowSpec):
    @step
    def start(self):
        record("start")
        self.next(self.train_model)

    @memoize()  # BAD-ARGS
    @step
    def train_model(self):
        record("train_model")
        self.next(self.end)

    @step
    def end(self):
        record("end")


if __name__ == "__main__":
    T2BadArgsFlow()
