"""Cache stores: where manifests and blobs live. See base.Store for the contract."""

from __future__ import annotations

from .base import ObjectInfo, Store, UploadInfo, check_key  # noqa: F401


def open_store(url: str) -> Store:
    """The store for a cache root URL: ``s3://bucket/prefix`` or a local path."""
    if url.startswith("s3://"):
        from .s3 import S3Store

        return S3Store(url)
    if "://" in url and not url.startswith("file://"):
        raise ValueError(
            "unsupported cache root %r: use a local directory or s3://bucket/prefix" % url
        )
    from .local import LocalStore

    return LocalStore(url.removeprefix("file://"))
