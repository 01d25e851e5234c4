"""@memoize(inputs=...), (ignore=...), (outputs=...)."""

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class T2ArgsFlow(FlowSpec):
    noise = Parameter("noise", default=0, type=int)
    knob = Parameter("knob", default=1, type=int)

    @step
    def start(self):
        record("start")
        self.data = [1, 2, 3]
        self.note = "note-%d" % self.noise
        self.next(self.pick)

    @memoize(inputs=["data", "knob"])
    @step
    def pick(self):
        record("pick")
        self.total = sum(self.data) * self.knob
        self.next(self.skip)

    @memoize(ignore=["note", "noise"])
    @step
    def skip(self):
        record("skip")
        self.doubled = self.total * 2
        self.next(self.limited)

    @memoize(outputs=["kept"])
    @step
    def limited(self):
        record("limited")
        self.kept = self.doubled + 1
        self.scratch = "scratch-%s" % self.note
        self.next(self.end)

    @step
    def end(self):
        record("end")
        self.seen = (self.note, self.total, self.doubled, self.kept, hasattr(self, "scratch"))


if __name__ == "__main__":
    T2ArgsFlow()
