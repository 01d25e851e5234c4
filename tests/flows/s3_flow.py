"""A small flow with two memoized steps and a ~1 MB artifact, for the S3 tests."""

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class S3CacheFlow(FlowSpec):
    size = Parameter("size", default=1_000_000)

    @memoize
    @step
    def start(self):
        record("start")
        self.payload = bytes(range(256)) * (self.size // 256)
        self.label = "payload-%d" % self.size
        self.next(self.summarize)

    @memoize
    @step
    def summarize(self):
        record("summarize")
        self.checksum = sum(self.payload[::4096])
        self.next(self.end)

    @step
    def end(self):
        self.report = "%s:%d" % (self.label, self.checksum)


if __name__ == "__main__":
    S3CacheFlow()
