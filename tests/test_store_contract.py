"""One contract for every cache store: LocalStore in a temp dir, S3Store on moto.

The cache is written against base.Store only, so anything a store does
differently from this contract is a bug in that store.
"""

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import metaflow  # noqa: F401  (must load before its extension's modules; see exceptions.py)
import pytest

from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.cache.stores.s3 import (
    S3Store,
    parse_s3_url,
)
from metaflow_extensions.memoize.plugins.memoize.exceptions import (
    StoreUnavailable,
    UnsafePath,
)

ROOT = "cache/root"
UNSAFE_KEYS = ["../x", "/abs", "a/../b", "a//b", ""]
MANY = 1050  # past a thousand (a local store has no pages)
BIG = 20 * 1024 * 1024  # past the 16 MB multipart threshold


# moto and the emulators answer a request in ~5-10 ms: past one page and one
# delete batch with fewer objects, by making the object stores' pages smaller.
SMALL_PAGE = 50


@pytest.fixture(params=["local", "s3", "gcs", "azure"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(str(tmp_path / "store"))
    if request.param == "s3":
        store = S3Store(request.getfixturevalue("s3_env").url(ROOT))
    else:
        from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store

        store = open_store(request.getfixturevalue(request.param + "_env").url(ROOT))
    # pages of a few objects, so that paging is exercised without thousands of them
    store.list_page_size = SMALL_PAGE
    if request.param in ("s3", "azure"):
        store.delete_batch = SMALL_PAGE
    return store


@pytest.fixture
def many(store):
    """Objects for the pagination tests: past one page of the store."""
    return SMALL_PAGE * 2 + 5 if hasattr(store, "list_page_size") else MANY


def _put_many(store, keys, data=b"x"):
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, data), keys))


def _keys(store, prefix=""):
    return {info.key for info in store.list(prefix)}


def _write_big(path):
    # incompressible and not all-equal, so a wrong part order would show
    data = os.urandom(BIG)
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- get / put ----------------------------------------------------------------


def test_get_missing_is_none(store):
    assert store.get("nope/missing") is None
    assert store.head("nope/missing") is None
    assert not store.exists("nope/missing")


def test_put_get_roundtrip(store):
    payload = bytes(range(256)) * 4
    store.put("a/b/obj.bin", payload)
    assert store.get("a/b/obj.bin") == payload
    store.put("empty", b"")
    assert store.get("empty") == b""


def test_put_overwrites(store):
    store.put("k", b"first")
    store.put("k", b"second")
    assert store.get("k") == b"second"


def test_put_if_absent_first_writer_wins(store):
    assert store.put_if_absent("m/entry.json", b"one") is True
    assert store.put_if_absent("m/entry.json", b"two") is False
    assert store.get("m/entry.json") == b"one"


def test_put_if_absent_concurrent_exactly_one_winner(store):
    barrier = threading.Barrier(8)

    def attempt(i):
        barrier.wait()
        return store.put_if_absent("race/entry", b"writer-%d" % i)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count(True) == 1
    assert store.get("race/entry") == b"writer-%d" % results.index(True)


def test_head_size_and_time(store):
    store.put("h/obj", b"12345")
    info = store.head("h/obj")
    assert info.key == "h/obj"
    assert info.size == 5
    assert abs(info.modified - time.time()) < 300
    assert store.exists("h/obj")


# --- list -----------------------------------------------------------------------


def test_list_prefix_relative_keys(store):
    for key in ["a/1", "a/2", "a/b/3", "ab/4", "c"]:
        store.put(key, b"abc")
    assert _keys(store, "a/") == {"a/1", "a/2", "a/b/3"}
    # a bare "a" is a directory too, never a string prefix of "ab/"
    assert _keys(store, "a") == {"a/1", "a/2", "a/b/3"}
    assert _keys(store, "a/b/") == {"a/b/3"}
    assert _keys(store) == {"a/1", "a/2", "a/b/3", "ab/4", "c"}
    assert _keys(store, "missing/") == set()
    assert {info.size for info in store.list("a/")} == {3}


def test_list_empty_store(store):
    assert list(store.list()) == []


def test_list_paginates(store, many):
    keys = ["p/%05d" % i for i in range(many)]
    _put_many(store, keys)
    assert _keys(store, "p/") == set(keys)


# --- delete ---------------------------------------------------------------------


def test_delete_many_and_missing(store, many):
    keys = ["d/%05d" % i for i in range(many)]
    _put_many(store, keys)
    store.put("keep/me", b"k")
    requested = keys + ["d/never-existed", "nowhere/x"]
    assert store.delete(iter(requested)) == len(requested)
    assert _keys(store, "d/") == set()
    assert store.get("keep/me") == b"k"
    assert store.delete([]) == 0


# --- files ----------------------------------------------------------------------


def test_put_file_get_file_roundtrip(store, tmp_path):
    src = tmp_path / "src.bin"
    digest = _write_big(src)
    store.put_file("blobs/big", str(src))
    assert store.head("blobs/big").size == BIG
    dest = tmp_path / "out" / "nested" / "big.bin"  # parent dirs created
    assert store.get_file("blobs/big", str(dest)) is True
    assert _sha256(dest) == digest
    assert os.listdir(dest.parent) == ["big.bin"]  # no temp files left


def test_get_file_replaces_existing(store, tmp_path):
    store.put("small", b"new")
    dest = tmp_path / "dest"
    dest.write_bytes(b"old contents")
    assert store.get_file("small", str(dest)) is True
    assert dest.read_bytes() == b"new"


def test_get_file_missing(store, tmp_path):
    out = tmp_path / "dl"
    out.mkdir()
    assert store.get_file("no/such", str(out / "f")) is False
    assert os.listdir(out) == []


def test_put_file_missing_source_is_a_fault(store, tmp_path):
    with pytest.raises(StoreUnavailable):
        store.put_file("x", str(tmp_path / "does-not-exist"))
    assert store.get("x") is None


# --- keys -----------------------------------------------------------------------


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_keys_rejected(store, tmp_path, key):
    src = tmp_path / "f"
    src.write_bytes(b"f")
    calls = [
        lambda: store.get(key),
        lambda: store.put(key, b"x"),
        lambda: store.put_if_absent(key, b"x"),
        lambda: store.head(key),
        lambda: store.exists(key),
        lambda: store.delete([key]),
        lambda: store.put_file(key, str(src)),
        lambda: store.get_file(key, str(tmp_path / "out")),
        lambda: store.url_for(key),
    ]
    if key:  # "" is a valid list prefix: the whole store
        calls.append(lambda: list(store.list(key)))
    for call in calls:
        with pytest.raises(UnsafePath):
            call()
    assert not (tmp_path / "out").exists()


def test_copy_from_url_unsupported_source(store):
    # a URL that cannot be copied server-side is False, not an error
    if isinstance(store, (S3Store, LocalStore)):
        assert store.copy_from_url("k", "s3://bucket-only") is False
    if not isinstance(store, S3Store):
        assert store.copy_from_url("k", "s3://bucket/key") is False
    assert store.copy_from_url("k", "gs://bucket-only") is False
    assert store.copy_from_url("k", "azure://container-only") is False
    assert store.get("k") is None


def test_server_side_copy_within_the_store(store, tmp_path):
    if isinstance(store, LocalStore):
        pytest.skip("a local store copies nothing server side")
    store.put("src/obj", b"copied without passing through us")
    assert store.copy_from_url("dst/obj", store.url_for("src/obj")) is True
    assert store.get("dst/obj") == b"copied without passing through us"
    assert store.copy_to_url("src/obj", store.url_for("dst/again"), {"cas_raw": False}) is True
    assert store.get("dst/again") == b"copied without passing through us"
    assert store.copy_from_url("dst/none", store.url_for("src/missing")) is False
    assert store.copy_to_url("src/missing", store.url_for("dst/none")) is False
    assert store.get("dst/none") is None


def test_listing_reports_md5_where_the_store_says_so(store):
    payload = b'{"a manifest": 1}'
    store.put("m/x.json", payload)
    assert store.put_if_absent("m/y.json", payload) is True
    listed = {info.key: info.md5 for info in store.list("m/")}
    if store.lists_md5:
        # the per-entry index of prune relies on it (maintenance.index_or_read)
        assert listed == {k: hashlib.md5(payload).hexdigest() for k in ("m/x.json", "m/y.json")}
    else:
        assert set(listed) == {"m/x.json", "m/y.json"}


def test_get_dated_on_the_store_clock(store):
    store.put("dated", b"d")
    data, written, now = store.get_dated("dated")
    assert data == b"d"
    assert abs(written - time.time()) < 300
    assert now is None or (abs(now - time.time()) < 300 and now >= written - 2)
    assert store.get_dated("undated") is None


def test_touch_keeps_the_bytes(store):
    store.put("t/obj", b"touched")
    touched = store.touch("t/obj")
    assert store.get("t/obj") == b"touched"
    assert store.touch("t/missing") is False
    assert touched in (True, False)  # stores that cannot touch say so


# --- S3 specifics ---------------------------------------------------------------


def test_s3_url_for_and_scope(s3_env):
    store = S3Store(s3_env.url(ROOT))
    assert store.url_for("a/b") == "s3://%s/%s/a/b" % (s3_env.bucket, ROOT)
    # objects beside the store, including a sibling sharing its name as a prefix
    outside = ["cache/root-old/x", "cache/rootx", "other/y", "top"]
    for key in outside:
        s3_env.client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"o")
    store.put("x", b"inside")
    assert _keys(store) == {"x"}
    assert store.get("rootx") is None
    store.delete(["x", "y", "top"])
    listed = s3_env.client.list_objects_v2(Bucket=s3_env.bucket)["Contents"]
    assert sorted(obj["Key"] for obj in listed) == sorted(outside)


def test_s3_bucket_root_store(s3_env):
    store = S3Store(s3_env.url(""))
    store.put("top/level", b"t")
    assert store.url_for("top/level") == "s3://%s/top/level" % s3_env.bucket
    assert _keys(store) == {"top/level"}


def test_s3_delete_batches_of_1000(s3_env):
    # moto accepts any batch size (AWS rejects >1000), so watch the requests.
    # Most keys need not exist: batching is about the request, and each moto
    # put costs ~6 ms.
    store = S3Store(s3_env.url(ROOT))
    keys = ["d/%05d" % i for i in range(2 * 1000 + 5)]
    _put_many(store, keys[::100])
    sizes = []

    def record(params, **_):
        sizes.append(len(params["Delete"]["Objects"]))

    event = "provide-client-params.s3.DeleteObjects"
    store.client.meta.events.register(event, record)
    try:
        assert store.delete(keys) == len(keys)
    finally:
        store.client.meta.events.unregister(event, record)
    assert sizes == [1000, 1000, 5]
    assert _keys(store) == set()


def test_s3_unsafe_delete_deletes_nothing(s3_env):
    store = S3Store(s3_env.url(ROOT))
    store.put("a", b"a")
    with pytest.raises(UnsafePath):
        store.delete(["a", "../escape"])
    assert store.get("a") == b"a"


def test_s3_put_file_is_multipart_and_copy(s3_env, tmp_path):
    store = S3Store(s3_env.url(ROOT))
    src = tmp_path / "src.bin"
    digest = _write_big(src)
    store.put_file("big", str(src))
    etag = s3_env.client.head_object(Bucket=s3_env.bucket, Key=ROOT + "/big")["ETag"]
    assert "-" in etag  # multipart ETags are "<md5>-<parts>"
    # a server-side copy of a multipart-sized object takes the UploadPartCopy path
    assert store.copy_from_url("copied/big", store.url_for("big")) is True
    dest = tmp_path / "copied.bin"
    assert store.get_file("copied/big", str(dest))
    assert _sha256(dest) == digest


def test_s3_copy_from_url_across_prefixes_and_buckets(s3_env):
    store = S3Store(s3_env.url(ROOT))
    other = S3Store(s3_env.url("elsewhere"))
    other.put("src", b"from another prefix")
    assert store.copy_from_url("a", other.url_for("src")) is True
    assert store.get("a") == b"from another prefix"

    second = s3_env.bucket + "-src"
    s3_env.client.create_bucket(Bucket=second)
    try:
        s3_env.client.put_object(Bucket=second, Key="x/y", Body=b"other bucket")
        assert store.copy_from_url("b", "s3://%s/x/y" % second) is True
        assert store.get("b") == b"other bucket"
        assert store.copy_from_url("c", "s3://%s/x/missing" % second) is False
        assert store.get("c") is None
        with pytest.raises(UnsafePath):
            store.copy_from_url("../c", "s3://%s/x/y" % second)
    finally:
        s3_env.client.delete_object(Bucket=second, Key="x/y")
        s3_env.client.delete_bucket(Bucket=second)


def test_s3_missing_bucket_is_unavailable(s3_env, tmp_path):
    store = S3Store("s3://%s-gone/p" % s3_env.bucket)
    src = tmp_path / "src"
    src.write_bytes(b"s")
    for call in (
        lambda: store.get("k"),
        lambda: store.head("k"),  # a bodiless 404: must not read as a miss
        lambda: store.get_file("k", str(tmp_path / "out")),  # likewise
        lambda: list(store.list()),
        lambda: store.put("k", b"v"),
        lambda: store.put_file("k", str(src)),
    ):
        with pytest.raises(StoreUnavailable, match="s3://%s-gone/p" % s3_env.bucket):
            call()


def test_s3_clients_are_shared_and_configured(s3_env):
    a, b = S3Store(s3_env.url("one")), S3Store(s3_env.url("two"))
    assert a.client is b.client
    config = a.client.meta.config
    assert config.connect_timeout <= 10
    assert config.retries["mode"] == "standard"
    assert config.max_pool_connections >= 16
    assert a.client.meta.endpoint_url == s3_env.endpoint_url


@pytest.mark.parametrize(
    "operation",
    [
        "get",
        "put",
        "put_if_absent",
        "head",
        "list",
        "delete",
        "put_file",
        "get_file",
        "copy_from_url",
    ],
)
def test_s3_unreachable(dead_s3_env, tmp_path, operation):
    url = dead_s3_env.url("p")
    store = S3Store(url)
    src = tmp_path / "src"
    src.write_bytes(b"s")
    out = tmp_path / "out"
    out.mkdir()
    calls = {
        "get": lambda: store.get("k"),
        "put": lambda: store.put("k", b"v"),
        "put_if_absent": lambda: store.put_if_absent("k", b"v"),
        "head": lambda: store.head("k"),
        "list": lambda: list(store.list("x/")),
        "delete": lambda: store.delete(["k"]),
        "put_file": lambda: store.put_file("k", str(src)),
        "get_file": lambda: store.get_file("k", str(out / "f")),
        "copy_from_url": lambda: store.copy_from_url("k", "s3://b-other/k"),
    }
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        calls[operation]()
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert url in message and "\n" not in message
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    "url, expected",
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/a/b/", ("bucket", "a/b")),
        ("s3://bucket//a", ("bucket", "a")),
    ],
)
def test_parse_s3_url(url, expected):
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    "url", ["bucket/a", "s3://", "s3:///a", "s3://b/a/../c", "s3://b/a//c", "/tmp/x"]
)
def test_parse_s3_url_rejects(url):
    with pytest.raises(ValueError):
        parse_s3_url(url)


# --- GCS and Azure specifics ----------------------------------------------------


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_cloud_url_for_and_scope(request, kind):
    from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store

    cloud = request.getfixturevalue(kind + "_env")
    store = open_store(cloud.url(ROOT))
    assert store.url_for("a/b") == cloud.url(ROOT + "/a/b")
    # objects beside the store, including a sibling sharing its name as a prefix
    outside = ["cache/root-old/x", "cache/rootx", "other/y", "top"]
    for key in outside:
        open_store(cloud.url(key.rsplit("/", 1)[0] if "/" in key else "")).put(
            key.rsplit("/", 1)[-1], b"o"
        )
    store.put("x", b"inside")
    assert _keys(store) == {"x"}
    store.delete(["x", "y", "top"])
    assert sorted(i.key for i in open_store(cloud.url()).list()) == sorted(outside)


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_cloud_missing_bucket_is_unavailable(request, kind, tmp_path):
    from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store

    cloud = request.getfixturevalue(kind + "_env")
    url = cloud.url("p").replace(cloud.name, cloud.name + "-gone")
    store = open_store(url)
    src = tmp_path / "src"
    src.write_bytes(b"s")
    for call in (
        lambda: store.get("k"),
        lambda: store.get_dated("k"),
        lambda: store.head("k"),  # must not read as a miss
        lambda: store.get_file("k", str(tmp_path / "out")),
        lambda: list(store.list()),
        lambda: store.put("k", b"v"),
        lambda: store.put_if_absent("k", b"v"),
        lambda: store.put_file("k", str(src)),
    ):
        with pytest.raises(StoreUnavailable, match=url):
            call()


@pytest.mark.parametrize("kind", ["gcs", "azure"])
@pytest.mark.parametrize("operation", ["put_if_absent", "head"])
def test_cloud_unreachable_fails_fast(kind, operation, tmp_path, monkeypatch):
    from cloud_servers import dead_env

    from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store

    for name, value in dead_env(kind).items():
        monkeypatch.setenv(name, value)
    url = ("gs://b/p" if kind == "gcs" else "azure://c/p") + "-" + operation
    store = open_store(url)
    out = tmp_path / "out"
    out.mkdir()
    calls = {
        "get": lambda: store.get("k"),
        "put_if_absent": lambda: store.put_if_absent("k", b"v"),
        "head": lambda: store.head("k"),
        "list": lambda: list(store.list("x/")),
        "get_file": lambda: store.get_file("k", str(out / "f")),
    }
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        calls[operation]()
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert url in message and "unreachable" in message and "\n" not in message, message
    assert os.listdir(out) == []
