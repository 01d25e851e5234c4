"""Entries for the cache commands (tests/test_cli.py).

`start` stores a blob that grows with --n plus one blob that is the same in
every entry (shared); its ttl comes from T4_TTL. `side` uses the cache root in
T4_SIDE_STORE (a per-step store=) when it is set.
"""

import os
import random

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class T4CacheFlow(FlowSpec):
    n = Parameter("n", default=1)

    # inputs= declares the key: one entry per --n (the cache commands' fixture)
    @memoize(ttl=os.environ.get("T4_TTL") or None, inputs=["n"])
    @step
    def start(self):
        record("start", str(self.n))
        self.data = random.Random(self.n).randbytes(2000 * self.n)  # incompressible
        self.shared = "s" * 5000
        self.next(self.side)

    @memoize(store=os.environ.get("T4_SIDE_STORE") or None, inputs=["n"])
    @step
    def side(self):
        record("side", str(self.n))
        self.side_value = [self.n] * 100
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    T4CacheFlow()
