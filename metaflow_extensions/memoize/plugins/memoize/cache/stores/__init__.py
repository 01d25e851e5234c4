"""Cache stores: where manifests and blobs live. See base.Store for the contract."""

from __future__ import annotations

import importlib.util
import re

from .base import ObjectInfo, Store, UploadInfo, check_key, parse_bucket_url  # noqa: F401

ROOT_URL_FORMS = (
    "a directory path, s3://bucket/prefix, gs://bucket/prefix or azure://container/prefix"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

#: cloud roots: scheme -> (service, what follows the scheme, the module its client
#: library provides, the extra that installs it)
_CLOUD = {
    "s3": ("S3", "bucket", "boto3", None),
    "gs": ("GCS", "bucket", "google.cloud.storage", "gcs"),
    "azure": ("Azure", "container", "azure.storage.blob", "azure"),
}


def _cloud_scheme(url: str) -> str | None:
    """The cloud scheme ``url`` means, even misspelt (``s3:/b``, ``GS://b``), or None."""
    scheme = _SCHEME.match(url)
    for name in _CLOUD:
        if url[: len(name) + 1].lower() == name + ":" or (
            scheme and scheme.group(1).lower() == name
        ):
            return name
    return None


def missing_library(url: str) -> str | None:
    """The pip command that installs the client library a cloud root needs, when it
    is not installed; None when nothing is missing."""
    name = _cloud_scheme(url) if isinstance(url, str) else None
    if name is None or _CLOUD[name][3] is None:
        return None
    module = _CLOUD[name][2]
    try:
        if importlib.util.find_spec(module) is not None:
            return None
    except (ImportError, ValueError):
        pass
    return "pip install 'metaflow-memoize[%s]'" % _CLOUD[name][3]


def root_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a cache root, or None when it can.

    A local path may legitimately contain a colon on POSIX, so only two forms are
    refused beyond the empty string: any ``scheme://`` other than ``s3://``,
    ``gs://``, ``azure://`` and ``file://``, and anything starting with ``s3:``,
    ``gs:`` or ``azure:`` (any case) that is not ``s3://bucket...`` (etc.).
    Without the latter, ``s3:/bucket`` (one slash missing) would be taken for a
    relative path and quietly create a private local directory named ``s3:``
    where a shared cache was meant. A cloud root whose client library is not
    installed is refused too, with the command that installs it.
    """
    if not isinstance(url, str) or not url.strip():
        return "is empty"
    name = _cloud_scheme(url)
    if name is not None:
        service, container, _library, _extra = _CLOUD[name]
        if not url.startswith(name + "://"):
            return "is not %s %s URL (%s URLs start with lowercase %s:// then the %s)" % (
                "a" if service == "GCS" else "an",
                service,
                service,
                name,
                container,
            )
        try:
            parse_bucket_url(url, name + "://", service, container)
        except ValueError as err:
            return "is not a usable %s URL (%s)" % (service, err)
        install = missing_library(url)
        if install:
            return "needs the %s client library, which is not installed: %s" % (service, install)
        return None
    scheme = _SCHEME.match(url)
    if scheme and scheme.group(1) != "file":
        return "uses an unsupported scheme (%s://)" % scheme.group(1)
    if scheme and not url[len("file://") :].strip():
        return "names no directory"
    return None


def open_store(url: str) -> Store:
    """The store for a cache root URL: ``s3://``, ``gs://``, ``azure://`` or a local path."""
    problem = root_url_problem(url)
    if problem is not None:
        raise ValueError("cache root %r %s: use %s" % (url, problem, ROOT_URL_FORMS))
    if url.startswith("s3://"):
        from .s3 import S3Store

        return S3Store(url)
    if url.startswith("gs://"):
        from .gcs import GCSStore

        return GCSStore(url)
    if url.startswith("azure://"):
        from .azure import AzureStore

        return AzureStore(url)
    from .local import LocalStore

    return LocalStore(url.removeprefix("file://"))
