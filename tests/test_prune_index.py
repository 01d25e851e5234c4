"""The listable entry index that lets pruning on S3 list instead of reading manifests.

An index object is believed only while its recorded MD5 equals the MD5 that the
listing reports for the entry's manifest; these tests check both halves: that a
prune of published entries reads no manifest, and that an index that went stale
(manifest rewritten, entry removed, name too long to write) never costs a blob
that a remaining entry needs.
"""

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest
from test_maintenance import (
    EVERYTHING,
    KEEP_ALL,
    FailingStore,
    assert_consistent,
    execute_with_crash,
    key_of,
    manifest,
    names,
    sha_of,
)

from metaflow_extensions.memoize.plugins.memoize.cache import maintenance as mt
from metaflow_extensions.memoize.plugins.memoize.cache.entries import (
    MAX_INDEX_NAME,
    Cache,
    blob_ref,
)
from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.cache.stores.s3 import S3Store

T0 = time.time() - 7200


class CountingS3Store(S3Store):
    """An S3 store that counts object reads (GETs) and notes the prefixes it lists."""

    gets = 0

    def __init__(self, url):
        super().__init__(url)
        self.listed = []

    def get(self, key):
        self.gets += 1
        return super().get(key)

    def list(self, prefix=""):
        self.listed.append(prefix)
        return super().list(prefix)

    def list_split(self, prefix, first_chars):
        self.listed.append(prefix)
        return super().list_split(prefix, first_chars)


def publish(cache, flow, step, name, blobs, created=T0, expires=None):
    """Store an entry the way the decorator does: blobs, then Cache.publish."""
    m = manifest(flow, step, key_of(name), blobs, created, expires)
    for data in blobs.values():
        cache.store.put(Cache.blob_key(sha_of(data)), data)
    assert cache.publish(m)
    return m


def index_names(store, flow=None, step=None):
    return names(store, Cache.index_prefix(flow, step))


@pytest.fixture
def s3_cache(s3_env):
    return Cache(CountingS3Store(s3_env.url("cache")))


# -- the names -----------------------------------------------------------------
def test_an_index_name_round_trips_what_pruning_needs():
    m = manifest("F", "s", key_of("k"), {"a": b"1", "b": b"2", "c": b"1"}, T0 + 0.25, T0 + 60)
    name = Cache.index_key(m, "0123456789abcdef0123456789abcdef")
    record = Cache.parse_index_key(name)
    assert (record.flow, record.step, record.key) == ("F", "s", m.key)
    assert record.md5 == "0123456789abcdef0123456789abcdef"
    assert record.created == pytest.approx(m.created, abs=1e-3)
    assert record.expires == pytest.approx(m.expires, abs=1e-3)
    assert record.refs == {blob_ref(sha_of(b"1")), blob_ref(sha_of(b"2"))}
    # each blob once, with the stored size the manifest records
    assert dict(record.sizes) == {blob_ref(sha_of(b"1")): 1, blob_ref(sha_of(b"2")): 1}
    never = manifest("F", "s", key_of("k"), {}, T0)
    assert Cache.parse_index_key(Cache.index_key(never, "0" * 32)).expires is None
    assert Cache.parse_index_key(Cache.index_key(never, "0" * 32)).refs == frozenset()
    assert Cache.parse_index_key(Cache.index_key(never, "0" * 32)).sizes == ()


def without_sizes(index_name):
    """The name as versions before sizes wrote it: each reference alone."""
    return re.sub(r"=[0-9]+", "", index_name)


def test_a_name_without_sizes_still_names_its_blobs():
    m = manifest("F", "s", key_of("k"), {"a": b"12", "b": b"345"}, T0)
    old = Cache.parse_index_key(without_sizes(Cache.index_key(m, "0" * 32)))
    assert old.refs == {blob_ref(sha_of(b"12")), blob_ref(sha_of(b"345"))}
    assert old.sizes is None  # unknown: a reader lists the blobs for them
    m.artifacts["a"].stored_size = None  # a size the manifest does not record
    assert Cache.parse_index_key(Cache.index_key(m, "0" * 32)).sizes is None


@pytest.mark.parametrize(
    "name",
    [
        "v1/index/F/s/k/nothex_1_2_-",
        "v1/index/F/s/k/%s_1_2" % ("0" * 32),
        "v1/index/F/s/k/%s_x_2_-" % ("0" * 32),
        "v1/entries/F/s/k/%s_1_2_-" % ("0" * 32),
        "v1/index/F/s/%s_1_2_-" % ("0" * 32),
    ],
)
def test_names_that_are_not_index_records_are_ignored(name):
    assert Cache.parse_index_key(name) is None


def test_an_entry_with_too_many_blobs_for_a_name_gets_no_index():
    wide = {"a%d" % i: b"blob %d" % i for i in range(60)}
    assert Cache.index_key(manifest("F", "s", key_of("w"), wide), "0" * 32) is None
    narrow = {"a%d" % i: b"blob %d" % i for i in range(20)}
    assert len(Cache.index_key(manifest("F", "s", key_of("n"), narrow), "0" * 32)) <= MAX_INDEX_NAME


# -- where an index is written -------------------------------------------------
def test_publishing_on_s3_writes_one_index_object_and_a_local_store_none(s3_cache, tmp_path):
    m = publish(s3_cache, "F", "s", "e", {"x": b"payload"})
    (listed,) = s3_cache.store.list(Cache.entry_prefix("F", "s"))
    (index,) = index_names(s3_cache.store)
    record = Cache.parse_index_key(index)
    assert record.md5 == listed.md5  # the listing's ETag is the manifest's MD5
    assert record.refs == {blob_ref(sha_of(b"payload"))}
    assert record.created == pytest.approx(m.created, abs=1e-3)

    local = Cache(LocalStore(str(tmp_path / "local")))
    publish(local, "F", "s", "e", {"x": b"payload"})
    assert index_names(local.store) == set()
    assert names(local.store, Cache.entry_prefix()) != set()


# -- stats and list with the index ---------------------------------------------
def blob_listings(store):
    return [p for p in store.listed if p.startswith(Cache.blob_prefix())]


def test_sizes_come_from_the_index_names_without_listing_blobs(s3_cache):
    shared = b"shared by all"
    for i in range(5):
        publish(s3_cache, "F", "s", "e%d" % i, {"own": b"own %d" % i, "s": shared})
    target = mt.Target(s3_cache, "F")
    read = mt.scan(target)  # every manifest read: the sizes they record
    s3_cache.store.listed, s3_cache.store.gets = [], 0
    indexed = mt.scan(target, indexed=True)
    assert s3_cache.store.gets == 0 and blob_listings(s3_cache.store) == []
    sizes = {e.key: (e.size, e.blob_sizes()) for e in indexed.entries}
    assert sizes == {e.key: (e.size, e.blob_sizes()) for e in read.entries}
    assert {size for size, _ in sizes.values()} == {len(b"own 0") + len(shared)}
    now = time.time()
    assert mt.summarize(indexed, now)[0] == mt.summarize(read, now)[0]


def test_index_names_written_before_sizes_make_the_scan_list_blobs(s3_cache):
    for i in range(3):
        publish(s3_cache, "F", "s", "e%d" % i, {"own": b"own %d" % i})
    for name in index_names(s3_cache.store):
        s3_cache.store.delete([name])
        s3_cache.store.put(without_sizes(name), b"")
    s3_cache.store.listed = []
    indexed = mt.scan(mt.Target(s3_cache, "F"), indexed=True)
    assert s3_cache.store.gets == 0 and blob_listings(s3_cache.store) != []
    assert {e.size for e in indexed.entries} == {len(b"own 0")}


# -- pruning with the index ----------------------------------------------------
def test_a_prune_of_published_entries_reads_no_manifest(s3_cache):
    shared = b"shared by all"
    for i in range(12):
        expires = T0 - 1 if i % 3 == 0 else None  # 4 expired (a ttl that has run out)
        publish(s3_cache, "F", "s", "e%d" % i, {"own": b"own %d" % i, "s": shared}, T0, expires)
    publish(s3_cache, "G", "s", "other", {"s": shared})
    s3_cache.store.gets = 0
    target = mt.Target(s3_cache, "F")
    plan = mt.plan_prune(target, mt.PruneCriteria(expired=True), time.time() + 10, grace=0)
    # no manifest read to scan; only the 4 removed entries' manifests, to confirm them
    assert s3_cache.store.gets == 4
    assert sorted(e.key for e, _ in plan.entries) == sorted(key_of("e%d" % i) for i in (0, 3, 6, 9))
    assert {reason for _, reason in plan.entries} == {"expired"}
    assert {e.size for e, _ in plan.entries} == {len(b"own 0") + len(shared)}
    out = mt.execute(target, plan)
    assert (out.entries, out.markers, out.blobs) == (4, 4, 4)  # `shared` stays
    assert len(index_names(s3_cache.store, "F")) == 8  # the removed entries' index went too
    assert_consistent(s3_cache.store)


def test_lru_under_max_size_works_from_the_index(s3_cache):
    for i, name in enumerate(["old", "mid", "new"]):
        publish(s3_cache, "F", "s", name, {"x": b"%d" % i * 1000}, T0 + i)
    time.sleep(1.1)  # S3 times have a resolution of one second
    s3_cache.record_use("F", "s", key_of("old"))  # used last: kept; mid is older than new
    s3_cache.store.gets = 0
    target = mt.Target(s3_cache, "F")
    manifests = sum(i.size for i in s3_cache.store.list(Cache.entry_prefix()))
    plan = mt.plan_prune(target, mt.PruneCriteria(max_size=manifests + 2000), time.time() + 10, 0)
    assert s3_cache.store.gets == 1  # the removed entry's manifest, to confirm it
    assert [e.key for e, _ in plan.entries] == [key_of("mid")]


def test_a_rewritten_manifest_is_read_and_its_blobs_are_kept(s3_cache):
    """The manifest changes behind its index (another writer, an older version):
    the index's MD5 no longer matches, so the manifest is read and its blobs live."""
    publish(s3_cache, "F", "s", "e", {"x": b"first"})
    (stale,) = index_names(s3_cache.store)
    rewritten = manifest("F", "s", key_of("e"), {"x": b"second"})
    s3_cache.store.put(Cache.blob_key(sha_of(b"second")), b"second")
    s3_cache.store.put(Cache.manifest_key("F", "s", key_of("e")), rewritten.dumps())
    s3_cache.store.gets = 0
    target = mt.Target(s3_cache, "F")
    plan = mt.plan_prune(target, KEEP_ALL, time.time() + 10, grace=0)
    assert s3_cache.store.gets == 1
    assert [b.key for b in plan.blobs] == [Cache.blob_key(sha_of(b"first"))]
    assert [o.key for o in plan.index] == [stale]
    mt.execute(target, plan)
    assert names(s3_cache.store, Cache.blob_prefix()) == {Cache.blob_key(sha_of(b"second"))}
    assert index_names(s3_cache.store) == set()
    assert_consistent(s3_cache.store)


def test_index_objects_without_an_entry_go_after_the_grace_period(s3_cache):
    publish(s3_cache, "F", "s", "gone", {"x": b"gone"})
    publish(s3_cache, "F", "s", "kept", {"x": b"kept"})
    s3_cache.store.delete([Cache.manifest_key("F", "s", key_of("gone"))])  # a crashed removal
    target = mt.Target(s3_cache, "F")
    young = mt.plan_prune(target, KEEP_ALL, time.time(), grace=3600)
    assert young.index == [] and young.blobs == []
    plan = mt.plan_prune(target, KEEP_ALL, time.time() + 10, grace=0)
    assert [Cache.parse_index_key(o.key).key for o in plan.index] == [key_of("gone")]
    assert [b.key for b in plan.blobs] == [Cache.blob_key(sha_of(b"gone"))]
    mt.execute(target, plan)
    assert [Cache.parse_index_key(k).key for k in index_names(s3_cache.store)] == [key_of("kept")]
    assert_consistent(s3_cache.store)


def test_an_entry_without_an_index_is_read(s3_cache):
    wide = {"a%d" % i: b"wide %d" % i for i in range(60)}
    publish(s3_cache, "F", "s", "wide", wide)
    publish(s3_cache, "F", "s", "narrow", {"x": b"narrow"})
    assert len(index_names(s3_cache.store)) == 1
    s3_cache.store.gets = 0
    target = mt.Target(s3_cache, "F")
    plan = mt.plan_prune(target, KEEP_ALL, time.time() + 10, grace=0)
    assert s3_cache.store.gets == 1
    assert plan.blobs == [] and plan.entries == []
    plan = mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0)
    assert len(plan.blobs) == 61
    mt.execute(target, plan)
    assert names(s3_cache.store, "v1/entries") | names(s3_cache.store, "v1/blobs") == set()


def test_invalidating_a_key_removes_its_index(s3_cache):
    publish(s3_cache, "F", "s", "a", {"x": b"a"})
    publish(s3_cache, "F", "s", "b", {"x": b"b"})
    target = mt.Target(s3_cache, "F")
    mt.execute(target, mt.plan_invalidate(target, key=key_of("a")[:10]))
    assert [Cache.parse_index_key(k).key for k in index_names(s3_cache.store)] == [key_of("b")]
    mt.execute(target, mt.plan_invalidate(target, step="s"))
    assert index_names(s3_cache.store) == set()


class FailingS3(FailingStore):
    lists_md5 = True


@pytest.mark.parametrize("budget", [0, 2, 4, 6, 8, 10, 100])
def test_an_interrupted_indexed_prune_leaves_only_valid_entries(s3_env, budget):
    real = S3Store(s3_env.url("crash"))
    cache = Cache(real)
    shared = b"shared"
    for i in range(3):
        publish(cache, "F", "s", "e%d" % i, {"s": shared, "u": b"u%d" % i})
    publish(cache, "F", "t", "keep", {"s": shared})
    failing = mt.Target(Cache(FailingS3(real, budget)), "F")
    plan = mt.plan_prune(failing, EVERYTHING, time.time() + 10, grace=0, step="s")
    assert (len(plan.entries), len(plan.markers), len(plan.index), len(plan.blobs)) == (3, 3, 3, 3)
    execute_with_crash(failing, plan, budget, total=12)
    assert_consistent(real)
    target = mt.Target(Cache(real), "F")
    mt.execute(target, mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0, step="s"))
    assert_consistent(real)
    assert names(real, Cache.entry_prefix()) == {Cache.manifest_key("F", "t", key_of("keep"))}
    assert len(index_names(real)) == 1 and len(names(real, Cache.blob_prefix())) == 1


# -- scale ---------------------------------------------------------------------
@pytest.mark.slow
def test_pruning_many_published_entries_on_s3_lists_instead_of_reading(s3_cache):
    """MEMOIZE_PRUNE_N=10000 to measure; the timed figure is benchmarks' target 6."""
    n = int(os.environ.get("MEMOIZE_PRUNE_N", "300"))
    shared = b"shared-blob" * 10
    s3_cache.signing_key = "prune-test-key"

    def one(flow, i):
        own = b"own %s %d" % (flow.encode(), i)
        publish(s3_cache, flow, "s", "%s-%d" % (flow, i), {"own": own, "s": shared})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: one("Big", i), range(n)))
    for i in range(3):
        one("Other", i)  # references `shared` too
    s3_cache.store.gets = 0
    # with a signing key the (signed) index is believed as it is; without one, prune
    # reads each removed entry's manifest to confirm its index object (see confirm)
    target = mt.Target(s3_cache, "Big")
    started = time.perf_counter()
    plan = mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0)
    out = mt.execute(target, plan)
    print("\npruned %d entries on S3 (moto) in %.1fs" % (n, time.perf_counter() - started))
    assert s3_cache.store.gets == 0
    assert (out.entries, out.markers, out.blobs) == (n, n, n)  # `shared` stays: Other uses it
    # Other's 3 entries (manifest, marker, index, own blob), `shared` and the root marker
    assert len(names(s3_cache.store, "v1/")) == 3 * 4 + 1 + 1
    assert "v1/memoize-root.json" in names(s3_cache.store, "v1/")
    assert_consistent(s3_cache.store)


# -- forged index objects --------------------------------------------------------
@pytest.mark.parametrize("prune_key", [None, "team-key"], ids=["prune-without-key", "with-key"])
def test_a_forged_index_object_cannot_get_a_signed_entry_pruned(s3_env, prune_key):
    """An index object naming the manifest's real MD5 but `expires` in 1970 and no blobs:
    prune --expired keeps the (valid, signed) entry and its blobs."""
    import dataclasses

    from test_maintenance import manifest as make_manifest

    writer = Cache(S3Store(s3_env.url("c")), signing_key="team-key")
    m = publish(writer, "F", "s", "victim", {"x": b"precious"})
    (listed,) = list(writer.store.list(Cache.entry_prefix("F")))
    forged = dataclasses.replace(make_manifest("F", "s", m.key, {}), created=1000.0, expires=1001.0)
    writer.store.put(Cache.index_key(forged, listed.md5), b"")  # unsigned, plausible
    target = mt.Target(Cache(S3Store(s3_env.url("c")), signing_key=prune_key), "F")
    plan = mt.plan_prune(target, mt.PruneCriteria(expired=True), time.time() + 10, grace=0)
    mt.execute(target, plan)
    assert [e.key for e, _ in plan.entries] == []
    assert writer.lookup("F", "s", m.key).status == "found"
    assert writer.store.exists(Cache.blob_key(sha_of(b"precious")))
