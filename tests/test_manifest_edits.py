"""Hand-edited manifests that still parse: a miss, never a failed run; a reader never
deletes a blob on a manifest's word; ``read`` mode writes and deletes nothing.

One golden run of a 21-item memoized foreach (signed with a key) gives 21 entries
that share one blob (``common``). Each entry gets a different edit (19 manifest
edits and 2 blob-side ones: wrong stored size, wrong packing flag). Then:

* a run in a fresh work directory without a key: 0 failed runs, every item
  recomputed (a miss) with correct values, and no blob was deleted or rewritten
  (same inode) -- the shared blob survives the wrong ``stored_size``;
* with the key, no edited entry is found (0 used);
* a ``METAFLOW_MEMOIZE_MODE=read`` run on another edited copy leaves the cache
  byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest
from flowrunner import FlowRunner
from reliability_report import fault_notes

from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store
from metaflow_extensions.memoize.plugins.memoize.exceptions import CorruptEntry

AREA = "9. Hand-edited manifests"
KEY = "edits-signing-key"
FLOW_NAME = "EditsFlow"
ITEMS = 21
FLOW = (
    """
from _counter import record
from metaflow import FlowSpec, memoize, step


class EditsFlow(FlowSpec):
    @step
    def start(self):
        self.items = list(range(%d))
        self.next(self.body, foreach="items")

    @memoize
    @step
    def body(self):
        record("body", repr(self.input))
        self.value = self.input * 7
        self.common = "shared by every item " * 50
        self.next(self.join)

    @step
    def join(self, inputs):
        self.values = sorted(i.value for i in inputs)
        self.commons = sorted(set(i.common for i in inputs))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EditsFlow()
"""
    % ITEMS
)


def _art(m, name="value"):
    return m["artifacts"][name]


def _set(path, value):
    def edit(m):
        target = m
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return edit


def _transition_to_missing(m):
    m["transition"]["_transition"]["funcs"] = ["no_such_step"]


def _flip_cas_raw(m):
    _art(m)["cas_raw"] = not _art(m).get("cas_raw", False)


def _wrong_common_size(m):
    _art(m, "common")["stored_size"] = _art(m, "common")["stored_size"] + 1


# (description, edit); the last two are about a blob (its size and packing)
EDITS = [
    ("artifact sha is a number", lambda m: _art(m).update(sha=12345)),
    ("artifact sha is a relative path", lambda m: _art(m).update(sha="../../etc/passwd")),
    ("artifact info is a string", lambda m: _art(m).update(info="pickle")),
    ("artifact encoding unknown", lambda m: _art(m)["info"].update(encoding="rot13+pickle")),
    ("artifact encoding is a number", lambda m: _art(m)["info"].update(encoding=4)),
    ("transition is a list", _set(["transition"], ["join"])),
    ("transition names a missing step", _transition_to_missing),
    ("transition funcs is a string", lambda m: m["transition"]["_transition"].update(funcs="j")),
    ("passthrough is a list", _set(["passthrough"], ["value"])),
    ("artifacts is a list", _set(["artifacts"], ["value"])),
    ("artifact name is not an identifier", lambda m: m["artifacts"].update({"a/b": _art(m)})),
    ("stored_size is a string", lambda m: _art(m).update(stored_size="12")),
    ("stored_xxh is not a digest", lambda m: _art(m).update(stored_xxh="../x")),
    ("cas_raw is a string", lambda m: _art(m).update(cas_raw="yes")),
    ("created is a string", _set(["created"], "yesterday")),
    ("expires is a string", _set(["expires"], "never")),
    ("components is a list", _set(["components"], [])),
    ("versions is a list", _set(["versions"], ["1"])),
    ("unrestored is a list", _set(["unrestored"], ["name"])),
    ("stored_size of the shared blob is wrong (blob edit)", _wrong_common_size),
    ("cas_raw flipped (blob packing)", _flip_cas_raw),
]
assert len(EDITS) == ITEMS


@pytest.fixture
def fault(record_property):
    return fault_notes(record_property)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    base = tmp_path_factory.mktemp("edits")
    root = base / "cache"
    runner = FlowRunner(
        base / "a",
        extra_env={"METAFLOW_MEMOIZE_ROOT": str(root), "METAFLOW_MEMOIZE_SIGNING_KEY": KEY},
    )
    runner.add_flow("edits_flow.py", FLOW)
    runner.run("edits_flow.py")
    assert runner.count("body") == ITEMS
    return root


def manifests(root: Path) -> list[Path]:
    return sorted((root / "v1" / "entries" / FLOW_NAME / "body").glob("*.json"))


def edited_copy(golden: Path, dest: Path) -> Path:
    shutil.copytree(golden, dest)
    files = manifests(dest)
    assert len(files) == ITEMS
    for path, (_, edit) in zip(files, EDITS):
        m = json.loads(path.read_text())
        edit(m)
        path.write_text(json.dumps(m))
    return dest


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_ino)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def blobs(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_ino for p in (root / "v1" / "blobs").rglob("*")}


@pytest.mark.slow
def test_edited_manifests_are_misses_and_keep_their_blobs(golden, tmp_path, fault):
    fault(
        area=AREA,
        fault="%d entries of a foreach, each hand-edited differently but still JSON (%s)"
        % (ITEMS, "; ".join(d for d, _ in EDITS)),
        store="local",
        expected="without a signing key: 0 failed runs, every edited entry a miss with "
        "correct values, no blob deleted or rewritten; with the key: 0 entries used",
    )
    root = edited_copy(golden, tmp_path / "cache")
    before = blobs(root)
    runner = FlowRunner(tmp_path / "b", extra_env={"METAFLOW_MEMOIZE_ROOT": str(root)})
    runner.add_flow("edits_flow.py", FLOW)
    result = runner.run("edits_flow.py", check=False)
    assert result.returncode == 0, repr(result)
    # every edited entry was a miss, except that the entry whose manifest misstates the
    # shared blob's size may hit once another item put that blob in this datastore
    # (the blob is then not read from the cache at all: Metaflow's content hash vouches)
    shared_size_key = manifests(root)[len(EDITS) - 2].stem
    hits = set(re.findall(r"\[memoize\] hit body key=([0-9a-f]+)", result.output))
    assert all(shared_size_key.startswith(h) for h in hits), hits
    assert runner.count("body") == ITEMS - len(hits)
    arts = runner.artifacts(FLOW_NAME, result.run_id)
    assert arts["join"][0]["values"] == repr([i * 7 for i in range(ITEMS)])
    assert arts["join"][0]["commons"] == repr(["shared by every item " * 50])
    after = blobs(root)
    assert {k: v for k, v in after.items() if k in before} == before  # same files, same inodes
    fault(
        observed="run rc=0; %d of %d items recomputed, %d hit (the blob was already in the "
        "datastore), all values correct; 0 of %d blobs deleted or rewritten"
        % (runner.count("body"), ITEMS, len(hits), len(before))
    )

    # with the signing key, no edited entry is used
    keyed = Cache(open_store(str(edited_copy(golden, tmp_path / "keyed"))), signing_key=KEY)
    used = 0
    for path in manifests(tmp_path / "keyed"):
        try:
            used += keyed.lookup(FLOW_NAME, "body", path.stem).status == "found"
        except CorruptEntry:
            pass
    assert used == 0
    fault(observed="with the key: 0 of %d edited entries used" % ITEMS)


def test_read_mode_leaves_the_cache_byte_identical(golden, tmp_path, fault):
    fault(
        area=AREA,
        fault="METAFLOW_MEMOIZE_MODE=read over the %d edited entries" % ITEMS,
        store="local",
        expected="the run succeeds; the cache is byte-identical afterwards (nothing "
        "written, nothing deleted)",
    )
    root = edited_copy(golden, tmp_path / "cache")
    before = snapshot(root)
    runner = FlowRunner(
        tmp_path / "c",
        extra_env={"METAFLOW_MEMOIZE_ROOT": str(root), "METAFLOW_MEMOIZE_MODE": "read"},
    )
    runner.add_flow("edits_flow.py", FLOW)
    result = runner.run("edits_flow.py", check=False)
    assert result.returncode == 0, repr(result)
    assert snapshot(root) == before
    fault(observed="run rc=0; %d files unchanged (bytes and inodes)" % len(before))
