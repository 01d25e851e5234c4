"""A deterministic step and a nondeterministic one, both memoized (tests/test_audit.py)."""

import random

from _counter import record
from metaflow import FlowSpec, memoize, step


class AuditFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        record("start")
        self.base = 21
        self.next(self.det)

    @memoize
    @step
    def det(self):
        record("det")
        self.doubled = self.base * 2
        self.next(self.rnd)

    @memoize
    @step
    def rnd(self):
        self.noise = random.random()
        record("rnd", repr(self.noise))
        self.next(self.end)

    @step
    def end(self):
        record("end")


if __name__ == "__main__":
    AuditFlow()
