"""Prune never deletes a blob an entry may reference.

* Part of the tree unreadable (an ``entries/<Flow>`` folder without read
  permission): the listing fails, so prune aborts with a clear error and deletes
  nothing, instead of taking that flow's blobs for garbage.
* A writer that reuses a blob while a prune is under way (the blob was already
  in the cache, so it is not written again) touches it; prune re-checks the
  blobs' times just before deleting and keeps any that changed since its scan,
  even when the writer's manifest lands after prune's last look at the entries.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest
from reliability_report import fault_notes
from test_reliability import NO_DAC, no_dac  # noqa: F401  (fixture)

from metaflow_extensions.memoize.plugins.memoize.cache import maintenance as mt
from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
from metaflow_extensions.memoize.plugins.memoize.cache.manifest import ArtifactRecord, Manifest
from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.exceptions import CacheFault

AREA = "10. Prune safety"
STANDALONE = Path(sys.executable).with_name("metaflow-memoize")
EVERYTHING = mt.PruneCriteria(max_size=0)
OLD = time.time() - 40 * 86400


@pytest.fixture
def fault(record_property):
    return fault_notes(record_property)


def sha_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def manifest(flow, step, name, blobs) -> Manifest:
    return Manifest(
        key=hashlib.md5(name.encode()).hexdigest(),
        flow=flow,
        step=step,
        components={},
        artifacts={
            n: ArtifactRecord(sha_of(d), {"size": len(d)}, True, len(d)) for n, d in blobs.items()
        },
        transition={},
        created=time.time() - 100,
        expires=None,
        origin="%s/1/%s/1" % (flow, step),
    )


def publish(cache, flow, step, name, blobs) -> Manifest:
    for data in blobs.values():
        cache.store.put(Cache.blob_key(sha_of(data)), data)
    m = manifest(flow, step, name, blobs)
    assert cache.publish(m)
    return m


def age(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (OLD, OLD))


def test_an_unreadable_subtree_aborts_the_prune(tmp_path, no_dac, fault):  # noqa: F811
    fault(
        area=AREA,
        fault="v1/entries/<Flow> of one flow not readable (mode 0, CAP_DAC_OVERRIDE dropped); "
        "`metaflow-memoize prune --yes --grace 0s` (only expired entries selected)",
        store="local",
        expected="prune fails naming the unreadable folder; nothing is deleted (the "
        "flow's 3 blobs stay)",
    )
    root = tmp_path / "cache"
    cache = Cache(LocalStore(str(root)))
    for i in range(3):
        publish(cache, "Hidden", "s", "h%d" % i, {"x": b"hidden %d" % i})
    publish(cache, "Seen", "s", "v", {"x": b"visible"})
    age(root)
    before = sorted(str(p) for p in root.rglob("*") if p.is_file())
    hidden = root / "v1" / "entries" / "Hidden"
    hidden.chmod(0)
    try:
        proc = subprocess.run(
            [*no_dac, str(STANDALONE), "--root", str(root), "prune", "--yes", "--grace", "0s"],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, USERNAME="tester"),
        )
    finally:
        hidden.chmod(0o755)
    after = sorted(str(p) for p in root.rglob("*") if p.is_file())
    assert proc.returncode != 0
    assert "Permission denied" in proc.stderr and "Hidden" in proc.stderr, proc.stderr
    assert after == before
    fault(
        observed="prune failed: %s; 0 of %d objects deleted"
        % (proc.stderr.strip().splitlines()[-1][:200].replace(str(tmp_path), "<tmp>"), len(before))
    )


def test_the_listing_of_an_unreadable_folder_is_a_fault_not_an_empty_folder(tmp_path):
    """In process, for root too: os.walk's errors are raised, not skipped."""
    store = LocalStore(str(tmp_path / "cache"))
    store.put("v1/entries/F/s/%s.json" % ("a" * 32), b"{}")
    real_walk = os.walk

    def failing_walk(top, onerror=None, **kwargs):
        if onerror is not None:
            onerror(PermissionError(13, "Permission denied", top))
        return real_walk(top, onerror=onerror, **kwargs)

    os.walk = failing_walk
    try:
        with pytest.raises(CacheFault, match="Permission denied"):
            list(store.list("v1/entries"))
    finally:
        os.walk = real_walk


def racing(store_class):
    """A store class on which a writer publishes an entry just as prune deletes blobs."""

    class Racing(store_class):
        writer = None

        def delete(self, keys):
            keys = list(keys)
            if self.writer is not None and any(k.startswith("v1/blobs/") for k in keys):
                writer, self.writer = self.writer, None
                writer()
            return super().delete(keys)

    return Racing


class LocalDatastore:
    """What export_blobs asks of a datastore whose blobs are all in the cache already."""

    kind = "local"

    def cas_meta(self, sha):
        return {"cas_raw": True}


def reuse_during_prune(store, make_old) -> tuple[mt.Outcome, bool]:
    """An old entry's blob becomes garbage in prune's plan; a writer then reuses it
    (present: not written again, only touched) and publishes after prune's last look
    at the manifests. (prune's outcome, whether the blob is still there)."""
    from metaflow_extensions.memoize.plugins.memoize.cache.transfer import export_blobs

    cache = Cache(store)
    shared = b"shared payload"
    publish(cache, "F", "s", "old", {"x": shared})
    make_old()
    target = mt.Target(cache)
    # prune the old entry: its blob becomes garbage
    plan = mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0)
    assert [b.key for b in plan.blobs] == [Cache.blob_key(sha_of(shared))]
    m = manifest("F", "s", "new", {"x": shared})
    export_blobs(LocalDatastore(), cache, m.artifacts)  # touches the blob
    store.writer = lambda: cache.publish(m)
    out = mt.execute(target, plan)
    return out, store.exists(Cache.blob_key(sha_of(shared)))


def test_a_blob_reused_during_a_prune_is_kept(tmp_path, fault):
    fault(
        area=AREA,
        fault="a writer reuses a blob prune has planned to delete (it was unreferenced), "
        "and publishes its entry after prune's last look at the manifests",
        store="local",
        expected="the blob is kept: the new entry is complete",
    )
    root = tmp_path / "cache"
    out, kept = reuse_during_prune(racing(LocalStore)(str(root)), lambda: age(root))
    assert kept
    assert out.blobs == 0 and out.blobs_spared == 1
    fault(observed="blob kept (%d spared); the new entry is complete" % out.blobs_spared)


def test_a_blob_reused_during_a_prune_is_kept_on_s3(s3_env, fault):
    fault(
        area=AREA,
        fault="S3: a writer reuses a blob prune has planned to delete (it was unreferenced), "
        "and publishes its entry after prune's last look at the manifests",
        store="S3",
        expected="reuse refreshes the blob's LastModified (a copy onto itself), so prune's "
        "re-check keeps it: the new entry is complete",
    )
    from metaflow_extensions.memoize.plugins.memoize.cache.stores import faults as store_faults
    from metaflow_extensions.memoize.plugins.memoize.cache.stores.s3 import S3Store

    store_faults.reset_budgets()
    store = racing(S3Store)(s3_env.url("cache"))
    # S3 times are whole seconds: the reuse must come in a later second than the write
    out, kept = reuse_during_prune(store, lambda: time.sleep(1.1))
    assert kept
    assert out.blobs == 0 and out.blobs_spared == 1
    fault(observed="blob kept (%d spared); the new entry is complete" % out.blobs_spared)
