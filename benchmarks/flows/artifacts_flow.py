"""Benchmark flow: one memoized step that produces a large artifact.

    start ─┬─ work   (@memoize: sets ``payload``, ``mb`` MB of incompressible bytes)
           ├─ plain  (the same body, without @memoize)
           └─ empty  (an empty body)
    join ── end

benchmarks/run.py runs it once, then launches single tasks of ``work``,
``plain`` and ``empty`` against the same ``start`` task and compares them. The
payload is a numpy uint8 array when numpy is installed, else a bytes object;
either way Metaflow stores it as one blob of about ``mb`` MB.
"""

import os

from metaflow import FlowSpec, Parameter, memoize, step


def make_payload(mb):
    """``mb`` MB of random bytes (a fresh draw every call: blobs never repeat)."""
    size = int(float(mb) * (1 << 20))
    try:
        import numpy as np
    except ImportError:
        return os.urandom(size)
    return np.frombuffer(np.random.default_rng().bytes(size), dtype=np.uint8)


class ArtifactsFlow(FlowSpec):
    mb = Parameter("mb", default=1.0, type=float, help="payload size in MB")

    @step
    def start(self):
        self.next(self.work, self.plain, self.empty)

    @memoize
    @step
    def work(self):
        self.payload = make_payload(self.mb)
        self.next(self.join)

    @step
    def plain(self):
        # BENCH_PLAIN=0 (only while run.py sets the flow up) skips the work, so
        # a 1 GB setup run does not pay for the payload twice
        if os.environ.get("BENCH_PLAIN", "1") != "0":
            self.payload = make_payload(self.mb)
        self.next(self.join)

    @step
    def empty(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ArtifactsFlow()
