"""Steps that fail on demand: T2_FAIL=step1,step2 in the environment (not in any key)."""

import os

from _counter import record
from metaflow import FlowSpec, catch, memoize, retry, step


def should_fail(step_name):
    return step_name in os.environ.get("T2_FAIL", "").split(",")


class T2FailFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        record("start")
        self.value = 5
        self.next(self.risky)

    @memoize
    @step
    def risky(self):
        record("risky")
        if should_fail("risky"):
            raise ValueError("risky failed on purpose")
        self.out = self.value * 2
        self.next(self.caught)

    @catch(var="problem", print_exception=False)
    @memoize
    @step
    def caught(self):
        record("caught")
        if should_fail("caught"):
            raise ValueError("caught failed on purpose")
        self.fine = self.out + 1
        self.next(self.flaky)

    @retry(times=1, minutes_between_retries=0)
    @memoize
    @step
    def flaky(self):
        record("flaky")
        # the marker lives next to the counter directory, in the test's work dir
        marker = os.path.join(os.environ["MEMOIZE_TEST_COUNTERS"], os.pardir, "flaky-failed")
        if should_fail("flaky") and not os.path.exists(marker):
            open(marker, "w").close()
            raise ValueError("flaky fails on its first attempt")
        self.steady = self.out * 3
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")
        self.final = (self.out, getattr(self, "fine", None), self.steady)


if __name__ == "__main__":
    T2FailFlow()
