"""Disk use of the default root: the local cache on the datastore's filesystem.

A miss stores the step's blobs in the cache by hard link from the datastore
(when the file is the task user's and writable by no one else), so an artifact
takes its disk space once, not twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


# -- a small disk: fits without @memoize, fits with it; a full disk is a cache fault --
DISK_FLOW = """
import hashlib
import random

from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class DiskFlow(FlowSpec):
    mb = Parameter("mb", default=35, type=int)

    @memoize
    @step
    def start(self):
        record("start")
        # random bytes do not compress: each artifact takes its size on disk
        self.a = random.Random(1).randbytes(self.mb * 1024 * 1024)
        self.b = random.Random(2).randbytes(self.mb * 1024 * 1024)
        self.next(self.end)

    @step
    def end(self):
        self.check = hashlib.sha1(self.a + self.b).hexdigest()


if __name__ == "__main__":
    DiskFlow()
"""
SIZE = "100m"
SYSROOT = "METAFLOW_DATASTORE_SYSROOT_LOCAL"


class SmallDisk:
    """A 100 MB tmpfs holding the local datastore (and so the default cache root).

    As root it is mounted for the test; otherwise, where user namespaces are
    allowed, each run mounts it privately (``unshare -rm``), so it lives as long
    as the run and only the run's output can be checked afterwards."""

    def __init__(self, path, prefix):
        self.path = path
        self.prefix = prefix
        self.inspectable = not prefix

    def env(self, **extra):
        return dict({SYSROOT: str(self.path / "ds")}, **extra)


@pytest.fixture
def small_disk(tmp_path):
    from test_reliability import run_with_prefix  # noqa: F401  (checked importable)

    path = tmp_path / "small-disk"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=" + SIZE, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode == 0:
        try:
            yield SmallDisk(path, [])
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    script = 'mount -t tmpfs -o size=%s tmpfs "$0" && exec "$@"' % SIZE
    prefix = ["unshare", "-rm", "sh", "-c", script, str(path)]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("cannot mount a %s tmpfs: not root, and no unshare command" % SIZE)
    if probe.returncode != 0:
        pytest.skip(
            "cannot mount a %s tmpfs: mount as this user: %s; unshare -rm: %s"
            % (SIZE, mounted.stderr.strip(), probe.stderr.strip())
        )
    yield SmallDisk(path, prefix)


def _short(warning: str) -> str:
    """The cause in a memoize warning, without the test's temporary paths."""
    import re

    cause = warning.split("failed: ", 1)[-1]
    return re.sub(r"'/[^']*'", "'<tmp>'", cause)[:160]


def _memoize_warnings(result) -> list[str]:
    return [ln for ln in result.output.splitlines() if "[memoize] WARNING" in ln]


@pytest.mark.slow
def test_a_run_that_fits_without_memoize_fits_with_it(runner, small_disk, fault):
    from test_reliability import run_with_prefix

    fault(
        area=AREA,
        fault="a 100 MB tmpfs holds the local datastore and the default cache root; a step "
        "makes two 35 MB incompressible artifacts; first without @memoize "
        "(METAFLOW_MEMOIZE_MODE=off), then, on the emptied disk, with it",
        store="local",
        expected="both runs succeed; with @memoize the entry is stored (its blobs hard links) "
        "and no warning is printed",
    )
    runner.add_flow("disk_flow.py", DISK_FLOW)
    off = run_with_prefix(
        runner,
        small_disk.prefix,
        "disk_flow.py",
        env=small_disk.env(METAFLOW_MEMOIZE_MODE="off"),
        check=False,
    )
    assert off.returncode == 0, off
    if small_disk.inspectable:
        shutil.rmtree(small_disk.path / "ds")
    on = run_with_prefix(
        runner, small_disk.prefix, "disk_flow.py", env=small_disk.env(), check=False
    )
    stored = "stored" if "stored" in " ".join(on.memoize_lines()) else "?"
    fault(
        observed="without @memoize rc=%d; with it rc=%d, %d warning(s), entry %s"
        % (off.returncode, on.returncode, len(_memoize_warnings(on)), stored)
    )
    assert on.returncode == 0, on
    assert _memoize_warnings(on) == []
    if small_disk.inspectable:
        cache = small_disk.path / "ds" / ".metaflow" / "memoize-cache"
        assert list((cache / "v1" / "entries").rglob("*.json"))
        blobs = [p for p in (cache / "v1" / "blobs").rglob("*") if p.is_file()]
        assert blobs and all(os.stat(b).st_nlink == 2 for b in blobs)


def test_a_full_disk_while_copying_is_a_cache_fault(runner, small_disk, fault):
    from test_reliability import run_with_prefix

    fault(
        area=AREA,
        fault="the same run on the 100 MB tmpfs with METAFLOW_MEMOIZE_LINK=0: the cache must "
        "copy 70 MB next to the datastore's 70 MB, and the disk fills up mid-copy",
        store="local",
        expected="the run succeeds with one warning naming the full disk; no entry, no "
        "temporary file left; the body ran once",
    )
    runner.add_flow("disk_flow.py", DISK_FLOW)
    result = run_with_prefix(
        runner,
        small_disk.prefix,
        "disk_flow.py",
        env=small_disk.env(METAFLOW_MEMOIZE_LINK="0"),
        check=False,
    )
    warnings = _memoize_warnings(result)
    fault(
        observed="rc=%d; %d warning(s): %s"
        % (
            result.returncode,
            len(warnings),
            _short(warnings[0]) if warnings else "-",
        )
    )
    assert result.returncode == 0, result
    assert len(warnings) == 1 and "No space left" in warnings[0], warnings
    assert runner.count("start") == 1
    if small_disk.inspectable:
        cache = small_disk.path / "ds" / ".metaflow" / "memoize-cache"
        assert not list((cache / "v1" / "entries").rglob("*.json"))
        assert not list(cache.rglob(".tmp-*"))


def _fsize_limit(limit: int) -> list[str]:
    """A command prefix that runs the rest with RLIMIT_FSIZE set: writing a file past
    ``limit`` bytes fails with EFBIG (Python ignores SIGXFSZ). No privileges needed."""
    code = (
        "import os, resource, sys; "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (%d, %d)); "
        "os.execv(sys.argv[1], sys.argv[1:])" % (limit, limit)
    )
    return [sys.executable, "-c", code]


def test_a_write_failure_mid_copy_is_a_cache_fault_without_a_mount(runner, fault):
    from test_reliability import run_with_prefix

    fault(
        area=AREA,
        fault="no mount needed: the run's files are limited to 8 MB (RLIMIT_FSIZE); the "
        "datastore already holds the step's two 10 MB blobs (an earlier run with "
        "METAFLOW_MEMOIZE_MODE=off, no limit), so only the cache writes; with "
        "METAFLOW_MEMOIZE_LINK=0 it must copy them, then with linking (the default)",
        store="local",
        expected="copying: the write fails mid-copy (EFBIG), the run succeeds with one "
        "warning, no entry; linking: no byte is written, the entry is stored",
    )
    runner.add_flow("disk_flow.py", DISK_FLOW)
    runner.run("disk_flow.py", "--mb", "10", env={"METAFLOW_MEMOIZE_MODE": "off"})
    limited = _fsize_limit(8 * 1024 * 1024)
    copy = run_with_prefix(
        runner,
        limited,
        "disk_flow.py",
        "--mb",
        "10",
        env={"METAFLOW_MEMOIZE_LINK": "0"},
        check=False,
    )
    cache = runner.workdir / ".metaflow" / "memoize-cache"
    warnings = _memoize_warnings(copy)
    entries_after_copy = list((cache / "v1" / "entries").rglob("*.json"))
    link = run_with_prefix(runner, limited, "disk_flow.py", "--mb", "10", check=False)
    fault(
        observed="copying: rc=%d, %d warning(s): %s; %d entries; linking: rc=%d, %d warning(s), "
        "%d entries"
        % (
            copy.returncode,
            len(warnings),
            _short(warnings[0]) if warnings else "-",
            len(entries_after_copy),
            link.returncode,
            len(_memoize_warnings(link)),
            len(list((cache / "v1" / "entries").rglob("*.json"))),
        )
    )
    assert copy.returncode == 0, copy
    assert len(warnings) == 1 and "File too large" in warnings[0], warnings
    assert entries_after_copy == []
    assert not list(cache.rglob(".tmp-*"))
    assert link.returncode == 0, link
    assert _memoize_warnings(link) == []
    assert list((cache / "v1" / "entries").rglob("*.json"))
