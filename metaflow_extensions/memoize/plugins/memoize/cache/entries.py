"""The cache: entries (manifests) and content-addressed blobs on a Store.

Layout under the cache root (see docs/concepts.md):

    v1/entries/<Flow>/<step>/<key>.json   one manifest per key
    v1/used/<Flow>/<step>/<key>           last-use marker (tiny; rewritten on a hit)
    v1/blobs/<sha[:2]>/<sha>               artifact blobs, exactly as Metaflow stores them
    v1/locks/<Flow>/<step>/<key>           single-flight leases (lock=True)
    v1/index/<Flow>/<step>/<key>/<md5>_<created>_<expires>_<refs>
                                           empty; what pruning needs, in the name
    v1/suspect/<Flow>/<step>/<key>.json    an entry an audit set aside (audit.py)
    v1/audits/<Flow>/<step>/<key>_<outcome>_<ms>
                                           one tiny record per audited hit
    v1/catalog/<Flow>/<step>.json.gz       the step's index names in one object
                                           (catalog.py): what `stats` and `list`
                                           would otherwise list the index for

Blobs are written before the manifest that references them, and the manifest
is published with put-if-absent (first writer wins) unless refreshing.

The index exists so that garbage collection, `stats` and `list` can list instead
of reading every manifest (one GET each: minutes for 10,000 entries). It is
written after the manifest, only on stores whose listings carry each object's
MD5 (S3), and an index object is believed only while its ``md5`` equals the
listed MD5 of the entry's manifest: a stale, missing or unverifiable index just
means that manifest is read, as it would be without an index.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..exceptions import CacheFault, CorruptEntry
from .manifest import Manifest
from .stores import ObjectInfo, Store, check_key

LAYOUT = "v1"
#: written by memoize when it first writes into a root: maintenance commands only
#: act on a root that has it (or whose every object under v1/ is memoize's own)
MARKER = LAYOUT + "/memoize-root.json"

# The exact names memoize writes. Maintenance deletes nothing else: a name that
# merely sits under v1/ is someone else's.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"  # a flow or step name (a Python identifier)
_KEY = r"[0-9a-f]{32}"  # keys.key_of: xxh3-128 hex
_SHA = r"[0-9a-f]{40}"  # Metaflow's content hash: sha1 hex
_MANIFEST_RE = re.compile(r"^%s/entries/(%s)/(%s)/(%s)\.json$" % (LAYOUT, _NAME, _NAME, _KEY))
_USED_RE = re.compile(r"^%s/used/(%s)/(%s)/(%s)$" % (LAYOUT, _NAME, _NAME, _KEY))
_LOCK_RE = re.compile(r"^%s/locks/(%s)/(%s)/(%s)$" % (LAYOUT, _NAME, _NAME, _KEY))
_BLOB_RE = re.compile(r"^%s/blobs/([0-9a-f]{2})/(%s)$" % (LAYOUT, _SHA))
# audit.py: entries set aside, and one record per audited hit
_SUSPECT_RE = re.compile(r"^%s/suspect/(%s)/(%s)/(%s)\.json$" % (LAYOUT, _NAME, _NAME, _KEY))
_AUDIT_RE = re.compile(r"^%s/audits/(%s)/(%s)/(%s)_[a-z]+_[0-9]+$" % (LAYOUT, _NAME, _NAME, _KEY))
_CATALOG_RE = re.compile(r"^%s/catalog/(%s)/(%s)\.json\.gz$" % (LAYOUT, _NAME, _NAME))
# each reference may carry its blob's stored size ("<ref>=<bytes>"): names written
# before sizes were added have none
_INDEX_REF = r"[0-9a-f]{%d}(?:=[0-9]+)?" % 16
_INDEX_RE = re.compile(
    r"^%s/index/(%s)/(%s)/(%s)/([0-9a-f]{32})_([0-9]+)_([0-9]+|never)_(%s(?:\.%s)*|-)"
    r"(?:_([0-9a-f]{32}))?$" % (LAYOUT, _NAME, _NAME, _KEY, _INDEX_REF, _INDEX_REF)
)
# partial files of killed writers (stores/local.py: ".tmp-" and 16 hex digits, or
# mkstemp's ".tmp-" and 8 letters, digits or underscores), only in memoize's folders
_TEMP_RE = re.compile(
    r"^%s/(?:entries|used|locks|index|blobs)(?:/[A-Za-z0-9_=.-]+)*/\.tmp-[A-Za-z0-9_]{8,16}$"
    % LAYOUT
)
#: blobs are named in the index by the first REF_CHARS hex digits of their sha:
#: 64 bits tell blobs apart (a collision only keeps a blob), and ~40 fit in a name
REF_CHARS = 16
#: the longest index name written; S3 allows 1,024 bytes including the root prefix
MAX_INDEX_NAME = 700


_marked: set[str] = set()  # roots whose marker this process has seen or written


def _index_hmac(secret: str, name: str) -> str:
    return hmac.new(secret.encode("utf-8"), name.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


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
    # HMAC of the rest of the name (with a signing key): see Cache.index_key
    signature: str | None = None
    signed: str = ""  # the part of the name the signature covers
    # blob_ref -> the stored size the manifest records; None when the name does not
    # give every reference's size (written before sizes were, or a size unknown)
    sizes: tuple[tuple[str, int], ...] | None = None

    def signature_valid(self, secret: str) -> bool:
        return bool(self.signature) and hmac.compare_digest(
            self.signature, _index_hmac(secret, self.signed)
        )


@dataclass
class Lookup:
    """The outcome of looking a key up."""

    status: str  # "found", "absent", "expired", "unsigned", "suspect"
    manifest: Manifest | None = None
    detail: str = ""


#: how many of a step's newest manifests are read to explain a miss
LATEST_READS = 8
#: the first character of every key and sha: a long listing of entries, index
#: objects, markers or blobs is split on it (Store.list_split)
HEX_DIGITS = "0123456789abcdef"


class RecentEntries:
    """Each step's newest entries, listed once and read at most ``limit`` per step.

    Explaining a miss compares with the step's latest entry. ``memoize plan`` and
    ``explain`` ask that once per task of a step: asking the store each time
    lists the whole step prefix per task (tasks x entries: half an hour for a
    5,000-item foreach on S3). One of these, kept for the length of a command,
    answers every task of a step from one listing and the same few manifests.
    Only for commands: a long-lived process would not see entries written since.
    """

    def __init__(self, cache: Cache, limit: int = LATEST_READS):
        self.cache = cache
        self.limit = limit
        self._newest: dict[tuple[str, str], list[Manifest]] = {}

    def newest(self, flow: str, step: str) -> list[Manifest]:
        """The step's ``limit`` newest readable manifests, newest first. A store
        fault is raised, and not remembered: the next task asks again."""
        if (flow, step) not in self._newest:
            self._newest[(flow, step)] = self.cache.newest_manifests(flow, step, self.limit)
        return self._newest[(flow, step)]

    def latest(
        self, flow: str, step: str, prefer: Callable[[Manifest], bool] | None = None
    ) -> Manifest | None:
        """Among the newest manifests, the newest that ``prefer`` accepts, else the newest."""
        manifests = self.newest(flow, step)
        if prefer is not None:
            for manifest in manifests:
                if prefer(manifest):
                    return manifest
        return manifests[0] if manifests else None


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
    def suspect_key(flow: str, step: str, key: str) -> str:
        return check_key("%s/suspect/%s/%s/%s.json" % (LAYOUT, flow, step, key))

    @staticmethod
    def audit_prefix(flow: str | None = None, step: str | None = None) -> str:
        parts = [LAYOUT, "audits"] + [p for p in (flow, step) if p]
        return check_key("/".join(parts)) + "/"

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
        match = _MANIFEST_RE.match(object_key)
        return match.groups() if match else None

    @staticmethod
    def index_prefix(flow: str | None = None, step: str | None = None, key: str | None = None):
        parts = [LAYOUT, "index"] + [p for p in (flow, step, key) if p]
        return check_key("/".join(parts)) + "/"

    @staticmethod
    def index_key(manifest: Manifest, md5: str, signing_key: str | None = None) -> str | None:
        """The index object name for a manifest whose bytes have ``md5``; None if too long.

        With a signing key the name ends in an HMAC of the rest: a reader with the key
        believes only signed index objects (a forged one could claim an entry expired,
        or that it references no blob)."""
        # with each blob's stored size, so that `stats` need not list the blobs
        sizes = {blob_ref(a.sha): a.stored_size for a in manifest.artifacts.values()}
        refs = (
            ".".join(
                ref if size is None else "%s=%d" % (ref, size)
                for ref, size in sorted(sizes.items())
            )
            or "-"
        )
        expires = "never" if manifest.expires is None else "%d" % round(manifest.expires * 1000)
        name = "%s/%s_%d_%s_%s" % (
            Cache.index_prefix(manifest.flow, manifest.step, manifest.key).rstrip("/"),
            md5,
            round(manifest.created * 1000),
            expires,
            refs,
        )
        if signing_key:
            name += "_" + _index_hmac(signing_key, name)
        return check_key(name) if len(name) <= MAX_INDEX_NAME else None

    @staticmethod
    def parse_index_key(object_key: str) -> IndexRecord | None:
        """The record an index object name holds; None for anything else."""
        match = _INDEX_RE.match(object_key)
        if match is None:
            return None
        flow, step, key, md5, created, expires, refs, signature = match.groups()
        named = [r.partition("=") for r in refs.split(".") if r and r != "-"]
        sizes = None
        if all(size for _, _, size in named):
            sizes = tuple(sorted((ref, int(size)) for ref, _, size in named))
        return IndexRecord(
            flow,
            step,
            key,
            md5,
            int(created) / 1000.0,
            None if expires == "never" else int(expires) / 1000.0,
            frozenset(ref for ref, _, _ in named),
            signature,
            object_key[: -len(signature) - 1] if signature else object_key,
            sizes,
        )

    # -- reading -------------------------------------------------------------
    def lookup(self, flow: str, step: str, key: str) -> Lookup:
        """Find the entry for a key. Raises CorruptEntry / StoreUnavailable on faults."""
        dated = self.store.get_dated(self.manifest_key(flow, step, key))
        if dated is None:
            # only on the miss path: a hit pays nothing for audits
            if self.store.head(self.suspect_key(flow, step, key)) is not None:
                return Lookup(
                    "suspect", detail="the entry was set aside: an audit did not reproduce it"
                )
            return Lookup("absent", detail="no entry")
        data, written, store_now = dated
        manifest = Manifest.loads(data, expected_key=key)
        if manifest.flow != flow or manifest.step != step:
            raise CorruptEntry("manifest belongs to %s/%s" % (manifest.flow, manifest.step), key)
        if self.signing_key and not manifest.signature_valid(self.signing_key):
            why = "is unsigned" if not manifest.signature else "has a bad signature"
            return Lookup("unsigned", manifest, "entry %s" % why)
        # on the store's clock: the writer's (in `created`/`expires`) may be skewed
        age = (store_now if store_now is not None else self.clock()) - written
        if manifest.expired_at_age(age):
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

    def latest_entry(
        self, flow: str, step: str, prefer=None, limit: int = LATEST_READS
    ) -> Manifest | None:
        """The most recent readable entry of a step, to explain a miss.

        Reads at most ``limit`` of the newest manifests, in parallel (a foreach
        step may have thousands, and this runs on every miss); among them the
        newest one that ``prefer(manifest)`` accepts (e.g. same foreach item)
        wins, else the newest. A command that asks for many tasks of one step
        keeps a ``RecentEntries`` instead, which lists and reads once.
        """
        return RecentEntries(self, limit).latest(flow, step, prefer)

    def newest_manifests(self, flow: str, step: str, limit: int = LATEST_READS) -> list[Manifest]:
        """The ``limit`` most recently written entries of a step that can be read,
        newest first: one listing of the step, at most ``limit`` GETs."""
        from concurrent.futures import ThreadPoolExecutor

        infos = [
            i
            # one listing, not list_split: a task's miss asks this too (latest_entry),
            # and most steps have fewer entries than one page holds
            for i in self.store.list(self.entry_prefix(flow, step))
            if self.parse_manifest_key(i.key)
        ]
        infos.sort(key=lambda i: i.modified, reverse=True)
        infos = infos[:limit]
        if not infos:
            return []

        def read(info):
            try:
                return self.read_manifest(info.key)
            except CacheFault:
                return None

        with ThreadPoolExecutor(max_workers=min(8, len(infos))) as pool:
            return [m for m in pool.map(read, infos) if m is not None]

    def last_used(self, flow: str, step: str, key: str) -> float | None:
        info = self.store.head(self.used_key(flow, step, key))
        return None if info is None else info.modified

    # -- writing -------------------------------------------------------------
    def publish(self, manifest: Manifest, overwrite: bool = False) -> bool:
        """Write the manifest (blobs must already be stored). False if another writer won."""
        manifest.sign(self.signing_key)
        self.ensure_marker()
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

    def ensure_marker(self, recheck: bool = False) -> None:
        """Mark the root as a memoize cache (checked once per process and root, unless
        ``recheck``)."""
        if self.store.url in _marked and not recheck:
            return
        if self.store.head(MARKER) is None:
            from ..version import __version__

            doc = {"memoize": "cache root", "layout": LAYOUT, "version": __version__}
            self.store.put_if_absent(MARKER, json.dumps(doc, sort_keys=True).encode())
        _marked.add(self.store.url)

    def has_marker(self) -> bool:
        return self.store.head(MARKER) is not None

    def _write_index(self, manifest: Manifest, data: bytes) -> None:
        if not self.store.lists_md5:
            return
        name = self.index_key(
            manifest, hashlib.md5(data, usedforsecurity=False).hexdigest(), self.signing_key
        )
        if name is None:
            return
        try:
            self.store.put(name, b"")
        except CacheFault:
            pass  # the entry is published; pruning will read its manifest instead

    def record_use(self, flow: str, step: str, key: str) -> None:
        """Mark an entry as used now: a tiny object, so LRU pruning never rewrites blobs.
        Only its modification time is read (``last_used``): where the store sets
        that of an existing marker cheaply (a local file's mtime), nothing is rewritten."""
        marker = self.used_key(flow, step, key)
        if self.store.cheap_touch and self.store.touch(marker):
            return
        self.store.put(marker, json.dumps({"used": self.clock()}).encode())

    def remove_entry(self, flow: str, step: str, key: str) -> None:
        """Delete an entry: the manifest first, so a reader never sees an entry without its marker."""
        self.store.delete([self.manifest_key(flow, step, key)])
        self.store.delete([self.used_key(flow, step, key)])

    # -- audits (audit.py) ----------------------------------------------------
    def set_aside(self, manifest: Manifest, audit: dict) -> None:
        """Mark an entry suspect: keep it (and why) under suspect/, then remove it,
        so later lookups miss with status "suspect" until a new entry is stored."""
        payload = json.dumps({"manifest": manifest.to_dict(), "audit": audit}, sort_keys=True)
        self.store.put(
            self.suspect_key(manifest.flow, manifest.step, manifest.key), payload.encode()
        )
        self.remove_entry(manifest.flow, manifest.step, manifest.key)

    def record_audit(self, flow: str, step: str, key: str, matched: bool, detail: dict) -> None:
        name = "%s%s_%s_%d" % (
            self.audit_prefix(flow, step),
            key,
            "match" if matched else "mismatch",
            int(self.clock() * 1000),
        )
        self.store.put(check_key(name), json.dumps(detail, sort_keys=True).encode())

    def audit_counts(self, flow: str | None = None) -> dict[tuple[str, str], tuple[int, int]]:
        """{(flow, step): (audited hits, mismatches)} from the audit records."""
        counts: dict[tuple[str, str], tuple[int, int]] = {}
        for info in self.store.list(self.audit_prefix(flow)):
            parts = info.key.split("/")
            if len(parts) != 5 or parts[1] != "audits":
                continue
            audited, mismatched = counts.get((parts[2], parts[3]), (0, 0))
            bad = parts[4].split("_")[1:2] == ["mismatch"]
            counts[(parts[2], parts[3])] = (audited + 1, mismatched + int(bad))
        return counts

    # -- maintenance (listing markers and blobs; used by maintenance.py) -----
    @staticmethod
    def used_prefix(flow: str | None = None, step: str | None = None) -> str:
        parts = [LAYOUT, "used"] + [p for p in (flow, step) if p]
        return check_key("/".join(parts)) + "/"

    @staticmethod
    def parse_used_key(object_key: str) -> tuple[str, str, str] | None:
        """(flow, step, key) for a last-use marker name, None for anything else."""
        match = _USED_RE.match(object_key)
        return match.groups() if match else None

    @staticmethod
    def parse_lock_key(object_key: str) -> tuple[str, str, str] | None:
        """(flow, step, key) for a lease name, None for anything else."""
        match = _LOCK_RE.match(object_key)
        return match.groups() if match else None

    @staticmethod
    def suspect_prefix(flow: str | None = None, step: str | None = None) -> str:
        parts = [LAYOUT, "suspect"] + [p for p in (flow, step) if p]
        return check_key("/".join(parts)) + "/"

    @staticmethod
    def catalog_key(flow: str, step: str) -> str:
        return check_key("%s/catalog/%s/%s.json.gz" % (LAYOUT, flow, step))

    @staticmethod
    def catalog_prefix(flow: str | None = None) -> str:
        return check_key("/".join([LAYOUT, "catalog"] + ([flow] if flow else []))) + "/"

    @staticmethod
    def parse_catalog_key(object_key: str) -> tuple[str, str] | None:
        """(flow, step) for a catalog object name, None for anything else."""
        match = _CATALOG_RE.match(object_key)
        return match.groups() if match else None

    @staticmethod
    def parse_record_key(object_key: str) -> tuple[str, str, str] | None:
        """(flow, step, key) for a suspect marker or an audit record, None otherwise."""
        match = _SUSPECT_RE.match(object_key) or _AUDIT_RE.match(object_key)
        return match.groups() if match else None

    @staticmethod
    def is_temporary(object_key: str) -> bool:
        """Whether a name is a partial file a killed memoize writer left."""
        return _TEMP_RE.match(object_key) is not None

    @staticmethod
    def is_own(object_key: str) -> bool:
        """Whether a name is one memoize writes (and maintenance may delete)."""
        return (
            object_key == MARKER
            or any(
                parse(object_key) is not None
                for parse in (
                    Cache.parse_manifest_key,
                    Cache.parse_used_key,
                    Cache.parse_lock_key,
                    Cache.parse_blob_key,
                    Cache.parse_index_key,
                )
            )
            or Cache.is_temporary(object_key)
            or Cache.parse_record_key(object_key) is not None
            or Cache.parse_catalog_key(object_key) is not None
        )

    @staticmethod
    def parse_blob_key(object_key: str) -> str | None:
        """The sha of a blob object name, None for anything else."""
        match = _BLOB_RE.match(object_key)
        if match is None or not match.group(2).startswith(match.group(1)):
            return None
        return match.group(2)
