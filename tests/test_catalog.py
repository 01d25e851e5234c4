"""Per-step catalogs (cache/catalog.py): `stats` and `list` on S3 list the manifests
alone once a catalog holds the step's index names, and a catalog that is stale,
corrupt or forged costs reads, never a wrong figure.

Every figure is compared with the scan that reads every manifest.
"""

import time

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest
from test_maintenance import key_of, manifest
from test_prune_index import CountingS3Store, publish

from metaflow_extensions.memoize.plugins.memoize.cache import catalog
from metaflow_extensions.memoize.plugins.memoize.cache import maintenance as mt
from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache

FLOW, STEP = "F", "s"


def index_listings(store):
    return [p for p in store.listed if p.startswith(Cache.index_prefix())]


def figures(inventory):
    now = time.time()
    total, steps = mt.summarize(inventory, now)
    # an index name holds times to the millisecond
    entries = sorted(
        (e.key, round(e.created, 3), e.expires and round(e.expires, 3), e.size, e.readable)
        for e in inventory.entries
    )
    return total, steps, entries


def read_every_manifest(cache, flow=FLOW):
    inventory = mt.scan(mt.Target(Cache(cache.store, signing_key=cache.signing_key), flow))
    assert all(e.manifest is not None or not e.readable for e in inventory.entries)
    return figures(inventory)


def stats_scan(cache, flow=FLOW, step=None):
    cache.store.listed, cache.store.gets = [], 0
    return mt.scan(mt.Target(cache, flow), step, indexed=True, last_used=False, records=False)


def populate(cache, n, step=STEP):
    return [
        publish(cache, FLOW, step, "%s%d" % (step, i), {"own": b"own %s %d" % (step.encode(), i)})
        for i in range(n)
    ]


@pytest.fixture
def s3_cache(s3_env):
    return Cache(CountingS3Store(s3_env.url("cache")))


# -- pure -------------------------------------------------------------------------
def test_a_catalog_round_trips_its_names_and_refuses_another_steps():
    names = {key_of("a"): "x" * 32 + "_1_never_-", key_of("b"): "y" * 32 + "_2_3_-"}
    data = catalog.encode(FLOW, STEP, names)
    assert catalog.decode(data, FLOW, STEP) == names
    assert data == catalog.encode(FLOW, STEP, dict(reversed(names.items())))  # deterministic
    assert catalog.decode(data, FLOW, "other") == {}
    assert catalog.decode(data, "Other", STEP) == {}
    for garbage in (None, b"", b"not gzip", catalog.encode(FLOW, STEP, {})[:-4]):
        assert catalog.decode(garbage, FLOW, STEP) == {}


@pytest.mark.parametrize("signing_key", [None, "the key"])
def test_a_catalog_name_is_the_index_name_below_the_key(signing_key):
    m = manifest(FLOW, STEP, key_of("e"), {"a": b"one", "b": b"two"}, 1000.0, 60.0)
    full = Cache.index_key(m, "0" * 32, signing_key)
    record = Cache.parse_index_key(full)
    name = catalog.name_of(record)
    assert Cache.index_prefix(FLOW, STEP, m.key) + name == full
    assert catalog.record_of(FLOW, STEP, m.key, name) == record
    if signing_key:
        assert catalog.record_of(FLOW, STEP, m.key, name).signature_valid(signing_key)


def test_catalogs_are_memoize_s_own_names():
    assert Cache.is_own(Cache.catalog_key(FLOW, STEP))
    assert Cache.parse_catalog_key(Cache.catalog_key(FLOW, STEP)) == (FLOW, STEP)
    assert Cache.parse_catalog_key("v1/catalog/F/s.json") is None
    assert not Cache.is_own("v1/catalog/F/s.json.gz.bak")


def test_few_uncovered_manifests_are_read_and_many_list_the_index():
    assert catalog.read_instead_of_listing(312, 10000)
    assert not catalog.read_instead_of_listing(313, 10000)
    assert not catalog.read_instead_of_listing(12, 12)  # no catalog yet: list the index


# -- on S3 (moto) -------------------------------------------------------------------
def test_after_one_scan_stats_lists_the_manifests_alone(s3_cache):
    """Before catalogs `stats` listed the index on every run: as many names again."""
    populate(s3_cache, 40)
    populate(s3_cache, 5, step="t")
    expected = read_every_manifest(s3_cache)

    first = stats_scan(s3_cache)
    assert index_listings(s3_cache.store) != []  # no catalog yet
    assert figures(first) == expected
    assert s3_cache.store.head(Cache.catalog_key(FLOW, STEP)) is not None
    assert s3_cache.store.head(Cache.catalog_key(FLOW, "t")) is not None

    second = stats_scan(s3_cache)
    assert index_listings(s3_cache.store) == []
    assert s3_cache.store.gets == 2  # the two catalogs; no manifest
    assert figures(second) == expected
    assert all(e.manifest is None and e.index is not None for e in second.entries)

    one_step = stats_scan(s3_cache, step="t")
    assert index_listings(s3_cache.store) == [] and s3_cache.store.gets == 1
    assert sorted(e.key for e in one_step.entries) == sorted(key_of("t%d" % i) for i in range(5))


def test_entries_published_rewritten_or_removed_since_the_catalog_are_seen(s3_cache):
    published = populate(s3_cache, 64)
    stats_scan(s3_cache)  # writes the catalog

    # one published since, one rewritten in place (now expired: another MD5)
    publish(s3_cache, FLOW, STEP, "new", {"own": b"new"})
    rewritten = published[3]
    rewritten.expires = rewritten.created
    s3_cache.store.put(Cache.manifest_key(FLOW, STEP, rewritten.key), rewritten.dumps())
    expected = read_every_manifest(s3_cache)
    assert expected[0].expired == 1 and expected[0].entries == 65
    few = stats_scan(s3_cache)
    assert index_listings(s3_cache.store) == []  # 2 of 65 uncovered: read
    assert s3_cache.store.gets == 1 + 2
    assert figures(few) == expected

    # removed since: the catalog still names it, the listing does not
    s3_cache.remove_entry(FLOW, STEP, published[5].key)
    expected = read_every_manifest(s3_cache)
    assert figures(stats_scan(s3_cache)) == expected and expected[0].entries == 64

    # many published since: the index is listed rather than read one by one
    for i in range(10):
        publish(s3_cache, FLOW, STEP, "more%d" % i, {"own": b"more %d" % i})
    expected = read_every_manifest(s3_cache)
    many = stats_scan(s3_cache)
    assert index_listings(s3_cache.store) != [] and s3_cache.store.gets == 1
    assert figures(many) == expected
    stats_scan(s3_cache)
    assert index_listings(s3_cache.store) == [] and s3_cache.store.gets == 1


def forge(cache, m, **change):
    """A catalog naming ``m`` with its manifest's MD5 but other times (no valid signature)."""
    md5 = cache.store.head(Cache.manifest_key(FLOW, STEP, m.key)).md5
    forged = manifest(FLOW, STEP, m.key, {"o": b"other"}, change["created"], change["expires"])
    name = Cache.index_key(forged, md5, "not the reader's key")
    cache.store.put(
        Cache.catalog_key(FLOW, STEP),
        catalog.encode(FLOW, STEP, {m.key: name[len(Cache.index_prefix(FLOW, STEP, m.key)) :]}),
    )


def test_a_forged_or_corrupt_catalog_costs_reads_and_changes_no_figure(s3_env):
    cache = Cache(CountingS3Store(s3_env.url("cache")), signing_key="the key")
    published = populate(cache, 6)
    for m in published:  # signed manifests, as runs with the key write them
        m.sign("the key")
        cache.store.put(Cache.manifest_key(FLOW, STEP, m.key), m.dumps())
        for old in cache.store.list(Cache.index_prefix(FLOW, STEP, m.key)):
            cache.store.delete([old.key])
        cache._write_index(m, m.dumps())
    expected = read_every_manifest(cache)

    forge(cache, published[0], created=1.0, expires=0.0)  # would read as expired
    scan = stats_scan(cache)
    assert figures(scan) == expected and expected[0].expired == 0
    # the scan rewrote the catalog with names it could verify
    names = catalog.decode(cache.store.get(Cache.catalog_key(FLOW, STEP)), FLOW, STEP)
    assert set(names) == {m.key for m in published}
    assert all(
        catalog.record_of(FLOW, STEP, k, n).signature_valid("the key") for k, n in names.items()
    )

    cache.store.put(Cache.catalog_key(FLOW, STEP), b"\x1f\x8b corrupt")
    assert figures(stats_scan(cache)) == expected
    assert figures(stats_scan(cache)) == expected and index_listings(cache.store) == []


def test_an_unwritable_catalog_changes_nothing_but_the_next_scan_s_cost(s3_env):
    class ReadOnlyCatalogs(CountingS3Store):
        def put(self, key, data):
            if Cache.parse_catalog_key(key):
                raise mt.StoreUnavailable("AccessDenied")
            return super().put(key, data)

    cache = Cache(ReadOnlyCatalogs(s3_env.url("cache")))
    populate(cache, 8)
    expected = read_every_manifest(cache)
    for _ in range(2):
        assert figures(stats_scan(cache)) == expected
        assert index_listings(cache.store) != []


def test_a_prune_removes_the_catalogs_of_the_steps_it_empties(s3_cache):
    populate(s3_cache, 4)
    populate(s3_cache, 3, step="t")
    stats_scan(s3_cache)
    target = mt.Target(s3_cache, FLOW)
    now = time.time()
    # step t emptied: its catalog goes; s keeps entries, and its catalog
    plan = mt.plan_prune(target, mt.PruneCriteria(older_than=0), now, grace=0.0, step="t")
    assert [c.key for c in plan.catalogs] == [Cache.catalog_key(FLOW, "t")]
    mt.execute(target, plan)
    assert s3_cache.store.head(Cache.catalog_key(FLOW, "t")) is None
    assert s3_cache.store.head(Cache.catalog_key(FLOW, STEP)) is not None
    assert figures(stats_scan(s3_cache)) == read_every_manifest(s3_cache)

    plan = mt.plan_prune(target, mt.PruneCriteria(older_than=0), now, grace=0.0)
    mt.execute(target, plan)
    left = [o.key for o in s3_cache.store.list("v1/") if o.key != "v1/memoize-root.json"]
    assert left == []
