"""A cache store under an Azure Blob Storage prefix (``azure://container/prefix``), via
azure-storage-blob (the optional extra ``metaflow-memoize[azure]``).

The storage account is found as Metaflow's Azure datastore finds it, unless a
connection string is given (tests, Azurite, or an account key):

1. ``METAFLOW_MEMOIZE_AZURE_CONNECTION_STRING`` (environment, then Metaflow's
   configuration), else ``AZURE_STORAGE_CONNECTION_STRING``;
2. otherwise the account endpoint ``METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT``
   (environment, then Metaflow's configuration) with ``DefaultAzureCredential``
   (azure-identity: environment, workload or managed identity, Azure CLI login).

Every failure other than "not found" becomes ``StoreUnavailable``; retries are few
and short (see RETRY_*), so a dead endpoint fails fast.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ...exceptions import CacheFault, StoreUnavailable
from .base import ObjectInfo, Store, check_key, parse_bucket_url

SCHEME = "azure://"
LIBRARY = "azure.storage.blob"
EXTRA = "azure"

ENV_CONNECTION_STRING = "METAFLOW_MEMOIZE_AZURE_CONNECTION_STRING"
ENV_STANDARD_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ENDPOINT = "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"

# as the S3 store: an unreachable store costs a step seconds, not minutes
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
#: attempts after the first; the SDK waits initial + base**n before retry n: 1.3, 1.54,
#: 1.83 s (+- jitter), ~4.7 s in all (its default waits 15 s before the first retry)
RETRY_TOTAL = 3
RETRY_INITIAL_BACKOFF = 0.1
RETRY_INCREMENT_BASE = 1.2
RETRY_JITTER = 0.2
#: larger objects are uploaded in blocks of this size, several at once
SINGLE_PUT_SIZE = 16 * 1024 * 1024
BLOCK_SIZE = 16 * 1024 * 1024
MAX_CONCURRENCY = 8
#: blobs per listing request (Azure returns at most 5000)
LIST_PAGE_SIZE = 5000
#: deletes per batch request (the Blob Batch limit is 256)
DELETE_BATCH = 256
#: how long a server-side copy may stay pending before it counts as failed
COPY_WAIT = 300.0

_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def parse_azure_url(url: str) -> tuple[str, str]:
    """Split ``azure://container/some/prefix/`` into ``("container", "some/prefix")``."""
    return parse_bucket_url(url, SCHEME, "Azure", "container")


def _conf(name: str) -> str | None:
    """A Metaflow setting (``METAFLOW_`` + name): environment, then Metaflow's config."""
    from metaflow.metaflow_config_funcs import from_conf

    value = from_conf(name)
    return str(value) if value else None


def account_settings() -> tuple[str | None, str | None]:
    """(connection string, endpoint): which account the store talks to, and how."""
    connection = _conf("MEMOIZE_AZURE_CONNECTION_STRING") or os.environ.get(
        ENV_STANDARD_CONNECTION_STRING
    )
    if connection:
        return connection, None
    return None, _conf("AZURE_STORAGE_BLOB_SERVICE_ENDPOINT")


def _client():
    connection, endpoint = account_settings()
    key = (os.getpid(), connection, endpoint)  # a forked child must not share sockets
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            from azure.storage.blob import BlobServiceClient, ExponentialRetry

            options = dict(
                connection_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retry_policy=ExponentialRetry(
                    initial_backoff=RETRY_INITIAL_BACKOFF,
                    increment_base=RETRY_INCREMENT_BASE,
                    retry_total=RETRY_TOTAL,
                    random_jitter_range=RETRY_JITTER,
                ),
                max_single_put_size=SINGLE_PUT_SIZE,
                max_block_size=BLOCK_SIZE,
            )
            if connection:
                client = BlobServiceClient.from_connection_string(connection, **options)
            elif endpoint:
                from azure.identity import DefaultAzureCredential

                client = BlobServiceClient(endpoint, credential=DefaultAzureCredential(), **options)
            else:
                # a plain error: the store's guard adds the root URL
                raise RuntimeError(
                    "no Azure storage account: set %s (as for Metaflow's Azure datastore) or %s"
                    % (ENV_ENDPOINT, ENV_CONNECTION_STRING)
                )
            _clients[key] = client
    return client


def _error_code(err: BaseException) -> str | None:
    return getattr(err, "error_code", None)


def _status(err: BaseException) -> int | None:
    code = getattr(err, "status_code", None)
    return code if isinstance(code, int) else None


def describe_error(err: BaseException) -> str:
    code = _error_code(err)
    message = (getattr(err, "message", None) or str(err) or type(err).__name__).splitlines()[0]
    status = _status(err)
    text = "%s%s%s" % (
        code + ": " if code and code not in message else "",
        message,
        " (HTTP %d)" % status if status else "",
    )
    return " ".join(text.split())


def _md5_hex(value) -> str | None:
    return bytes(value).hex() if value else None


def _server_time(headers) -> float | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(headers.get("Date")).timestamp()
    except (AttributeError, TypeError, ValueError, IndexError):
        return None


class AzureStore(Store):
    lists_md5 = True

    def __init__(self, url: str):
        self.container_name, self.prefix = parse_azure_url(url)
        self.url = url
        # "prefix/" so that a sibling like "prefix-old/" is never in scope
        self._root = self.prefix + "/" if self.prefix else ""
        self._container = None
        self.list_page_size = LIST_PAGE_SIZE
        self.delete_batch = DELETE_BATCH

    @property
    def container(self):
        if self._container is None:
            with self._errors("connect"):
                self._container = _client().get_container_client(self.container_name)
        return self._container

    def _full(self, key: str) -> str:
        return self._root + check_key(key)

    def _blob(self, key: str):
        return self.container.get_blob_client(self._full(key))

    def url_for(self, key: str) -> str:
        return "%s%s/%s" % (SCHEME, self.container_name, self._full(key))

    def _unavailable(self, action: str, key: str | None, err: BaseException) -> StoreUnavailable:
        from azure.core.exceptions import ServiceRequestError

        cause = describe_error(err)
        if isinstance(err, ServiceRequestError):
            return StoreUnavailable("Azure cache %s unreachable: %s" % (self.url, cause))
        where = " %s" % key if key else ""
        return StoreUnavailable(
            "Azure cache %s: %s%s failed: %s" % (self.url, action, where, cause)
        )

    @contextmanager
    def _errors(self, action: str, key: str | None = None):
        """Any failure of the block is the store's (see the S3 store)."""
        try:
            yield
        except CacheFault:
            raise
        except Exception as err:
            if _error_code(err) == "ContainerNotFound":
                raise StoreUnavailable(
                    "Azure cache %s: container %s does not exist (HTTP 404)"
                    % (self.url, self.container_name)
                ) from err
            raise self._unavailable(action, key, err) from err

    @staticmethod
    def _absent(err: BaseException) -> bool:
        """The blob does not exist (a missing container is a fault, not an absence)."""
        return _status(err) == 404 and _error_code(err) != "ContainerNotFound"

    def _download(self, key: str):
        """(downloader, response headers), or None when the blob does not exist."""
        headers = {}

        def keep(response):
            headers.update(response.http_response.headers)

        try:
            return self._blob(key).download_blob(
                max_concurrency=MAX_CONCURRENCY, raw_response_hook=keep
            ), headers
        except Exception as err:
            if self._absent(err):
                return None
            raise

    def get(self, key: str) -> bytes | None:
        with self._errors("get", key):
            got = self._download(key)
            return None if got is None else got[0].readall()

    def get_dated(self, key: str) -> tuple[bytes, float, float | None] | None:
        with self._errors("get", key):
            got = self._download(key)
            if got is None:
                return None
            downloader, headers = got
            data = downloader.readall()
            return data, downloader.properties.last_modified.timestamp(), _server_time(headers)

    def put(self, key: str, data: bytes) -> None:
        with self._errors("put", key):
            self._blob(key).upload_blob(data, overwrite=True)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with self._errors("put", key):
            try:
                # overwrite=False: If-None-Match: * on the write
                self._blob(key).upload_blob(data, overwrite=False)
            except Exception as err:
                # 409 BlobAlreadyExists; 412 when a concurrent writer got there first
                if _status(err) in (409, 412) and _error_code(err) != "ContainerNotFound":
                    return False
                raise
        return True

    def head(self, key: str) -> ObjectInfo | None:
        with self._errors("head", key):
            try:
                props = self._blob(key).get_blob_properties()
            except Exception as err:
                if self._absent(err):
                    # HEAD replies carry no error code: a missing container looks the same
                    if not self.container.exists():
                        raise StoreUnavailable(
                            "Azure cache %s: container %s does not exist (HTTP 404)"
                            % (self.url, self.container_name)
                        ) from err
                    return None
                raise
        return ObjectInfo(
            key,
            int(props.size),
            props.last_modified.timestamp(),
            _md5_hex(props.content_settings.content_md5),
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Directory semantics as in LocalStore: "a" and "a/" both mean a/.
        sub = check_key(prefix.rstrip("/")) + "/" if prefix else ""
        with self._errors("list", prefix or "/"):
            blobs = self.container.list_blobs(
                name_starts_with=self._root + sub, results_per_page=self.list_page_size
            )
            for blob in blobs:
                rel = blob.name[len(self._root) :]
                try:
                    check_key(rel)
                except ValueError:
                    continue  # written by something else; we could not address it
                yield ObjectInfo(
                    rel,
                    int(blob.size),
                    blob.last_modified.timestamp(),
                    _md5_hex(blob.content_settings.content_md5),
                )

    def delete(self, keys: Iterable[str]) -> int:
        # validate everything first: an unsafe key must not leave a half-done deletion
        fulls = [self._full(key) for key in keys]
        for start in range(0, len(fulls), self.delete_batch):
            batch = fulls[start : start + self.delete_batch]
            with self._errors("delete", batch[0][len(self._root) :]):
                responses = self.container.delete_blobs(*batch, raise_on_any_failure=False)
                failed = [
                    (name, r.status_code)
                    for name, r in zip(batch, responses)
                    if r.status_code not in (200, 202, 404)
                ]
            if failed:
                raise StoreUnavailable(
                    "Azure cache %s: delete failed for %d of %d objects, e.g. %s: HTTP %s"
                    % (
                        self.url,
                        len(failed),
                        len(batch),
                        failed[0][0][len(self._root) :],
                        failed[0][1],
                    )
                )
        return len(fulls)

    def touch(self, key: str) -> bool:
        """Refresh the blob's Last-Modified (Azure sets it on a metadata change), so a
        prune that scanned before keeps it. False if the blob does not exist."""
        with self._errors("touch", key):
            blob = self._blob(key)
            try:
                metadata = dict(blob.get_blob_properties().metadata or {})
                metadata["memoize_used"] = "%.3f" % time.time()
                blob.set_blob_metadata(metadata)
            except Exception as err:
                if self._absent(err):
                    return False
                raise
        return True

    def put_file(self, key: str, path: str) -> None:
        with self._errors("upload", key):
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                self._blob(key).upload_blob(
                    f, length=size, overwrite=True, max_concurrency=MAX_CONCURRENCY
                )

    def get_file(self, key: str, path: str) -> bool:
        directory = os.path.dirname(os.path.abspath(path))
        tmp = None
        with self._errors("download", key):
            try:
                got = self._download(key)
                if got is None:
                    return False
                os.makedirs(directory, exist_ok=True)
                tmp = os.path.join(directory, ".tmp-" + os.urandom(8).hex())
                with open(tmp, "wb") as f:
                    got[0].readinto(f)
                os.replace(tmp, path)
                tmp = None
                return True
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)

    def _copy(self, dest, source, metadata=None) -> bool:
        """Server-side copy within the account (Copy Blob); False if the source is gone."""
        try:
            result = dest.start_copy_from_url(source.url, metadata=metadata)
        except Exception as err:
            if _status(err) == 404 and _error_code(err) != "ContainerNotFound":
                return False  # CannotVerifyCopySource / BlobNotFound
            raise
        status = result.get("copy_status")
        deadline = time.monotonic() + COPY_WAIT
        delay = 0.1
        while status == "pending":
            if time.monotonic() > deadline:
                dest.abort_copy(result.get("copy_id"))
                raise StoreUnavailable(
                    "Azure cache %s: copy to %s still pending" % (self.url, dest.url)
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            status = dest.get_blob_properties().copy.status
        if status != "success":
            raise StoreUnavailable(
                "Azure cache %s: copy to %s ended %s" % (self.url, dest.url, status)
            )
        return True

    def copy_from_url(self, key: str, source_url: str) -> bool:
        """Server-side copy from another azure:// URL of the same account."""
        full = self._full(key)
        try:
            container, name = parse_azure_url(source_url)
        except ValueError:
            return False
        if not name:
            return False
        with self._errors("copy from %s to" % source_url, key):
            source = _client().get_blob_client(container, name)
            return self._copy(self.container.get_blob_client(full), source)

    def copy_to_url(self, key: str, dest_url: str, metadata: dict | None = None) -> bool:
        """Server-side copy of one of our blobs to another azure:// location.

        ``metadata`` becomes the destination's metadata: Metaflow's Azure datastore
        keeps each blob's packing info there (metaflow_user_attributes)."""
        try:
            container, name = parse_azure_url(dest_url)
        except ValueError:
            return False
        if not name:
            return False
        extra = None if metadata is None else {"metaflow_user_attributes": json.dumps(metadata)}
        with self._errors("copy to %s from" % dest_url, key):
            dest = _client().get_blob_client(container, name)
            return self._copy(dest, self._blob(key), extra)
