"""The store interface that the cache is written against.

A store is a flat namespace of immutable-ish objects addressed by relative,
slash-separated keys under a root. The local directory and S3 implement it and
one contract test suite runs against both (tests/test_store_contract.py).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import NamedTuple

_KEY_RE = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")


class ObjectInfo(NamedTuple):
    key: str
    size: int
    modified: float  # seconds since the epoch
    # hex MD5 of the object's bytes when the listing says so (S3 ETag of a
    # single-part upload); None when unknown. Never trusted for more than
    # "this object still has the bytes whose MD5 we recorded".
    md5: str | None = None


class UploadInfo(NamedTuple):
    """A multipart upload that was started and never completed nor aborted."""

    key: str
    upload_id: str
    initiated: float  # seconds since the epoch, on the store's clock


def check_key(key: str) -> str:
    """Reject keys that could escape the root (``..``, absolute, odd characters)."""
    from ...exceptions import UnsafePath

    if (
        not isinstance(key, str)
        or not _KEY_RE.match(key)
        or any(part in (".", "..") for part in key.split("/"))
    ):
        raise UnsafePath("refusing unsafe cache object name %r" % (key,))
    return key


def parse_bucket_url(url: str, scheme: str, service: str, container: str = "bucket"):
    """Split ``<scheme>container/some/prefix/`` into ``("container", "some/prefix")``:
    the URL form of every cloud store (``s3://``, ``gs://``, ``azure://``)."""
    article = "a" if service == "GCS" else "an"
    if not isinstance(url, str) or not url.startswith(scheme):
        raise ValueError("not %s %s URL: %r" % (article, service, url))
    name, _, prefix = url[len(scheme) :].partition("/")
    prefix = prefix.strip("/")
    if not name:
        raise ValueError("%s URL %r has no %s" % (service, url, container))
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError("%s URL %r has an empty, '.' or '..' path segment" % (service, url))
    return name, prefix


class Store(ABC):
    """Minimal object-store surface used by the cache.

    All methods raise ``CacheFault`` subclasses (``StoreUnavailable``) on I/O
    problems; "not found" is a normal return value, never an exception. Every
    subclass's operations are guarded (stores/faults.py): any other exception
    becomes ``StoreUnavailable``, and a root that keeps failing is disabled.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        from .faults import guard_operations

        guard_operations(cls)

    #: the root URL, as given by the user (used in messages and manifests)
    url: str
    #: whether ``list_split`` and ``list_folders`` list side by side, one request
    #: each (object stores); elsewhere they filter one listing, so callers just list
    lists_in_parts: bool = False
    #: whether ``list`` reports each object's MD5 (``ObjectInfo.md5``): then
    #: the cache keeps a listable index of its entries (see cache.py)
    lists_md5: bool = False
    #: whether ``touch`` costs less than a ``put`` of a small object (one local
    #: syscall, not a HEAD and a copy on a bucket)
    cheap_touch: bool = False

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""

    def get_dated(self, key: str) -> tuple[bytes, float, float | None] | None:
        """(bytes, modification time, the store's current time or None if it does not
        tell) on the store's own clock, or None if the object does not exist. TTLs are
        judged with these, never with the writer's clock."""
        info = self.head(key)
        data = self.get(key) if info is not None else None
        return None if data is None else (data, info.modified, None)

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write (or overwrite) an object atomically: readers see old or new, never half."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write only if no object has the key. True if this call created it."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size and modification time, or None if it does not exist."""

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a directory-like prefix ending in /)."""

    def list_split(self, prefix: str, first_chars: str) -> list[ObjectInfo]:
        """The objects under ``prefix`` (as ``list``) whose name after it starts with
        one of ``first_chars`` (e.g. the 16 hex digits, for names memoize makes from
        hashes). An object store lists one part per character side by side; this
        default filters one listing."""
        start = len(prefix.rstrip("/")) + 1 if prefix else 0
        return [i for i in self.list(prefix) if i.key[start : start + 1] in set(first_chars)]

    def list_folders(self, prefix: str) -> list[str]:
        """The names of the folders directly under ``prefix`` (sorted): the first name
        part after it of every object below it. This default reads one listing."""
        start = len(prefix.rstrip("/")) + 1 if prefix else 0
        below = (i.key[start:] for i in self.list(prefix))
        return sorted({rest.split("/", 1)[0] for rest in below if "/" in rest})

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> int:
        """Delete the keys that exist; return how many were requested. Missing keys are fine."""

    @abstractmethod
    def put_file(self, key: str, path: str) -> None:
        """Upload a local file (large objects stream; never held whole in memory)."""

    @abstractmethod
    def get_file(self, key: str, path: str) -> bool:
        """Download to a local path (written atomically). False if the object does not exist."""

    def stale_temporaries(self, older_than: float, prefix: str = "") -> list[ObjectInfo]:
        """Partial writes left by killed writers under ``prefix``, last modified before
        ``older_than`` (epoch seconds). Stores whose writes are atomic on the server have none."""
        return []

    def touch(self, key: str) -> bool:
        """Mark an existing object as used now, where that is cheap (local files);
        False when the object does not exist or the store cannot."""
        return False

    def incomplete_uploads(self, prefix: str = "") -> list[UploadInfo]:
        """Multipart uploads under ``prefix`` that were never completed (a writer killed
        mid-upload): stores without multipart uploads have none."""
        return []

    def abort_uploads(self, uploads: Iterable[UploadInfo]) -> int:
        """Abort incomplete uploads (their parts are freed); how many were aborted."""
        return 0

    def copy_from_url(self, key: str, source_url: str) -> bool:
        """Server-side copy from another URL of the same kind; False when not possible."""
        return False

    def copy_to_url(self, key: str, dest_url: str, metadata: dict | None = None) -> bool:
        """Server-side copy to another URL of the same kind; False when not possible."""
        return False

    def url_for(self, key: str) -> str:
        """A URL for an object in this store (s3://... or a local path)."""
        raise NotImplementedError
