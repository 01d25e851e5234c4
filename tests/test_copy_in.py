"""Copy-in from a local cache: hard links on the same filesystem, one-pass copies elsewhere.

A hit whose blobs are not in the run's datastore brings them in from the cache. From
a local cache into a local datastore on the same filesystem the blob is hard-linked
(blobs are immutable and content-addressed) and the link is hashed before it is put
in place; otherwise (another filesystem, linking turned off or unsafe, a signing key)
the bytes are copied and hashed in one pass. Either way a blob that does not match
the entry never enters the datastore and the step runs instead.
"""

import errno
import os
import re
from pathlib import Path

import pytest
import xxhash
from flowrunner import FlowRunner

from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.cache.transfer import file_xxh, verify_payload

TINY_FILE = "t6_tiny_flow.py"
TINY = "T6TinyFlow"
SIZE = "300000"  # incompressible payload: a 300 KB blob
ROOT_ENV = "METAFLOW_MEMOIZE_ROOT"


def _runner(path: Path, cache: Path, **env) -> FlowRunner:
    runner = FlowRunner(path, extra_env=dict(env, **{ROOT_ENV: str(cache)}))
    runner.add_flow(TINY_FILE)
    return runner


def _hit_lines(result):
    return [line for line in result.memoize_lines() if " hit " in line]


def _payload_blob(runner: FlowRunner, cache: Path, run_id: str):
    """(the payload's blob in the cache, the same blob in the runner's datastore)."""
    import json

    (entry,) = (cache / "v1" / "entries" / TINY / "start").glob("*.json")
    sha = json.loads(entry.read_text())["artifacts"]["payload"]["sha"]
    in_cache = cache / "v1" / "blobs" / sha[:2] / sha
    in_datastore = runner.workdir / ".metaflow" / TINY / "data" / sha[:2] / sha
    return sha, in_cache, in_datastore


@pytest.fixture
def stored(tmp_path):
    """An entry made by a run in work directory A; returns (cache root, A's runner, result)."""
    cache = tmp_path / "cache"
    a = _runner(tmp_path / "a", cache)
    result = a.run(TINY_FILE, "--size", SIZE)
    assert a.count("start") == 1
    return cache, a, result


def test_same_filesystem_hit_links_the_verified_blob(stored, tmp_path):
    cache, a, first = stored
    b = _runner(tmp_path / "b", cache)
    result = b.run(TINY_FILE, "--size", SIZE)
    assert b.count("start") == 0
    (hit,) = _hit_lines(result)
    assert re.search(r"\d+ blobs? linked", hit) and "copied" not in hit, hit
    sha, in_cache, in_datastore = _payload_blob(b, cache, result.run_id)
    # one inode, two names: nothing was copied
    assert os.stat(in_cache).st_ino == os.stat(in_datastore).st_ino
    assert os.stat(in_datastore).st_nlink >= 2
    verify_payload(str(in_datastore), sha, False)
    assert b.artifacts(TINY, result.run_id) == a.artifacts(TINY, first.run_id)


@pytest.mark.slow
def test_a_corrupt_cache_blob_is_a_miss_and_never_linked(stored, tmp_path):
    cache, a, first = stored
    sha, in_cache, _ = _payload_blob(a, cache, first.run_id)
    data = bytearray(in_cache.read_bytes())
    data[len(data) // 2] ^= 0x55  # same size: only a hash can tell
    # a new file in its place: the stored blob is a hard link to A's datastore file
    # (a miss links its blobs into a cache on the same filesystem), which a write
    # into the file would corrupt too
    in_cache.unlink()
    in_cache.write_bytes(bytes(data))
    b = _runner(tmp_path / "b", cache)
    result = b.run(TINY_FILE, "--size", SIZE)
    assert b.count("start") == 1  # the step ran
    assert not _hit_lines(result)
    assert any("corrupt" in line for line in result.memoize_lines()), result.memoize_lines()
    _, in_cache, in_datastore = _payload_blob(b, cache, result.run_id)
    # the datastore holds the bytes the step produced, not the corrupt file
    verify_payload(str(in_datastore), sha, False)
    assert in_datastore.read_bytes() != bytes(data)
    assert b.artifacts(TINY, result.run_id) == a.artifacts(TINY, first.run_id)
    # and the next fresh work directory hits a good blob
    c = _runner(tmp_path / "c", cache)
    again = c.run(TINY_FILE, "--size", SIZE)
    assert c.count("start") == 0 and _hit_lines(again)


def test_linking_turned_off_copies(stored, tmp_path):
    cache, a, first = stored
    b = _runner(tmp_path / "b", cache, METAFLOW_MEMOIZE_LINK="0")
    result = b.run(TINY_FILE, "--size", SIZE)
    (hit,) = _hit_lines(result)
    assert re.search(r"\d+ blobs? copied", hit) and "linked" not in hit, hit
    sha, in_cache, in_datastore = _payload_blob(b, cache, result.run_id)
    assert os.stat(in_cache).st_ino != os.stat(in_datastore).st_ino
    verify_payload(str(in_datastore), sha, False)
    assert b.artifacts(TINY, result.run_id) == a.artifacts(TINY, first.run_id)


def test_a_signing_key_never_links(tmp_path):
    cache = tmp_path / "cache"
    key = {"METAFLOW_MEMOIZE_SIGNING_KEY": "copy-in-secret"}
    _runner(tmp_path / "a", cache, **key).run(TINY_FILE, "--size", SIZE)
    b = _runner(tmp_path / "b", cache, **key)
    result = b.run(TINY_FILE, "--size", SIZE)
    (hit,) = _hit_lines(result)
    assert re.search(r"\d+ blobs? copied", hit) and "linked" not in hit, hit


def test_with_a_signing_key_only_the_sha1_vouches_for_a_blob(tmp_path):
    """xxh3 is not collision resistant. Simulate a writer who found a blob with the
    digest a signed manifest records: re-sign the manifest so that its xxh3 is that
    of a tampered blob. With a signing key the blob must still be rejected (the SHA-1
    of its payload does not match), so the step runs and computes the right value."""
    from metaflow_extensions.memoize.plugins.memoize.cache.manifest import Manifest

    secret = "copy-in-secret"
    cache = tmp_path / "cache"
    a = _runner(tmp_path / "a", cache, METAFLOW_MEMOIZE_SIGNING_KEY=secret)
    first = a.run(TINY_FILE, "--size", SIZE)
    sha, in_cache, _ = _payload_blob(a, cache, first.run_id)
    data = bytearray(in_cache.read_bytes())
    data[len(data) // 2] ^= 0x55
    in_cache.write_bytes(bytes(data))
    (entry,) = (cache / "v1" / "entries" / TINY / "start").glob("*.json")
    manifest = Manifest.loads(entry.read_bytes())
    manifest.artifacts["payload"].stored_xxh = file_xxh(str(in_cache))
    entry.write_bytes(manifest.sign(secret).dumps())

    b = _runner(tmp_path / "b", cache, METAFLOW_MEMOIZE_SIGNING_KEY=secret)
    result = b.run(TINY_FILE, "--size", SIZE)
    assert b.count("start") == 1
    assert _hit_lines(result) == []
    assert b.artifacts(TINY, result.run_id) == a.artifacts(TINY, first.run_id)


def _other_filesystem(tmp_path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test directory")
    return shm


def test_a_cache_on_another_filesystem_is_copied(tmp_path):
    import shutil
    import uuid

    cache = _other_filesystem(tmp_path) / ("memoize-test-%s" % uuid.uuid4().hex)
    try:
        a = _runner(tmp_path / "a", cache)
        first = a.run(TINY_FILE, "--size", SIZE)
        b = _runner(tmp_path / "b", cache)
        result = b.run(TINY_FILE, "--size", SIZE)
        assert b.count("start") == 0
        (hit,) = _hit_lines(result)
        assert re.search(r"\d+ blobs? copied", hit) and "linked" not in hit, hit
        sha, _, in_datastore = _payload_blob(b, cache, result.run_id)
        verify_payload(str(in_datastore), sha, False)
        assert b.artifacts(TINY, result.run_id) == a.artifacts(TINY, first.run_id)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# -- LocalStore.fetch_hashed in process: when it links, and what it hashes -------------
@pytest.fixture
def store_with_blob(tmp_path):
    store = LocalStore(str(tmp_path / "cache"))
    data = os.urandom(3 * (1 << 20) + 12345)  # spans several buffers
    store.put("v1/blobs/ab/abc", data)
    return store, data, tmp_path / "datastore" / "ab"


def _fetch(store, directory, link=True):
    hasher = xxhash.xxh3_128()
    got = store.fetch_hashed("v1/blobs/ab/abc", str(directory), hasher, link=link)
    return got, hasher.hexdigest()


def test_fetch_links_and_hashes_the_link(store_with_blob):
    store, data, directory = store_with_blob
    (tmp, linked), digest = _fetch(store, directory)
    assert linked
    assert os.stat(tmp).st_ino == os.stat(store.url_for("v1/blobs/ab/abc")).st_ino
    assert digest == xxhash.xxh3_128(data).hexdigest() == file_xxh(tmp)


def test_fetch_copies_when_linking_fails(store_with_blob, monkeypatch):
    store, data, directory = store_with_blob

    def cross_device(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    (tmp, linked), digest = _fetch(store, directory)
    assert not linked
    assert Path(tmp).read_bytes() == data
    assert digest == xxhash.xxh3_128(data).hexdigest()
    assert os.stat(tmp).st_nlink == 1


def test_fetch_copies_a_file_others_could_write(store_with_blob):
    store, data, directory = store_with_blob
    os.chmod(store.url_for("v1/blobs/ab/abc"), 0o664)
    (tmp, linked), digest = _fetch(store, directory)
    assert not linked and Path(tmp).read_bytes() == data
    assert digest == xxhash.xxh3_128(data).hexdigest()
    assert [p.name for p in directory.iterdir()] == [Path(tmp).name]  # no stray link


def test_fetch_copies_a_file_of_another_user(store_with_blob):
    store, data, directory = store_with_blob
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    os.chown(store.url_for("v1/blobs/ab/abc"), 4242, -1)
    (tmp, linked), _ = _fetch(store, directory)
    assert not linked and os.stat(tmp).st_uid == 0


def test_fetch_without_link_copies_and_a_missing_blob_is_none(store_with_blob):
    store, data, directory = store_with_blob
    (tmp, linked), digest = _fetch(store, directory, link=False)
    assert not linked and Path(tmp).read_bytes() == data
    assert digest == xxhash.xxh3_128(data).hexdigest()
    hasher = xxhash.xxh3_128()
    for link in (True, False):
        assert store.fetch_hashed("v1/blobs/ab/nothing", str(directory), hasher, link=link) is None


def _require_kernel_copy(directory: Path) -> None:
    """Skip unless this filesystem lets the kernel copy between two of its files."""
    src, dst = directory / "probe-src", directory / "probe-dst"
    src.write_bytes(b"probe")
    try:
        with open(src, "rb") as a, open(dst, "wb") as b:
            if os.copy_file_range(a.fileno(), b.fileno(), 5) != 5:
                pytest.skip("copy_file_range copies nothing here")
    except (AttributeError, OSError) as err:
        pytest.skip("no copy_file_range here: %s" % err)
    finally:
        src.unlink()
        dst.unlink(missing_ok=True)


def test_a_copy_of_many_kernel_chunks_hashes_exactly_the_copy(tmp_path, monkeypatch):
    from metaflow_extensions.memoize.plugins.memoize.cache.stores import local

    # small kernel chunks: many of them, hashed while the next ones are copied
    _require_kernel_copy(tmp_path)
    monkeypatch.setattr(local, "_KERNEL_CHUNK", 1 << 20)
    calls = []
    real = os.copy_file_range

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(os, "copy_file_range", counting)
    store = LocalStore(str(tmp_path / "cache"))
    data = os.urandom(9 * (1 << 20) + 777)
    store.put("v1/blobs/ab/abc", data)
    (tmp, linked), digest = _fetch(store, tmp_path / "datastore", link=False)
    assert not linked and Path(tmp).read_bytes() == data
    assert digest == xxhash.xxh3_128(data).hexdigest()
    assert len(calls) == 10  # the kernel did the copying


def test_where_the_kernel_cannot_copy_the_bytes_go_through_a_buffer(store_with_blob, monkeypatch):
    store, data, directory = store_with_blob

    def unsupported(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    (tmp, linked), digest = _fetch(store, directory, link=False)
    assert not linked and Path(tmp).read_bytes() == data
    assert digest == xxhash.xxh3_128(data).hexdigest()


def test_a_kernel_copy_failing_midway_is_a_store_fault_and_leaves_nothing(
    store_with_blob, monkeypatch
):
    from metaflow_extensions.memoize.plugins.memoize.cache.stores import local
    from metaflow_extensions.memoize.plugins.memoize.exceptions import StoreUnavailable

    store, data, directory = store_with_blob
    _require_kernel_copy(directory.parent.parent)
    monkeypatch.setattr(local, "_KERNEL_CHUNK", 1 << 20)
    real = os.copy_file_range

    def failing_second_chunk(src, dst, count, offset_src, offset_dst):
        if offset_src > 0:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", failing_second_chunk)
    with pytest.raises(StoreUnavailable):
        _fetch(store, directory, link=False)
    assert list(directory.iterdir()) == []
