"""A second flow sharing a cache root with T4CacheFlow (standalone command tests)."""

from _counter import record
from metaflow import FlowSpec, memoize, step


class T4OtherFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        record("other_start")
        self.shared = "s" * 5000  # the same blob as T4CacheFlow's `shared`
        self.other = list(range(50))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    T4OtherFlow()
