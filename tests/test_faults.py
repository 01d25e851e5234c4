"""Flaky S3: a fault-injecting proxy between boto3 and moto (tests/fault_proxy.py).

A memoized foreach flow runs against an S3 cache whose requests are faulted at
5%, 20% and 100% (500, 503 SlowDown, connection resets after the server acted,
truncated bodies, latency). Every run must succeed with correct artifacts and at
most one memoize warning per task; in strict mode a run fails cleanly, naming
the cause. With the S3 datastore too, the datastore's own requests go through
the proxy unfaulted (only the cache prefix is faulted).

Each rate makes MEMOIZE_FAULT_RUNS (default 2) runs with a local datastore and
half as many (at least 2) with the S3 datastore: 5%, 20% and 100% on the local
datastore and 100% on the S3 datastore in ``make test-slow`` (the unreachable
store tests of test_reliability.py are ``make test``'s quick check of the same
promise), 5% and 20% on the S3 datastore in ``make test-stress``; the figures
in docs/reliability.md come from ``MEMOIZE_FAULT_RUNS=10``.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from fault_proxy import FaultProxy
from reliability_report import fault_notes

from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
from metaflow_extensions.memoize.plugins.memoize.cache.singleflight import Lease
from metaflow_extensions.memoize.plugins.memoize.cache.stores import faults as store_faults
from metaflow_extensions.memoize.plugins.memoize.cache.stores import s3 as s3_store
from metaflow_extensions.memoize.plugins.memoize.cache.stores.s3 import S3Store
from metaflow_extensions.memoize.plugins.memoize.exceptions import StoreUnavailable

AREA = "7. Flaky S3 (fault-injecting proxy)"
RUNS = int(os.environ.get("MEMOIZE_FAULT_RUNS", "2"))
PREFIX = "memo-cache"
LATENCY = float(os.environ.get("MEMOIZE_FAULT_LATENCY", "0.5"))

FLOW = """
from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class FaultForeachFlow(FlowSpec):
    n = Parameter("n", default=3, type=int)

    @memoize
    @step
    def start(self):
        record("start")
        self.items = list(range(self.n))
        self.next(self.body, foreach="items")

    @memoize
    @step
    def body(self):
        record("body", repr(self.input))
        self.out = "x" * 2000 + str(self.input * 10)
        self.next(self.join)

    @memoize
    @step
    def join(self, inputs):
        record("join")
        self.outs = sorted(int(i.out[2000:]) for i in inputs)
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")
        self.total = sum(self.outs)


if __name__ == "__main__":
    FaultForeachFlow()
"""


@pytest.fixture
def fault(record_property):
    return fault_notes(record_property)


@pytest.fixture
def proxy(s3_env):
    proxy = FaultProxy(s3_env.endpoint_url, match="/%s/" % PREFIX, latency=LATENCY).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _env(s3_env, proxy, datastore, extra=None):
    env = dict(s3_env.env)
    env.update(
        {
            "AWS_ENDPOINT_URL_S3": proxy.url,
            "METAFLOW_S3_ENDPOINT_URL": proxy.url,
            "METAFLOW_MEMOIZE_ROOT": s3_env.url(PREFIX),
            "METAFLOW_DEFAULT_DATASTORE": datastore,
        }
    )
    env.update(extra or {})
    return env


def _expected(n):
    return {"outs": repr(sorted(i * 10 for i in range(n))), "total": repr(sum(range(n)) * 10)}


def _warnings_per_task(output: str) -> int:
    """The most memoize warnings any one task printed."""
    per_task: dict[str, int] = {}
    for line in output.splitlines():
        if "[memoize] WARNING" in line:
            match = re.search(r"\[(\d+/\w+/\d+)", line)
            task = match.group(1) if match else line
            per_task[task] = per_task.get(task, 0) + 1
    return max(per_task.values(), default=0)


@pytest.mark.parametrize(
    "datastore,rate",
    [
        pytest.param("local", 0.05, marks=pytest.mark.slow),
        pytest.param("local", 0.2, marks=pytest.mark.slow),
        # every request faulted: about 2 minutes; the unreachable-store tests of
        # test_reliability.py are the quick check of the same promise
        pytest.param("local", 1.0, marks=pytest.mark.slow),
        pytest.param("s3", 0.05, marks=pytest.mark.stress),
        pytest.param("s3", 0.2, marks=pytest.mark.stress),
        pytest.param("s3", 1.0, marks=pytest.mark.slow),
    ],
)
def test_flaky_s3_never_fails_a_run(runner, s3_env, proxy, fault, datastore, rate):
    # at least two runs: one that hits the clean run's entries, one that misses
    runs = RUNS if datastore == "local" else max(2, RUNS // 2)
    fault(
        area=AREA,
        fault="%d%% of the cache's S3 requests faulted (500, 503 SlowDown, reset after the "
        "server acted, truncated body, %.1f s latency); %d runs of a memoized foreach flow, "
        "%s datastore" % (round(rate * 100), LATENCY, runs, datastore),
        store="S3",
        expected="0 failed runs, 0 wrong results, at most 1 memoize warning per task",
    )
    runner.add_flow("fault_flow.py", FLOW)
    env = _env(s3_env, proxy, datastore)
    # a clean run first, so that faulted runs also read (hits), not only write
    proxy.rate = 0.0
    runner.run("fault_flow.py", "--n", "3", env=env)
    proxy.rate = rate
    failed = wrong = hits = 0
    worst = 0
    for i in range(runs):
        n = 3 if i % 2 == 0 else 4  # alternate: hits of the clean run's entries, and misses
        result = runner.run("fault_flow.py", "--n", str(n), env=env, check=False)
        if result.returncode != 0 or "Internal error" in result.output:
            failed += 1
            continue
        arts = runner.artifacts(
            "FaultForeachFlow", result.run_id, env=_env(s3_env, proxy, datastore)
        )
        end = arts["end"][0]
        if {k: end.get(k) for k in ("outs", "total")} != _expected(n):
            wrong += 1
        hits += sum(line.count("[memoize] hit ") for line in result.output.splitlines())
        worst = max(worst, _warnings_per_task(result.output))
    stats = dict(proxy.stats)
    fault(
        observed="%d failed, %d wrong of %d runs; %d step hits; at most %d warning(s) per task; "
        "%d of %d cache requests faulted"
        % (failed, wrong, runs, hits, worst, stats.get("faulted", 0), stats.get("matched", 0))
    )
    assert failed == 0 and wrong == 0
    assert worst <= 1
    if rate >= 0.2:  # at 5% a short pass (a few dozen requests) may draw no fault at all
        assert stats.get("faulted", 0) > 0


def test_flaky_s3_in_strict_mode_fails_cleanly_naming_the_cause(runner, s3_env, proxy, fault):
    fault(
        area=AREA,
        fault="METAFLOW_MEMOIZE_STRICT=1, 100% of the cache's requests faulted",
        store="S3",
        expected="the run fails, the task's error names the cache, the cause and "
        "METAFLOW_MEMOIZE_STRICT; no internal error",
    )
    runner.add_flow("fault_flow.py", FLOW)
    proxy.rate = 1.0
    result = runner.run(
        "fault_flow.py",
        env=_env(s3_env, proxy, "local", {"METAFLOW_MEMOIZE_STRICT": "1"}),
        check=False,
    )
    assert result.returncode != 0
    line = next(ln for ln in result.output.splitlines() if "METAFLOW_MEMOIZE_STRICT is set" in ln)
    assert "s3://%s/%s" % (s3_env.bucket, PREFIX) in line
    assert "Internal error" not in result.output
    fault(observed="run failed: %s" % line.split("] ", 1)[-1][:200])


def test_a_dead_store_is_disabled_after_a_few_faults(s3_env, proxy, fault, monkeypatch):
    """In process: after FAULT_LIMIT faults no request is sent at all."""
    fault(
        area=AREA,
        fault="every request to the cache faulted; 20 operations in one process",
        store="S3",
        expected="each raises StoreUnavailable; after %d faults the store is disabled and "
        "sends no more requests" % store_faults.FAULT_LIMIT,
    )
    monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", proxy.url)
    store_faults.reset_budgets()
    proxy.rate = 1.0
    proxy.kinds = ("500",)
    store = S3Store(s3_env.url(PREFIX))
    for i in range(20):
        with pytest.raises(StoreUnavailable):
            store.get("v1/entries/F/s/%d.json" % i)
    sent = proxy.stats["matched"]
    with pytest.raises(StoreUnavailable, match="disabled after"):
        store.head("v1/blobs/ab/abc")
    assert proxy.stats["matched"] == sent
    # botocore's attempts per operation (its retries count the first try or not, by mode)
    assert sent <= store_faults.FAULT_LIMIT * (s3_store.MAX_ATTEMPTS + 1)
    store_faults.reset_budgets()
    fault(observed="%d requests sent for 20 operations, then none" % sent)


def test_truncated_bodies_are_retried(s3_env, proxy, fault, monkeypatch):
    fault(
        area=AREA,
        fault="every other GET of a manifest-sized object truncated mid-body",
        store="S3",
        expected="get retries the read and returns the whole object",
    )
    monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", proxy.url)
    store_faults.reset_budgets()
    store = S3Store(s3_env.url(PREFIX))
    store.put("v1/entries/F/s/k.json", b"{" + b"x" * 5000 + b"}")
    proxy.kinds = ("truncate",)
    proxy.rate = 0.5
    for _ in range(10):
        assert store.get("v1/entries/F/s/k.json") == b"{" + b"x" * 5000 + b"}"
    assert proxy.stats["truncate"] > 0
    fault(observed="10 of 10 reads whole; %d truncated replies retried" % proxy.stats["truncate"])


def test_a_lost_lease_reply_is_recognised(s3_env, proxy, fault, monkeypatch):
    fault(
        area=AREA,
        fault="the reply to the lease's conditional PUT is lost (connection reset after the "
        "server wrote it); botocore retries and gets 412",
        store="S3",
        expected="the task recognises its own lease and holds it (no wait)",
    )
    monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", proxy.url)
    store_faults.reset_budgets()
    cache = Cache(S3Store(s3_env.url(PREFIX)))
    lease = Lease(cache, "F", "s", "k" * 32, 60)
    proxy.kinds = ("reset",)
    proxy.rate = 1.0

    real_decide = proxy.decide
    calls = []

    def once(target):  # fault the first PUT only
        calls.append(target)
        return real_decide(target) if len(calls) == 1 else None

    proxy.decide = once
    try:
        assert lease.try_acquire()
        held = json.loads(cache.store.get(lease.name))
        assert held["owner"] == lease.owner
    finally:
        lease.release()
    assert proxy.stats["reset"] == 1
    fault(observed="acquired at once after the lost reply")


def test_the_lease_winner_looks_the_key_up_again(tmp_path, fault):
    """The race behind "8 runs over 10 keys ran the body 13 times": a task misses, the
    entry is published and the lease released by another task, then this task wins
    the (now free) lease. It must use the entry, not compute the key again."""
    fault(
        area=AREA,
        fault="single flight: the entry is published (and the lease released) between a "
        "task's miss and its winning the lease",
        store="local",
        expected="the winner looks the key up again: a hit, and it releases the lease",
    )
    from metaflow_extensions.memoize.plugins.memoize.cache.manifest import Manifest
    from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store
    from metaflow_extensions.memoize.plugins.memoize.runtime.decorator import MemoizeDecorator

    cache = Cache(open_store(str(tmp_path / "cache")))
    key = "0123456789abcdef0123456789abcdef"
    entry = Manifest(key, "F", "s", {}, {}, {"_transition": None}, 1.0, None, "F/1/s/1")
    assert cache.publish(entry)  # by the other task, after our miss

    class Task:
        _cache = cache
        _lease = None
        _dep_ctx = None  # the entry records no observed dependencies
        looked_up = 0

        def _look_up(self, flow, step, k, meta):
            self.looked_up += 1
            return "hit"

    task = Task()
    status = MemoizeDecorator._single_flight(task, "F", "s", key, {})
    assert status == "hit" and task.looked_up == 1
    assert task._lease is None and not cache.store.exists(cache.lock_key("F", "s", key))
    fault(observed="hit; lease released")


def test_a_server_side_copy_is_verified_with_s3_checksums(s3_env, proxy, fault, monkeypatch):
    fault(
        area=AREA,
        fault="a server-side copy whose destination checksum disagrees with the source's "
        "(the proxy alters the x-amz-checksum-* header S3 reports for the copy)",
        store="S3",
        expected="the copy asks S3 for a checksum of the source's algorithm; a mismatch is "
        "a cache fault and the bad copy is deleted; an agreeing copy passes",
    )
    monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", proxy.url)
    store_faults.reset_budgets()
    s3_env.client.put_object(
        Bucket=s3_env.bucket,
        Key="metaflow/src",
        Body=b"blob bytes" * 100,
        ChecksumAlgorithm="CRC32",
    )
    source = "s3://%s/metaflow/src" % s3_env.bucket
    store = S3Store(s3_env.url(PREFIX))
    good = "v1/blobs/ab/" + "ab" * 20
    assert store.copy_from_url(good, source)
    assert store.get(good) == b"blob bytes" * 100

    def corrupt(method, target, headers):
        if method == "HEAD" and "/%s/v1/blobs/cd/" % PREFIX in target:
            return [
                (k, "AAAAAA==" if k.lower().startswith("x-amz-checksum-crc") else v)
                for k, v in headers
            ]
        return headers

    proxy.rewrite_headers = corrupt
    bad = "v1/blobs/cd/" + "cd" * 20
    with pytest.raises(StoreUnavailable, match="not .* as its source"):
        store.copy_from_url(bad, source)
    proxy.rewrite_headers = None
    assert store.head(bad) is None
    store_faults.reset_budgets()
    fault(observed="agreeing copy kept; disagreeing copy raised a cache fault and was deleted")
