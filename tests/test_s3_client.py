"""The S3 store's client reuses the service models Metaflow's S3 datastore already parsed.

Building a boto3 client from a new session parses botocore's service models again
(~60-100 ms in a task process); when Metaflow's S3 datastore has built its client,
the store's client is built on that client's loaded models. Only the models are
shared: the store keeps its own session, endpoint, timeouts and retries.
"""

import time
from types import SimpleNamespace

import pytest

from metaflow_extensions.memoize.plugins.memoize import metaflow_compat as mf
from metaflow_extensions.memoize.plugins.memoize.cache.stores import s3
from metaflow_extensions.memoize.plugins.memoize.cache.stores.s3 import S3Store


@pytest.fixture
def fresh_clients(monkeypatch):
    """No client built and no models borrowed yet, as in a new task process."""
    monkeypatch.setattr(s3, "_clients", {})
    monkeypatch.setattr(s3, "_loaded_models", None)


def _task_datastore(storage):
    return SimpleNamespace(_ca_store=SimpleNamespace(_storage_impl=storage))


def test_metaflow_s3_client_is_found_only_once_metaflow_built_it(s3_env):
    from metaflow.plugins.datastores.local_storage import LocalStorage
    from metaflow.plugins.datastores.s3_storage import S3Storage

    storage = S3Storage("s3://%s/metaflow" % s3_env.bucket)
    assert mf.loaded_s3_client(_task_datastore(storage)) is None  # never builds one
    built = storage.s3_client.client
    assert mf.loaded_s3_client(_task_datastore(storage)) is built
    assert mf.loaded_s3_client(_task_datastore(LocalStorage("/tmp"))) is None
    assert mf.loaded_s3_client(object()) is None


def test_store_client_reuses_loaded_models_and_keeps_its_own_settings(s3_env, fresh_clients):
    from metaflow.plugins.datatools.s3.s3util import get_s3_client

    metaflow_client, _ = get_s3_client()
    s3.reuse_loaded_models(metaflow_client)
    store = S3Store(s3_env.url("borrowed"))
    client = store.client
    assert client is not metaflow_client
    assert client._loader is metaflow_client._loader
    assert client.meta.endpoint_url == s3_env.endpoint_url
    assert client.meta.config.connect_timeout == s3.CONNECT_TIMEOUT
    assert client.meta.config.read_timeout == s3.READ_TIMEOUT
    assert client.meta.config.retries["mode"] == "standard"
    # and it works
    store.put("a/b", b"payload")
    assert store.get("a/b") == b"payload"
    assert store.get("a/missing") is None


def test_without_metaflow_client_the_store_builds_its_own(s3_env, fresh_clients):
    store = S3Store(s3_env.url("own"))
    store.put("x", b"1")
    assert store.get("x") == b"1"


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-03T07:25:43.000Z",  # a listing's LastModified
        "2026-12-03T07:25:43Z",
        "2026-12-03T07:25:43.123456Z",
        "Thu, 03 Dec 2026 07:25:43 GMT",  # a HEAD or GET response's header
        "1796280000",  # epoch seconds, which botocore also accepts
    ],
)
def test_timestamps_parse_as_botocore_parses_them(value):
    from botocore.utils import parse_timestamp

    ours = s3._parse_timestamp(value)
    assert ours.timestamp() == parse_timestamp(value).timestamp()
    assert ours.utcoffset().total_seconds() == 0


def test_the_store_client_parses_listing_times_with_the_fast_parser(s3_env, fresh_clients):
    store = S3Store(s3_env.url("parser"))
    store.put("v1/x", b"1")
    listed = list(store.list("v1/"))
    assert [info.key for info in listed] == ["v1/x"]
    # botocore parses responses with the endpoint's parser factory
    defaults = store.client._endpoint._response_parser_factory._defaults
    assert defaults["timestamp_parser"] is s3._parse_timestamp
    assert abs(listed[0].modified - time.time()) < 120
