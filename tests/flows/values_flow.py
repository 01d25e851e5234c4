"""What `memoize list`/`show` say an entry belongs to (tests/test_cli.py): the
foreach item and the flow's parameters, by value when short, else by digest."""

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class ValuesFlow(FlowSpec):
    alpha = Parameter("alpha", default=0.5)
    note = Parameter("note", default="n" * 60)  # a repr over 40 characters: cut, plus a digest
    blob = Parameter("blob", default="b" * 5000)  # a pickle over 4 KB: a digest only

    @step
    def start(self):
        self.configs = [3, "small", list(range(2000))]  # the list's pickle is over 4 KB
        self.next(self.train, foreach="configs")

    @memoize
    @step
    def train(self):
        record("train", repr(self.input)[:20])
        self.score = len(repr(self.input))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.scores = [i.score for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ValuesFlow()
