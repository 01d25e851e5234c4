"""Cache maintenance: what to list, invalidate, prune and garbage-collect.

Two halves, kept apart:

* Decisions are pure functions of an inventory and a clock value passed in
  (``select_for_prune``, ``select_garbage_blobs``, ``select_orphan_markers``,
  ``summarize``): no I/O, table-testable.
* ``scan`` reads an inventory from a ``Cache``; ``execute`` applies a ``Plan``.

Deletion order makes an interrupted prune harmless: manifests first, then
last-use markers and index objects, then blobs that no manifest anywhere under
the root references. A blob is never deleted while a manifest that references
it exists, so every entry left behind is complete. Only names memoize writes
(``Cache.is_own``) are ever deleted.

On S3 a full scan reads no manifest that has a verified index object (see
entries.py): what pruning needs (times, blob references) is in the index names,
and blob sizes come from the blob listing. `stats` and `list` scan the same way
(``scan(indexed=True)``), from each step's catalog when it has one (catalog.py):
then they list the manifests alone. `list` reads the manifests of the rows it shows.

The long phases (reading manifests, deleting) report how far they got to a
``progress`` callable, ``progress(label, total)``: a context manager whose value
has ``update(n)``. The CLI passes click's progress bar; the default says nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ContextManager, TypeVar

from ..durations import format_duration
from ..exceptions import CorruptEntry, MemoizeCliError, StoreUnavailable
from . import catalog
from .entries import HEX_DIGITS, LAYOUT, MARKER, Cache, IndexRecord, blob_ref
from .manifest import Manifest
from .stores import ObjectInfo, UploadInfo, check_key, open_store
from .stores.local import LocalStore

#: a blob younger than this is never collected: a writer may be about to
#: publish a manifest that references it
DEFAULT_GRACE = 3600.0
#: parallel manifest reads (S3 GETs); matches the S3 store's connection pool
READ_PARALLELISM = 16
#: objects per delete call while a deletion reports progress (S3 deletes 1,000 per request)
DELETE_CHUNK = 1000

Progress = Callable[[str, int], ContextManager[Any]]


class _Silent:
    def update(self, n: int) -> None:
        pass


def no_progress(label: str, total: int) -> ContextManager[Any]:
    """The default ``progress``: reports nothing."""
    return contextlib.nullcontext(_Silent())


# -- inventory -----------------------------------------------------------------
@dataclass
class EntryInfo:
    """One entry (manifest object) as found in the store: read, or known from its index."""

    flow: str
    step: str
    key: str
    object: ObjectInfo  # the manifest object: key, size, modified
    manifest: Manifest | None = None
    error: str | None = None  # why the manifest cannot be used (corrupt entries)
    refs: frozenset[str] = frozenset()  # blob_ref of each blob the manifest names
    last_used: float | None = None  # mtime of the last-use marker
    # when the manifest was not read, what its verified index object says:
    index: IndexRecord | None = None
    index_sizes: dict[str, int] = field(default_factory=dict)  # blob_ref -> listed size

    @property
    def ident(self) -> tuple[str, str, str]:
        return self.flow, self.step, self.key

    @property
    def readable(self) -> bool:
        """A valid entry (manifest parsed, or its verified index): not corrupt."""
        return self.manifest is not None or self.index is not None

    @property
    def created(self) -> float:
        if self.manifest:
            return self.manifest.created
        return self.index.created if self.index else self.object.modified

    @property
    def expires(self) -> float | None:
        if self.manifest:
            return self.manifest.expires
        return self.index.expires if self.index else None

    @property
    def recency(self) -> float:
        """Last use (marker mtime), else creation: what LRU orders by."""
        return self.last_used if self.last_used is not None else self.created

    def expired(self, now: float) -> bool:
        """Judged by the manifest object's age on the store's clock (its listed
        modification time) and the entry's ttl, never by the writer's clock."""
        if not self.readable or self.expires is None:
            return False
        return max(0.0, now - self.object.modified) >= self.expires - self.created

    def blob_sizes(self) -> dict[str, int]:
        """Stored size of each distinct blob (by blob_ref): as the manifest records
        it, or as the blob listing says for an entry known from its index."""
        if self.manifest is None:
            return dict(self.index_sizes)
        out: dict[str, int] = {}
        for record in self.manifest.artifacts.values():
            out[blob_ref(record.sha)] = record.stored_size or 0
        return out

    @property
    def size(self) -> int:
        """Bytes of the entry's blobs, each distinct blob once."""
        return sum(self.blob_sizes().values())


@dataclass
class Inventory:
    """What a scan found under one cache root."""

    root: str
    flow: str | None
    step: str | None
    entries: list[EntryInfo]  # in scope
    markers: dict[tuple[str, str, str], ObjectInfo]  # in scope
    # index objects in scope (the verified ones and the stale ones)
    index: dict[tuple[str, str, str], list[ObjectInfo]] = field(default_factory=dict)
    # only with a full scan (for garbage collection):
    blobs: dict[str, ObjectInfo] | None = None  # every blob under the root
    outside_refs: frozenset[str] = frozenset()  # blob_refs named by entries out of scope
    manifests_seen: dict[str, ObjectInfo] = field(default_factory=dict)  # every manifest listed
    stale_index: list[ObjectInfo] = field(default_factory=list)  # describe no current manifest
    catalogs: list[ObjectInfo] = field(default_factory=list)  # every step's (catalog.py)
    # audit records and suspect markers (audit.py) in scope, by the entry they are about
    records: dict[tuple[str, str, str], list[ObjectInfo]] = field(default_factory=dict)


@dataclass
class Target:
    """A cache root and the part of it a command acts on."""

    cache: Cache
    flow: str | None = None

    @property
    def root(self) -> str:
        return self.cache.store.url


def open_target(root: str, flow: str | None = None) -> Target:
    try:
        store = open_store(root)
    except ValueError as err:
        raise MemoizeCliError(str(err))
    from .. import config

    # with a signing key, only signed index objects are believed (see cache.py)
    return Target(Cache(store, signing_key=config.signing_key()), flow)


def is_cache_root(target: Target) -> bool:
    """Whether a run ever wrote to the root: it has memoize's marker, or (an older
    root, or one whose only writers were killed before publishing) anything under
    v1/, partial writes included. Raises StoreUnavailable when the root cannot
    be read: an unreadable root must not look like an empty one."""
    cache = target.cache
    if cache.has_marker():
        return True
    store = cache.store
    if isinstance(store, LocalStore):
        # a listing of a folder that cannot be entered is empty, not an error
        for path in (store.root, os.path.join(store.root, LAYOUT)):
            if os.path.isdir(path):
                try:
                    with os.scandir(path):
                        pass
                except OSError as err:
                    raise StoreUnavailable("%s cannot be read: %s" % (path, err.strerror))
    if next(iter(store.list(LAYOUT + "/")), None) is not None:
        return True
    # listings leave out partial files and uploads of killed writers; prune reclaims them
    return bool(store.stale_temporaries(float("inf"), LAYOUT + "/")) or bool(
        store.incomplete_uploads(LAYOUT + "/")
    )


def require_cache_root(target: Target) -> None:
    """Cache commands read and delete; only a run creates a root. A root that is
    not there (a typo, a volume not mounted, a bucket prefix never written) is an
    error, not an empty cache."""
    if is_cache_root(target):
        return
    store = target.cache.store
    if isinstance(store, LocalStore) and not os.path.isdir(store.root):
        what = "%s does not exist" % target.root
    else:
        what = "%s holds no memoize cache (no %s, nothing under %s/)" % (
            target.root,
            MARKER,
            LAYOUT,
        )
    raise StoreUnavailable(
        "%s: check the path (a run that stores an entry creates the root)" % what
    )


def check_root(target: Target) -> bool:
    """Whether ``target`` is a memoize cache that maintenance may delete from.

    True for a root with memoize's marker, and for an older root without one
    whose every object under v1/ has a name memoize writes (it is adopted: the
    marker is written before anything is deleted). False for a root with nothing
    under v1/ (nothing to do). Raises MemoizeCliError for anything else: a
    folder or prefix that holds objects memoize did not write is not a cache.
    """
    cache = target.cache
    if cache.has_marker():
        return True
    found = False
    for info in cache.store.list(LAYOUT + "/"):
        found = True
        if not Cache.is_own(info.key):
            raise MemoizeCliError(
                "refusing to delete anything in %s: it has no memoize marker (%s) and "
                "%s under %s/ is not an object memoize writes, so this is probably not a "
                "memoize cache root. Point --root (or METAFLOW_MEMOIZE_ROOT, or "
                "@memoize(store=...)) at the directory or s3://bucket/prefix that holds "
                "memoize's %s/ folder; every run that stores an entry marks its root."
                % (target.root, MARKER, info.key, LAYOUT, LAYOUT)
            )
    if not found:
        # only partial files or uploads of killed writers (listings leave them out)
        found = any(
            Cache.is_temporary(t.key)
            for t in cache.store.stale_temporaries(float("inf"), LAYOUT + "/")
        ) or any(
            Cache.parse_blob_key(u.key) is not None
            for u in cache.store.incomplete_uploads(LAYOUT + "/")
        )
    return found


def flow_roots(flow, default_root: str) -> list[str]:
    """The default root, then each distinct ``@memoize(store=...)`` of the flow's steps."""
    roots = [default_root]
    for step in flow:
        for deco in getattr(step, "decorators", ()):
            if deco.name == "memoize":
                store = deco.attributes.get("store")
                if isinstance(store, str) and store.strip() and store not in roots:
                    roots.append(store)
    return roots


def _loose_refs(data: bytes | None) -> frozenset[str]:
    """Blob shas named by a manifest that does not parse (e.g. a newer format).

    Garbage collection must not take their blobs: whatever can be read as a
    sha is kept.
    """
    try:
        doc = json.loads((data or b"").decode("utf-8"))
        artifacts = doc.get("artifacts")
        return frozenset(
            a["sha"]
            for a in artifacts.values()
            if isinstance(a, dict) and isinstance(a.get("sha"), str)
        )
    except Exception:
        return frozenset()


def _read_entry(cache: Cache, info: ObjectInfo) -> EntryInfo | None:
    parsed = Cache.parse_manifest_key(info.key)
    if parsed is None:
        return None
    flow, step, key = parsed
    entry = EntryInfo(flow, step, key, info)
    data = cache.store.get(info.key)
    if data is None:  # deleted since the listing
        return None
    try:
        manifest = Manifest.loads(data, expected_key=key)
        if manifest.flow != flow or manifest.step != step:
            raise CorruptEntry("manifest belongs to %s/%s" % (manifest.flow, manifest.step))
        entry.manifest = manifest
        entry.refs = frozenset(blob_ref(sha) for sha in manifest.blob_shas)
    except CorruptEntry as err:
        entry.error = str(err)
        entry.refs = frozenset(blob_ref(sha) for sha in _loose_refs(data))
    return entry


def read_entries(
    cache: Cache,
    infos: Iterable[ObjectInfo],
    progress: Progress = no_progress,
    label: str = "Reading manifests",
) -> list[EntryInfo]:
    """Read manifests in parallel (one GET each); vanished ones are skipped."""
    infos = [i for i in infos if Cache.parse_manifest_key(i.key) is not None]
    found: list[EntryInfo | None] = []
    with progress(label, len(infos)) as bar:
        if len(infos) <= 1:
            found = [_read_entry(cache, i) for i in infos]
            bar.update(len(infos))
        else:
            with ThreadPoolExecutor(max_workers=min(READ_PARALLELISM, len(infos))) as pool:
                for entry in pool.map(lambda i: _read_entry(cache, i), infos):
                    found.append(entry)
                    bar.update(1)
    return [e for e in found if e is not None]


def _list_keyed(cache: Cache, flow: str | None, step: str | None, prefix: str) -> list[ObjectInfo]:
    """The objects under the prefix of entries, index objects or markers of a step,
    a flow or all flows (``prefix``). Below the flow and step folders every name
    starts with a key: an object store finds the folders (one request each level)
    and lists each step in 16 parts by the key's first digit, side by side
    (Store.list_split). On S3 one listing of 10,000 entries is ten requests one
    after the other, and moto sorts every key of the prefix for each of them.
    """
    store = cache.store
    if not store.lists_in_parts:
        return list(store.list(prefix))
    prefixes = [prefix]
    for _ in range(2 - bool(flow) - bool(flow and step)):  # the folders not named
        prefixes = [p + name + "/" for p in prefixes for name in store.list_folders(p)]
    if len(prefixes) <= 1:  # no folder at all: nothing to list
        return store.list_split(prefixes[0], HEX_DIGITS) if prefixes else []
    with ThreadPoolExecutor(max_workers=min(4, len(prefixes))) as pool:
        parts = pool.map(lambda p: store.list_split(p, HEX_DIGITS), prefixes)
        return [info for part in parts for info in part]


def list_markers(cache: Cache, flow: str | None, step: str | None) -> dict[tuple, ObjectInfo]:
    out = {}
    for info in _list_keyed(cache, flow, step, Cache.used_prefix(flow, step)):
        parsed = Cache.parse_used_key(info.key)
        if parsed is not None:
            out[parsed] = info
    return out


def list_index(
    cache: Cache, flow: str | None, step: str | None
) -> dict[tuple[str, str, str], list[tuple[IndexRecord, ObjectInfo]]]:
    out: dict[tuple[str, str, str], list[tuple[IndexRecord, ObjectInfo]]] = {}
    for info in _list_keyed(cache, flow, step, Cache.index_prefix(flow, step)):
        record = Cache.parse_index_key(info.key)
        if record is not None:
            out.setdefault((record.flow, record.step, record.key), []).append((record, info))
    return out


def index_or_read(
    cache: Cache,
    listed: list[ObjectInfo],
    index: dict[tuple[str, str, str], list[tuple[IndexRecord, ObjectInfo]]],
    progress: Progress = no_progress,
) -> tuple[list[EntryInfo], list[ObjectInfo]]:
    """(entries, stale index objects): each listed manifest is known from the
    index object that names its listed MD5, else read (one GET).

    An index object that names no listed manifest's MD5 is stale (its entry was
    removed or rewritten), or describes a manifest written after the listing.
    """
    known, to_read, used = [], [], set()
    for info in listed:
        parsed = Cache.parse_manifest_key(info.key)
        if parsed is None:
            continue
        matches = [
            (r, o)
            for r, o in index.get(parsed, ())
            if info.md5
            and r.md5 == info.md5
            and (not cache.signing_key or r.signature_valid(cache.signing_key))
        ]
        # two index objects that describe the same manifest differently: one is forged
        if len({(r.created, r.expires, r.refs, r.sizes) for r, _ in matches}) != 1:
            to_read.append(info)
            continue
        record, obj = matches[0]
        used.add(obj.key)
        known.append(EntryInfo(*parsed, info, refs=record.refs, index=record))
    stale = [o for objs in index.values() for _, o in objs if o.key not in used]
    return known + read_entries(cache, to_read, progress), stale


def list_records(
    cache: Cache, flow: str | None, step: str | None
) -> dict[tuple[str, str, str], list[ObjectInfo]]:
    """Suspect markers and audit records, by the entry (flow, step, key) they are about."""
    out: dict[tuple[str, str, str], list[ObjectInfo]] = {}
    for prefix in (Cache.suspect_prefix(flow, step), Cache.audit_prefix(flow, step)):
        for info in cache.store.list(prefix):
            ident = Cache.parse_record_key(info.key)
            if ident is not None:
                out.setdefault(ident, []).append(info)
    return out


def select_stale_records(
    records: dict[tuple, list[ObjectInfo]], live: set[tuple], now: float, grace: float
) -> list[ObjectInfo]:
    """Audit records and suspect markers older than ``grace`` that say nothing
    any more: a suspect marker once a new entry is stored at its key (it only
    made lookups miss until then), audit records of a key with neither an
    entry nor a suspect marker (``stats`` counts the audits of what exists)."""
    out = []
    for ident, objects in sorted(records.items()):
        suspect = [o for o in objects if "/suspect/" in o.key]
        if ident in live:
            out += [o for o in suspect if now - o.modified >= grace]
        elif not suspect:
            out += [o for o in objects if now - o.modified >= grace]
    return out


def list_catalogs(cache: Cache) -> list[ObjectInfo]:
    return [i for i in cache.store.list(Cache.catalog_prefix()) if Cache.parse_catalog_key(i.key)]


def list_blobs(cache: Cache) -> dict[str, ObjectInfo]:
    out = {}
    for info in cache.store.list_split(Cache.blob_prefix(), HEX_DIGITS):
        sha = Cache.parse_blob_key(info.key)
        if sha is not None:
            out[sha] = info
    return out


def _known_from_catalogs(
    cache: Cache,
    scope: tuple[str | None, str | None],
    listed: list[ObjectInfo],
    catalogs: dict[tuple[str, str], catalog.Names],
    progress: Progress,
) -> tuple[list[EntryInfo], dict]:
    """(entries, index listed): the listed manifests known from their step's
    catalog; the others read, or (many) known from the index as ``index_or_read``
    knows them. Each step's catalog is then rewritten if what is known changed."""
    named, uncovered = catalog.split(cache, listed, catalogs)
    entries = [EntryInfo(*ident, info, refs=r.refs, index=r) for ident, info, r in named]
    index: dict = {}
    if catalog.read_instead_of_listing(len(uncovered), len(listed)):
        entries += read_entries(cache, uncovered, progress)
    else:
        index = list_index(cache, *scope)
        entries += index_or_read(cache, uncovered, index, progress)[0]
    known: dict[tuple[str, str], catalog.Names] = {}
    for entry in entries:
        if entry.index is not None:
            name = catalog.name_of(entry.index)
        elif entry.manifest is not None:
            name = catalog.name_for_manifest(cache, entry.object, entry.manifest)
        else:
            continue  # corrupt: read again next time
        if name is not None:
            known.setdefault((entry.flow, entry.step), {})[entry.key] = name
    catalog.save(cache, known, catalogs)
    return entries, index


def _sizes_unnamed(index: dict, in_scope: Callable[[tuple[str, str, str]], bool]) -> bool:
    """Whether an index object in scope names its blobs without their sizes."""
    return any(
        record.sizes is None
        for ident, objects in index.items()
        if in_scope(ident)
        for record, _ in objects
    )


def scan(
    target: Target,
    step: str | None = None,
    full: bool = False,
    progress: Progress = no_progress,
    indexed: bool = False,
    blob_sizes: bool = True,
    last_used: bool = True,
    records: bool = True,
) -> Inventory:
    """Read the entries (and markers) in scope: the target's flow (or all), one step (or all).

    ``full``: also list every blob and know every manifest under the root,
    whatever the scope: garbage collection needs to know all references.

    ``indexed`` (implied by ``full``): on a store whose listings carry MD5s, an
    entry with a verified index object is known from it and its manifest is not
    read (``index_or_read``): what `stats` and the order of `list` need
    (creation, expiry, blob references and their sizes) is in the index name.
    Such entries have no ``manifest``: read the few that are shown with
    ``read_manifests``. Blobs are listed for their sizes only when an index name
    in scope does not give them (written before names did). ``blob_sizes=False``
    means no size is wanted: nothing but the manifests read later will show one
    (an index-known entry's ``size`` is 0 until then). Other stores read every
    manifest.

    ``last_used=False`` skips the listing of last-use markers (``last_used``
    stays None: ``read_last_used`` reads those of the rows shown), and
    ``records=False`` that of audit records and suspect markers, which only
    removals act on. On S3 each listing is a round trip per 1,000 objects.
    """
    cache, flow = target.cache, target.flow
    # a step name alone is no prefix (v1/entries/<Flow>/<step>): filter instead;
    # garbage collection needs every entry under the root
    scope = (None, None) if full else (flow, step if flow else None)
    use_index = (full or indexed) and cache.store.lists_md5
    # `stats` and `list` know entries from the steps' catalogs, listing the index
    # only when a catalog leaves many manifests uncovered (catalog.py)
    use_catalog = use_index and not full

    def in_scope(ident: tuple[str, str, str]) -> bool:
        return (flow is None or ident[0] == flow) and (step is None or ident[1] == step)

    # the listings are independent: run them side by side (on S3 each page of
    # 1,000 keys is a round trip, and parsing one overlaps fetching another)
    with ThreadPoolExecutor(max_workers=4) as pool:
        listing = pool.submit(_list_keyed, cache, *scope, Cache.entry_prefix(*scope))
        # listed whatever the store (but for a catalog): invalidate removes the
        # index objects of its entries
        indexing = None if use_catalog else pool.submit(list_index, cache, *scope)
        cataloging = pool.submit(catalog.load, cache, *scope) if use_catalog else None
        marking = (
            pool.submit(list_markers, cache, flow, step if flow else None) if last_used else None
        )
        recording = (
            pool.submit(list_records, cache, flow, step if flow else None) if records else None
        )
        blobbing = pool.submit(list_blobs, cache) if full else None
        catalogs = pool.submit(list_catalogs, cache) if full else None
        listed = listing.result()
        if cataloging is not None:
            entries, index = _known_from_catalogs(
                cache, scope, listed, cataloging.result(), progress
            )
            stale: list[ObjectInfo] = []
            unnamed = any(e.index is not None and e.index.sizes is None for e in entries)
        else:
            index = indexing.result()
            unnamed = _sizes_unnamed(index, in_scope)
        if blobbing is None and use_index and blob_sizes and unnamed:
            blobbing = pool.submit(list_blobs, cache)
        markers = marking.result() if marking else {}
        found_records = recording.result() if recording else {}
        blobs = blobbing.result() if blobbing else None
    if use_index and not use_catalog:
        entries, stale = index_or_read(cache, listed, index, progress)
    elif not use_index:
        entries, stale = read_entries(cache, listed, progress), []
    inventory = Inventory(
        target.root,
        flow,
        step,
        [e for e in entries if in_scope(e.ident)],
        {i: m for i, m in markers.items() if in_scope(i)},
        {i: [o for _, o in objs] for i, objs in index.items() if in_scope(i)},
        records={i: objs for i, objs in found_records.items() if in_scope(i)},
    )
    for entry in inventory.entries:
        marker = inventory.markers.get(entry.ident)
        entry.last_used = marker.modified if marker else None
    listed_sizes: dict[str, int] = {}
    for sha, info in (blobs or {}).items():
        listed_sizes[blob_ref(sha)] = listed_sizes.get(blob_ref(sha), 0) + info.size
    for entry in entries:
        if entry.index is None:
            continue
        if entry.index.sizes is not None:
            entry.index_sizes = dict(entry.index.sizes)
        elif blobs is not None:
            entry.index_sizes = {r: listed_sizes.get(r, 0) for r in entry.refs}
    if full:
        inventory.blobs = blobs
        outside: set[str] = set()
        for entry in entries:
            if not in_scope(entry.ident):
                outside |= entry.refs
        inventory.outside_refs = frozenset(outside)
        inventory.manifests_seen = {info.key: info for info in listed}
        inventory.stale_index = stale
        inventory.catalogs = catalogs.result() if catalogs else []
    return inventory


def read_manifests(
    cache: Cache, entries: Sequence[EntryInfo], progress: Progress = no_progress
) -> None:
    """Read the manifests of the entries a scan knew from their index alone, in place:
    what only a manifest says (origin, artifacts, parameters) for the rows shown.

    A manifest that no longer parses makes its entry corrupt, as a scan that read
    it would have; one deleted since the scan leaves its entry as the index told it.
    """
    unread = [e for e in entries if e.manifest is None and e.index is not None]
    read = {
        e.object.key: e
        for e in read_entries(cache, [e.object for e in unread], progress, "Reading entries shown")
    }
    for entry in unread:
        found = read.get(entry.object.key)
        if found is None:
            continue
        entry.manifest, entry.error, entry.refs = found.manifest, found.error, found.refs
        if found.manifest is None:
            entry.index, entry.index_sizes = None, {}


def read_last_used(cache: Cache, entries: Sequence[EntryInfo]) -> None:
    """The last use of each entry, from its marker (one HEAD each, in parallel), in
    place: for the rows `list` shows when it did not list every marker."""
    if not entries:
        return
    with ThreadPoolExecutor(max_workers=min(READ_PARALLELISM, len(entries))) as pool:
        for entry, used in zip(entries, pool.map(lambda e: cache.last_used(*e.ident), entries)):
            entry.last_used = used


def list_entries(
    targets: Sequence[Target],
    step: str | None,
    now: float,
    order: str = "created",
    since: float | None = None,
    limit: int | None = None,
    progress: Progress = no_progress,
) -> tuple[list[tuple[str, EntryInfo]], list[tuple[str, EntryInfo]]]:
    """`memoize list`: (rows to show, every row that matched), each (root, entry),
    as ``select_listing`` orders and cuts them.

    Entries are selected from listings and index objects (``scan(indexed=True)``);
    only the manifests of the rows shown are read, for what only they say.
    """
    rows = []
    by_use = order == "last-used"  # every marker is needed only to sort by last use
    for target in targets:
        inventory = scan(
            target,
            step,
            progress=progress,
            indexed=True,
            blob_sizes=order == "size",
            last_used=by_use,
            records=False,
        )
        rows += [(target.root, e) for e in inventory.entries]
    shown, matched = select_listing(rows, now, order, since, limit)
    for target in targets:
        here = [e for root, e in shown if root == target.root]
        read_manifests(target.cache, here, progress)
        if not by_use:
            read_last_used(target.cache, here)
    return shown, matched


def summarize_targets(
    targets: Sequence[Target], step: str | None, now: float, progress: Progress = no_progress
) -> list[tuple[str, StepStats, list[StepStats]]]:
    """`memoize stats`: (root, totals, per flow/step) for each target, from listings
    and index objects where the store allows (``scan(indexed=True)``)."""
    out = []
    for target in targets:
        inventory = scan(
            target, step, progress=progress, indexed=True, last_used=False, records=False
        )
        out.append((target.root, *summarize(inventory, now)))
    return out


def find_entries(target: Target, prefix: str) -> list[EntryInfo]:
    """Entries in scope whose key starts with ``prefix`` (read; no other manifest is)."""
    prefix = prefix.strip().lower()
    if not prefix:
        raise MemoizeCliError("an empty key matches nothing")
    cache = target.cache
    matching = []
    for info in cache.store.list(Cache.entry_prefix(target.flow)):
        parsed = Cache.parse_manifest_key(info.key)
        if parsed is not None and parsed[2].startswith(prefix):
            matching.append(info)
    entries = read_entries(cache, matching)
    for entry in entries:
        entry.last_used = cache.last_used(*entry.ident)
    return entries


def resolve_key(candidates: list[EntryInfo], prefix: str, where: str) -> list[EntryInfo]:
    """The entries of the one key that ``prefix`` names; an error if none or several."""
    keys = sorted({e.key for e in candidates})
    if not keys:
        raise MemoizeCliError("no cache entry has a key starting with %r in %s" % (prefix, where))
    if len(keys) > 1:
        shown = ", ".join(k[:12] for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        raise MemoizeCliError(
            "key prefix %r is ambiguous: %d keys match (%s); give more characters"
            % (prefix, len(keys), shown)
        )
    return candidates


# -- decisions (pure) ----------------------------------------------------------
@dataclass(frozen=True)
class PruneCriteria:
    expired: bool = False
    older_than: float | None = None  # seconds since creation
    max_size: int | None = None  # bytes the scope must fit in (LRU evicts the rest)

    @property
    def any(self) -> bool:
        return self.expired or self.older_than is not None or self.max_size is not None


def select_for_prune(
    entries: list[EntryInfo],
    now: float,
    criteria: PruneCriteria,
) -> list[tuple[EntryInfo, str]]:
    """(entry, reason) for each entry to remove: expired, too old, then LRU over the size.

    Corrupt entries are left alone (``invalidate`` removes them). ``max_size``
    evicts the least recently used entries (last use, else creation) until what
    remains occupies at most ``max_size`` bytes: manifests plus each distinct
    blob once (the ``bytes`` of ``summarize``).
    """
    chosen: list[tuple[EntryInfo, str]] = []
    remaining: list[EntryInfo] = []
    for entry in entries:
        if not entry.readable:
            remaining.append(entry)
        elif criteria.expired and entry.expired(now):
            chosen.append((entry, "expired"))
        elif criteria.older_than is not None and now - entry.created > criteria.older_than:
            chosen.append((entry, "older than %s" % format_duration(criteria.older_than)))
        else:
            remaining.append(entry)
    if criteria.max_size is None:
        return chosen
    sizes = {}
    for entry in remaining:
        sizes.update(entry.blob_sizes())
    refcount: dict[str, int] = {}
    for entry in remaining:
        for sha in entry.blob_sizes():
            refcount[sha] = refcount.get(sha, 0) + 1
    total = sum(e.object.size for e in remaining) + sum(sizes.values())
    evictable = sorted(
        (e for e in remaining if e.readable),
        key=lambda e: (e.recency, e.created, e.key),
    )
    for entry in evictable:
        if total <= criteria.max_size:
            break
        chosen.append((entry, "least recently used"))
        total -= entry.object.size
        for sha in entry.blob_sizes():
            refcount[sha] -= 1
            if refcount[sha] == 0:
                total -= sizes[sha]
    return chosen


#: the orders `memoize list --sort` offers, and how each reads
LIST_ORDERS = {
    "created": "newest first",
    "last-used": "most recently used first",
    "size": "largest first",
    "step": "by flow and step, newest first",
    "expires": "soonest to expire first",
}

Row = TypeVar("Row")


def _listing_key(order: str) -> Callable[[EntryInfo], tuple]:
    def ident(e: EntryInfo) -> tuple:
        return (e.flow, e.step, e.key)

    return {
        "created": lambda e: (-e.created, ident(e)),
        "last-used": lambda e: (-e.recency, ident(e)),
        "size": lambda e: (-e.size, ident(e)),
        "step": lambda e: (e.flow, e.step, -e.created, e.key),
        # entries that never expire, then corrupt ones (no ttl known), come last
        "expires": lambda e: (
            not e.readable,
            e.expires is None,
            e.expires or 0.0,
            ident(e),
        ),
    }[order]


def select_listing(
    rows: Sequence[tuple[Row, EntryInfo]],
    now: float,
    order: str = "created",
    since: float | None = None,
    limit: int | None = None,
) -> tuple[list[tuple[Row, EntryInfo]], list[tuple[Row, EntryInfo]]]:
    """(rows to show, every row that matched, in order) for `memoize list`.

    ``rows`` pair each entry with whatever the caller keeps beside it (its root).
    Those whose entry was created at most ``since`` seconds before ``now``
    match; they are put in ``order`` (a key of LIST_ORDERS) and the first
    ``limit`` are shown (None or 0: all of them).
    """
    if order not in LIST_ORDERS:
        raise MemoizeCliError("cannot sort by %r: use one of %s" % (order, ", ".join(LIST_ORDERS)))
    matched = [r for r in rows if since is None or now - r[1].created <= since]
    sort_key = _listing_key(order)
    matched.sort(key=lambda r: sort_key(r[1]))
    return (matched[:limit] if limit else matched), matched


def select_garbage_blobs(
    blobs: dict[str, ObjectInfo], referenced: set[str] | frozenset[str], now: float, grace: float
) -> tuple[list[ObjectInfo], list[ObjectInfo]]:
    """(blobs to delete, unreferenced blobs kept because younger than ``grace``).

    ``referenced`` holds blob_refs (sha prefixes).
    """
    delete, young = [], []
    for sha in sorted(blobs):
        if blob_ref(sha) in referenced:
            continue
        info = blobs[sha]
        (young if now - info.modified < grace else delete).append(info)
    return delete, young


def select_orphan_markers(
    markers: dict[tuple, ObjectInfo], live: set[tuple], now: float, grace: float
) -> list[ObjectInfo]:
    """Last-use markers whose entry is gone (a hit raced a removal), older than ``grace``."""
    return [
        info
        for ident, info in sorted(markers.items())
        if ident not in live and now - info.modified >= grace
    ]


@dataclass
class Plan:
    """What a prune or an invalidation removes from one root, in deletion order."""

    root: str
    entries: list[tuple[EntryInfo, str]] = field(default_factory=list)
    markers: list[ObjectInfo] = field(default_factory=list)
    index: list[ObjectInfo] = field(default_factory=list)  # of removed entries, and stale ones
    blobs: list[ObjectInfo] = field(default_factory=list)
    young_blobs: list[ObjectInfo] = field(default_factory=list)  # unreferenced, kept (grace)
    # partial files of killed writers, older than the grace period (local stores)
    temporaries: list[ObjectInfo] = field(default_factory=list)
    # lock=True leases left by holders that died, expired and older than the grace period
    locks: list[ObjectInfo] = field(default_factory=list)
    # multipart uploads of blobs that killed writers never completed, older than the grace
    uploads: list[UploadInfo] = field(default_factory=list)
    # audit records and suspect markers (audit.py) of removed entries, and stale ones
    records: list[ObjectInfo] = field(default_factory=list)
    # the catalogs of steps left without an entry (catalog.py)
    catalogs: list[ObjectInfo] = field(default_factory=list)
    # every manifest the scan read: one not in here at deletion time is new
    seen: dict[str, ObjectInfo] = field(default_factory=dict)

    @property
    def bytes_freed(self) -> int:
        return (
            sum(e.object.size for e, _ in self.entries)
            + sum(m.size for m in self.markers)
            + sum(b.size for b in self.blobs)
            + sum(t.size for t in self.temporaries)
            + sum(lock.size for lock in self.locks)
            + sum(r.size for r in self.records)
            + sum(c.size for c in self.catalogs)
        )

    @property
    def empty(self) -> bool:
        return not (
            self.entries
            or self.markers
            or self.blobs
            or self.temporaries
            or self.locks
            or self.uploads
            or self.records
            or self.catalogs
        )


def plan_removal(
    inventory: Inventory,
    chosen: list[tuple[EntryInfo, str]],
    now: float,
    grace: float | None = DEFAULT_GRACE,
) -> Plan:
    """Remove ``chosen`` entries and their markers; with a full inventory and a
    ``grace``, also the orphaned markers and every blob nothing else references."""
    plan = Plan(inventory.root, entries=list(chosen), seen=inventory.manifests_seen)
    removed = {e.ident for e, _ in chosen}
    plan.markers = [inventory.markers[i] for i in sorted(removed) if i in inventory.markers]
    plan.index = [o for i in sorted(removed) for o in inventory.index.get(i, ())]
    plan.records = [o for i in sorted(removed) for o in inventory.records.get(i, ())]
    if grace is None or inventory.blobs is None:
        return plan
    planned = {o.key for o in plan.index}
    plan.index += [
        o for o in inventory.stale_index if o.key not in planned and now - o.modified >= grace
    ]
    live = {e.ident for e in inventory.entries} - removed
    plan.records += select_stale_records(
        {i: objs for i, objs in inventory.records.items() if i not in removed}, live, now, grace
    )
    # every manifest under the root was listed: a step out of scope keeps its catalog
    steps_left = {
        ident[:2]
        for key in inventory.manifests_seen
        if (ident := Cache.parse_manifest_key(key)) is not None and ident not in removed
    }
    plan.catalogs = [
        o for o in inventory.catalogs if Cache.parse_catalog_key(o.key) not in steps_left
    ]
    plan.markers += select_orphan_markers(
        {i: m for i, m in inventory.markers.items() if i not in removed}, live, now, grace
    )
    referenced = set(inventory.outside_refs)
    for entry in inventory.entries:
        if entry.ident not in removed:
            referenced |= entry.refs
    plan.blobs, plan.young_blobs = select_garbage_blobs(inventory.blobs, referenced, now, grace)
    return plan


def plan_prune(
    target: Target,
    criteria: PruneCriteria,
    now: float,
    grace: float,
    step: str | None = None,
    progress: Progress = no_progress,
) -> Plan:
    """Entries the criteria select in scope, then every blob left unreferenced under the root."""
    if not check_root(target):
        return Plan(target.root)
    inventory = scan(target, step, full=True, progress=progress)
    chosen = confirm(
        target.cache, select_for_prune(inventory.entries, now, criteria), now, progress
    )
    plan = plan_removal(inventory, chosen, now, grace)
    if grace is not None:
        plan.temporaries = [
            t
            for t in target.cache.store.stale_temporaries(now - grace)
            if Cache.is_temporary(t.key)
        ]
        plan.locks = stale_locks(target.cache, now, grace)
        plan.uploads = stale_uploads(target.cache, now, grace)
    return plan


def confirm(
    cache: Cache,
    chosen: list[tuple[EntryInfo, str]],
    now: float,
    progress: Progress = no_progress,
) -> list[tuple[EntryInfo, str]]:
    """Without a signing key, entries selected from their index object alone are read
    before they go: an entry whose manifest disagrees with its index object (not
    expired, another creation time or other blobs) stays. A forged index object can
    then not get a valid entry deleted (one GET per removal, none per kept entry).
    With a key, index objects are signed and only those are believed: no reads."""
    if cache.signing_key:
        return chosen  # only signed index objects were believed (index_or_read)
    from_index = [e.object for e, _ in chosen if e.manifest is None]
    if not from_index:
        return chosen
    read = {
        e.object.key: e
        for e in read_entries(cache, from_index, progress, "Confirming entries to remove")
    }
    kept = []
    for entry, reason in chosen:
        if entry.manifest is None:
            actual = read.get(entry.object.key)
            if actual is None:
                continue  # gone since the scan
            if actual.manifest is not None and (
                (reason == "expired" and not actual.expired(now))
                or abs(actual.created - entry.created) > 0.002  # the name keeps ms
                or actual.refs != entry.refs
            ):
                continue  # the index object does not describe this manifest
        kept.append((entry, reason))
    return kept


def stale_uploads(cache: Cache, now: float, grace: float) -> list[UploadInfo]:
    """Incomplete multipart uploads of blobs started more than ``grace`` ago
    (a future start time counts as now)."""
    return [
        u
        for u in cache.store.incomplete_uploads(LAYOUT + "/")
        if Cache.parse_blob_key(u.key) is not None and now - u.initiated >= grace
    ]


def incomplete_uploads(target: Target) -> int:
    """How many multipart uploads of blobs are incomplete under the root (for stats)."""
    return sum(
        Cache.parse_blob_key(u.key) is not None
        for u in target.cache.store.incomplete_uploads(LAYOUT + "/")
    )


def lease_expired(data: bytes | None, now: float) -> bool:
    """Whether a lease document (singleflight.Lease) has expired; unreadable ones have."""
    try:
        return float(json.loads((data or b"").decode("utf-8")).get("expires", 0)) < now
    except (ValueError, AttributeError, TypeError):
        return True


def stale_locks(cache: Cache, now: float, grace: float) -> list[ObjectInfo]:
    """Leases of ``lock=True`` holders that died without releasing: not rewritten for
    the grace period and expired. A live holder rewrites its lease every third of
    its duration, so only the few old ones are read."""
    old = [
        i
        for i in cache.store.list(Cache.lock_prefix())
        if Cache.parse_lock_key(i.key) is not None and now - i.modified >= grace
    ]
    return [i for i in old if lease_expired(cache.store.get(i.key), now)]


def plan_invalidate(
    target: Target,
    step: str | None = None,
    key: str | None = None,
    progress: Progress = no_progress,
) -> Plan:
    """Every entry in scope (corrupt ones too), or those whose key starts with ``key``.

    Blobs stay: ``prune`` collects them once unreferenced (a full-root scan).
    """
    if not check_root(target):
        return Plan(target.root)
    if key is None:
        inventory = scan(target, step, progress=progress)
        plan = plan_removal(inventory, [(e, "invalidated") for e in inventory.entries], 0, None)
        # suspect markers and audits of entries already gone, too: nothing is left in scope
        plan.records = [o for i in sorted(inventory.records) for o in inventory.records[i]]
        return plan
    entries = [e for e in find_entries(target, key) if step is None or e.step == step]
    markers = [ObjectInfo(Cache.used_key(*e.ident), 0, 0.0) for e in entries]
    index = [o for e in entries for o in target.cache.store.list(Cache.index_prefix(*e.ident))]
    plan = Plan(target.root, [(e, "invalidated") for e in entries], markers, index)
    idents = {e.ident for e in entries}
    for ident, objects in sorted(list_records(target.cache, target.flow, step).items()):
        if ident in idents:
            plan.records += objects
    return plan


def steps_with_entries(target: Target) -> set[str]:
    """Names of the steps that have entries in scope (from the listing; nothing read)."""
    found = set()
    for info in target.cache.store.list(Cache.entry_prefix(target.flow)):
        parsed = Cache.parse_manifest_key(info.key)
        if parsed is not None and (target.flow is None or parsed[0] == target.flow):
            found.add(parsed[1])
    return found


def check_one_key(plans: list[Plan], prefix: str, where: str) -> None:
    """A key prefix must name exactly one key across the plans' entries."""
    resolve_key([e for p in plans for e, _ in p.entries], prefix, where)


@dataclass
class StepStats:
    flow: str | None
    step: str | None
    entries: int = 0
    expired: int = 0
    corrupt: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    manifest_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.blob_bytes + self.manifest_bytes


def _stats_of(flow, step, entries: list[EntryInfo], now: float) -> StepStats:
    stats = StepStats(flow, step, entries=len(entries))
    sizes: dict[str, int] = {}
    for entry in entries:
        stats.manifest_bytes += entry.object.size
        stats.expired += entry.expired(now)
        stats.corrupt += not entry.readable
        sizes.update(entry.blob_sizes())
    stats.blobs = len(sizes)
    stats.blob_bytes = sum(sizes.values())
    return stats


def summarize(inventory: Inventory, now: float) -> tuple[StepStats, list[StepStats]]:
    """(totals, per flow/step) with shared blobs counted once in each figure."""
    by_step: dict[tuple[str, str], list[EntryInfo]] = {}
    for entry in inventory.entries:
        by_step.setdefault((entry.flow, entry.step), []).append(entry)
    total = _stats_of(inventory.flow, inventory.step, inventory.entries, now)
    steps = [_stats_of(f, s, by_step[(f, s)], now) for f, s in sorted(by_step)]
    return total, steps


# -- execution -----------------------------------------------------------------
_OWN_NAMES = {
    "entries": Cache.parse_manifest_key,
    "used": Cache.parse_used_key,
    "index": Cache.parse_index_key,
    "blobs": Cache.parse_blob_key,
    "locks": Cache.parse_lock_key,
    "temporaries": lambda key: key if Cache.is_temporary(key) else None,
    "records": Cache.parse_record_key,
    "catalogs": Cache.parse_catalog_key,
}


def _deletable(keys: list[str], area: str) -> list[str]:
    """The keys, if each is exactly a name memoize writes in ``area``; else refuse them all."""
    parse = _OWN_NAMES[area]
    for key in keys:
        check_key(key)
        if parse(key) is None:
            raise MemoizeCliError(
                "refusing to delete %r: it is not a name memoize writes (%s)" % (key, area)
            )
    return keys


@dataclass
class Outcome:
    entries: int = 0
    markers: int = 0
    blobs: int = 0
    blobs_spared: int = 0  # planned, but a manifest published meanwhile references them
    locks: int = 0  # abandoned lock=True leases
    uploads: int = 0  # incomplete multipart uploads aborted
    records: int = 0  # audit records and suspect markers
    bytes_freed: int = 0


def execute(target: Target, plan: Plan, progress: Progress = no_progress) -> Outcome:
    """Apply a plan: manifests, then markers, then blobs; each kind in batched deletes.

    Before blobs go, the manifest listing is checked again: a manifest that the
    scan did not read (``plan.seen``: published, or refreshed, since) protects
    the blobs it references.
    """
    store = target.cache.store
    out = Outcome()
    # every name is checked before anything is deleted
    manifest_keys = _deletable([e.object.key for e, _ in plan.entries], "entries")
    marker_keys = _deletable([m.key for m in plan.markers], "used")
    index_keys = _deletable([o.key for o in plan.index], "index")
    _deletable([b.key for b in plan.blobs], "blobs")
    temporaries = _deletable([t.key for t in plan.temporaries], "temporaries")
    lock_keys = _deletable([lock.key for lock in plan.locks], "locks")
    record_keys = _deletable([r.key for r in plan.records], "records")
    catalog_keys = _deletable([c.key for c in plan.catalogs], "catalogs")
    if not plan.empty:
        # an older root without a marker passed check_root: adopt it
        target.cache.ensure_marker(recheck=True)
    total = sum(
        map(len, (manifest_keys, marker_keys, index_keys, plan.blobs, temporaries, lock_keys))
    ) + len(record_keys + catalog_keys)
    with progress("Deleting", total) as bar:

        def delete(keys: list[str]) -> None:
            for start in range(0, len(keys), DELETE_CHUNK):
                chunk = keys[start : start + DELETE_CHUNK]
                store.delete(chunk)
                bar.update(len(chunk))

        if manifest_keys:
            delete(manifest_keys)
            out.entries = len(manifest_keys)
            out.bytes_freed += sum(e.object.size for e, _ in plan.entries)
        if marker_keys:
            delete(marker_keys)
            out.markers = len(marker_keys)
            out.bytes_freed += sum(m.size for m in plan.markers)
        if index_keys:
            delete(index_keys)
        if catalog_keys:
            delete(catalog_keys)
            out.bytes_freed += sum(c.size for c in plan.catalogs)
        blobs = plan.blobs
        if blobs:
            protected = _new_references(target.cache, plan.seen)
            # a blob written or reused (touched) since the scan may belong to an entry
            # being published right now: keep it
            current = list_blobs(target.cache)
            touched = {
                b.key
                for b in blobs
                if (sha := Cache.parse_blob_key(b.key)) in current
                and current[sha].modified != b.modified
            }
            spared = {b.key for b in blobs if _ref_of(b) in protected or b.key in touched}
            out.blobs_spared = len(spared)
            blobs = [b for b in blobs if b.key not in spared]
            bar.update(len(spared))
        if blobs:
            delete([b.key for b in blobs])
            out.blobs = len(blobs)
            out.bytes_freed += sum(b.size for b in blobs)
        if plan.temporaries:
            delete(temporaries)
            out.bytes_freed += sum(t.size for t in plan.temporaries)
        if plan.locks:
            delete(lock_keys)
            out.locks = len(plan.locks)
            out.bytes_freed += sum(lock.size for lock in plan.locks)
        if record_keys:
            delete(record_keys)
            out.records = len(record_keys)
            out.bytes_freed += sum(r.size for r in plan.records)
    if plan.uploads:
        _deletable([u.key for u in plan.uploads], "blobs")
        out.uploads = store.abort_uploads(plan.uploads)
    return out


def _ref_of(blob: ObjectInfo) -> str:
    return blob_ref(Cache.parse_blob_key(blob.key) or "")


def _new_references(cache: Cache, seen: dict[str, ObjectInfo]) -> set[str]:
    fresh = [
        info
        for info in cache.store.list(Cache.entry_prefix())
        if seen.get(info.key) is None
        or (seen[info.key].modified, seen[info.key].size) != (info.modified, info.size)
    ]
    refs: set[str] = set()
    for entry in read_entries(cache, fresh):
        refs |= entry.refs
    return refs
