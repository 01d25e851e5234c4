"""The cache: entries (manifests) and content-addressed blobs on a Store.

Layout under the cache root (see docs/concepts.md):

    v1/entries/<Flow>/<step>/<key>.json   one manifest per key
    v1/used/<Flow>/<step>/<key>           last-use marker (tiny; rewritten on a hit)
    v1/blobs/<sha[:2]>/<sha>               artifact blobs, exactly as Metaflow stores them
    v1/locks/<Flow>/<step>/<key>           single-flight leases (lock=True)
    v1/index/<Flow>/<step>/<key>/<md5>_<created>_<expires>_<refs>
                                           empty; what pruning needs, in the name

Blobs are written before the manifest that references them, and the manifest
is published with put-if-absent (first writer wins) unless refreshing.

The index exists so that garbage collection can list instead of reading every
manifest (one GET each: minutes for 10,000 entries). It is written after the
manifest, only on stores whose listings carry each object's MD5 (S3), and an
index object is believed only while its ``md5`` equals the listed MD5 of the
entry's manifest: a stale, missing or unverifiable index just means that
manifest is read, as it would be without an index.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .exceptions import CacheFault, CorruptEntry
from .manifest import Manifest
from .stores import ObjectInfo, Store, check_key

LAYOUT = "v1"
#: blobs are named in the index by the first REF_CHARS hex digits of their sha:
#: 64 bits tell blobs apart (a collision only keeps a blob), and ~40 fit in a name
REF_CHARS = 16
#: the longest index name written; S3 allows 1,024 bytes including the root prefix
MAX_INDEX_NAME = 700


def blob_ref(sha: str) -> str:
    """How garbage collection names a blob (see REF_CHARS)."""
    return sha[:REF_CHARS]


@dataclass(frozen=True)
class IndexRecord:
    """What an index object name says about the entry whose manifest has ``md5``."""

    flow: str
    step: str
    key: str
    md5: str
    created: float
    expires: float | None
    refs: frozenset[str]  # blob_ref of every blob the manifest names


@dataclass
class Lookup:
    """The outcome of looking a key up."""

    status: str  # "found", "absent", "expired", "unsigned"
    manifest: Manifest | None = None
    detail: str = ""


class Cache:
    def __init__(
        self,
        store: Store,
        signing_key: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.signing_key = signing_key
        self.clock = clock

    # -- names ---------------------------------------------------------------
    @staticmethod
    def entry_prefix(flow: str | None = None, step: str | None = None) -> str:
        parts = [LAYOUT, "entries"] + [p for p in (flow, step) if p]
        return check_key("/".join(parts)) + "/"

    @staticmethod
    def manifest_key(flow: str, step: str, key: str) -> str:
        return check_key("%s/entries/%s/%s/%s.json" % (LAYOUT, flow, step, key))

    @staticmethod
    def used_key(flow: str, step: str, key: str) -> str:
        return check_key("%s/used/%s/%s/%s" % (LAYOUT, flow, step, key))

    @staticmethod
    def lock_key(flow: str, step: str, key: str) -> str:
        return check_key("%s/locks/%s/%s/%s" % (LAYOUT, flow, step, key))

    @staticmethod
    def lock_prefix() -> str:
        return "%s/locks/" % LAYOUT

    @staticmethod
    def blob_key(sha: str) -> str:
        return check_key("%s/blobs/%s/%s" % (LAYOUT, sha[:2], sha))

    @staticmethod
    def blob_prefix() -> str:
        return "%s/blobs/" % LAYOUT

    @staticmethod
    def parse_manifest_key(object_key: str) -> tuple[str, str, str] | None:
        """(flow, step, key) for an entry object name, None for anything else."""
        parts = object_key.split("/")
        if len(parts) != 5 or parts[0] != LAYOUT or parts[1] != "entries":
            return None
        if not parts[4].endswith(".json"):
            return None
        return parts[2], parts[3], parts[4][: -len(".json")]

    @staticmethod
    def index_prefix(flow: str | None = None, step: str | None = None, key: str | None = None):
        parts = [LAYOUT, "index"] + [p for p in (flow, step, key) if p]
        return check_key("/".join(parts)) + "/"

    @staticmethod
    def index_key(manifest: Manifest, md5: str) -> str | None:
        """The index object name for a manifest whose bytes have ``md5``; None if too long."""
        refs = ".".join(sorted({blob_ref(sha) for sha in manifest.blob_shas})) or "-"
        expires = "never" if manifest.expires is None else "%d" % round(manifest.expires * 1000)
        name = "%s/%s_%d_%s_%s" % (
            Cache.index_prefix(manifest.flow, manifest.step, manifest.key).rstrip("/"),
            md5,
            round(manifest.created * 1000),
            expires,
            refs,
        )
        return check_key(name) if len(name) <= MAX_INDEX_NAME else None

    @staticmethod
    def parse_index_key(object_key: str) -> IndexRecord | None:
        """The record an index object name holds; None for anything else."""
        parts = object_key.split("/")
        if len(parts) != 6 or parts[0] != LAYOUT or parts[1] != "index":
            return None
        fields = parts[5].split("_")
        if len(fields) != 4 or len(fields[0]) != 32:
            return None
        md5, created, expires, refs = fields
        try:
            return IndexRecord(
                parts[2],
                parts[3],
                parts[4],
                md5,
                int(created) / 1000.0,
                None if expires == "never" else int(expires) / 1000.0,
                frozenset(r for r in refs.split(".") if r and r != "-"),
            )
        except ValueError:
            return None

    # -- reading -------------------------------------------------------------
    def lookup(self, flow: str, step: str, key: str) -> Lookup:
        """Find the entry for a key. Raises CorruptEntry / StoreUnavailable on faults."""
        data = self.store.get(self.manifest_key(flow, step, key))
        if data is None:
            return Lookup("absent", detail="no entry")
        manifest = Manifest.loads(data, expected_key=key)
        if manifest.flow != flow or manifest.step != step:
            raise CorruptEntry("manifest belongs to %s/%s" % (manifest.flow, manifest.step), key)
        if self.signing_key and not manifest.signature_valid(self.signing_key):
            why = "is unsigned" if not manifest.signature else "has a bad signature"
            return Lookup("unsigned", manifest, "entry %s" % why)
        if manifest.is_expired(self.clock()):
            return Lookup("expired", manifest, "expired")
        return Lookup("found", manifest)

    def read_manifest(self, object_key: str) -> Manifest:
        data = self.store.get(object_key)
        if data is None:
            raise CorruptEntry("entry %s vanished" % object_key)
        return Manifest.loads(data)

    def entries(
        self, flow: str | None = None, step: str | None = None
    ) -> Iterator[tuple[ObjectInfo, Manifest | None, str | None]]:
        """(object info, manifest or None, error or None) for each entry under a scope."""
        for info in self.store.list(self.entry_prefix(flow, step)):
            if self.parse_manifest_key(info.key) is None:
                continue
            try:
                yield info, self.read_manifest(info.key), None
            except CacheFault as err:
                yield info, None, str(err)

    def latest_entry(self, flow: str, step: str, prefer=None, limit: int = 8) -> Manifest | None:
        """The most recent readable entry of a step, to explain a miss.

        Reads at most ``limit`` of the newest manifests, in parallel (a foreach
        step may have thousands, and this runs on every miss); among them the
        newest one that ``prefer(manifest)`` accepts (e.g. same foreach item)
        wins, else the newest.
        """
        from concurrent.futures import ThreadPoolExecutor

        infos = [
            i
            for i in self.store.list(self.entry_prefix(flow, step))
            if self.parse_manifest_key(i.key)
        ]
        infos.sort(key=lambda i: i.modified, reverse=True)
        infos = infos[:limit]
        if not infos:
            return None

        def read(info):
            try:
                return self.read_manifest(info.key)
            except CacheFault:
                return None

        with ThreadPoolExecutor(max_workers=min(8, len(infos))) as pool:
            manifests = [m for m in pool.map(read, infos) if m is not None]
        if prefer is not None:
            for manifest in manifests:
                if prefer(manifest):
                    return manifest
        return manifests[0] if manifests else None

    def last_used(self, flow: str, step: str, key: str) -> float | None:
        info = self.store.head(self.used_key(flow, step, key))
        return None if info is None else info.modified

    # -- writing -------------------------------------------------------------
    def publish(self, manifest: Manifest, overwrite: bool = False) -> bool:
        """Write the manifest (blobs must already be stored). False if another writer won."""
        manifest.sign(self.signing_key)
        name = self.manifest_key(manifest.flow, manifest.step, manifest.key)
        data = manifest.dumps()
        if overwrite:
            self.store.put(name, data)
            published = True
        else:
            published = self.store.put_if_absent(name, data)
            if not published and self.store.get(name) == data:
                # our own write, whose reply was lost: the retry found it
                published = True
        if published:
            self._write_index(manifest, data)
            self.record_use(manifest.flow, manifest.step, manifest.key)
        return published

    def _write_index(self, manifest: Manifest, data: bytes) -> None:
        if not self.store.lists_md5:
            return
        name = self.index_key(manifest, hashlib.md5(data, usedforsecurity=False).hexdigest())
        if name is None:
            return
        try:
            self.store.put(name, b"")
        except CacheFault:
            pass  # the entry is published; pruning will read its manifest instead

    def record_use(self, flow: str, step: str, key: str) -> None:
        """Mark an entry as used now: a tiny object, so LRU pruning never rewrites blobs."""
        payload = json.dumps({"used": self.clock()}).encode()
        self.store.put(self.used_key(flow, step, key), payload)

    def remove_entry(self, flow: str, step: str, key: str) -> None:
        """Delete an entry: the manifest first, so a reader never sees an entry without its marker."""
        self.store.delete([self.manifest_key(flow, step, key)])
        self.store.delete([self.used_key(flow, step, key)])

    # -- maintenance (listing markers and blobs; used by maintenance.py) -----
    @staticmethod
    def used_prefix(flow: str | None = None, step: str | None = None) -> str:
        parts = [LAYOUT, "used"] + [p for p in (flow, step) if p]
        return check_key("/".join(parts)) + "/"

    @staticmethod
    def parse_used_key(object_key: str) -> tuple[str, str, str] | None:
        """(flow, step, key) for a last-use marker name, None for anything else."""
        parts = object_key.split("/")
        if len(parts) != 5 or parts[0] != LAYOUT or parts[1] != "used":
            return None
        return parts[2], parts[3], parts[4]

    @staticmethod
    def parse_blob_key(object_key: str) -> str | None:
        """The sha of a blob object name, None for anything else."""
        parts = object_key.split("/")
        if len(parts) != 4 or parts[0] != LAYOUT or parts[1] != "blobs":
            return None
        if not parts[3].startswith(parts[2]) or len(parts[3]) < 3:
            return None
        return parts[3]
