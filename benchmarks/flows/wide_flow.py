"""Benchmark flow: a wide foreach, every step memoized (the incremental foreach).

    start ══ body (x width) ══ join ── end

Parameters: --width N items 0..N-1, --extra TOKEN appends one more item (a new one
each time it changes). Environment (never in a key): BENCH_MEMOIZE=0 applies no
@memoize (a plain flow); BENCH_SLEEP=<seconds> is each body's stand-in compute.
"""

import os
import time

from metaflow import FlowSpec, Parameter, memoize, step

if os.environ.get("BENCH_MEMOIZE", "1") == "0":

    def cached(f):
        return f

else:
    cached = memoize


class WideFlow(FlowSpec):
    width = Parameter("width", default=10, type=int)
    extra = Parameter("extra", default="")

    @cached
    @step
    def start(self):
        self.items = ["item-%d" % i for i in range(self.width)]
        if self.extra:
            self.items.append(self.extra)
        self.next(self.body, foreach="items")

    @cached
    @step
    def body(self):
        time.sleep(float(os.environ.get("BENCH_SLEEP", "0")))
        self.result = len(self.input)
        self.next(self.join)

    @cached
    @step
    def join(self, inputs):
        self.total = sum(i.result for i in inputs)
        self.next(self.end)

    @cached
    @step
    def end(self):
        pass


if __name__ == "__main__":
    WideFlow()
