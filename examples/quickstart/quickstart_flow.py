"""The smallest useful @memoize flow: an expensive step that runs once.

python quickstart_flow.py run    # first time: `miss`, featurize runs
python quickstart_flow.py run    # again: `hit`, featurize is skipped
"""

import time

from metaflow import FlowSpec, Parameter, memoize, step


class QuickstartFlow(FlowSpec):
    rows = Parameter("rows", default=1000, help="How many rows to featurize")

    @step
    def start(self):
        self.raw = list(range(self.rows))
        self.next(self.featurize)

    @memoize(ttl="7d")
    @step
    def featurize(self):
        time.sleep(3)  # stands in for an expensive computation
        self.features = [x * x for x in self.raw]
        self.next(self.end)

    @step
    def end(self):
        print("sum of features:", sum(self.features))


if __name__ == "__main__":
    QuickstartFlow()
