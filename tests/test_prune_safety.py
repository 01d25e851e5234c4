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


# -- prune racing real runs ------------------------------------------------------
RACE_FLOW = """
from _counter import record
from metaflow import FlowSpec, Parameter, memoize, step


class PruneRaceFlow(FlowSpec):
    seed = Parameter("seed", default=0, type=int)
    items = Parameter("items", default=3, type=int)

    @step
    def start(self):
        self.xs = list(range(self.items))
        self.next(self.body, foreach="xs")

    @memoize
    @step
    def body(self):
        record("body")
        self.common = b"shared by every entry " * 4000  # one blob, reused by all
        self.own = (b"%d-%d " % (self.seed, self.input)) * 5000
        self.out = self.seed * 100 + self.input
        self.next(self.join)

    @memoize
    @step
    def join(self, inputs):
        record("join")
        self.outs = sorted(i.out for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PruneRaceFlow()
"""
# every other prune removes every entry; the ones between keep the entries and
# collect unreferenced blobs only (the entries published meanwhile are then checked)
PRUNE_ARGS = (
    ("prune", "--yes", "--max-size", "0", "--grace", "0s"),
    ("prune", "--yes", "--older-than", "3650d", "--grace", "0s"),
)


def _entries_and_problems(root: Path) -> dict[str, list[str]]:
    """{manifest name: why it is not a complete entry ([] if it is)}."""
    from test_reliability import entry_problems

    out = {}
    for path in sorted((root / "v1" / "entries").rglob("*.json")):
        try:
            out[path.name] = entry_problems(root, path)
        except FileNotFoundError:
            pass  # removed by invalidation of a corrupt entry meanwhile
    return out


def check_prune_racing_runs(tmp_path, fault, runs: int, items: int) -> None:
    import concurrent.futures
    import threading

    from flowrunner import FlowRunner

    fault(
        area=AREA,
        fault="`metaflow-memoize prune` in a loop, alternately `%s` and `%s`, while %d runs "
        "(separate processes, one cache root) store %d foreach entries each, all sharing one "
        "blob; then each run again"
        % (" ".join(PRUNE_ARGS[0][2:]), " ".join(PRUNE_ARGS[1][2:]), runs, items),
        store="local",
        expected="every prune succeeds; 0 entries left with a missing blob; the re-runs "
        "give the same values",
    )
    root = tmp_path / "cache"
    Cache(LocalStore(str(root))).ensure_marker()
    counters = tmp_path / "counters"
    counters.mkdir()
    env = {"METAFLOW_MEMOIZE_ROOT": str(root), "MEMOIZE_TEST_COUNTERS": str(counters)}
    runners = []
    for i in range(runs):
        runner = FlowRunner(tmp_path / ("run%d" % i), extra_env=env)
        runner.add_flow("race_flow.py", RACE_FLOW)
        runners.append(runner)

    stop = threading.Event()
    prunes: list[subprocess.CompletedProcess] = []
    broken: set[str] = set()  # entries seen with a missing blob, after any prune
    checked = [0]

    def prune_loop():
        while not stop.is_set():
            prunes.append(
                subprocess.run(
                    [str(STANDALONE), "--root", str(root), *PRUNE_ARGS[len(prunes) % 2]],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    env=dict(os.environ, USERNAME="tester"),
                )
            )
            # between two prunes nothing deletes: an entry published before now has
            # all its blobs unless a prune deleted one of them
            seen = _entries_and_problems(root)
            checked[0] += len(seen)
            broken.update(name for name, problems in seen.items() if problems)

    def run_all():
        with concurrent.futures.ThreadPoolExecutor(runs) as pool:
            futures = [
                pool.submit(
                    r.run, "race_flow.py", "--seed", str(i), "--items", str(items), check=False
                )
                for i, r in enumerate(runners)
            ]
            return [f.result() for f in futures]

    pruner = threading.Thread(target=prune_loop)
    pruner.start()
    try:
        first = run_all()
    finally:
        stop.set()
        pruner.join()
    final = _entries_and_problems(root)
    checked[0] += len(final)
    broken.update(name for name, problems in final.items() if problems)
    failed_prunes = [p for p in prunes if p.returncode != 0]
    removed = sum(
        int(m.group(1))
        for p in prunes
        if (m := __import__("re").search(r"removed (\d+) entr", p.stdout))
    )
    again = run_all()
    # the re-runs' entries too: under load, every check during the race may fall
    # just after a `--max-size 0` prune, and see an empty cache
    after = _entries_and_problems(root)
    checked[0] += len(after)
    broken.update(name for name, problems in after.items() if problems)
    expected = [repr(sorted(i * 100 + x for x in range(items))) for i in range(runs)]

    def outs(results):
        return [
            r.returncode == 0 and runner.artifacts("PruneRaceFlow", r.run_id)["join"][0]["outs"]
            for runner, r in zip(runners, results)
        ]

    first_outs, again_outs = outs(first), outs(again)
    fault(
        observed="%d prunes during the runs (%d failed), %d entries removed by them; %d of %d "
        "runs succeeded; %d entries checked after the prunes and at the end, %d broken; "
        "re-runs: %d of %d with the same values"
        % (
            len(prunes),
            len(failed_prunes),
            removed,
            sum(r.returncode == 0 for r in first),
            runs,
            checked[0],
            len(broken),
            sum(a == e for a, e in zip(again_outs, expected)),
            runs,
        )
    )
    assert not failed_prunes, failed_prunes[0].stderr
    assert all(r.returncode == 0 for r in first), [r for r in first if r.returncode][0]
    assert len(prunes) >= 2 and removed > 0  # prune did run against the runs
    assert sorted(broken) == []
    assert checked[0] > 0
    assert first_outs == expected
    assert again_outs == expected


@pytest.mark.slow
def test_prune_racing_two_runs_breaks_no_entry(tmp_path, fault):
    check_prune_racing_runs(tmp_path, fault, 2, 2)


@pytest.mark.stress
def test_prune_racing_four_runs_breaks_no_entry(tmp_path, fault):
    check_prune_racing_runs(tmp_path, fault, 4, 6)
