"""Benchmark flow: 8 steps (a static branch and a foreach), every one memoized.

    start ─┬─ left  ─┬─ branch_join ── fan ══ body (x3) ══ fan_join ── end
           └─ right ─┘

Environment (read at import and in the bodies; neither enters a cache key):
BENCH_MEMOIZE=0 applies no @memoize at all (a plain flow);
BENCH_SLEEP=<seconds> is the stand-in "compute" of every step (default 0).
"""

import os
import time

from metaflow import FlowSpec, memoize, step

if os.environ.get("BENCH_MEMOIZE", "1") == "0":

    def cached(f):
        return f

else:
    cached = memoize


def compute():
    time.sleep(float(os.environ.get("BENCH_SLEEP", "0")))


class EightFlow(FlowSpec):
    @cached
    @step
    def start(self):
        compute()
        self.base = 10
        self.next(self.left, self.right)

    @cached
    @step
    def left(self):
        compute()
        self.left_value = self.base + 1
        self.next(self.branch_join)

    @cached
    @step
    def right(self):
        compute()
        self.right_value = self.base + 2
        self.next(self.branch_join)

    @cached
    @step
    def branch_join(self, inputs):
        compute()
        self.total = inputs.left.left_value + inputs.right.right_value
        self.next(self.fan)

    @cached
    @step
    def fan(self):
        compute()
        self.items = [1, 2, 3]
        self.next(self.body, foreach="items")

    @cached
    @step
    def body(self):
        compute()
        self.square = self.input * self.input
        self.next(self.fan_join)

    @cached
    @step
    def fan_join(self, inputs):
        compute()
        self.squares = sorted(i.square for i in inputs)
        self.next(self.end)

    @cached
    @step
    def end(self):
        compute()


if __name__ == "__main__":
    EightFlow()
