"""Maintenance never deletes what memoize did not write, and refuses roots that are not caches.

Cache roots here hold real entries (published through the Cache API, as runs do)
next to foreign objects: a photo and an editor swap file among the blobs, a
deploy lock, notes under v1/, a JSON file among the entries, files at the root.
``prune --max-size 0 --grace 0s`` and ``invalidate --all`` must remove every
entry and blob of memoize's and nothing else.
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

from metaflow_extensions.memoize.plugins.memoize.cache import maintenance as mt
from metaflow_extensions.memoize.plugins.memoize.cache.entries import MARKER, Cache
from metaflow_extensions.memoize.plugins.memoize.cache.manifest import ArtifactRecord, Manifest
from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store
from metaflow_extensions.memoize.plugins.memoize.exceptions import MemoizeCliError

AREA = "8. Foreign objects and roots that are not caches"
STANDALONE = Path(sys.executable).with_name("metaflow-memoize")
EVERYTHING = mt.PruneCriteria(max_size=0)
OLD = time.time() - 40 * 86400

FOREIGN = (
    "abc-photo.jpg",
    "deploy.lock",
    "v1/blobs/ab/abc-photo.jpg",
    "v1/blobs/ab/.abc-photo.jpg.swp",
    "v1/blobs/ab/" + "ab" * 20 + ".bak",
    "v1/locks/deploy.lock",
    "v1/used/notes.txt",
    "v1/used/F/s/notes",
    "v1/notes.md",
    "v1/entries/F/s/notes.json",
    "v1/index/F/s/readme.txt",
    "v1/blobs/.tmp-notes",
)


@pytest.fixture
def fault(record_property):
    return fault_notes(record_property)


def sha_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def publish(cache: Cache, flow: str, step: str, name: str, blobs: dict[str, bytes]) -> Manifest:
    artifacts = {
        n: ArtifactRecord(sha_of(d), {"size": len(d)}, True, len(d)) for n, d in blobs.items()
    }
    m = Manifest(
        key=hashlib.md5(name.encode()).hexdigest(),
        flow=flow,
        step=step,
        components={"flow": flow, "step": step},
        artifacts=artifacts,
        transition={},
        created=time.time() - 100,
        expires=None,
        origin="%s/1/%s/1" % (flow, step),
    )
    for data in blobs.values():
        cache.store.put(Cache.blob_key(sha_of(data)), data)
    assert cache.publish(m)
    return m


def populate(cache: Cache, foreign=FOREIGN) -> None:
    publish(cache, "F", "s", "e1", {"x": b"one" * 30, "y": b"shared" * 30})
    publish(cache, "F", "s", "e2", {"x": b"two" * 30, "y": b"shared" * 30})
    publish(cache, "G", "t", "e3", {"z": b"three" * 30})
    for name in foreign:
        cache.store.put(name, b"not memoize's")


def age_local(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (OLD, OLD))


def names(store) -> set[str]:
    return {i.key for i in store.list("")} | {
        t.key for t in store.stale_temporaries(time.time() + 10)
    }


def prune_and_invalidate(cache: Cache) -> None:
    target = mt.Target(cache)
    mt.execute(target, mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0))
    mt.execute(target, mt.plan_invalidate(target))
    mt.execute(target, mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0))


def _check_only_foreign_left(store, foreign) -> set[str]:
    left = names(store)
    own = {n for n in left if n != MARKER and n not in foreign}
    assert own == set(), "memoize objects left: %s" % sorted(own)
    missing = set(foreign) - left
    assert missing == set(), "foreign objects deleted: %s" % sorted(missing)
    return left


def test_local_prune_and_invalidate_delete_only_memoize_objects(tmp_path, fault):
    fault(
        area=AREA,
        fault="local cache root holding %d foreign objects (a photo and a swap file among the "
        "blobs, v1/locks/deploy.lock, notes under v1/used, v1/entries, v1/index, a .tmp- "
        "file, files at the root), all 40 days old" % len(FOREIGN),
        store="local",
        expected="prune --max-size 0 --grace 0s and invalidate --all remove every entry, "
        "marker and blob of memoize's and 0 foreign objects",
    )
    root = tmp_path / "cache"
    cache = Cache(open_store(str(root)))
    populate(cache)
    age_local(root)
    prune_and_invalidate(cache)
    _check_only_foreign_left(cache.store, FOREIGN)
    fault(observed="0 of %d foreign objects deleted; 0 memoize objects left" % len(FOREIGN))


@pytest.mark.parametrize("prefix", ["team/cache", ""], ids=["prefix", "bucket-root"])
def test_s3_prune_and_invalidate_delete_only_memoize_objects(s3_env, fault, prefix):
    fault(
        area=AREA,
        fault="S3 cache %s holding %d foreign objects"
        % ("at a prefix" if prefix else "at a bucket root", len(FOREIGN)),
        store="S3",
        expected="0 foreign objects deleted, every memoize object removed",
    )
    cache = Cache(open_store(s3_env.url(prefix)))
    populate(cache)
    prune_and_invalidate(cache)
    _check_only_foreign_left(cache.store, FOREIGN)
    fault(observed="0 of %d foreign objects deleted" % len(FOREIGN))


def test_a_root_without_marker_holding_foreign_objects_is_refused(tmp_path, fault):
    fault(
        area=AREA,
        fault="`metaflow-memoize --root DIR prune --yes` and `invalidate --all --yes` on a "
        "directory without memoize's marker whose v1/ holds other files",
        store="local",
        expected="refused with a message naming the marker and how to point at the right "
        "root; nothing deleted",
    )
    root = tmp_path / "photos"
    (root / "v1" / "blobs" / "ab").mkdir(parents=True)
    photo = root / "v1" / "blobs" / "ab" / "abc-photo.jpg"
    photo.write_bytes(b"jpeg")
    blob = root / "v1" / "blobs" / "ab" / ("ab" * 20)
    blob.write_bytes(b"looks like a blob")
    age_local(root)
    env = dict(os.environ, USERNAME="tester")
    for args in (["prune", "--yes", "--grace", "0s"], ["invalidate", "--all", "--yes"]):
        proc = subprocess.run(
            [str(STANDALONE), "--root", str(root), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode != 0
        assert "no memoize marker" in proc.stderr and "--root" in proc.stderr, proc.stderr
    assert photo.exists() and blob.exists()
    fault(observed="refused: %s" % proc.stderr.strip().splitlines()[-1][:220])


def test_an_older_root_with_only_memoize_objects_is_adopted(tmp_path):
    root = tmp_path / "cache"
    cache = Cache(open_store(str(root)))
    populate(cache, foreign=())
    cache.store.delete([MARKER])  # as written by a version without markers
    age_local(root)
    target = mt.Target(Cache(open_store(str(root))))
    out = mt.execute(target, mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0))
    assert out.entries == 3 and out.blobs == 4
    assert cache.store.exists(MARKER)


def test_a_root_with_nothing_under_v1_is_not_walked(tmp_path):
    """A root pointed at a big tree (e.g. /) has no v1/: prune has nothing to do, and
    never looks at (or deletes) the tree's own files, .tmp- ones included."""
    root = tmp_path / "home"
    (root / "deep" / "tree").mkdir(parents=True)
    stray = root / "deep" / "tree" / ".tmp-0123456789abcdef"
    stray.write_bytes(b"someone's temp file")
    age_local(root)
    target = mt.Target(Cache(open_store(str(root))))
    plan = mt.plan_prune(target, EVERYTHING, time.time() + 10, grace=0)
    assert plan.empty and plan.temporaries == []
    mt.execute(target, plan)
    assert stray.exists()
    assert not (root / "v1").exists()


def test_a_run_marks_the_root_it_writes(tmp_path):
    cache = Cache(open_store(str(tmp_path / "cache")))
    publish(cache, "F", "s", "e1", {"x": b"one"})
    assert cache.store.exists(MARKER)


def test_refusal_names_the_first_foreign_object(tmp_path):
    cache = Cache(open_store(str(tmp_path / "c")))
    cache.store.put("v1/locks/deploy.lock", b"x")
    with pytest.raises(MemoizeCliError, match="v1/locks/deploy.lock"):
        mt.plan_prune(mt.Target(cache), EVERYTHING, time.time(), grace=0)
