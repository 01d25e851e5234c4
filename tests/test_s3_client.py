"""The S3 store's client reuses the service models Metaflow's S3 datastore already parsed.

Building a boto3 client from a new session parses botocore's service models again
(~60-100 ms in a task process); when Metaflow's S3 datastore has built its client,
the store's client is built on that client's loaded models. Only the models are
shared: the store keeps its own session, endpoint, timeouts and retries.
"""

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
