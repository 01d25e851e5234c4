"""The orchestrator's I/O helpers in metaflow_compat: the small-blob cache the runtime
reads completed tasks through, and how many threads check tasks."""

from metaflow_extensions.memoize.plugins.memoize import metaflow_compat as mf


def test_the_blob_cache_returns_what_was_stored():
    cache = mf._SmallBlobCache()
    cache.store_key("a1", b"pickled")
    assert cache.load_key("a1") == b"pickled"
    assert cache.load_key("b2") is None


def test_the_blob_cache_keeps_no_large_blob():
    cache = mf._SmallBlobCache()
    cache.store_key("big", b"x" * (mf._SmallBlobCache.MAX_BLOB + 1))
    assert cache.load_key("big") is None


def test_the_blob_cache_drops_the_least_recently_used_first(monkeypatch):
    monkeypatch.setattr(mf._SmallBlobCache, "MAX_TOTAL", 30)
    cache = mf._SmallBlobCache()
    for key in ("k1", "k2", "k3"):
        cache.store_key(key, b"0123456789")
    assert cache.load_key("k1") == b"0123456789"  # k1 is now the most recent
    cache.store_key("k4", b"0123456789")
    assert cache.load_key("k2") is None
    assert [cache.load_key(k) is not None for k in ("k1", "k3", "k4")] == [True] * 3


def test_a_cache_is_attached_only_where_none_is():
    class Store:
        _blob_cache = None

        def set_blob_cache(self, cache):
            self._blob_cache = cache

    class Datastore:
        ca_store = Store()

    datastore = Datastore()
    mf._SmallBlobCache.attach(datastore)
    first = datastore.ca_store._blob_cache
    assert isinstance(first, mf._SmallBlobCache)
    mf._SmallBlobCache.attach(datastore)
    assert datastore.ca_store._blob_cache is first


def test_checks_use_the_cores_on_the_local_datastore_and_more_threads_elsewhere(monkeypatch):
    class Local:
        TYPE = "local"

    class S3:
        TYPE = "s3"

    monkeypatch.setattr(mf.os, "cpu_count", lambda: 2)
    assert mf.completion_threads(Local()) == 2
    monkeypatch.setattr(mf.os, "cpu_count", lambda: 1)
    assert mf.completion_threads(Local()) == 2  # the runtime's thread waits meanwhile
    monkeypatch.setattr(mf.os, "cpu_count", lambda: 64)
    assert mf.completion_threads(Local()) == mf.COMPLETION_THREADS
    assert mf.completion_threads(S3()) == mf.COMPLETION_THREADS
