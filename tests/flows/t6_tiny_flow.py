"""A tiny flow for the fault tests: one memoized step with two small artifacts.

`payload` is deterministic (seeded by --size), so runs in different work
directories can be compared; --size 2000000 makes it too big for a 1 MB disk.
"""

import hashlib
import random

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class T6TinyFlow(FlowSpec):
    size = Parameter("size", default=2000)

    @memoize
    @step
    def start(self):
        record("start")
        self.payload = random.Random(self.size).randbytes(self.size)  # incompressible
        self.label = "tiny-%d" % self.size
        self.next(self.end)

    @step
    def end(self):
        record("end")
        self.check = hashlib.sha1(self.payload).hexdigest()


if __name__ == "__main__":
    T6TinyFlow()
