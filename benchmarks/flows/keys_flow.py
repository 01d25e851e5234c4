"""Benchmark flow: a memoized step downstream of many input artifacts.

    start (sets ``n`` tiny artifacts in00000..) ─┬─ work  (@memoize, trivial body)
                                                 └─ empty (empty body)
    join ── end

Every artifact of ``start`` is an input of ``work`` and enters its key; a hit
on ``work`` costs the key computation over ``n`` inputs plus one lookup.
"""

from metaflow import FlowSpec, Parameter, memoize, step


class KeysFlow(FlowSpec):
    n = Parameter("n", default=1000, type=int, help="number of input artifacts")

    @step
    def start(self):
        for i in range(self.n):
            setattr(self, "in%05d" % i, i)
        self.next(self.work, self.empty)

    @memoize
    @step
    def work(self):
        self.total = 1
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
    KeysFlow()
