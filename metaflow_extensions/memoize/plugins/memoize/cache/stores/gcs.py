"""A cache store under a Google Cloud Storage prefix (``gs://bucket/prefix``), via
google-cloud-storage (the optional extra ``metaflow-memoize[gcs]``).

Credentials are Google's Application Default Credentials, as for Metaflow's GCS
datastore. With ``STORAGE_EMULATOR_HOST`` set (an emulator), the client talks to
it with anonymous credentials, in project ``GOOGLE_CLOUD_PROJECT`` (default
``memoize-emulator``). Every failure other than "not found" becomes
``StoreUnavailable`` so the caller can run the step uncached; calls are retried
for a few seconds at most (see RETRY_TIMEOUT), so a dead endpoint fails fast.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ...exceptions import CacheFault, StoreUnavailable
from .base import ObjectInfo, Store, check_key, parse_bucket_url

SCHEME = "gs://"
#: the package that provides this store, and the extra that installs it
LIBRARY = "google.cloud.storage"
EXTRA = "gcs"

# as the S3 store: an unreachable store costs a step seconds, not minutes
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
#: seconds one call may spend retrying (429, 5xx, connection errors), backoff included:
#: waits of 0.25, 0.5, 1, 2 s (the library's default retries for 120 s)
RETRY_TIMEOUT = 4.0
RETRY_INITIAL = 0.25
RETRY_MAXIMUM = 2.0
#: objects per listing request (GCS returns at most 1000)
LIST_PAGE_SIZE = 1000
#: deletes in flight at once (GCS has no multi-object delete in its JSON API)
DELETE_PARALLEL = 8
MAX_POOL_CONNECTIONS = 16
#: a rewrite (server-side copy) of a large object may take several calls
REWRITE_MAX_CALLS = 1000

_clients: dict[tuple[int, str | None], Any] = {}
_clients_lock = threading.Lock()
#: the Date header of the last response this thread received (the store's clock)
_last_date = threading.local()


def parse_gs_url(url: str) -> tuple[str, str]:
    """Split ``gs://bucket/some/prefix/`` into ``("bucket", "some/prefix")``."""
    return parse_bucket_url(url, SCHEME, "GCS")


def _timeout():
    return (CONNECT_TIMEOUT, READ_TIMEOUT)


def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(RETRY_TIMEOUT).with_delay(
        initial=RETRY_INITIAL, multiplier=2.0, maximum=RETRY_MAXIMUM
    )


def _record_date(response, *args, **kwargs):
    _last_date.value = response.headers.get("Date")
    return response


def _server_time() -> float | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(getattr(_last_date, "value", None)).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _emulator_host() -> str | None:
    return os.environ.get("STORAGE_EMULATOR_HOST") or None


def _client():
    key = (os.getpid(), _emulator_host())  # a forked child must not share sockets
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import requests.adapters
            from google.auth.transport.requests import AuthorizedSession
            from google.cloud import storage

            if key[1]:
                from google.auth.credentials import AnonymousCredentials

                credentials = AnonymousCredentials()
                project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "memoize-emulator"
            else:
                import google.auth

                credentials, project = google.auth.default(scopes=storage.Client.SCOPE)
            # our own session: a larger pool for parallel transfers, and a hook that
            # keeps each response's Date header (TTLs are judged on the store's clock)
            session = AuthorizedSession(credentials)
            adapter = requests.adapters.HTTPAdapter(
                pool_connections=MAX_POOL_CONNECTIONS, pool_maxsize=MAX_POOL_CONNECTIONS
            )
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.hooks["response"].append(_record_date)
            client = storage.Client(project=project, credentials=credentials, _http=session)
            _clients[key] = client
    return client


def _md5_hex(value: str | None) -> str | None:
    """GCS reports MD5 in base64 (none for composite objects)."""
    if not value:
        return None
    try:
        return base64.b64decode(value).hex()
    except ValueError:
        return None


def _status(err: BaseException) -> int | None:
    code = getattr(err, "code", None)
    return code if isinstance(code, int) else None


def _is_not_found(err: BaseException) -> bool:
    return _status(err) == 404


def describe_error(err: BaseException) -> str:
    """A one-line cause for a google-cloud / requests exception."""
    status = _status(err)
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    text = "%s%s" % (
        message,
        " (HTTP %d)" % status if status and str(status) not in message else "",
    )
    return " ".join(text.split())


def _is_connection_error(err: BaseException) -> bool:
    import requests.exceptions
    from google.api_core.exceptions import RetryError

    if isinstance(err, RetryError):
        err = err.cause or err
    return isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))


class GCSStore(Store):
    lists_md5 = True

    def __init__(self, url: str):
        self.bucket_name, self.prefix = parse_gs_url(url)
        self.url = url
        # "prefix/" so that a sibling like "prefix-old/" is never in scope
        self._root = self.prefix + "/" if self.prefix else ""
        self._bucket = None
        self._bucket_checked = False
        self.list_page_size = LIST_PAGE_SIZE

    @property
    def bucket(self):
        if self._bucket is None:
            with self._errors("connect"):
                self._bucket = _client().bucket(self.bucket_name)
        return self._bucket

    def _full(self, key: str) -> str:
        return self._root + check_key(key)

    def _blob(self, key: str):
        return self.bucket.blob(self._full(key))

    def url_for(self, key: str) -> str:
        return "%s%s/%s" % (SCHEME, self.bucket_name, self._full(key))

    def _unavailable(self, action: str, key: str | None, err: BaseException) -> StoreUnavailable:
        cause = describe_error(err)
        if _is_connection_error(err):
            return StoreUnavailable("GCS cache %s unreachable: %s" % (self.url, cause))
        where = " %s" % key if key else ""
        return StoreUnavailable("GCS cache %s: %s%s failed: %s" % (self.url, action, where, cause))

    @contextmanager
    def _errors(self, action: str, key: str | None = None):
        """Any failure of the block is the store's (see the S3 store)."""
        try:
            yield
        except CacheFault:
            raise
        except Exception as err:
            raise self._unavailable(action, key, err) from err

    def _check_bucket(self) -> None:
        """A 404 may mean a missing bucket: tell it from a missing object, once."""
        if self._bucket_checked:
            return
        with self._errors("check bucket", self.bucket_name):
            if not self.bucket.exists(timeout=_timeout(), retry=_retry()):
                raise StoreUnavailable(
                    "GCS cache %s: bucket %s does not exist (HTTP 404)"
                    % (self.url, self.bucket_name)
                )
        self._bucket_checked = True

    def _missing(self) -> None:
        """After a 404: None for a missing object, a fault for a missing bucket."""
        self._check_bucket()
        return None

    def get(self, key: str) -> bytes | None:
        blob = self._blob(key)
        with self._errors("get", key):
            try:
                return blob.download_as_bytes(timeout=_timeout(), retry=_retry())
            except Exception as err:
                if _is_not_found(err):
                    return self._missing()
                raise

    def get_dated(self, key: str) -> tuple[bytes, float, float | None] | None:
        full = self._full(key)
        with self._errors("get", key):
            for _attempt in range(3):
                blob = self.bucket.get_blob(full, timeout=_timeout(), retry=_retry())
                if blob is None:
                    return self._missing()
                try:
                    # the generation just read: the bytes and the date belong together
                    data = blob.download_as_bytes(
                        if_generation_match=blob.generation, timeout=_timeout(), retry=_retry()
                    )
                except Exception as err:
                    if _status(err) == 412 or _is_not_found(err):
                        continue  # replaced or deleted in between: read again
                    raise
                return data, blob.updated.timestamp(), _server_time()
        return None

    def put(self, key: str, data: bytes) -> None:
        blob = self._blob(key)
        with self._errors("put", key):
            blob.upload_from_string(data, timeout=_timeout(), retry=_retry())

    def put_if_absent(self, key: str, data: bytes) -> bool:
        blob = self._blob(key)
        with self._errors("put", key):
            try:
                blob.upload_from_string(
                    data, if_generation_match=0, timeout=_timeout(), retry=_retry()
                )
            except Exception as err:
                # 412: the object exists. (A retry of our own write whose reply was
                # lost lands here too: harmless for first-writer-wins publication.)
                if _status(err) == 412:
                    return False
                raise
        return True

    def _info(self, key: str, blob) -> ObjectInfo:
        return ObjectInfo(
            key, int(blob.size or 0), blob.updated.timestamp(), _md5_hex(blob.md5_hash)
        )

    def head(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        with self._errors("head", key):
            blob = self.bucket.get_blob(full, timeout=_timeout(), retry=_retry())
            if blob is None:
                return self._missing()
        return self._info(key, blob)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Directory semantics as in LocalStore: "a" and "a/" both mean a/.
        sub = check_key(prefix.rstrip("/")) + "/" if prefix else ""
        with self._errors("list", prefix or "/"):
            blobs = _client().list_blobs(
                self.bucket_name,
                prefix=self._root + sub,
                page_size=self.list_page_size,
                timeout=_timeout(),
                retry=_retry(),
            )
            for blob in blobs:
                rel = blob.name[len(self._root) :]
                try:
                    check_key(rel)
                except ValueError:
                    continue  # written by something else; we could not address it
                yield self._info(rel, blob)

    def delete(self, keys: Iterable[str]) -> int:
        # validate everything first: an unsafe key must not leave a half-done deletion
        fulls = [self._full(key) for key in keys]

        def one(full):
            with self._errors("delete", full[len(self._root) :]):
                try:
                    self.bucket.blob(full).delete(timeout=_timeout(), retry=_retry())
                except Exception as err:
                    if not _is_not_found(err):
                        raise

        if len(fulls) <= 1:
            for full in fulls:
                one(full)
        else:
            with ThreadPoolExecutor(max_workers=min(DELETE_PARALLEL, len(fulls))) as pool:
                list(pool.map(one, fulls))
        return len(fulls)

    def touch(self, key: str) -> bool:
        """Refresh the object's ``updated`` time (GCS sets it on a metadata change),
        so a prune that scanned before keeps it. False if the object does not exist."""
        full = self._full(key)
        with self._errors("touch", key):
            blob = self.bucket.get_blob(full, timeout=_timeout(), retry=_retry())
            if blob is None:
                return False
            blob.metadata = dict(blob.metadata or {}, **{"memoize-used": "%.3f" % time.time()})
            try:
                blob.patch(timeout=_timeout(), retry=_retry())
            except Exception as err:
                if _is_not_found(err):
                    return False
                raise
        return True

    def put_file(self, key: str, path: str) -> None:
        blob = self._blob(key)
        with self._errors("upload", key):
            blob.upload_from_filename(path, timeout=_timeout(), retry=_retry())

    def get_file(self, key: str, path: str) -> bool:
        blob = self._blob(key)
        directory = os.path.dirname(os.path.abspath(path))
        tmp = None
        with self._errors("download", key):
            try:
                os.makedirs(directory, exist_ok=True)
                tmp = os.path.join(directory, ".tmp-" + os.urandom(8).hex())
                try:
                    # checks the MD5/CRC32C GCS keeps of the object
                    blob.download_to_filename(tmp, timeout=_timeout(), retry=_retry())
                except Exception as err:
                    if _is_not_found(err):
                        self._missing()
                        return False
                    raise
                os.replace(tmp, path)
                tmp = None
                return True
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)

    def _rewrite(self, dest, source) -> None:
        """A server-side copy (GCS rewrite: several calls for a large object)."""
        token, _done, _total = dest.rewrite(source, timeout=_timeout(), retry=_retry())
        calls = 1
        while token is not None:
            if calls >= REWRITE_MAX_CALLS:
                raise StoreUnavailable(
                    "GCS cache %s: rewrite of %s never finished" % (self.url, dest.name)
                )
            token, _done, _total = dest.rewrite(
                source, token=token, timeout=_timeout(), retry=_retry()
            )
            calls += 1

    def copy_from_url(self, key: str, source_url: str) -> bool:
        """Server-side copy from another gs:// URL; False if the source is gone."""
        full = self._full(key)
        try:
            src_bucket, src_key = parse_gs_url(source_url)
        except ValueError:
            return False
        if not src_key:
            return False
        with self._errors("copy from %s to" % source_url, key):
            client = _client()
            source = client.bucket(src_bucket).blob(src_key)
            try:
                self._rewrite(self.bucket.blob(full), source)
            except Exception as err:
                if _is_not_found(err):
                    self._check_bucket()
                    return False
                raise
        return True

    def copy_to_url(self, key: str, dest_url: str, metadata: dict | None = None) -> bool:
        """Server-side copy of one of our objects to another gs:// location.

        ``metadata`` becomes the destination's metadata: Metaflow's GCS datastore
        keeps each blob's packing info there (metaflow-user-attributes)."""
        try:
            dest_bucket, dest_key = parse_gs_url(dest_url)
        except ValueError:
            return False
        if not dest_key:
            return False
        with self._errors("copy to %s from" % dest_url, key):
            dest = _client().bucket(dest_bucket).blob(dest_key)
            if metadata is not None:
                dest.metadata = {"metaflow-user-attributes": json.dumps(metadata)}
            try:
                self._rewrite(dest, self._blob(key))
            except Exception as err:
                if _is_not_found(err):
                    return False
                raise
        return True
