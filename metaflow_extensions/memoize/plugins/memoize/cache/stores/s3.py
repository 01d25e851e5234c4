"""A cache store under an S3 prefix (``s3://bucket/prefix``), via boto3.

Credentials come from the standard AWS chain. The endpoint comes from
``METAFLOW_S3_ENDPOINT_URL`` (environment, then Metaflow's config) or else
``AWS_ENDPOINT_URL_S3``, so the cache talks to the same S3 as the Metaflow
datastore (MinIO, moto, ...). Every failure other than "not found" becomes
``StoreUnavailable`` so the caller can run the step uncached.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ...exceptions import CacheFault, StoreUnavailable
from .base import ObjectInfo, Store, UploadInfo, check_key, parse_bucket_url

# Short enough that an unreachable store costs a step seconds, not minutes;
# long enough for a slow-but-alive endpoint to answer a 16 MB part.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
# botocore's standard retry mode: 500/503/throttling/connection errors, with
# exponential backoff and jitter (at most ~7 s of waiting in all)
MAX_ATTEMPTS = 4
# what botocore cannot retry: a reply whose body breaks off while it is read
BODY_ATTEMPTS = 3
BODY_BACKOFF = 0.2  # seconds, doubled after each failed read
# One pool per client is shared by all threads, including the transfer
# manager's workers: it must be at least MAX_CONCURRENCY or they queue.
MAX_POOL_CONNECTIONS = 16
#: the part listings of ``list_split`` under way at once, in the whole process: half
#: the pool, so that they and the plain listings made beside them (a scan makes
#: four) never want more connections than it keeps
_SPLIT_LISTINGS = threading.BoundedSemaphore(MAX_POOL_CONNECTIONS // 2)

MULTIPART_THRESHOLD = 16 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
COPY_OBJECT_LIMIT = 5 * 1024**3  # larger objects are copied in parts
MAX_CONCURRENCY = 8

DELETE_BATCH = 1000  # the DeleteObjects limit on AWS
LIST_PAGE_SIZE = 1000  # the most S3 returns per ListObjectsV2 request

_NOT_FOUND_CODES = frozenset(("NoSuchKey", "404", "NotFound"))
_PRECONDITION_CODES = frozenset(("PreconditionFailed", "412"))
_CONFLICT_CODES = frozenset(("ConditionalRequestConflict", "409"))

_clients: dict[tuple[int, str | None, str], Any] = {}
_clients_lock = threading.Lock()
_transfer_config = None
#: botocore data loader (parsed service models) of a client built earlier in this
#: process, by Metaflow's S3 datastore: a new session reuses it instead of parsing them again
_loaded_models: Any = None


def reuse_loaded_models(client) -> None:
    """Build this process's clients with the parsed service models of ``client`` (a boto3
    client someone else built, e.g. Metaflow's S3 datastore), instead of loading them
    again: a new session costs ~60-100 ms, a session on loaded models ~10 ms.
    Only the models are shared: the session, credentials and configuration stay ours."""
    global _loaded_models
    loader = getattr(client, "_loader", None)  # botocore keeps it on every client
    if loader is not None and _loaded_models is None:
        _loaded_models = loader


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix/`` into ``("bucket", "some/prefix")``."""
    return parse_bucket_url(url, "s3://", "S3")


def describe_error(err: BaseException) -> str:
    """A one-line, human-readable cause for a boto3/botocore exception."""
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code = error.get("Code") or "?"
        message = error.get("Message") or ""
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = "%s%s" % (code, ": " + message if message else "")
        if status:
            text += " (HTTP %s)" % status
    else:
        # botocore's own messages name the endpoint, which is the useful part
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def _error_code(err: BaseException) -> str | None:
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _is_not_found(err: BaseException) -> bool:
    return _error_code(err) in _NOT_FOUND_CODES


@functools.cache
def _etag_md5(etag: str | None) -> str | None:
    """The MD5 an ETag may stand for: a single-part upload's ETag is the hex MD5
    of its bytes. Multipart ETags (``-N``) are not; SSE-KMS ETags look like one
    but are not, so they never match a recorded MD5 (the reader then falls back
    to reading the object)."""
    value = (etag or "").strip('"').lower()
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def _store_errors() -> tuple[type, ...]:
    """Every exception type that means "the store failed", for except clauses."""
    import boto3.exceptions
    import s3transfer.exceptions
    from botocore.exceptions import BotoCoreError, ClientError

    extra = tuple(
        getattr(s3transfer.exceptions, name)
        for name in (
            "RetriesExceededError",
            "S3UploadFailedError",
            "S3DownloadFailedError",
            "S3CopyFailedError",
            "FatalError",
        )
        if hasattr(s3transfer.exceptions, name)
    )
    return (BotoCoreError, ClientError, boto3.exceptions.Boto3Error) + extra


def _server_time(response) -> float | None:
    """The server's clock when it answered (its Date header), or None."""
    from email.utils import parsedate_to_datetime

    try:
        date = response["ResponseMetadata"]["HTTPHeaders"]["date"]
        return parsedate_to_datetime(date).timestamp()
    except (KeyError, TypeError, ValueError, IndexError):
        return None


#: checksums S3 keeps of an object, strongest first (S3 stores at most one)
CHECKSUM_ALGORITHMS = ("SHA256", "CRC64NVME", "SHA1", "CRC32C", "CRC32")


def _checksum(client, bucket: str, key: str) -> tuple[str, str] | None:
    """(algorithm, value) of the full-object checksum S3 keeps of an object, or None
    (none recorded, a composite one of a multipart upload, or not supported)."""
    response = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    for algorithm in CHECKSUM_ALGORITHMS:
        value = response.get("Checksum" + algorithm)
        if value:
            if "-" in value or response.get("ChecksumType") == "COMPOSITE":
                return None
            return algorithm, value
    return None


def _endpoint_url() -> str | None:
    url = os.environ.get("METAFLOW_S3_ENDPOINT_URL")
    if not url:
        # ~/.metaflowconfig may set it without the environment doing so
        try:
            from metaflow.metaflow_config import S3_ENDPOINT_URL

            url = S3_ENDPOINT_URL
        except Exception:
            url = None
    return url or os.environ.get("AWS_ENDPOINT_URL_S3") or None


def _region() -> str:
    return os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"


def _client_for(endpoint_url: str | None, region: str):
    # Keyed by pid too: a forked child must not share the parent's sockets.
    key = (os.getpid(), endpoint_url, region)
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                max_pool_connections=MAX_POOL_CONNECTIONS,
            )
            # A private session: boto3's default session is not thread-safe
            # to create clients from.
            session = boto3.session.Session()
            if _loaded_models is not None:
                # after the session set up its own loader: nothing of the donor changes
                session._session.register_component("data_loader", _loaded_models)
            # this session's own parser factory (botocore makes one per session)
            parsers = session._session.get_component("response_parser_factory")
            parsers.set_parser_defaults(timestamp_parser=_parse_timestamp)
            client = session.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
            _clients[key] = client
    return client


def _parse_timestamp(value):
    """botocore's timestamp parser, fast for the form S3 listings use.

    Every object of a listing page has a LastModified (``2026-12-03T07:25:43.000Z``),
    which botocore's default parser reads through dateutil: about 0.3 ms each, most
    of the client's time in listing 20,000 keys (`stats` on 10,000 entries). Any
    other form (HTTP dates in headers) goes to botocore's parser."""
    if isinstance(value, str) and value.endswith("Z") and "T" in value:
        try:
            return datetime.datetime.fromisoformat(value[:-1] + "+00:00")
        except ValueError:
            pass
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)


def _transfer():
    global _transfer_config
    if _transfer_config is None:
        from boto3.s3.transfer import TransferConfig

        _transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=MAX_CONCURRENCY,
        )
    return _transfer_config


class S3Store(Store):
    lists_md5 = True
    lists_in_parts = True

    def __init__(self, url: str):
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = url
        # "prefix/" so that a sibling like "prefix-old/" is never in scope
        self._root = self.prefix + "/" if self.prefix else ""
        self._client = None
        self._bucket_checked = False
        # smaller in the contract tests, so that paging is exercised on few objects
        self.list_page_size = LIST_PAGE_SIZE
        self.delete_batch = DELETE_BATCH

    @property
    def client(self):
        """The (shared, lazily built) boto3 S3 client this store uses."""
        if self._client is None:
            try:
                self._client = _client_for(_endpoint_url(), _region())
            except (ValueError, *_store_errors()) as err:
                # ValueError: botocore's verdict on a malformed endpoint URL
                raise self._unavailable("connect", None, err) from err
        return self._client

    def _full(self, key: str) -> str:
        return self._root + check_key(key)

    def url_for(self, key: str) -> str:
        return "s3://%s/%s" % (self.bucket, self._full(key))

    def _unavailable(self, action: str, key: str | None, err: BaseException) -> StoreUnavailable:
        from botocore.exceptions import ConnectionError, HTTPClientError

        cause = describe_error(err)
        if isinstance(err, (ConnectionError, HTTPClientError, ValueError)):
            msg = "S3 cache %s unreachable: %s" % (self.url, cause)
        else:
            where = " %s" % key if key else ""
            msg = "S3 cache %s: %s%s failed: %s" % (self.url, action, where, cause)
        return StoreUnavailable(msg)

    @contextmanager
    def _errors(self, action: str, key: str | None = None):
        """Any failure of the block is the store's: botocore, s3transfer, urllib3 (a
        reply that breaks off mid-body), OS errors alike become StoreUnavailable."""
        try:
            yield
        except CacheFault:
            raise
        except Exception as err:
            raise self._unavailable(action, key, err) from err

    def _check_bucket(self) -> None:
        """Tell a missing key from a missing bucket after a bodiless 404.

        HEAD responses carry no error code, so a 404 from head_object cannot
        say which one is missing; one head_bucket per store settles it.
        """
        if self._bucket_checked:
            return
        with self._errors("check bucket", self.bucket):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except Exception as err:
                if _is_not_found(err):
                    raise StoreUnavailable(
                        "S3 cache %s: bucket %s does not exist (HTTP 404)" % (self.url, self.bucket)
                    ) from err
                raise
        self._bucket_checked = True

    def get(self, key: str) -> bytes | None:
        read = self._read(key)
        return None if read is None else read[0]

    def get_dated(self, key: str) -> tuple[bytes, float, float | None] | None:
        read = self._read(key)
        if read is None:
            return None
        data, response = read
        return data, response["LastModified"].timestamp(), _server_time(response)

    def _read(self, key: str):
        """(body, response) of an object, None when absent; a body that breaks
        off is read again (botocore retries the request, not the reading)."""
        full = self._full(key)
        with self._errors("get", key):
            delay = BODY_BACKOFF
            for attempt in range(1, BODY_ATTEMPTS + 1):
                try:
                    response = self.client.get_object(Bucket=self.bucket, Key=full)
                except Exception as err:
                    if _error_code(err) == "NoSuchKey":
                        return None
                    raise
                try:
                    with response["Body"] as body:
                        return body.read(), response
                except Exception:
                    if attempt == BODY_ATTEMPTS:
                        raise
                time.sleep(delay)
                delay *= 2

    def put(self, key: str, data: bytes) -> None:
        full = self._full(key)
        with self._errors("put", key):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        full = self._full(key)
        with self._errors("put", key):
            try:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
            except Exception as err:
                code = _error_code(err)
                # 409: a concurrent conditional write to the same key is in
                # flight; someone else is creating it, so we did not. (A retry
                # of our own write whose reply was lost also lands here: we
                # then say False for an object we wrote, which is harmless for
                # first-writer-wins publication.)
                if code in _PRECONDITION_CODES or code in _CONFLICT_CODES:
                    return False
                raise
        return True

    def head(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        with self._errors("head", key):
            try:
                response = self.client.head_object(Bucket=self.bucket, Key=full)
            except Exception as err:
                if _is_not_found(err):
                    self._check_bucket()
                    return None
                raise
        return ObjectInfo(key, int(response["ContentLength"]), response["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Directory semantics as in LocalStore: "a" and "a/" both mean a/.
        sub = check_key(prefix.rstrip("/")) + "/" if prefix else ""
        yield from self._listed(sub, prefix or "/")

    def list_split(self, prefix: str, first_chars: str) -> list[ObjectInfo]:
        # A first page; when there is more, one listing per first character still
        # to come, side by side: the pages of one listing come one after the other
        # (a round trip each), and a server that sorts all of a prefix's keys for
        # every page sorts far fewer per listing. A prefix of one page (most steps)
        # costs one request, not one per character: moto walks every key of the
        # bucket for each request.
        sub = check_key(prefix.rstrip("/")) + "/" if prefix else ""
        at = len(sub)
        wanted = set(first_chars)
        with self._errors("list", prefix or "/"):
            response = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._root + sub, MaxKeys=self.list_page_size
            )
        page = response.get("Contents", ())
        found = [i for i in map(self._object_info, page) if i and i.key[at : at + 1] in wanted]
        if not response.get("IsTruncated") or not page:
            return found
        last = page[-1]["Key"][len(self._root) :]
        reached = last[at : at + 1]  # every name starting with an earlier character was listed

        def part(char: str) -> list[ObjectInfo]:
            with _SPLIT_LISTINGS:
                after = last if char == reached else None
                return list(self._listed(sub + char, prefix, start_after=after))

        rest = sorted(c for c in wanted if c >= reached)
        with ThreadPoolExecutor(max_workers=len(rest) or 1) as pool:
            return found + [info for listed in pool.map(part, rest) for info in listed]

    def list_folders(self, prefix: str) -> list[str]:
        # one request per 1,000 folders: S3 groups the keys on "/" (CommonPrefixes)
        sub = check_key(prefix.rstrip("/")) + "/" if prefix else ""
        names = []
        with self._errors("list", prefix or "/"):
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self._root + sub,
                Delimiter="/",
                PaginationConfig={"PageSize": self.list_page_size},
            )
            for page in pages:
                for folder in page.get("CommonPrefixes", ()):
                    name = folder["Prefix"][len(self._root + sub) :].rstrip("/")
                    try:
                        check_key(name)
                    except ValueError:
                        continue  # written by something else; we could not address it
                    names.append(name)
        return sorted(names)

    def _listed(
        self, start: str, shown: str, start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        """Every object whose key (under the root) starts with ``start`` (and sorts
        after ``start_after``)."""
        with self._errors("list", shown or "/"):
            paginator = self.client.get_paginator("list_objects_v2")
            after = {"StartAfter": self._root + start_after} if start_after else {}
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self._root + start,
                PaginationConfig={"PageSize": self.list_page_size},
                **after,
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    info = self._object_info(obj)
                    if info is not None:
                        yield info

    def _object_info(self, obj: dict) -> ObjectInfo | None:
        rel = obj["Key"][len(self._root) :]
        try:
            check_key(rel)
        except ValueError:
            return None  # written by something else; we could not address it
        return ObjectInfo(
            rel, int(obj["Size"]), obj["LastModified"].timestamp(), _etag_md5(obj.get("ETag"))
        )

    def delete(self, keys: Iterable[str]) -> int:
        # Validate everything first: an unsafe key must not leave a half-done
        # deletion behind.
        fulls = [self._full(key) for key in keys]
        for start in range(0, len(fulls), self.delete_batch):
            batch = fulls[start : start + self.delete_batch]
            with self._errors("delete", batch[0][len(self._root) :]):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors: list[dict] = [
                e for e in response.get("Errors", ()) if e.get("Code") != "NoSuchKey"
            ]
            if errors:
                first = errors[0]
                raise StoreUnavailable(
                    "S3 cache %s: delete failed for %d of %d objects, e.g. %s: %s %s"
                    % (
                        self.url,
                        len(errors),
                        len(batch),
                        first.get("Key", "?")[len(self._root) :],
                        first.get("Code", "?"),
                        first.get("Message", ""),
                    )
                )
        return len(fulls)

    def touch(self, key: str) -> bool:
        """Refresh the object's LastModified by copying it onto itself (S3 copies
        server side; user metadata and content type are kept): a prune that scanned
        before sees the object as modified since and keeps it. One HEAD and one
        CopyObject (a multipart copy above 5 GB). False if the object does not exist."""
        full = self._full(key)
        with self._errors("touch", key):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=full)
            except Exception as err:
                if _is_not_found(err):
                    return False
                raise
            args = {
                "MetadataDirective": "REPLACE",
                "Metadata": head.get("Metadata") or {},
                "ContentType": head.get("ContentType") or "binary/octet-stream",
            }
            source = {"Bucket": self.bucket, "Key": full}
            try:
                if int(head["ContentLength"]) <= COPY_OBJECT_LIMIT:
                    self.client.copy_object(Bucket=self.bucket, Key=full, CopySource=source, **args)
                else:
                    self.client.copy(source, self.bucket, full, ExtraArgs=args, Config=_transfer())
            except Exception as err:
                if _is_not_found(err):
                    return False  # deleted between the HEAD and the copy
                raise
        return True

    def incomplete_uploads(self, prefix: str = "") -> list[UploadInfo]:
        sub = check_key(prefix.rstrip("/")) + "/" if prefix else ""
        out = []
        with self._errors("list uploads", prefix or "/"):
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._root + sub):
                for upload in page.get("Uploads", ()):
                    rel = upload["Key"][len(self._root) :]
                    try:
                        check_key(rel)
                    except ValueError:
                        continue
                    out.append(UploadInfo(rel, upload["UploadId"], upload["Initiated"].timestamp()))
        return sorted(out)

    def abort_uploads(self, uploads: Iterable[UploadInfo]) -> int:
        count = 0
        for upload in uploads:
            with self._errors("abort upload of", upload.key):
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=self._full(upload.key), UploadId=upload.upload_id
                    )
                except Exception as err:
                    if _error_code(err) not in ("NoSuchUpload", "404"):
                        raise
            count += 1
        return count

    def put_file(self, key: str, path: str) -> None:
        full = self._full(key)
        with self._errors("upload", key):
            try:
                self.client.upload_file(path, self.bucket, full, Config=_transfer())
            except OSError as err:
                from botocore.exceptions import BotoCoreError

                if isinstance(err, BotoCoreError):
                    raise
                raise StoreUnavailable(
                    "S3 cache %s: upload %s failed reading %s: %s" % (self.url, key, path, err)
                ) from err

    def get_file(self, key: str, path: str) -> bool:
        full = self._full(key)
        directory = os.path.dirname(os.path.abspath(path))
        tmp = None
        with self._errors("download", key):
            try:
                os.makedirs(directory, exist_ok=True)
                # a new name, not a file: s3transfer writes its own temporary and renames
                # it here, and a rename over an existing file costs a flush on ext4
                tmp = os.path.join(directory, ".tmp-" + os.urandom(8).hex())
                try:
                    self.client.download_file(self.bucket, full, tmp, Config=_transfer())
                except Exception as err:
                    if _is_not_found(err):
                        self._check_bucket()
                        return False
                    raise
                os.replace(tmp, path)
                tmp = None
                return True
            except OSError as err:
                from botocore.exceptions import BotoCoreError

                if isinstance(err, BotoCoreError):
                    raise
                raise StoreUnavailable(
                    "S3 cache %s: download %s to %s failed: %s" % (self.url, key, path, err)
                ) from err
            finally:
                if tmp is not None:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass

    def copy_from_url(self, key: str, source_url: str) -> bool:
        """Server-side copy (multipart for big objects); False if the source is gone."""
        full = self._full(key)
        try:
            src_bucket, src_key = parse_s3_url(source_url)
        except ValueError:
            return False
        if not src_key:
            return False
        with self._errors("copy from %s to" % source_url, key):
            try:
                self._verified_copy(src_bucket, src_key, self.bucket, full)
            except Exception as err:
                if _is_not_found(err):
                    self._check_bucket()
                    return False
                raise
        return True

    def _verified_copy(self, src_bucket, src_key, dest_bucket, dest_key, extra=None) -> None:
        """A server-side copy that S3 checksums: when the source has a full-object
        checksum, the copy is asked for one of the same algorithm and the two must
        agree; otherwise (no checksum, or an endpoint without checksums) only the
        copy's success vouches for it. A copy that disagrees is deleted."""
        extra = dict(extra or {})
        try:
            source = _checksum(self.client, src_bucket, src_key)
        except Exception as err:
            if _is_not_found(err):
                raise
            source = None  # the endpoint does not do checksums: copy as before
        if source is not None:
            extra["ChecksumAlgorithm"] = source[0]
        self.client.copy(
            {"Bucket": src_bucket, "Key": src_key},
            dest_bucket,
            dest_key,
            ExtraArgs=extra or None,
            Config=_transfer(),
        )
        if source is None:
            return
        copied = _checksum(self.client, dest_bucket, dest_key)
        if copied is not None and copied != source:
            self.client.delete_object(Bucket=dest_bucket, Key=dest_key)
            raise StoreUnavailable(
                "S3 cache %s: the copy of s3://%s/%s has %s %s, not %s as its source: deleted"
                % (self.url, src_bucket, src_key, copied[0], copied[1], source[1])
            )

    def copy_to_url(self, key: str, dest_url: str, metadata: dict | None = None) -> bool:
        """Server-side copy of one of our objects to another S3 location.

        ``metadata`` replaces the destination's user metadata: Metaflow's S3
        datastore keeps each blob's packing info there (metaflow-user-attributes).
        """
        dest_bucket, dest_key = parse_s3_url(dest_url)
        if not dest_key:
            return False
        extra = {}
        if metadata is not None:
            extra = {
                "Metadata": {"metaflow-user-attributes": json.dumps(metadata)},
                "MetadataDirective": "REPLACE",
            }
        with self._errors("copy to %s from" % dest_url, key):
            try:
                self._verified_copy(self.bucket, self._full(key), dest_bucket, dest_key, extra)
            except Exception as err:
                if _is_not_found(err):
                    return False
                raise
        return True
