"""Oracle corpus: a flow with a site for every mutation kind (tests/oracle/corpus.py).

Each hazard sets its own artifact, so a false hit names what the key missed.
"""

import enum
import functools
import os

import kitchen_helpers as kh
from _counter import record
from metaflow import Config, FlowSpec, Parameter, environment, memoize, step

THRESHOLD = 3


class Color(enum.Enum):
    RED = 1
    BLUE = 2


def make_scaler(k):
    def scale(x):
        return x * k

    return scale


SCALE = make_scaler(2)


def repeat(n):
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(x):
            for _ in range(n):
                x = fn(x)
            return x

        return wrapper

    return deco


@repeat(2)
def inc(x):
    return x + 1


@functools.cache
def bump(x):
    return x + 100


class KitchenFlow(FlowSpec):
    FACTOR = 5
    alpha = Parameter("alpha", default=3)
    cfg = Config("cfg", default="cfg.json")

    def weight(self, x):
        return x * 7 + kh.offset()

    @memoize
    @step
    def start(self):
        record("start")
        self.base = self.alpha * 10
        self.words = self.cfg["words"].split()
        self.limit = self.cfg["limit"]
        self.next(self.prep)

    @memoize
    @step
    def prep(self):
        record("prep")
        self.cleaned = kh.clean(self.words)
        self.scaled = SCALE(self.base)
        self.bumped = bump(self.base)
        self.inced = inc(self.base)
        self.color = Color.RED.value
        self.big = self.base > THRESHOLD
        self.factor = self.FACTOR * 2
        self.weighted = self.weight(self.base)
        self.next(self.relay)

    @memoize
    @step
    def relay(self):
        record("relay")
        self.next(self.fan)

    @memoize
    @step
    def fan(self):
        record("fan")
        self.items = [1, 2, 3]
        self.next(self.body, foreach="items")

    @environment(vars={"MODE": "fast"})
    @memoize
    @step
    def body(self):
        record("body")
        from kitchen_helpers import square

        self.sq = square(self.input) + self.limit
        self.mode = os.environ.get("MODE")
        self.next(self.collect)

    @memoize
    @step
    def collect(self, inputs):
        record("collect")
        self.results = [(i.input, i.sq, i.mode) for i in inputs]
        self.merge_artifacts(inputs, include=["base", "cleaned", "weighted"])
        self.next(self.spread)

    @memoize
    @step
    def spread(self):
        record("spread")
        self.next(self.positions, foreach="results")

    @memoize
    @step
    def positions(self):
        record("positions")
        self.pos = (self.index, self.input[0])
        self.next(self.gather)

    @memoize
    @step
    def gather(self, inputs):
        record("gather")
        self.pos_list = [i.pos for i in inputs]
        self.merge_artifacts(inputs, include=["base", "cleaned", "weighted", "results"])
        self.next(self.branch)

    @memoize
    @step
    def branch(self):
        record("branch")
        self.next(self.files_a, self.files_b)

    @memoize
    @step
    def files_a(self):
        record("files_a")
        with open("table.txt") as f:
            self.table = f.read().strip()
        self.next(self.files_join)

    @memoize(depends_on=["vocab.txt"])
    @step
    def files_b(self):
        record("files_b")
        with open("vocab.txt") as f:
            self.vocab = f.read().split()
        self.next(self.files_join)

    @memoize
    @step
    def files_join(self, inputs):
        record("files_join")
        self.table = inputs.files_a.table
        self.vocab = inputs.files_b.vocab
        self.merge_artifacts(inputs, include=["base", "results", "pos_list"])
        self.next(self.choose)

    @memoize(version="1")
    @step
    def choose(self):
        record("choose")
        self.route = "high" if len(self.vocab) > 2 else "low"
        self.next({"high": self.high, "low": self.low}, condition="route")

    @memoize
    @step
    def high(self):
        record("high")
        self.verdict = "high:%d" % len(self.vocab)
        self.next(self.end)

    @memoize
    @step
    def low(self):
        record("low")
        self.verdict = "low:%d" % len(self.vocab)
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")
        self.final = (self.verdict, self.base, self.table, self.results, self.pos_list)


if __name__ == "__main__":
    KitchenFlow()
