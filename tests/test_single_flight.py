"""Single flight across processes: concurrent runs, each in its own process and
with its own datastore (as on separate machines), share one cache root; a
memoized foreach step with ``lock=True`` has one key per item. Every run starts
at once on an empty cache, so each key is missed concurrently by every run (the
orchestrator has nothing to clone) and the lease alone decides who computes it:
each body must run exactly once in total, and every run must end with the same
values.

``make test`` runs 3 runs x 4 keys on a local cache; the stress variants (make test-stress) are the
issue's 8 runs x 10 keys, on a local cache and on an S3 cache (moto).
"""

from __future__ import annotations

import concurrent.futures
import re
from collections import Counter
from datetime import datetime

import pytest
from flowrunner import FlowRunner
from reliability_report import fault_notes

AREA = "4. Concurrency and leases"
ROOT_ENV = "METAFLOW_MEMOIZE_ROOT"

FLOW = """
import os
import time

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class SingleFlightFlow(FlowSpec):
    keys = Parameter("keys", default=4, type=int)

    @step
    def start(self):
        self.items = list(range(self.keys))
        self.next(self.body, foreach="items")

    @memoize(lock=True)
    @step
    def body(self):
        record("body", repr(self.input))
        time.sleep(float(os.environ.get("SF_SLEEP", "2")))
        self.out = self.input * 7 + 1
        self.next(self.join)

    @step
    def join(self, inputs):
        self.outs = sorted(i.out for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SingleFlightFlow()
"""


@pytest.fixture
def fault(record_property):
    return fault_notes(record_property)


def run_concurrently(tmp_path, runs: int, keys: int, env: dict):
    """``runs`` runs at once, each in its own directory (own datastore), one shared
    cache root and one shared counter directory; (results, runners, counters)."""
    counters = tmp_path / "counters"
    counters.mkdir()
    runners = []
    for i in range(runs):
        runner = FlowRunner(
            tmp_path / ("run%d" % i), extra_env=dict(env, MEMOIZE_TEST_COUNTERS=str(counters))
        )
        runner.add_flow("single_flight_flow.py", FLOW)
        runners.append(runner)
    with concurrent.futures.ThreadPoolExecutor(runs) as pool:
        futures = [
            pool.submit(
                r.run,
                "single_flight_flow.py",
                "--keys",
                str(keys),
                "--max-workers",
                str(keys),
                check=False,
                timeout=900,
            )
            for r in runners
        ]
        results = [f.result() for f in futures]
    per_item = Counter()
    for path in counters.iterdir():
        if path.name.startswith("body--"):
            per_item.update(path.read_text().split())
    return results, runners, per_item


def check_single_flight(tmp_path, fault, runs: int, keys: int, env: dict, store: str):
    fault(
        area=AREA,
        fault="%d runs at once (separate processes and datastores, one cache root), a "
        "foreach step with @memoize(lock=True) over %d items (%d keys), 2 s body, empty "
        "cache" % (runs, keys, keys),
        store=store,
        expected="every run succeeds with the same values; each key's body runs exactly "
        "once in total",
    )
    results, runners, per_item = run_concurrently(tmp_path, runs, keys, env)
    failed = [r for r in results if r.returncode != 0]
    assert not failed, failed[0]
    expected = repr(sorted(i * 7 + 1 for i in range(keys)))
    wrong = 0
    for runner, result in zip(runners, results):
        arts = runner.artifacts("SingleFlightFlow", result.run_id)
        wrong += arts["join"][0]["outs"] != expected
    waited = sum(r.output.count("another task is computing it") for r in results)
    bodies = sum(per_item.values())
    fault(
        observed="%d of %d runs succeeded, %d with wrong values; %d body executions for %d "
        "keys (most for one key: %d); %d task(s) waited for a lease"
        % (
            runs - len(failed),
            runs,
            wrong,
            bodies,
            keys,
            max(per_item.values(), default=0),
            waited,
        )
    )
    assert wrong == 0
    assert sorted(per_item) == sorted(repr(i) for i in range(keys))
    assert bodies == keys, dict(per_item)
    assert waited > 0  # the runs did race: some task found another's lease


def test_three_runs_over_four_keys_run_each_body_once(tmp_path, fault):
    check_single_flight(tmp_path, fault, 3, 4, {ROOT_ENV: str(tmp_path / "cache")}, "local")


@pytest.mark.stress
def test_eight_runs_over_ten_keys_run_each_body_once(tmp_path, fault):
    check_single_flight(tmp_path, fault, 8, 10, {ROOT_ENV: str(tmp_path / "cache")}, "local")


@pytest.mark.stress
def test_eight_runs_over_ten_keys_run_each_body_once_on_s3(tmp_path, s3_env, fault):
    env = dict(s3_env.env, **{ROOT_ENV: s3_env.url("cache")})
    check_single_flight(tmp_path, fault, 8, 10, env, "S3")


# Metaflow prints every task line as "<date> <time> [<run>/<step>/<task> (pid N)] <text>",
# stamped when the orchestrator reads it from the task
_TASK_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \[(\S+/\S+/\S+) \(pid \d+\)\] (.*)$"
)


def memoize_lines_by_task(output: str) -> dict[str, list[tuple[datetime, str]]]:
    """{run/step/task: [(time the line was printed, text)]} of the [memoize] lines."""
    by_task: dict[str, list[tuple[datetime, str]]] = {}
    for line in output.splitlines():
        match = _TASK_LINE.match(line.strip())
        if match and "[memoize]" in match.group(3):
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f")
            by_task.setdefault(match.group(2), []).append((stamp, match.group(3)))
    return by_task


# One run, two foreach tasks with the same item: the same key, computed at once.
DUPLICATE_ITEMS_FLOW = """
import time

from _counter import record
from metaflow import FlowSpec, memoize, step


class DuplicateItemsFlow(FlowSpec):
    @step
    def start(self):
        self.items = [3, 3]
        self.next(self.body, foreach="items")

    @memoize(lock=True)
    @step
    def body(self):
        record("body", repr(self.input))
        time.sleep(4)
        self.out = self.input * 7 + 1
        self.next(self.join)

    @step
    def join(self, inputs):
        self.outs = [i.out for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DuplicateItemsFlow()
"""


def test_a_waiting_task_says_so_when_it_starts_waiting_and_claims_no_miss(runner):
    """Issue 15 point 10: the waiting task logged "miss", then nothing, then "waiting"
    and "hit" together. The miss and waiting lines were written together, and
    Metaflow's runtime reads one line of a task's output per wake-up of its pipe:
    the second line stayed unread until the task wrote again. Now the waiter writes
    one line when the wait starts and claims no miss."""
    runner.add_flow("duplicate_items_flow.py", DUPLICATE_ITEMS_FLOW)
    result = runner.run("duplicate_items_flow.py", "--max-workers", "2")
    assert runner.executions("body") == {"body": 1}  # the other task waited, then hit
    assert runner.artifacts("DuplicateItemsFlow", result.run_id)["join"][0]["outs"] == "[22, 22]"
    lines = {
        task: found
        for task, found in memoize_lines_by_task(result.output).items()
        if task.split("/")[1] == "body"
    }
    waiters = [t for t, found in lines.items() if any("waiting (lock=True)" in x for _, x in found)]
    assert len(waiters) == 1, lines
    (waiter,) = waiters
    (computer,) = set(lines) - {waiter}
    texts = [text for _, text in lines[waiter]]
    assert len(texts) == 2, texts
    assert "not in the cache yet; another task is computing it" in texts[0], texts
    assert texts[1].startswith("[memoize] hit body "), texts
    assert "waited" in texts[1] and "for the task computing it" in texts[1], texts
    assert lines[computer][0][1].startswith("[memoize] miss body "), lines[computer]
    # the waiting line was printed when the wait began, not with the hit at its end
    # (the other task's body sleeps 4 s)
    waiting_at, hit_at = lines[waiter][0][0], lines[waiter][1][0]
    assert (hit_at - waiting_at).total_seconds() >= 2.0, lines[waiter]
