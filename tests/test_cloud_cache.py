"""GCS and Azure cache roots end to end: real flows against the emulators over HTTP
(gcp-storage-emulator, Azurite: tests/cloud_servers.py), and the settings that
lead to them (URL forms, a missing client library, the default root)."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest
from flowrunner import FlowRunner

from metaflow_extensions.memoize.plugins.memoize import config, settings
from metaflow_extensions.memoize.plugins.memoize.cache import stores
from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store
from metaflow_extensions.memoize.plugins.memoize.exceptions import (
    MemoizeArgumentError,
    MemoizeException,
)
from metaflow_extensions.memoize.plugins.memoize.runtime import decorator

STANDALONE = Path(sys.executable).with_name("metaflow-memoize")
KINDS = ["gcs", "azure"]


def _hits(result):
    return [line for line in result.memoize_lines() if " hit " in line]


def _entries(cloud):
    return sorted(i.key for i in open_store(cloud.url("cache")).list("v1/entries/"))


# whole flows on GCS and Azure run in make test-slow; make test checks both stores
# with the contract suite and the prune and server-side copy tests below
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_miss_hit_in_task_cloned_and_prune(request, tmp_path, kind):
    cloud = request.getfixturevalue(kind + "_env")
    env = dict(cloud.env, METAFLOW_MEMOIZE_ROOT=cloud.url("cache"))
    laptop = FlowRunner(tmp_path / "laptop")
    laptop.add_flow("s3_flow.py")
    first = laptop.run("s3_flow.py", env=env)
    assert laptop.count("start") == 1 and laptop.count("summarize") == 1
    stored = [line for line in first.memoize_lines() if " stored " in line]
    assert len(stored) == 2, first
    assert len(_entries(cloud)) == 2

    # another datastore, orchestrator clones off: hits inside the tasks, whose
    # blobs are downloaded from the cache and verified into the local datastore
    ci = FlowRunner(tmp_path / "ci")
    ci.add_flow("s3_flow.py")
    second = ci.run("s3_flow.py", env=dict(env, METAFLOW_MEMOIZE_CLONE="0"))
    assert ci.count("start") == 0 and ci.count("summarize") == 0
    hits = _hits(second)
    assert len(hits) == 2, second
    assert any(re.search(r"\d+ blobs? copied", line) for line in hits), hits
    assert ci.artifacts("S3CacheFlow", second.run_id) == laptop.artifacts(
        "S3CacheFlow", first.run_id
    )
    assert ci.metadata("S3CacheFlow", second.run_id)["start"][0]["memoize_status"] == "hit"

    # the orchestrator reads the cloud cache too, and completes both hits itself
    third = laptop.run("s3_flow.py", env=env)
    hits = _hits(third)
    assert len(hits) == 2 and all("cloned in the orchestrator" in h for h in hits), third
    assert third.launched_steps() == {"end"}
    assert laptop.count("start") == 1 and laptop.count("summarize") == 1
    assert laptop.artifacts("S3CacheFlow", third.run_id) == laptop.artifacts(
        "S3CacheFlow", first.run_id
    )

    # a whole-root prune (listing-based, with the per-entry index) empties it
    proc = subprocess.run(
        [str(STANDALONE), "--root", cloud.url("cache"), "prune", "--older-than", "0s"]
        + ["--grace", "0", "--yes", "--json"],
        capture_output=True,
        text=True,
        env=laptop.env(env),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads(proc.stdout)
    assert done["entries"] == 2 and done["blobs"] >= 3, done
    assert _entries(cloud) == []
    assert list(open_store(cloud.url("cache")).list("v1/blobs/")) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_stopped_emulator_fails_open_with_one_warning_per_task(request, tmp_path, kind):
    server = request.getfixturevalue("own_%s_server" % kind)
    monkeypatch = request.getfixturevalue("monkeypatch")
    from cloud_servers import azure_env_for, gcs_env_for

    cloud = (gcs_env_for if kind == "gcs" else azure_env_for)(server, monkeypatch)
    server.stop()
    runner = FlowRunner(tmp_path / "work")
    runner.add_flow("s3_flow.py")
    url = cloud.url("cache")
    result = runner.run("s3_flow.py", env=dict(cloud.env, METAFLOW_MEMOIZE_ROOT=url))
    assert runner.count("start") == 1 and runner.count("summarize") == 1
    warnings = [line for line in result.memoize_lines() if "WARNING" in line]
    assert len(warnings) == 2, result  # one per memoized task
    assert all("unreachable" in line and url in line for line in warnings), warnings
    md = runner.metadata("S3CacheFlow", result.run_id)
    assert md["start"][0]["memoize_status"] == "error"


# -- settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "datastore_type, datastore_root, expected",
    [
        ("gs", "gs://bucket/metaflow", "gs://bucket/metaflow/memoize-cache"),
        ("gs", "gs://bucket/metaflow/", "gs://bucket/metaflow/memoize-cache"),
        # Metaflow's Azure sysroot is container/prefix, without a scheme
        ("azure", "container/metaflow", "azure://container/metaflow/memoize-cache"),
        ("azure", "azure://container/mf", "azure://container/mf/memoize-cache"),
        ("s3", "s3://bucket/metaflow", "s3://bucket/metaflow/memoize-cache"),
        ("local", "/data/.metaflow", "/data/.metaflow/memoize-cache"),
    ],
)
def test_the_default_root_follows_the_datastore(datastore_type, datastore_root, expected):
    root = config.default_root(datastore_type, datastore_root)
    assert root == expected
    assert stores.root_url_problem(root) is None


@pytest.mark.parametrize(
    "url, store_class",
    [("gs://b/p", "GCSStore"), ("azure://c/p", "AzureStore"), ("s3://b/p", "S3Store")],
)
def test_open_store_by_scheme(url, store_class):
    store = open_store(url)
    assert type(store).__name__ == store_class and store.url == url
    assert store.url_for("v1/x") == url + "/v1/x"


@pytest.fixture
def without_gcs_library(monkeypatch):
    """As if google-cloud-storage were not installed."""
    entry = stores._CLOUD["gs"]
    monkeypatch.setitem(
        stores._CLOUD, "gs", entry[:2] + ("surely_not_installed.storage",) + entry[3:]
    )


def test_a_root_whose_library_is_missing_names_step_argument_and_fix(without_gcs_library):
    with pytest.raises(MemoizeArgumentError) as raised:
        settings.parse_arguments("train", {"store": "gs://team/cache"}, ".")
    message = str(raised.value)
    assert "*train*" in message and "`store`" in message, message
    assert "pip install 'metaflow-memoize[gcs]'" in message, message
    # a well-formed root of a kind whose library is there stays accepted
    assert settings.parse_arguments("train", {"store": "azure://c/p"}, ".")["store"]


def test_a_root_setting_whose_library_is_missing_stops_the_run(without_gcs_library, monkeypatch):
    monkeypatch.setenv("METAFLOW_MEMOIZE_ROOT", "gs://team/cache")
    with pytest.raises(MemoizeException) as raised:
        decorator._check_root_setting()
    message = str(raised.value)
    assert "METAFLOW_MEMOIZE_ROOT='gs://team/cache'" in message, message
    assert "pip install 'metaflow-memoize[gcs]'" in message, message
    with pytest.raises(ValueError, match=r"metaflow-memoize\[gcs\]"):
        open_store("gs://team/cache")


@pytest.mark.parametrize("kind", KINDS)
def test_prune_knows_entries_from_the_listing_and_index_without_reading_them(request, kind):
    """The per-entry index of prune relies on listings that carry each object's MD5
    (lists_md5): with it, pruning reads no manifest."""
    from test_maintenance import EVERYTHING, assert_consistent
    from test_prune_index import publish

    from metaflow_extensions.memoize.plugins.memoize.cache import maintenance as mt
    from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache

    cloud = request.getfixturevalue(kind + "_env")
    base = type(open_store(cloud.url("x")))

    class Counting(base):
        gets = 0

        def get(self, key):
            self.gets += 1
            return super().get(key)

        def get_dated(self, key):
            self.gets += 1
            return super().get_dated(key)

    cache = Cache(Counting(cloud.url("cache")), signing_key="prune-test-key")
    assert cache.store.lists_md5
    shared = b"shared-blob" * 10
    for i in range(8):
        publish(cache, "Big", "s", "big-%d" % i, {"own": b"own %d" % i, "s": shared})
    publish(cache, "Other", "s", "other", {"own": b"other", "s": shared})
    cache.store.gets = 0
    target = mt.Target(cache, "Big")
    plan = mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0)
    out = mt.execute(target, plan)
    assert cache.store.gets == 0
    assert (out.entries, out.markers, out.blobs) == (8, 8, 8)  # `shared` stays: Other uses it
    assert_consistent(cache.store)


# -- a datastore on the same cloud: blobs copied server side ---------------------------


class _CloudDatastore:
    """A stand-in for DatastoreBlobs on a GCS or Azure datastore, its blobs in the
    emulator beside the cache: what transfer.py asks of a datastore."""

    def __init__(self, kind, store):
        self.kind = "gs" if kind == "gcs" else "azure"
        self.store = store  # the datastore's root, as a store of ours

    def path(self, sha):
        return "Flow/data/%s/%s" % (sha[:2], sha)

    def url(self, sha):
        return self.store.url_for(self.path(sha))

    def existing(self, shas):
        return {s for s in shas if self.store.head(self.path(s)) is not None}

    def cas_meta(self, sha):
        return {"cas_raw": False, "cas_version": 1} if self.existing([sha]) else None

    def write_blob(self, *args, **kwargs):
        raise AssertionError("a same-cloud transfer must not pass blobs through the task")

    def download(self, *args, **kwargs):
        raise AssertionError("a same-cloud transfer must not pass blobs through the task")


@pytest.mark.parametrize("kind", KINDS)
def test_a_datastore_on_the_same_cloud_copies_server_side(request, kind):
    import gzip
    import hashlib

    from metaflow_extensions.memoize.plugins.memoize.cache import transfer
    from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
    from metaflow_extensions.memoize.plugins.memoize.cache.manifest import ArtifactRecord

    cloud = request.getfixturevalue(kind + "_env")
    payload = b"an artifact's pickled bytes" * 100
    sha = hashlib.sha1(payload).hexdigest()
    producer = _CloudDatastore(kind, open_store(cloud.url("metaflow")))
    producer.store.put(producer.path(sha), gzip.compress(payload))
    cache = Cache(open_store(cloud.url("metaflow/memoize-cache")))
    records = {"x": ArtifactRecord(sha, {"size": len(payload)})}

    stats = transfer.export_blobs(producer, cache, records)
    assert (stats.server_side, stats.copied) == (1, 0)
    assert records["x"].stored_size == producer.store.head(producer.path(sha)).size

    consumer = _CloudDatastore(kind, open_store(cloud.url("elsewhere")))
    stats = transfer.import_blobs(consumer, cache, records)
    assert (stats.server_side, stats.copied) == (1, 0)
    assert gzip.decompress(consumer.store.get(consumer.path(sha))) == payload
    # the packing info Metaflow's datastore reads back, in the blob's metadata
    full = "elsewhere/" + consumer.path(sha)
    if kind == "azure":
        metadata = cloud.client.get_blob_client(full).get_blob_properties().metadata
        assert json.loads(metadata["metaflow_user_attributes"]) == {
            "cas_raw": False,
            "cas_version": 1,
        }
    # (GCS: the rewrite request carries it, but gcp-storage-emulator gives the copy
    # the source's metadata whatever the request says, so there is nothing to check)
    # present already: nothing moves
    assert transfer.import_blobs(consumer, cache, records).present == 1


@pytest.mark.parametrize("kind", ["gs", "azure"])
def test_datastore_blobs_of_a_gcs_or_azure_datastore(kind):
    """Metaflow's GCS and Azure datastores have no info_file: the packing info comes
    from the blob's metadata; Azure paths (container/blob) get azure://."""
    from types import SimpleNamespace

    from metaflow_extensions.memoize.plugins.memoize.metaflow_compat import DatastoreBlobs

    meta = {"cas_raw": True, "cas_version": 1}
    key = "metaflow-user-attributes" if kind == "gs" else "metaflow_user_attributes"
    root = "gs://b/mf" if kind == "gs" else "container/mf"
    present = {"mf/F/data/ab/ab12": {key: json.dumps(meta)}}

    class Blob:
        def __init__(self, path):
            self.path, self.metadata = path, None

        def reload(self):  # google-cloud-storage
            from google.api_core.exceptions import NotFound

            if self.path not in present:
                raise NotFound("no")
            self.metadata = present[self.path]

        def get_blob_properties(self):  # azure-storage-blob
            from azure.core.exceptions import ResourceNotFoundError

            if self.path not in present:
                raise ResourceNotFoundError("no")
            return SimpleNamespace(metadata=present[self.path])

    storage = SimpleNamespace(
        TYPE=kind,
        datastore_root=root,
        path_join=lambda *parts: "/".join(parts),
        full_uri=lambda path: root + "/" + path,
        root_client=SimpleNamespace(get_blob_client=lambda path: Blob("mf/" + path)),
    )
    task_datastore = SimpleNamespace(
        _ca_store=SimpleNamespace(_storage_impl=storage, _prefix="F/data")
    )
    blobs = DatastoreBlobs(task_datastore)
    assert blobs.kind == kind
    scheme = "gs://b" if kind == "gs" else "azure://container"
    assert blobs.url("ab12") == scheme + "/mf/F/data/ab/ab12"
    assert blobs.cas_meta("ab12") == meta
    assert blobs.cas_meta("cd34") is None
