"""TTL is judged on the store's clock: the manifest object's modification time (file
mtime, S3 LastModified) and the store's current time (S3's Date header), with the
entry's ttl as a duration. A writer whose clock runs 30 days ahead (or behind) does
not change when its entries expire; timestamps in the future count as now.
"""

from __future__ import annotations

import hashlib
import os
import time

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest
from reliability_report import fault_notes

from metaflow_extensions.memoize.plugins.memoize.cache import maintenance as mt
from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
from metaflow_extensions.memoize.plugins.memoize.cache.manifest import Manifest
from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store

AREA = "11. Clocks"
DAY = 86400.0
HOUR = 3600.0


@pytest.fixture
def fault(record_property):
    return fault_notes(record_property)


def publish(cache: Cache, name: str, skew: float, ttl: float) -> Manifest:
    """An entry written by a machine whose clock is ``skew`` seconds off."""
    created = time.time() + skew
    m = Manifest(
        key=hashlib.md5(name.encode()).hexdigest(),
        flow="F",
        step="s",
        components={},
        artifacts={},
        transition={},
        created=created,
        expires=created + ttl,
        origin="F/1/s/1",
    )
    assert cache.publish(m)
    return m


def set_written(cache: Cache, m: Manifest, when: float) -> None:
    path = cache.store.url_for(Cache.manifest_key("F", "s", m.key))
    os.utime(path, (when, when))


def status(cache: Cache, m: Manifest) -> str:
    return cache.lookup("F", "s", m.key).status


def test_a_writer_30_days_ahead_expires_on_time_locally(tmp_path, fault):
    fault(
        area=AREA,
        fault="entries written by a machine whose clock runs 30 days ahead (and one 30 days "
        "behind), ttl=1h; read back 2 h and 10 min after they were written (file mtimes)",
        store="local",
        expected="ahead: expired after 2 h, fresh after 10 min; behind: fresh after 10 min; "
        "prune --expired agrees",
    )
    cache = Cache(open_store(str(tmp_path / "cache")))
    ahead_old = publish(cache, "ahead-old", 30 * DAY, HOUR)
    ahead_new = publish(cache, "ahead-new", 30 * DAY, HOUR)
    behind_new = publish(cache, "behind-new", -30 * DAY, HOUR)
    now = time.time()
    set_written(cache, ahead_old, now - 2 * HOUR)
    set_written(cache, ahead_new, now - 600)
    set_written(cache, behind_new, now - 600)
    got = {
        n: status(cache, m)
        for n, m in [("ahead_old", ahead_old), ("ahead_new", ahead_new), ("behind_new", behind_new)]
    }
    assert got == {"ahead_old": "expired", "ahead_new": "found", "behind_new": "found"}
    plan = mt.plan_prune(mt.Target(cache), mt.PruneCriteria(expired=True), time.time(), None)
    assert [e.key for e, _ in plan.entries] == [ahead_old.key]
    fault(observed="lookups: %s; prune --expired selects only the 2-hour-old one" % got)


def test_a_modification_time_in_the_future_counts_as_now(tmp_path):
    cache = Cache(open_store(str(tmp_path / "cache")))
    m = publish(cache, "future", 0, HOUR)
    set_written(cache, m, time.time() + 10 * DAY)  # a file server's clock ahead
    assert status(cache, m) == "found"


def test_a_writer_30_days_ahead_expires_on_time_on_s3(s3_env, fault):
    fault(
        area=AREA,
        fault="S3: an entry with ttl=1s from a writer 30 days ahead, read 2 s later",
        store="S3",
        expected="expired (S3 LastModified and Date header, not the writer's clock)",
    )
    cache = Cache(open_store(s3_env.url("clock")))
    m = publish(cache, "ahead", 30 * DAY, 1.0)
    time.sleep(2.1)  # S3 times have a resolution of one second
    assert status(cache, m) == "expired"
    fault(observed="expired")
