"""Cache maintenance: the pure decisions (LRU, expiry, garbage) and the executor.

The executor tests use real stores (a local directory; S3 on moto for scale)
with synthetic entries written through the Cache/Store API. Flow-level
behaviour (real entries from real runs) is in test_cli.py.
"""

import hashlib
import time

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest

from metaflow_extensions.memoize.plugins.memoize.cache import maintenance as mt
from metaflow_extensions.memoize.plugins.memoize.cache.entries import MARKER, Cache
from metaflow_extensions.memoize.plugins.memoize.cache.manifest import ArtifactRecord, Manifest
from metaflow_extensions.memoize.plugins.memoize.cache.stores import ObjectInfo, Store
from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.exceptions import (
    MemoizeCliError,
    StoreUnavailable,
)

T0 = 1_700_000_000.0
KEEP_ALL = mt.PruneCriteria()
EVERYTHING = mt.PruneCriteria(older_than=0)


# -- helpers -------------------------------------------------------------------
def sha_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def key_of(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()


def manifest(flow, step, key, blobs, created=T0, expires=None) -> Manifest:
    """A manifest naming ``blobs`` ({artifact: bytes}), with their stored sizes."""
    artifacts = {
        name: ArtifactRecord(sha_of(data), {"size": len(data)}, True, len(data))
        for name, data in blobs.items()
    }
    return Manifest(
        key=key,
        flow=flow,
        step=step,
        components={"flow": flow, "step": step},
        artifacts=artifacts,
        transition={},
        created=created,
        expires=expires,
        origin="%s/1/%s/1" % (flow, step),
    )


def put_entry(cache, flow, step, name, blobs, created=T0, expires=None, marker=True):
    """Write an entry the way the decorator does: blobs, manifest, last-use marker."""
    m = manifest(flow, step, key_of(name), blobs, created, expires)
    for data in blobs.values():
        cache.store.put(Cache.blob_key(sha_of(data)), data)
    cache.store.put(Cache.manifest_key(flow, step, m.key), m.dumps())
    if marker:
        cache.store.put(Cache.used_key(flow, step, m.key), b"{}")
    return m


def info_entry(name, blobs, created, expires=None, last_used=None, size=100, flow="F", step="s"):
    """An EntryInfo for the pure functions: ``blobs`` is {sha: stored size}."""
    key = key_of(name)
    artifacts = {
        "a%d" % i: ArtifactRecord(sha, {}, True, n) for i, (sha, n) in enumerate(blobs.items())
    }
    m = Manifest(key, flow, step, {}, artifacts, {}, created, expires, "")
    obj = ObjectInfo(Cache.manifest_key(flow, step, key), size, created)
    return mt.EntryInfo(flow, step, key, obj, m, None, frozenset(blobs), last_used)


def assert_consistent(store: Store) -> None:
    """Every manifest left parses and every blob it names is present."""
    blobs = {info.key for info in store.list(Cache.blob_prefix())}
    for info in store.list(Cache.entry_prefix()):
        m = Manifest.loads(store.get(info.key))
        missing = [sha for sha in m.blob_shas if Cache.blob_key(sha) not in blobs]
        assert not missing, "%s lost blobs %s" % (info.key, missing)


def names(store: Store, prefix: str) -> set:
    return {info.key for info in store.list(prefix)}


@pytest.fixture
def cache(tmp_path):
    return Cache(LocalStore(str(tmp_path / "cache")))


# -- decisions (pure) ----------------------------------------------------------
def test_expired_and_older_than_select_by_expiry_and_creation():
    old = info_entry("old", {"a": 10}, created=T0)
    expired = info_entry("exp", {"b": 10}, created=T0 + 500, expires=T0 + 600)
    fresh = info_entry("new", {"c": 10}, created=T0 + 900, expires=T0 + 5000)
    entries = [old, expired, fresh]
    now = T0 + 1000
    assert mt.select_for_prune(entries, now, KEEP_ALL) == []
    got = mt.select_for_prune(entries, now, mt.PruneCriteria(expired=True))
    assert [(e.key, r) for e, r in got] == [(expired.key, "expired")]
    got = mt.select_for_prune(entries, now, mt.PruneCriteria(older_than=600))
    assert [e.key for e, _ in got] == [old.key]
    assert got[0][1] == "older than 10m00s"
    both = mt.select_for_prune(entries, now, mt.PruneCriteria(expired=True, older_than=600))
    assert {e.key for e, _ in both} == {old.key, expired.key}


def test_max_size_evicts_least_recently_used_first():
    # recency: b (never used: its creation, T0+10) < c (used T0+30) < a (used T0+50)
    a = info_entry("a", {"sa": 1000}, created=T0, last_used=T0 + 50)
    b = info_entry("b", {"sb": 1000}, created=T0 + 10)
    c = info_entry("c", {"sc": 1000}, created=T0 + 20, last_used=T0 + 30)
    entries = [a, b, c]  # 3 x (100 manifest + 1000 blob) = 3300 bytes
    now = T0 + 100

    def evicted(max_size):
        return [
            e.key for e, _ in mt.select_for_prune(entries, now, mt.PruneCriteria(max_size=max_size))
        ]

    assert evicted(3300) == []
    assert evicted(3299) == [b.key]
    assert evicted(2200) == [b.key]
    assert evicted(2199) == [b.key, c.key]
    assert evicted(0) == [b.key, c.key, a.key]
    reasons = {r for _, r in mt.select_for_prune(entries, now, mt.PruneCriteria(max_size=0))}
    assert reasons == {"least recently used"}


def test_max_size_counts_shared_blobs_once():
    # a and b share a 5000-byte blob: evicting a alone frees only its own bytes
    a = info_entry("a", {"shared": 5000, "ua": 100}, created=T0)
    b = info_entry("b", {"shared": 5000, "ub": 100}, created=T0 + 1)
    c = info_entry("c", {"uc": 1000}, created=T0 + 2)
    entries = [a, b, c]
    total, _ = mt.summarize(mt.Inventory("r", None, None, entries, {}), T0)
    assert total.bytes == 3 * 100 + 5000 + 100 + 100 + 1000
    assert total.blobs == 4
    # 6500 -> without a: 6300 -> without b too: 1100
    crit = mt.PruneCriteria(max_size=6300)
    assert [e.key for e, _ in mt.select_for_prune(entries, T0, crit)] == [a.key]
    crit = mt.PruneCriteria(max_size=6299)
    assert [e.key for e, _ in mt.select_for_prune(entries, T0, crit)] == [a.key, b.key]


def test_corrupt_entries_are_never_pruned():
    bad = info_entry("bad", {"x": 10}, created=T0)
    bad.manifest, bad.error = None, "manifest does not parse"
    got = mt.select_for_prune([bad], T0 + 10**6, mt.PruneCriteria(True, 0, 0))
    assert got == []


def test_list_selection_sorts_filters_and_cuts():
    now = T0 + 10_000
    # name: created, last used, blob size, expires, step
    a = info_entry("a", {"sa": 300}, created=T0 + 100, expires=T0 + 20_000, step="x")
    b = info_entry("b", {"sb": 100}, created=T0 + 300, last_used=T0 + 9000, step="y")
    c = info_entry("c", {"sc": 200}, created=T0 + 200, expires=T0 + 15_000, step="x")
    old = info_entry("old", {"so": 50}, created=T0 - 50_000, expires=T0 - 1, step="y")
    bad = info_entry("bad", {}, created=T0 + 400, step="x")
    bad.manifest, bad.error = None, "manifest does not parse"
    rows = [(root, e) for root, e in zip("12345", [a, b, c, old, bad])]

    def order(sort, **kw):
        shown, matched = mt.select_listing(rows, now, sort, **kw)
        return [e for _, e in shown], [e for _, e in matched]

    assert order("created")[0] == [bad, b, c, a, old]  # newest first
    assert order("last-used")[0] == [b, bad, c, a, old]  # last use, else creation
    assert order("size")[0] == [a, c, b, old, bad]  # largest first; corrupt: 0
    assert order("step")[0] == [bad, c, a, b, old]  # by step, newest first in each
    # soonest first; never expires, then corrupt (no ttl known), last
    assert order("expires")[0] == [old, c, a, b, bad]
    shown, matched = order("created", limit=2)
    assert shown == [bad, b] and matched == [bad, b, c, a, old]
    assert order("created", limit=0)[0] == order("created", limit=None)[0] == matched
    # --since: created within the duration (old was created long before)
    shown, matched = order("created", since=now - T0)
    assert matched == [bad, b, c, a] and shown == matched
    assert [r for r, e in mt.select_listing(rows, now, "size", limit=1)[0]] == ["1"]
    with pytest.raises(MemoizeCliError):
        mt.select_listing(rows, now, "colour")


class RecordingProgress:
    """A ``progress`` for maintenance: records each phase's label, total and updates."""

    def __init__(self):
        self.phases = []

    def __call__(self, label, total):
        import contextlib

        phase = {"label": label, "total": total, "done": 0}
        self.phases.append(phase)

        class Bar:
            def update(self, n):
                phase["done"] += n

        return contextlib.nullcontext(Bar())


def test_scans_and_deletions_report_progress(tmp_path, monkeypatch):
    real = LocalStore(str(tmp_path / "cache"))
    for i in range(25):
        put_entry(Cache(real), "F", "s", "e%d" % i, {"x": b"%d" % i})
    target = mt.Target(Cache(real), "F")
    progress = RecordingProgress()
    assert len(mt.scan(target, progress=progress).entries) == 25
    assert progress.phases == [{"label": "Reading manifests", "total": 25, "done": 25}]

    monkeypatch.setattr(mt, "DELETE_CHUNK", 10)  # chunks, and an update after each
    calls = []
    real_delete = real.delete
    monkeypatch.setattr(real, "delete", lambda keys: calls.append(len(keys)) or real_delete(keys))
    progress = RecordingProgress()
    plan = mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0, progress=progress)
    mt.execute(target, plan, progress)
    assert progress.phases == [
        {"label": "Reading manifests", "total": 25, "done": 25},
        # 25 manifests, 25 markers, 25 blobs
        {"label": "Deleting", "total": 75, "done": 75},
    ]
    assert calls == [10, 10, 5] * 3
    assert names(real, "v1/entries/") == set() and names(real, "v1/blobs/") == set()


def test_garbage_blobs_respect_references_and_grace():
    now = T0 + 10_000
    blobs = {
        "aa01": ObjectInfo(Cache.blob_key("aa01"), 10, now - 7200),  # old, unreferenced
        "bb02": ObjectInfo(Cache.blob_key("bb02"), 10, now - 60),  # young, unreferenced
        "cc03": ObjectInfo(Cache.blob_key("cc03"), 10, now - 7200),  # referenced
    }
    delete, young = mt.select_garbage_blobs(blobs, {"cc03"}, now, grace=3600)
    assert [b.key for b in delete] == [Cache.blob_key("aa01")]
    assert [b.key for b in young] == [Cache.blob_key("bb02")]
    delete, young = mt.select_garbage_blobs(blobs, {"cc03"}, now, grace=0)
    assert len(delete) == 2 and young == []


def test_orphan_markers_need_grace():
    now = T0 + 10_000
    live = ("F", "s", "k1")
    markers = {
        live: ObjectInfo("v1/used/F/s/k1", 5, now - 7200),
        ("F", "s", "k2"): ObjectInfo("v1/used/F/s/k2", 5, now - 7200),
        ("F", "s", "k3"): ObjectInfo("v1/used/F/s/k3", 5, now - 5),  # a hit just wrote it
    }
    got = mt.select_orphan_markers(markers, {live}, now, 3600)
    assert [m.key for m in got] == ["v1/used/F/s/k2"]


def test_flow_roots_are_the_default_then_each_distinct_step_store():
    class Deco:
        def __init__(self, name, store):
            self.name, self.attributes = name, {"store": store}

    class Step:
        def __init__(self, *decorators):
            self.decorators = list(decorators)

    flow = [
        Step(Deco("memoize", None)),
        Step(Deco("memoize", "s3://b/side"), Deco("retry", "x")),
        Step(Deco("memoize", "s3://b/side")),
        Step(Deco("memoize", "/tmp/other")),
        Step(),
    ]
    assert mt.flow_roots(flow, "/d") == ["/d", "s3://b/side", "/tmp/other"]


# -- execution on a store ------------------------------------------------------
def test_prune_spares_blobs_that_other_entries_or_flows_reference(cache):
    shared = b"shared" * 100
    e1 = put_entry(cache, "F", "s", "e1", {"x": b"u1" * 50, "s": shared})
    e2 = put_entry(cache, "F", "s", "e2", {"x": b"u2" * 50, "s": shared})
    g = put_entry(cache, "G", "s", "g", {"s": shared, "y": b"g" * 50})
    target = mt.Target(cache, "F")
    now = time.time() + 10
    plan = mt.plan_prune(target, EVERYTHING, now, grace=0)
    assert {e.key for e, _ in plan.entries} == {e1.key, e2.key}
    assert {b.key for b in plan.blobs} == {
        Cache.blob_key(sha_of(b"u1" * 50)),
        Cache.blob_key(sha_of(b"u2" * 50)),
    }
    out = mt.execute(target, plan)
    assert (out.entries, out.markers, out.blobs) == (2, 2, 2)
    store = cache.store
    assert names(store, Cache.entry_prefix()) == {Cache.manifest_key("G", "s", g.key)}
    assert names(store, Cache.used_prefix()) == {Cache.used_key("G", "s", g.key)}
    assert names(store, Cache.blob_prefix()) == {
        Cache.blob_key(sha_of(shared)),
        Cache.blob_key(sha_of(b"g" * 50)),
    }
    assert out.bytes_freed == plan.bytes_freed > 200
    assert_consistent(store)


def test_young_unreferenced_blobs_are_kept(cache):
    put_entry(cache, "F", "s", "e1", {"x": b"young" * 10})
    target = mt.Target(cache, "F")
    plan = mt.plan_prune(target, EVERYTHING, time.time(), grace=3600)
    assert len(plan.entries) == 1 and plan.blobs == []
    assert len(plan.young_blobs) == 1
    mt.execute(target, plan)
    assert len(names(cache.store, Cache.blob_prefix())) == 1
    # once older than the grace period, a later prune collects it
    plan = mt.plan_prune(target, EVERYTHING, time.time() + 7200, grace=3600)
    assert plan.entries == [] and len(plan.blobs) == 1
    mt.execute(target, plan)
    assert names(cache.store, Cache.blob_prefix()) == set()


def test_a_step_scope_only_selects_that_step(cache):
    put_entry(cache, "F", "a", "1", {"x": b"1"})
    put_entry(cache, "F", "b", "2", {"x": b"2"})
    put_entry(cache, "G", "a", "3", {"x": b"3"})
    plan = mt.plan_prune(mt.Target(cache, "F"), EVERYTHING, T0 * 2, 0, step="a")
    assert [(e.flow, e.step) for e, _ in plan.entries] == [("F", "a")]
    # without a flow (the standalone command), a step name filters every flow
    plan = mt.plan_prune(mt.Target(cache, None), EVERYTHING, T0 * 2, 0, step="a")
    assert sorted((e.flow, e.step) for e, _ in plan.entries) == [("F", "a"), ("G", "a")]


class FailingStore(Store):
    """Delegates to a store, but dies after deleting ``budget`` objects."""

    def __init__(self, inner: Store, budget: int):
        self.inner, self.budget, self.url = inner, budget, inner.url
        self.deleted = []

    def delete(self, keys):
        for key in list(keys):
            if len(self.deleted) >= self.budget:
                raise RuntimeError("injected crash after %d deletes" % self.budget)
            self.inner.delete([key])
            self.deleted.append(key)
        return len(self.deleted)

    def get(self, key):
        return self.inner.get(key)

    def put(self, key, data):
        self.inner.put(key, data)

    def put_if_absent(self, key, data):
        return self.inner.put_if_absent(key, data)

    def head(self, key):
        return self.inner.head(key)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def put_file(self, key, path):
        self.inner.put_file(key, path)

    def get_file(self, key, path):
        return self.inner.get_file(key, path)


def _populate_for_crash(cache):
    shared = b"shared" * 10
    for i in range(6):
        # pairs of entries share a blob; every entry also shares `shared`
        put_entry(
            cache, "F", "s", "e%d" % i, {"p": b"pair%d" % (i // 2), "s": shared, "u": b"u%d" % i}
        )
    put_entry(cache, "F", "t", "keep", {"s": shared, "k": b"kept"})


def execute_with_crash(target, plan, budget, total):
    """Execute a plan on a FailingStore: it must crash exactly when ``budget`` is
    smaller than the ``total`` objects the plan deletes."""
    try:
        mt.execute(target, plan)
        assert budget >= total
    except StoreUnavailable as err:  # every store exception is a cache fault
        assert isinstance(err.__cause__, RuntimeError)
        assert budget < total


@pytest.mark.parametrize("budget", [0, 1, 3, 5, 6, 8, 11, 12, 14, 100])
def test_an_interrupted_prune_leaves_only_valid_entries(tmp_path, budget):
    real = LocalStore(str(tmp_path / "cache"))
    _populate_for_crash(Cache(real))
    failing = mt.Target(Cache(FailingStore(real, budget)), "F")
    plan = mt.plan_prune(failing, EVERYTHING, time.time() + 10, grace=0, step="s")
    # 6 manifests, 6 markers, then 6 unique + 3 pair blobs
    assert (len(plan.entries), len(plan.markers), len(plan.blobs)) == (6, 6, 9)
    execute_with_crash(failing, plan, budget, total=21)
    assert_consistent(real)
    # no blob went while a manifest naming it was left
    deleted = failing.cache.store.deleted
    first_blob = next((i for i, k in enumerate(deleted) if k.startswith("v1/blobs/")), None)
    if first_blob is not None:
        assert all(not k.startswith("v1/entries/") for k in deleted[first_blob:])
        assert len([k for k in deleted if k.startswith("v1/entries/")]) == 6
    # prune again: it finishes the job
    target = mt.Target(Cache(real), "F")
    mt.execute(target, mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0, step="s"))
    assert_consistent(real)
    assert names(real, Cache.entry_prefix()) == {Cache.manifest_key("F", "t", key_of("keep"))}
    assert len(names(real, Cache.blob_prefix())) == 2


def test_each_kind_is_deleted_in_one_call(tmp_path):
    real = LocalStore(str(tmp_path / "cache"))
    for i in range(40):
        put_entry(Cache(real), "F", "s", "e%d" % i, {"x": b"%d" % i})
    calls = []

    class Counting(FailingStore):
        def delete(self, keys):
            calls.append(list(keys))
            return super().delete(calls[-1])

    target = mt.Target(Cache(Counting(real, 10**9)), "F")
    mt.execute(target, mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0))
    assert [len(c) for c in calls] == [40, 40, 40]
    assert [c[0].split("/")[1] for c in calls] == ["entries", "used", "blobs"]


class PublishingStore(FailingStore):
    """After the first delete (the manifests), another run publishes an entry."""

    def __init__(self, inner, on_first_delete):
        super().__init__(inner, 10**9)
        self.on_first_delete = on_first_delete

    def delete(self, keys):
        n = super().delete(keys)
        if self.on_first_delete:
            self.on_first_delete(), setattr(self, "on_first_delete", None)
        return n


def test_blobs_of_an_entry_published_during_the_prune_are_spared(tmp_path):
    real = LocalStore(str(tmp_path / "cache"))
    cache = Cache(real)
    put_entry(cache, "F", "s", "old", {"x": b"reused", "y": b"gone"})
    # a run stores a new entry that reuses the existing blob `reused`
    store = PublishingStore(real, lambda: put_entry(cache, "H", "s", "new", {"x": b"reused"}))
    target = mt.Target(Cache(store), "F")
    plan = mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0)
    assert len(plan.blobs) == 2
    out = mt.execute(target, plan)
    assert (out.blobs, out.blobs_spared) == (1, 1)
    assert names(real, Cache.blob_prefix()) == {Cache.blob_key(sha_of(b"reused"))}
    assert_consistent(real)


def test_unparsable_manifests_keep_their_blobs_and_invalidate_removes_them(cache):
    put_entry(cache, "F", "s", "ok", {"x": b"a"})
    future = manifest("F", "s", key_of("future"), {"x": b"future-blob"})
    doc = future.to_dict()
    doc["format"] = 99  # written by a newer version: this one cannot parse it
    cache.store.put(Cache.blob_key(sha_of(b"future-blob")), b"future-blob")
    import json

    cache.store.put(Cache.manifest_key("F", "s", future.key), json.dumps(doc).encode())
    target = mt.Target(cache, "F")
    inv = mt.scan(target)
    assert sorted(e.error is None for e in inv.entries) == [False, True]
    plan = mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0)
    assert [e.key for e, _ in plan.entries] == [key_of("ok")]
    assert [b.key for b in plan.blobs] == [Cache.blob_key(sha_of(b"a"))]  # not future-blob
    mt.execute(target, plan)
    plan = mt.plan_invalidate(target)
    assert [e.key for e, _ in plan.entries] == [future.key]
    mt.execute(target, plan)
    assert names(cache.store, Cache.entry_prefix()) == set()


def test_invalidate_by_key_prefix(cache):
    put_entry(cache, "F", "s", "one", {"x": b"1"})
    put_entry(cache, "F", "t", "two", {"x": b"2"})
    target = mt.Target(cache, "F")
    k = key_of("one")
    plan = mt.plan_invalidate(target, key=k[:6])
    mt.check_one_key([plan], k[:6], "here")
    mt.execute(target, plan)
    assert names(cache.store, Cache.entry_prefix()) == {Cache.manifest_key("F", "t", key_of("two"))}
    assert names(cache.store, Cache.used_prefix()) == {Cache.used_key("F", "t", key_of("two"))}
    with pytest.raises(MemoizeCliError, match="no cache entry"):
        mt.check_one_key([mt.plan_invalidate(target, key=k[:6])], k[:6], "here")
    # two keys starting with the same character: one character is ambiguous
    twin = next(n for n in ("n%d" % i for i in range(500)) if key_of(n)[0] == k[0])
    put_entry(cache, "F", "s", "one", {"x": b"1"})
    put_entry(cache, "F", "s", twin, {"x": b"3"})
    with pytest.raises(MemoizeCliError, match="ambiguous: 2 keys"):
        mt.check_one_key([mt.plan_invalidate(target, key=k[0])], k[0], "here")


def test_execute_refuses_names_outside_the_cache_areas(cache):
    m = put_entry(cache, "F", "s", "e", {"x": b"1"})
    cache.store.put("v1/locks/F/s/" + m.key, b"lease")
    target = mt.Target(cache, "F")
    plan = mt.plan_invalidate(target)
    plan.markers.append(ObjectInfo("v1/locks/F/s/" + m.key, 5, 0))
    with pytest.raises(MemoizeCliError, match="not a name memoize writes"):
        mt.execute(target, plan)
    plan = mt.plan_invalidate(target)
    plan.blobs.append(ObjectInfo("v1/blobs/../../etc", 5, 0))
    with pytest.raises(Exception, match="unsafe|not under"):
        mt.execute(target, plan)
    # nothing at all was deleted
    assert cache.store.exists(Cache.manifest_key("F", "s", m.key))
    assert cache.store.exists("v1/locks/F/s/" + m.key)


def test_prune_removes_abandoned_leases_but_not_live_ones(cache):
    now = time.time()
    leases = {
        "dead": b'{"owner": "h:1:a", "expires": %f}' % (now - 60),
        "live": b'{"owner": "h:2:b", "expires": %f}' % (now + 600),
        "garbled": b"not json",
    }
    for name, doc in leases.items():
        cache.store.put(Cache.lock_key("F", "s", key_of(name)), doc)
    target = mt.Target(cache, "F")
    assert mt.plan_prune(target, KEEP_ALL, now + 10, grace=3600).locks == []  # all recent
    plan = mt.plan_prune(target, KEEP_ALL, now + 10, grace=0)
    assert sorted(lock.key for lock in plan.locks) == sorted(
        Cache.lock_key("F", "s", key_of(n)) for n in ("dead", "garbled")
    )
    assert mt.execute(target, plan).locks == 2
    assert names(cache.store, "v1/locks") == {Cache.lock_key("F", "s", key_of("live"))}


def test_audit_records_and_suspect_markers_are_pruned_once_they_say_nothing(cache):
    """audit.py leaves records under v1/audits/ and sets entries aside under
    v1/suspect/. Prune removes a suspect marker once a new entry is stored at
    its key, and the audit records of keys with neither an entry nor a suspect
    marker; it keeps what `stats` still counts and what still explains a miss.
    Invalidate removes those of everything in its scope."""
    cache.store.put(MARKER, b"{}")
    replaced = put_entry(cache, "F", "s", "replaced", {"a": b"A"})  # suspect, then re-stored
    suspect_only = key_of("suspect-only")  # set aside, nothing stored since
    audited = put_entry(cache, "F", "s", "audited", {"b": b"B"})  # audited, still there
    gone = key_of("gone")  # audited, then pruned away
    for key in (replaced.key, suspect_only):
        cache.store.put(Cache.suspect_key("F", "s", key), b"{}")
    for key, matched in (
        (replaced.key, False),
        (suspect_only, False),
        (audited.key, True),
        (gone, True),
    ):
        cache.record_audit("F", "s", key, matched, {})
    target = mt.Target(cache)
    now = time.time() + 10
    assert mt.plan_prune(target, KEEP_ALL, now, grace=3600).records == []  # all recent
    plan = mt.plan_prune(target, KEEP_ALL, now, grace=0)
    assert sorted(r.key for r in plan.records) == sorted(
        [Cache.suspect_key("F", "s", replaced.key)]
        + [k for k in names(cache.store, "v1/audits") if gone in k]
    )
    assert mt.execute(target, plan).records == 2
    kept = names(cache.store, "v1/audits") | names(cache.store, "v1/suspect")
    assert len(kept) == 4 and not any(gone in k for k in kept)
    assert cache.audit_counts() == {("F", "s"): (3, 2)}
    invalidated = mt.plan_invalidate(target)
    assert mt.execute(target, invalidated).records == 4
    assert names(cache.store, "v1/audits") | names(cache.store, "v1/suspect") == set()
