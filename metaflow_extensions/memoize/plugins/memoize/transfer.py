"""Moving artifact blobs between the run's datastore and the cache, as stored bytes.

Nothing is unpickled or recompressed: Metaflow's gzip-packed blobs are copied
as they are. Existing blobs are skipped; S3-to-S3 copies are server side;
several blobs move in parallel. Every blob read back from the cache is checked
against its content hash before the task can use it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .cache import Cache
from .exceptions import CorruptEntry
from .manifest import ArtifactRecord
from .metaflow_compat import DatastoreBlobs

MAX_PARALLEL = 8
_CHUNK = 8 << 20


def _parallel(fn, items: list) -> list:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
        return list(pool.map(fn, items))


def verify_blob_file(path: str, sha: str, cas_raw: bool) -> None:
    """Raise CorruptEntry unless the file's payload hashes to ``sha``.

    ``sha`` is Metaflow's content hash: sha1 of the unpacked (pickled) bytes.
    """
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            if cas_raw:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(chunk)
            else:
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(inflater.decompress(chunk))
                digest.update(inflater.flush())
                if not inflater.eof:
                    raise CorruptEntry("blob %s is truncated" % sha)
    except (zlib.error, gzip.BadGzipFile, EOFError) as err:
        raise CorruptEntry("blob %s does not unpack: %s" % (sha, err))
    if digest.hexdigest() != sha:
        raise CorruptEntry("blob %s does not match its content hash" % sha)


def export_blobs(
    datastore: DatastoreBlobs, cache: Cache, artifacts: dict[str, ArtifactRecord]
) -> int:
    """Copy the artifacts' blobs from the datastore into the cache; return bytes copied.

    Fills in ``cas_raw`` and ``stored_size`` of each record from the datastore.
    """
    by_sha: dict[str, list[ArtifactRecord]] = {}
    for record in artifacts.values():
        by_sha.setdefault(record.sha, []).append(record)
    store = cache.store

    def one(sha):
        meta = datastore.cas_meta(sha)
        if meta is None:
            raise FileNotFoundError("blob %s is not in the datastore" % sha)
        key = cache.blob_key(sha)
        existing = store.head(key)
        copied = 0
        if existing is None:
            if datastore.kind == "local":
                store.put_file(key, datastore.url(sha))
            elif not store.copy_from_url(key, datastore.url(sha)):
                fd, tmp = tempfile.mkstemp(prefix="memoize-")
                os.close(fd)
                try:
                    datastore.download(sha, tmp)
                    store.put_file(key, tmp)
                finally:
                    os.unlink(tmp)
            existing = store.head(key)
            copied = existing.size if existing else 0
        for record in by_sha[sha]:
            record.cas_raw = bool(meta.get("cas_raw", False))
            record.stored_size = existing.size if existing else None
        return copied

    return sum(_parallel(one, sorted(by_sha)))


def import_blobs(
    datastore: DatastoreBlobs, cache: Cache, artifacts: dict[str, ArtifactRecord]
) -> int:
    """Make every artifact's blob present in the run's datastore; return bytes copied.

    Blobs already in the datastore are not touched (a zero-copy hit). Others are
    fetched from the cache, verified, then moved into place.
    """
    wanted = {}
    for record in artifacts.values():
        wanted.setdefault(record.sha, record)
    missing = sorted(set(wanted) - datastore.existing(wanted))
    if not missing:
        return 0
    store = cache.store

    def one(sha):
        record = wanted[sha]
        meta = {"cas_raw": record.cas_raw, "cas_version": 1}
        key = cache.blob_key(sha)
        if datastore.kind == "s3" and store.url.startswith("s3://"):
            info = store.head(key)
            if info is None:
                raise CorruptEntry("blob %s is missing from the cache" % sha)
            if record.stored_size is not None and info.size != record.stored_size:
                raise CorruptEntry("blob %s has the wrong size" % sha)
            if _server_side_copy_out(store, key, datastore.url(sha)):
                return info.size
        fd, tmp = tempfile.mkstemp(prefix="memoize-", dir=_temp_dir_for(datastore, sha))
        os.close(fd)
        try:
            if not store.get_file(key, tmp):
                raise CorruptEntry("blob %s is missing from the cache" % sha)
            size = os.path.getsize(tmp)
            if record.stored_size is not None and size != record.stored_size:
                raise CorruptEntry("blob %s is truncated or has the wrong size" % sha)
            verify_blob_file(tmp, sha, record.cas_raw)
            datastore.write_blob(sha, tmp, meta)
            return size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    return sum(_parallel(one, missing))


def _temp_dir_for(datastore: DatastoreBlobs, sha: str):
    """Stage local downloads beside their destination so the final move is a rename."""
    if datastore.kind != "local":
        return None
    directory = os.path.dirname(datastore.url(sha))
    os.makedirs(directory, exist_ok=True)
    return directory


def _server_side_copy_out(store, key: str, dest_url: str) -> bool:
    copier = getattr(store, "copy_to_url", None)
    return bool(copier and copier(key, dest_url))


def blob_sizes(cache: Cache, shas: Iterable[str]) -> dict[str, int]:
    out = {}
    for sha in shas:
        info = cache.store.head(cache.blob_key(sha))
        if info is not None:
            out[sha] = info.size
    return out
