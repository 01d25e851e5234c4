"""An artifact Metaflow cannot store (T6_KIND=lambda|generator).

Tests remove the marked decorator line (T6-MEMOIZE) to compare with a plain run.
"""

import os

from _counter import record
from metaflow import FlowSpec, memoize, step


class T6UnstorableFlow(FlowSpec):
    @memoize  # T6-MEMOIZE
    @step
    def start(self):
        record("start")
        if os.environ.get("T6_KIND") == "generator":
            self.bad = (i for i in range(3))
        else:
            self.bad = lambda x: x + 1
        self.next(self.end)

    @step
    def end(self):
        record("end")


if __name__ == "__main__":
    T6UnstorableFlow()
