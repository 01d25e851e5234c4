"""Crash safety: a memoized step whose artifacts take a while to write.

Four deterministic, incompressible artifacts of T6_MB/4 MB each (default 64 MB
in all), so the cache write lasts long enough to be interrupted by SIGKILL.
"""

import hashlib
import os
import random

from _counter import record
from metaflow import FlowSpec, memoize, step

PARTS = ("a", "b", "c", "d")


class T6CrashFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        record("start")
        size = int(float(os.environ.get("T6_MB", "64")) * (1 << 20)) // len(PARTS)
        digest = hashlib.sha1()
        for i, name in enumerate(PARTS):
            data = random.Random(i).randbytes(size)
            digest.update(data)
            setattr(self, name, data)
        self.digest = digest.hexdigest()
        self.next(self.end)

    @step
    def end(self):
        digest = hashlib.sha1()
        for name in PARTS:
            digest.update(getattr(self, name))
        self.intact = digest.hexdigest() == self.digest
        # tests read this from the counter file: the Client would load 64 MB
        record("end", "intact" if self.intact else "CORRUPT")


if __name__ == "__main__":
    T6CrashFlow()
