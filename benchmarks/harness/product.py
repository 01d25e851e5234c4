"""The product's own objects (cache, stores, transfer, keys), used in-process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from .config import BenchError
from .flows import FlowDir
from .moto_s3 import s3_url


def product():
    import metaflow  # noqa: F401  (Metaflow first: it loads the extension)

    from metaflow_extensions.memoize.plugins.memoize.cache import entries as cache
    from metaflow_extensions.memoize.plugins.memoize.cache import manifest, transfer
    from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
    from metaflow_extensions.memoize.plugins.memoize.cache.stores.s3 import S3Store
    from metaflow_extensions.memoize.plugins.memoize.key import components as keys
    from metaflow_extensions.memoize.plugins.memoize.metaflow_compat import DatastoreBlobs

    return SimpleNamespace(
        Cache=cache.Cache,
        keys=keys,
        manifest=manifest,
        transfer=transfer,
        DatastoreBlobs=DatastoreBlobs,
        LocalStore=LocalStore,
        S3Store=S3Store,
    )


def datastore_blobs(root: Path, flow_name: str):
    """The product's view of a real Metaflow local datastore (content-addressed blobs)."""
    from metaflow.datastore import FlowDataStore
    from metaflow.plugins.datastores.local_storage import LocalStorage

    P = product()
    flow_ds = FlowDataStore(flow_name, storage_impl=LocalStorage, ds_root=str(root))
    return P.DatastoreBlobs(SimpleNamespace(_ca_store=flow_ds.ca_store))


def work_entry(fd: FlowDir, flow_name="ArtifactsFlow", step="work"):
    P = product()
    cache = P.Cache(P.LocalStore(str(fd.default_cache)))
    manifests = [m for _, m, _ in cache.entries(flow_name, step) if m is not None]
    if len(manifests) != 1:
        raise BenchError(
            "expected one entry for %s/%s, found %d" % (flow_name, step, len(manifests))
        )
    return cache, manifests[0]


def fresh_records(manifest):
    P = product()
    return {
        name: P.manifest.ArtifactRecord(sha=a.sha, info=dict(a.info))
        for name, a in manifest.artifacts.items()
    }


def s3_cache(prefix):
    """The product's cache on an S3 store under ``prefix`` of the benchmark bucket."""
    P = product()
    return P.Cache(P.S3Store(s3_url(prefix)))
