"""Per-step catalogs: a step's index names, all in one object.

    v1/catalog/<Flow>/<step>.json.gz    {"layout", "flow", "step", "names": {key: name}}

On a store whose listings carry MD5s, `stats` and `list` know an entry without
reading its manifest from the index object that names the manifest's listed MD5
(entries.py). That costs two listings of an object per entry: the manifests and
the index. The catalog is what the last such scan of a step knew, each entry's
index name (the part after ``v1/index/<Flow>/<step>/<key>/``), so that the next
scan lists the manifests alone.

A catalog is a hint, believed exactly as an index object is: a name counts only
for the manifest whose listed MD5 it names, and with a signing key only when its
signature is valid. A manifest the catalog does not name, or names with another
MD5 (published, refreshed or corrupted since), is read when there are few, or
looked up in the index listing when there are many. So a stale, missing, corrupt
or forged catalog can make a scan slower, never wrong; none is trusted for
anything but `stats` and `list` (prune verifies from the index and the manifests).

Scans rewrite a step's catalog when what they know of it changed, and ignore a
failed write (a read-only credential may run `stats`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from ..exceptions import CacheFault
from .entries import LAYOUT, Cache, IndexRecord
from .stores import ObjectInfo

#: uncovered manifests are read one by one while they are at most one in
#: READ_SHARE of those listed; more (a cold catalog) and the index is listed instead,
#: which on S3 costs a request per 1,000 names where reading costs one per manifest
READ_SHARE = 32

Ident = tuple[str, str, str]
Names = dict[str, str]  # entry key -> index name


def encode(flow: str, step: str, names: Names) -> bytes:
    doc = {"layout": LAYOUT, "flow": flow, "step": step, "names": names}
    # mtime=0: the same names make the same bytes
    return gzip.compress(json.dumps(doc, sort_keys=True).encode("utf-8"), mtime=0)


def decode(data: bytes | None, flow: str, step: str) -> Names:
    """The names a catalog object holds; none when it is absent, unreadable or
    another step's."""
    if not data:
        return {}
    try:
        doc = json.loads(gzip.decompress(data))
        names = doc["names"]
        if (doc["layout"], doc["flow"], doc["step"]) != (LAYOUT, flow, step):
            return {}
        if not isinstance(names, dict):
            return {}
        return {k: v for k, v in names.items() if isinstance(k, str) and isinstance(v, str)}
    except Exception:
        return {}


def record_of(flow: str, step: str, key: str, name: str) -> IndexRecord | None:
    """The index record a catalog name stands for (parsed as the index object's name)."""
    return Cache.parse_index_key(Cache.index_prefix(flow, step, key) + name)


def name_of(record: IndexRecord) -> str:
    """The catalog name of an index record: its index object's name below the key."""
    prefix = Cache.index_prefix(record.flow, record.step, record.key)
    name = record.signed[len(prefix) :]
    return name + "_" + record.signature if record.signature else name


def name_for_manifest(cache: Cache, info: ObjectInfo, manifest) -> str | None:
    """The index name a manifest read from the listed object ``info`` would have."""
    if not info.md5:
        return None
    full = Cache.index_key(manifest, info.md5, cache.signing_key)
    if full is None:
        return None
    return full[len(Cache.index_prefix(manifest.flow, manifest.step, manifest.key)) :]


def load(cache: Cache, flow: str | None, step: str | None) -> dict[tuple[str, str], Names]:
    """The catalogs in scope, by (flow, step): one GET for a step, else a listing
    and a GET per catalog side by side. A fault reads as no catalog."""
    try:
        if flow and step:
            where = [(flow, step)]
        else:
            where = [
                parsed
                for info in cache.store.list(Cache.catalog_prefix(flow))
                if (parsed := Cache.parse_catalog_key(info.key)) is not None
            ]
        if not where:
            return {}

        def one(fs: tuple[str, str]) -> Names:
            return decode(cache.store.get(Cache.catalog_key(*fs)), *fs)

        with ThreadPoolExecutor(max_workers=min(8, len(where))) as pool:
            return dict(zip(where, pool.map(one, where)))
    except CacheFault:
        return {}


def split(
    cache: Cache, listed: Iterable[ObjectInfo], catalogs: dict[tuple[str, str], Names]
) -> tuple[list[tuple[Ident, ObjectInfo, IndexRecord]], list[ObjectInfo]]:
    """(known, uncovered): each listed manifest with the record its catalog names
    for its listed MD5, or uncovered (no such name, no MD5, no valid signature)."""
    known, uncovered = [], []
    for info in listed:
        ident = Cache.parse_manifest_key(info.key)
        if ident is None:
            continue
        name = catalogs.get(ident[:2], {}).get(ident[2])
        record = record_of(*ident, name) if name else None
        if (
            record is None
            or not info.md5
            or record.md5 != info.md5
            or (cache.signing_key and not record.signature_valid(cache.signing_key))
        ):
            uncovered.append(info)
        else:
            known.append((ident, info, record))
    return known, uncovered


def read_instead_of_listing(uncovered: int, listed: int) -> bool:
    """Whether to read the uncovered manifests rather than list the index."""
    return uncovered <= listed // READ_SHARE


def save(
    cache: Cache,
    now_known: dict[tuple[str, str], Names],
    before: dict[tuple[str, str], Names],
) -> int:
    """Write each step's catalog whose names changed; returns how many were written."""
    changed = [fs for fs, names in now_known.items() if names != before.get(fs, {})]

    def one(fs: tuple[str, str]) -> bool:
        try:
            cache.store.put(Cache.catalog_key(*fs), encode(*fs, now_known[fs]))
            return True
        except CacheFault:
            return False  # a read-only credential, or a store fault: the next scan lists

    if not changed:
        return 0
    with ThreadPoolExecutor(max_workers=min(8, len(changed))) as pool:
        return sum(pool.map(one, changed))
