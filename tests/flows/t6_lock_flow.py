"""Single flight: a slow memoized step with lock=True.

T6_SLEEP (seconds, default 3) and T6_FAIL (fail the body when set) come from
the environment, which is not part of the key.
"""

import os
import time

from _counter import record
from metaflow import FlowSpec, memoize, step


class T6LockFlow(FlowSpec):
    @memoize(lock=True)
    @step
    def start(self):
        record("start")
        time.sleep(float(os.environ.get("T6_SLEEP", "3")))
        if os.environ.get("T6_FAIL"):
            raise RuntimeError("start failed on purpose (T6_FAIL)")
        self.value = 41
        self.next(self.end)

    @step
    def end(self):
        record("end")
        self.result = self.value + 1


if __name__ == "__main__":
    T6LockFlow()
