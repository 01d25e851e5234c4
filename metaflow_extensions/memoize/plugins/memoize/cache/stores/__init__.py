"""Cache stores: where manifests and blobs live. See base.Store for the contract."""

from __future__ import annotations

import re

from .base import ObjectInfo, Store, UploadInfo, check_key  # noqa: F401

ROOT_URL_FORMS = "a directory path or s3://bucket/prefix"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def root_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a cache root, or None when it can.

    A local path may legitimately contain a colon on POSIX, so only two forms are
    refused beyond the empty string: any ``scheme://`` other than ``s3://`` and
    ``file://``, and anything starting with ``s3:`` (any case) that is not
    ``s3://bucket...``. Without the latter, ``s3:/bucket`` (one slash missing)
    would be taken for a relative path and quietly create a private local
    directory named ``s3:`` where a shared cache was meant.
    """
    if not isinstance(url, str) or not url.strip():
        return "is empty"
    scheme = _SCHEME.match(url)
    if url[:3].lower() == "s3:" or (scheme and scheme.group(1).lower() == "s3"):
        if not url.startswith("s3://"):
            return "is not an S3 URL (S3 URLs start with lowercase s3:// then the bucket)"
        from .s3 import parse_s3_url

        try:
            parse_s3_url(url)
        except ValueError as err:
            return "is not a usable S3 URL (%s)" % err
        return None
    if scheme and scheme.group(1) != "file":
        return "uses an unsupported scheme (%s://)" % scheme.group(1)
    if scheme and not url[len("file://") :].strip():
        return "names no directory"
    return None


def open_store(url: str) -> Store:
    """The store for a cache root URL: ``s3://bucket/prefix`` or a local path."""
    problem = root_url_problem(url)
    if problem is not None:
        raise ValueError("cache root %r %s: use %s" % (url, problem, ROOT_URL_FORMS))
    if url.startswith("s3://"):
        from .s3 import S3Store

        return S3Store(url)
    from .local import LocalStore

    return LocalStore(url.removeprefix("file://"))
