"""A step with ignore= that hands `self` to a helper: ignored inputs are pinned."""

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


def fill(flow):
    flow.size = len(flow.data)


class T2PassthroughFlow(FlowSpec):
    noise = Parameter("noise", default=0, type=int)

    @step
    def start(self):
        self.data = [1, 2]
        self.note = "note-%d" % self.noise
        self.next(self.work)

    @memoize(ignore=["note", "noise"])
    @step
    def work(self):
        record("work")
        fill(self)
        self.next(self.end)

    @step
    def end(self):
        self.seen = (self.note, self.size)


if __name__ == "__main__":
    T2PassthroughFlow()
