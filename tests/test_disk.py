"""Disk use of the default root: the local cache on the datastore's filesystem.

A miss stores the step's blobs in the cache by hard link from the datastore
(when the file is the task user's and writable by no one else), so an artifact
takes its disk space once, not twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from reliability_report import fault_notes

AREA = "13. Disk"


@pytest.fixture
def fault(record_property):
    return fault_notes(record_property)


def test_the_default_root_does_not_store_blobs_twice(runner, fault):
    fault(
        area=AREA,
        fault="a miss with the default root (<datastore>/memoize-cache, same filesystem)",
        store="local",
        expected="each blob the cache stores is a hard link to the datastore's file (one "
        "inode): no second copy on disk",
    )
    runner.add_flow("t6_tiny_flow.py")
    runner.run("t6_tiny_flow.py")
    metaflow_dir = Path(runner.workdir) / ".metaflow"
    cache_blobs = sorted((metaflow_dir / "memoize-cache" / "v1" / "blobs").rglob("*"))
    cache_blobs = [p for p in cache_blobs if p.is_file()]
    assert cache_blobs
    datastore = {
        p.name: p
        for p in metaflow_dir.glob("T6TinyFlow/data/*/*")
        if p.is_file() and len(p.name) == 40
    }
    shared = [b for b in cache_blobs if os.stat(b).st_ino == os.stat(datastore[b.name]).st_ino]
    assert len(shared) == len(cache_blobs)
    fault(observed="%d of %d blobs share the datastore's inode" % (len(shared), len(cache_blobs)))


def test_linking_can_be_turned_off(runner):
    runner.add_flow("t6_tiny_flow.py")
    runner.run("t6_tiny_flow.py", env={"METAFLOW_MEMOIZE_LINK": "0"})
    metaflow_dir = Path(runner.workdir) / ".metaflow"
    blobs = [p for p in (metaflow_dir / "memoize-cache" / "v1" / "blobs").rglob("*") if p.is_file()]
    assert blobs and all(os.stat(b).st_nlink == 1 for b in blobs)
