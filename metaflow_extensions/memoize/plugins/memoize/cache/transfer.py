"""Moving artifact blobs between the run's datastore and the cache, as stored bytes.

Nothing is unpickled or recompressed: Metaflow's gzip-packed blobs are copied
as they are. Existing blobs are skipped; copies between a cache and a datastore
on the same cloud (S3, GCS, Azure) are server side;
several blobs move in parallel. Every blob read back from the cache is checked
against its content hash before the task can use it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import xxhash

from ..config import link_blobs
from ..durations import format_count
from ..exceptions import CorruptEntry
from ..metaflow_compat import DatastoreBlobs
from .entries import Cache
from .manifest import ArtifactRecord
from .stores.local import LocalStore

MAX_PARALLEL = 8


@dataclass
class TransferStats:
    """What a transfer moved: blobs copied through this process, server side, or skipped."""

    copied: int = 0
    linked: int = 0
    server_side: int = 0
    present: int = 0
    bytes: int = 0

    def add(self, how: str, size: int) -> None:
        setattr(self, how, getattr(self, how) + 1)
        self.bytes += size if how != "present" else 0

    def describe(self) -> str:
        parts = []
        if self.copied:
            parts.append("%s copied" % format_count(self.copied, "blob"))
        if self.linked:
            parts.append("%s linked" % format_count(self.linked, "blob"))
        if self.server_side:
            parts.append("%d copied server-side" % self.server_side)
        if self.present:
            parts.append("%d already present" % self.present)
        return ", ".join(parts) or "no blobs"


_CHUNK = 8 << 20


def _parallel(fn, items: list) -> list:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
        return list(pool.map(fn, items))


def _chunks(f):
    """The file's bytes through one reused buffer (no new 8 MB object per read)."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while True:
        n = f.readinto(buf)
        if not n:
            return
        yield view[:n]


def file_xxh(path: str) -> str:
    """xxh3-128 of a file's bytes: the stored-bytes digest manifests record."""
    digest = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        for chunk in _chunks(f):
            digest.update(chunk)
    return digest.hexdigest()


def verify_blob_file(path: str, sha: str, cas_raw: bool, stored_xxh: str | None = None) -> None:
    """Raise CorruptEntry unless the file's payload hashes to ``sha``.

    ``sha`` is Metaflow's content hash: sha1 of the unpacked (pickled) bytes.
    When the manifest pins the stored bytes' xxh3 digest and it matches, that
    suffices; otherwise (unknown, or another writer's packing) the payload is
    unpacked and hashed.
    """
    if stored_xxh and file_xxh(path) == stored_xxh:
        return
    verify_payload(path, sha, cas_raw)


def verify_payload(path: str, sha: str, cas_raw: bool) -> None:
    """Raise CorruptEntry unless the unpacked payload's sha1 is ``sha`` (the slow check)."""
    digest = hashlib.sha1()
    try:
        with open(path, "rb", buffering=0) as f:
            if cas_raw:
                for chunk in _chunks(f):
                    digest.update(chunk)
            else:
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                for chunk in _chunks(f):
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
) -> TransferStats:
    """Copy the artifacts' blobs from the datastore into the cache.

    Fills in ``cas_raw`` and ``stored_size`` of each record from the datastore.
    Blobs the cache already holds are not copied again.
    """
    by_sha: dict[str, list[ArtifactRecord]] = {}
    for record in artifacts.values():
        by_sha.setdefault(record.sha, []).append(record)
    store = cache.store
    stats = TransferStats()
    link_out = link_blobs() and not cache.signing_key

    def one(sha):
        meta = datastore.cas_meta(sha)
        if meta is None:
            raise FileNotFoundError("blob %s is not in the datastore" % sha)
        key = cache.blob_key(sha)
        existing = store.head(key)
        how = "present"
        stored_xxh = None
        if existing is not None and store.touch(key):
            # reused: a prune that started before this entry is published sees the
            # blob as modified since its scan and keeps it
            existing = store.head(key) or existing
        if existing is None:
            if datastore.kind == "local" and isinstance(store, LocalStore):
                stored_xxh = file_xxh(datastore.url(sha))
                # on the datastore's filesystem (the default root is): a hard link, so
                # the blob is not stored twice. Never with a signing key, whose threat
                # model includes the cache's other writers (they could write into it).
                linked = store.put_file(key, datastore.url(sha), link=link_out)
                how = "linked" if linked else "copied"
            elif datastore.kind == "local":
                stored_xxh = file_xxh(datastore.url(sha))
                store.put_file(key, datastore.url(sha))
                how = "copied"
            elif store.copy_from_url(key, datastore.url(sha)):
                how = "server_side"
            else:
                fd, tmp = tempfile.mkstemp(prefix="memoize-")
                os.close(fd)
                try:
                    datastore.download(sha, tmp)
                    store.put_file(key, tmp)
                finally:
                    os.unlink(tmp)
                how = "copied"
            existing = store.head(key)
        size = existing.size if existing else 0
        for record in by_sha[sha]:
            record.cas_raw = bool(meta.get("cas_raw", False))
            record.stored_size = existing.size if existing else None
            record.stored_xxh = stored_xxh
        return how, size

    for how, size in _parallel(one, sorted(by_sha)):
        stats.add(how, size)
    return stats


def import_blobs(
    datastore: DatastoreBlobs,
    cache: Cache,
    artifacts: dict[str, ArtifactRecord],
    may_delete: bool = True,
) -> TransferStats:
    """Make every artifact's blob present in the run's datastore.

    Blobs already in the datastore are not touched (a zero-copy hit). Others are
    fetched from the cache, verified against their content hash, then moved into
    place. A blob whose own bytes fail their content hash (its name) is deleted
    from the cache (unless ``may_delete`` is false: read mode). What a manifest
    says about a blob (its size, packing, digest) never gets it deleted: other
    entries share it, and the manifest may be the one that is wrong.
    """

    def condemn(key, sha, record, path, err):
        """The blob failed a check: delete it only if its bytes fail their own hash
        however they are packed; else the manifest is what is wrong."""
        if may_delete and path is not None and not _payload_matches_either_packing(path, sha):
            _discard(store, key)
        raise err

    wanted = {}
    for record in artifacts.values():
        wanted.setdefault(record.sha, record)
    # xxh3 is fast but not collision resistant: with a signing key, whose threat
    # model includes the cache's other writers, only Metaflow's SHA-1 of the
    # payload vouches for a blob (unpacked and hashed: slower)
    fast_digest = {} if cache.signing_key else {s: r.stored_xxh for s, r in wanted.items()}
    present = datastore.existing(wanted)
    missing = sorted(set(wanted) - present)
    stats = TransferStats(present=len(present))
    store = cache.store

    def one(sha):
        record = wanted[sha]
        meta = {"cas_raw": record.cas_raw, "cas_version": 1}
        key = cache.blob_key(sha)
        same_cloud = datastore.kind != "local" and store.url.startswith(datastore.kind + "://")
        if same_cloud and not cache.signing_key:
            # S3 to S3 (GCS to GCS, Azure to Azure): the bytes never pass through this
            # task; the service guarantees integrity of the copy, the size check
            # catches a truncated source.
            # With signing on, a blob must be hashed before use (a cache writer
            # could swap one), so signed caches take the verified path below.
            info = store.head(key)
            if info is None:
                raise CorruptEntry("blob %s is missing from the cache" % sha)
            if record.stored_size is not None and info.size != record.stored_size:
                # which is wrong, the blob or the manifest? not worth a download here
                raise CorruptEntry("blob %s does not have the size its manifest says" % sha)
            if store.copy_to_url(key, datastore.url(sha), meta):
                return "server_side", info.size
        if datastore.kind == "local" and isinstance(store, LocalStore):
            return local_to_local(sha, record, key, meta)
        directory = _temp_dir_for(datastore, sha)
        # a name, not a file: the store writes its own temporary and renames it here,
        # and a rename over an existing file costs a synchronous flush on ext4
        tmp = os.path.join(directory or tempfile.gettempdir(), "memoize-" + os.urandom(8).hex())
        try:
            if not store.get_file(key, tmp):
                raise CorruptEntry("blob %s is missing from the cache" % sha)
            size = os.path.getsize(tmp)
            try:
                if record.stored_size is not None and size != record.stored_size:
                    raise CorruptEntry("blob %s is truncated or has the wrong size" % sha)
                verify_blob_file(tmp, sha, record.cas_raw, fast_digest.get(sha))
                check_packing(tmp, sha, record.cas_raw)
            except CorruptEntry as err:
                condemn(key, sha, record, tmp, err)
            datastore.write_blob(sha, tmp, meta)
            return "copied", size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # Hard links: blobs are immutable (Metaflow and the stores replace files by rename,
    # never write into one), so a datastore blob may share the cache's inode. Never
    # with a signing key, whose threat model includes the cache's other writers.
    link = link_blobs() and not cache.signing_key

    def local_to_local(sha, record, key, meta):
        """Local cache to local datastore: link or copy, hashing on the way (one pass)."""
        hasher = xxhash.xxh3_128()
        got = store.fetch_hashed(key, os.path.dirname(datastore.url(sha)), hasher, link=link)
        if got is None:
            raise CorruptEntry("blob %s is missing from the cache" % sha)
        tmp, linked = got
        try:
            size = os.path.getsize(tmp)
            try:
                if record.stored_size is not None and size != record.stored_size:
                    raise CorruptEntry("blob %s is truncated or has the wrong size" % sha)
                expected = fast_digest.get(sha)
                if not (expected and hasher.hexdigest() == expected):
                    # digest unknown, or another writer's packing of the same payload
                    verify_payload(tmp, sha, record.cas_raw)
                check_packing(tmp, sha, record.cas_raw)
            except CorruptEntry as err:
                condemn(key, sha, record, tmp, err)
            datastore.write_blob(sha, tmp, meta, linked=linked)
            return ("linked" if linked else "copied"), size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    for how, size in _parallel(one, missing):
        stats.add(how, size)
    return stats


_GZIP_MAGIC = b"\x1f\x8b"


def check_packing(path: str, sha: str, cas_raw: bool) -> None:
    """Raise CorruptEntry unless the stored bytes are packed as the manifest says:
    gzip (Metaflow's packing) unless ``cas_raw``. Metaflow reads the blob by that flag."""
    with open(path, "rb") as f:
        packed = f.read(2) == _GZIP_MAGIC
    if packed == bool(cas_raw):
        raise CorruptEntry(
            "blob %s is %s, not as its manifest says" % (sha, "gzip" if packed else "raw")
        )


def _payload_matches_either_packing(path: str, sha: str) -> bool:
    for cas_raw in (False, True):
        try:
            verify_payload(path, sha, cas_raw)
            return True
        except CorruptEntry:
            continue
    return False


def _discard(store, key: str) -> None:
    """Remove a corrupt blob so that the next writer stores a good copy."""
    try:
        store.delete([key])
    except Exception:
        pass


def _temp_dir_for(datastore: DatastoreBlobs, sha: str):
    """Stage local downloads beside their destination so the final move is a rename."""
    if datastore.kind != "local":
        return None
    directory = os.path.dirname(datastore.url(sha))
    os.makedirs(directory, exist_ok=True)
    return directory
