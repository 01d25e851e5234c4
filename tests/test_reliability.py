"""Fault injection: @memoize fails open, checks what it reads, survives crashes and races.

Each test breaks the cache in one way, runs a real flow, and checks that the
step still runs and the run succeeds (or, with METAFLOW_MEMOIZE_STRICT=1, that
the task fails), that one "[memoize] WARNING" line names the cause, that task
metadata records memoize_status=error with memoize_error, and that a corrupt
entry is never served again. Every test describes its fault through the
``fault`` fixture; tests/reliability_report.py turns those notes and the test
outcomes into docs/reliability.md.

Most tests start from a *golden* cache: one run of t6_tiny_flow.py per test
process, copied into each test's own cache root. The faulty run happens in a
fresh work directory ("workdir B"), so its datastore does not hold the
entry's blobs and every blob is read back from the cache.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from flowrunner import _RUN_ID_RE, FLOWS_DIR, FlowResult, FlowRunner
from reliability_report import fault_notes

from metaflow_extensions.memoize.plugins.memoize.cache.transfer import verify_blob_file
from metaflow_extensions.memoize.plugins.memoize.exceptions import CorruptEntry

ROOT_ENV = "METAFLOW_MEMOIZE_ROOT"
TINY = "T6TinyFlow"
TINY_FILE = "t6_tiny_flow.py"
FAIL_OPEN = "1. Fail open"
INTEGRITY = "2. Integrity (blob read back in a fresh workdir)"
CRASH = "3. Crash safety"
CONCURRENCY = "4. Concurrency and leases"
BAD_INPUT = "5. Bad input"


@pytest.fixture
def fault(record_property):
    """Notes for docs/reliability.md: fault(area=..., fault=..., expected=..., observed=...)."""
    return fault_notes(record_property)


# -- reading the cache and the runs ------------------------------------------
def entries(root: Path, flow: str, step: str) -> list[Path]:
    return sorted((Path(root) / "v1" / "entries" / flow / step).glob("*.json"))


def blob_path(root: Path, sha: str) -> Path:
    return Path(root) / "v1" / "blobs" / sha[:2] / sha


def temp_files(root: Path) -> list[Path]:
    return sorted(Path(root).rglob(".tmp-*"))


def entry_problems(root: Path, manifest_file: Path) -> list[str]:
    """Why a reader should not take this entry as a hit ([] if it is complete and valid)."""
    try:
        manifest = json.loads(manifest_file.read_text())
    except ValueError as err:
        return ["%s does not parse: %s" % (manifest_file.name, err)]
    problems = []
    for name, record in manifest["artifacts"].items():
        path = blob_path(root, record["sha"])
        if not path.exists():
            problems.append("%s: blob missing" % name)
            continue
        if record.get("stored_size") is not None and path.stat().st_size != record["stored_size"]:
            problems.append("%s: blob has the wrong size" % name)
        try:
            verify_blob_file(str(path), record["sha"], bool(record.get("cas_raw")))
        except CorruptEntry as err:
            problems.append("%s: %s" % (name, err))
    return problems


def warning_lines(result: FlowResult) -> list[str]:
    return [line for line in result.output.splitlines() if "[memoize] WARNING" in line]


def short(line: str, limit: int = 240) -> str:
    """A log line for the fault table: no log prefix, temp paths as <tmp>, quoted."""
    text = line.split("[memoize] ", 1)[-1]
    if "] Step " in text:  # a task's error line: drop the timestamp and pathspec
        text = "Step " + text.split("] Step ", 1)[1]
    text = re.sub(r"/tmp/pytest-of-[^\s:,)'\"]*", "<tmp>", text.strip())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return '"%s"' % text


_INSPECT = """
import json, sys
from metaflow import Flow, namespace
namespace(None)
out = {"artifacts": {}, "metadata": {}}
for step in Flow(sys.argv[1])[sys.argv[2]]:
    arts, metas = [], []
    for task in step:
        md = task.metadata_dict
        metas.append({k: v for k, v in md.items() if k.startswith("memoize_")})
        arts.append({a.id: repr(a.data) for a in task.artifacts
                     if not a.id.startswith("_") and a.id != "name"})
    out["artifacts"][step.id] = sorted(arts, key=lambda t: json.dumps(t, sort_keys=True))
    out["metadata"][step.id] = metas
print(json.dumps(out, sort_keys=True))
"""


@dataclass
class RunView:
    """A run's user artifacts ({step: [{name: repr}]}, as FlowRunner.artifacts) and metadata."""

    artifacts: dict
    metadata: dict

    def meta(self, step: str = "start") -> dict:
        return self.metadata[step][0]


def inspect_run(runner: FlowRunner, flow: str, run_id: str, env=None) -> RunView:
    """Artifacts and memoize_* metadata of a run, read in one Client process."""
    out = runner.client_json(_INSPECT, flow, run_id, env=env)
    return RunView(out["artifacts"], out["metadata"])


def assert_failed_open(runner, result, causes, flow=TINY, step="start"):
    """The run succeeded, one warning names the cause, metadata says error.

    Returns the warning line and the run's RunView.
    """
    assert result.returncode == 0, result
    warnings = warning_lines(result)
    assert len(warnings) == 1, warnings
    assert any(c in warnings[0] for c in causes), (causes, warnings[0])
    view = inspect_run(runner, flow, result.run_id)
    meta = view.meta(step)
    assert meta.get("memoize_status") == "error", meta
    assert any(c in meta.get("memoize_error", "") for c in causes), meta
    return warnings[0], view


def run_with_prefix(runner, prefix, flow_file, *args, env=None, check=True):
    """FlowRunner.run with a command prefix (e.g. setpriv); same result type."""
    cmd = [*prefix, sys.executable, flow_file, "--no-pylint", "run", *args]
    proc = subprocess.run(
        cmd, cwd=runner.workdir, env=runner.env(env), capture_output=True, text=True, timeout=300
    )
    match = _RUN_ID_RE.search(proc.stdout + proc.stderr)
    result = FlowResult(proc, match.group(1) if match else None)
    if check:
        assert proc.returncode == 0, repr(result)
    return result


# -- the golden cache -----------------------------------------------------------
@dataclass
class Golden:
    root: Path
    artifacts: dict
    key: str
    manifest: dict

    def sha(self, artifact: str) -> str:
        return self.manifest["artifacts"][artifact]["sha"]


_GOLDEN: dict[str, Golden] = {}


def make_golden(tmp_path_factory, name: str, env: dict | None = None) -> Golden:
    """One run of the tiny flow into a fresh cache root; made once per name and process."""
    if name in _GOLDEN:
        return _GOLDEN[name]
    base = tmp_path_factory.mktemp(name)
    root = base / "cache"
    runner = FlowRunner(base / "work")
    runner.add_flow(TINY_FILE)
    result = runner.run(TINY_FILE, env=dict(env or {}, **{ROOT_ENV: str(root)}))
    (path,) = entries(root, TINY, "start")
    manifest = json.loads(path.read_text())
    golden = Golden(root, inspect_run(runner, TINY, result.run_id).artifacts, path.stem, manifest)
    _GOLDEN[name] = golden
    return golden


@pytest.fixture(scope="session")
def golden(tmp_path_factory) -> Golden:
    """An entry for T6TinyFlow.start, made once per test process."""
    return make_golden(tmp_path_factory, "golden")


@dataclass
class Shared:
    """A copy of a golden cache and a fresh work directory ("B") that uses it."""

    root: Path
    runner: FlowRunner
    golden: Golden

    @property
    def manifest_file(self) -> Path:
        return self.root / "v1" / "entries" / TINY / "start" / (self.golden.key + ".json")

    def blob(self, artifact: str) -> Path:
        return blob_path(self.root, self.golden.sha(artifact))

    def run(self, *args, **kwargs) -> FlowResult:
        return self.runner.run(TINY_FILE, *args, **kwargs)


def share(golden: Golden, tmp_path: Path, **extra_env) -> Shared:
    root = tmp_path / "cache"
    shutil.copytree(golden.root, root)
    runner = FlowRunner(tmp_path / "b", extra_env=dict(extra_env, **{ROOT_ENV: str(root)}))
    runner.add_flow(TINY_FILE)
    return Shared(root, runner, golden)


@pytest.fixture
def shared(golden, tmp_path) -> Shared:
    return share(golden, tmp_path)


# -- environments for disk and permission faults --------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs (root only): writes of more than 1 MB fail with ENOSPC."""
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs to fill up: %s" % done.stderr.strip())
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


NO_DAC = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]


@pytest.fixture
def no_dac(tmp_path):
    """A command prefix under which even root obeys file permission bits."""
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        done = subprocess.run(
            [*NO_DAC, "sh", "-c", "touch %s/x" % probe], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("setpriv is not installed")
    finally:
        probe.chmod(0o755)
    if done.returncode == 0 and os.geteuid() == 0:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here: permission bits do not apply")
    return NO_DAC if os.geteuid() == 0 else []


# =============================================================================
# 1. Fail open: a broken entry or store never breaks the run
# =============================================================================
def _manifest_not_json(data: bytes) -> bytes:
    return b'{"format": 1, "key": '


def _manifest_truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _manifest_empty(data: bytes) -> bytes:
    return b""


def _manifest_bad_format(data: bytes) -> bytes:
    d = json.loads(data)
    d["format"] = 99
    return json.dumps(d).encode()


def _manifest_lying_step(data: bytes) -> bytes:
    d = json.loads(data)
    d["step"] = "end"
    return json.dumps(d).encode()


def _manifest_lying_key(data: bytes) -> bytes:
    d = json.loads(data)
    d["key"] = "0" * 32
    return json.dumps(d).encode()


def _manifest_not_utf8(data: bytes) -> bytes:
    return b"\xff\xfe" + data


# end to end: each one is a real run against a copy of the golden cache
MANIFEST_FAULTS = [
    ("manifest is not JSON", _manifest_not_json, "does not parse"),
    ("manifest truncated mid-document", _manifest_truncated, "does not parse"),
    ("manifest has an unknown format number", _manifest_bad_format, "unsupported manifest format"),
    (
        "manifest's `step` field names another step",
        _manifest_lying_step,
        "belongs to T6TinyFlow/end",
    ),
]

# in process: the same code path (Cache.lookup raising CorruptEntry), more shapes
MANIFEST_SHAPES = [
    ("empty file", _manifest_empty),
    ("not UTF-8", _manifest_not_utf8),
    ("`key` names another key", _manifest_lying_key),
    ("JSON but a list", lambda data: b"[1, 2]"),
    ("`artifacts` is a list", lambda data: _edit(data, artifacts=[])),
    ("an artifact without `sha`", lambda data: _edit(data, artifacts={"x": {"info": {}}})),
    ("`created` is not a number", lambda data: _edit(data, created="yesterday")),
    ("`expires` is not a number", lambda data: _edit(data, expires="never")),
    ("`components` missing", lambda data: _edit(data, components=None, _drop="components")),
    ("`flow` field names another flow", lambda data: _edit(data, flow="OtherFlow")),
]


def _edit(data: bytes, _drop=None, **fields) -> bytes:
    d = json.loads(data)
    d.update(fields)
    if _drop:
        d.pop(_drop)
    return json.dumps(d).encode()


def test_malformed_manifests_are_corrupt_entries(golden, tmp_path, fault):
    from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
    from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore

    fault(
        area=FAIL_OPEN,
        fault="manifest variants read by Cache.lookup (in process): %s"
        % ", ".join(m[0] for m in MANIFEST_SHAPES),
        store="local",
        expected="each raises CorruptEntry (so the run fails open and removes it), never a hit",
    )
    good = (golden.root / "v1" / "entries" / TINY / "start" / (golden.key + ".json")).read_bytes()
    cache = Cache(LocalStore(str(tmp_path)))
    name = Cache.manifest_key(TINY, "start", golden.key)
    for what, corrupt in MANIFEST_SHAPES:
        cache.store.put(name, corrupt(good))
        with pytest.raises(CorruptEntry):
            cache.lookup(TINY, "start", golden.key)
            pytest.fail("accepted a manifest whose %s" % what)
    cache.store.put(name, good)
    assert cache.lookup(TINY, "start", golden.key).status == "found"
    fault(observed="all %d rejected with CorruptEntry" % len(MANIFEST_SHAPES))


def after_fault(shared: Shared, bad: bytes | None = None) -> str:
    """What the faulty run left: never the bad entry; removed, or a fresh complete one."""
    if not shared.manifest_file.exists():
        return "bad entry removed"
    assert shared.manifest_file.read_bytes() != bad
    assert entry_problems(shared.root, shared.manifest_file) == []
    return "bad entry replaced by a fresh, complete one"


def next_run_hits(shared: Shared) -> str:
    """The run after the fault hits the entry the faulty run stored, with correct artifacts."""
    again = shared.run()
    view = inspect_run(shared.runner, TINY, again.run_id)
    status = view.meta()["memoize_status"]
    assert not warning_lines(again)
    assert view.artifacts == shared.golden.artifacts
    assert status == "hit", view.meta()
    assert shared.runner.count("start") == 1  # only the faulty run computed
    return "next run: hit with correct artifacts"


@pytest.mark.parametrize(
    "what,corrupt,cause", MANIFEST_FAULTS, ids=[f[1].__name__[10:] for f in MANIFEST_FAULTS]
)
def test_corrupt_manifest_runs_the_step_and_is_replaced(shared, fault, what, corrupt, cause):
    fault(
        area=FAIL_OPEN,
        fault=what,
        store="local",
        expected="step runs, run succeeds, 1 warning, status=error; the corrupt entry is "
        "never served again (the next run hits a fresh one)",
    )
    bad = corrupt(shared.manifest_file.read_bytes())
    shared.manifest_file.write_bytes(bad)
    result = shared.run()
    assert shared.runner.count("start") == 1
    warning, view = assert_failed_open(shared.runner, result, [cause])
    fault(observed="warning %s; memoize_error recorded" % short(warning))
    assert view.artifacts == shared.golden.artifacts
    fault(observed=after_fault(shared, bad))
    if corrupt in (_manifest_not_json, _manifest_lying_step):
        fault(observed=next_run_hits(shared))


BLOB_FAULTS = [
    ("blob missing", "missing", "missing from the cache"),
    ("blob truncated to half its size", "truncated", "wrong size"),
    ("one byte of the blob flipped (same size)", "flipped", "is corrupt"),
    ("blob replaced by a valid gzip of other bytes (same size)", "swapped", "content hash"),
    ("blob replaced by random bytes (same size)", "random", "does not unpack"),
]


def _break_blob(path: Path, how: str) -> None:
    import gzip
    import pickle

    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x55]) + data[middle + 1 :])
    elif how == "swapped":
        other = gzip.compress(pickle.dumps(b"not the payload", protocol=4), compresslevel=3)
        path.write_bytes(other + b"\0" * (len(data) - len(other)))  # gzip ignores zero padding
    elif how == "random":
        path.write_bytes(os.urandom(len(data)))


@pytest.mark.parametrize("what,how,cause", BLOB_FAULTS, ids=[f[1] for f in BLOB_FAULTS])
def test_bad_blob_is_detected_when_read_back(shared, fault, what, how, cause):
    fault(
        area=INTEGRITY,
        fault=what,
        store="local",
        expected="hash/size check fails; step re-runs with correct artifacts; 1 warning; "
        "status=error; the bad blob is never served again",
    )
    _break_blob(shared.blob("payload"), how)
    result = shared.run()
    assert shared.runner.count("start") == 1
    warning, view = assert_failed_open(shared.runner, result, [cause])
    fault(observed="warning %s" % short(warning))
    assert view.artifacts == shared.golden.artifacts
    fault(observed="correct artifacts; " + after_fault(shared))
    if shared.blob("payload").exists():  # stored again by the faulty run: must be good
        verify_blob_file(str(shared.blob("payload")), shared.golden.sha("payload"), False)
    if how in ("flipped", "missing"):
        fault(observed=next_run_hits(shared))


def test_unreachable_local_store(runner, tmp_path, fault):
    fault(
        area=FAIL_OPEN,
        fault="store unreachable: the cache root is a regular file",
        store="local",
        expected="step runs, run succeeds, 1 warning, status=error",
    )
    not_a_dir = tmp_path / "cache-root"
    not_a_dir.write_text("this is a file, not a directory")
    runner.add_flow(TINY_FILE)
    result = runner.run(TINY_FILE, env={ROOT_ENV: str(not_a_dir)})
    assert runner.count("start") == 1
    warning, _ = assert_failed_open(runner, result, ["Not a directory"])
    fault(observed="warning %s" % short(warning))


def test_unreachable_s3_store(runner, dead_s3_env, fault):
    fault(
        area=FAIL_OPEN,
        fault="store unreachable: S3 endpoint refuses connections",
        store="S3",
        expected="step runs, run succeeds, 1 warning, status=error",
    )
    runner.add_flow(TINY_FILE)
    started = time.time()
    result = runner.run(TINY_FILE, env=dict(dead_s3_env.env, **{ROOT_ENV: dead_s3_env.url("c")}))
    elapsed = time.time() - started
    assert runner.count("start") == 1
    warning, _ = assert_failed_open(runner, result, ["unreachable"])
    fault(observed="warning %s; run took %.0f s" % (short(warning), elapsed))


def test_disk_full_while_storing(runner, tiny_disk, fault):
    fault(
        area=FAIL_OPEN,
        fault="disk full while storing (1 MB tmpfs, 2 MB artifact)",
        store="local",
        expected="run succeeds, 1 warning, status=error; no entry and no temp files left",
    )
    runner.add_flow(TINY_FILE)
    result = runner.run(TINY_FILE, "--size", "2000000", env={ROOT_ENV: str(tiny_disk)})
    assert runner.count("start") == 1
    warning, _ = assert_failed_open(runner, result, ["No space left"])
    fault(observed="warning %s" % short(warning))
    assert entries(tiny_disk, TINY, "start") == []
    assert temp_files(tiny_disk) == []
    fault(observed="nothing published, temp files cleaned up")


def test_permission_denied_writing(runner, tmp_path, no_dac, fault):
    fault(
        area=FAIL_OPEN,
        fault="permission denied writing (cache root mode 0555, CAP_DAC_OVERRIDE dropped)",
        store="local",
        expected="run succeeds, 1 warning, status=error",
    )
    root = tmp_path / "read-only-cache"
    root.mkdir()
    root.chmod(0o555)
    runner.add_flow(TINY_FILE)
    result = run_with_prefix(runner, no_dac, TINY_FILE, env={ROOT_ENV: str(root)})
    assert runner.count("start") == 1
    warning, _ = assert_failed_open(runner, result, ["Permission denied"])
    fault(observed="warning %s" % short(warning))


def test_permission_denied_reading(shared, no_dac, fault):
    fault(
        area=FAIL_OPEN,
        fault="permission denied reading the manifest (mode 0000, CAP_DAC_OVERRIDE dropped)",
        store="local",
        expected="step runs, run succeeds, 1 warning, status=error; entry kept (not corrupt)",
    )
    shared.manifest_file.chmod(0)
    result = run_with_prefix(shared.runner, no_dac, TINY_FILE)
    assert shared.runner.count("start") == 1
    warning, _ = assert_failed_open(shared.runner, result, ["Permission denied"])
    assert shared.manifest_file.exists()
    fault(observed="warning %s; entry kept" % short(warning))


STRICT_FAULTS = [
    ("manifest is not JSON", "manifest", 0),
    ("one byte of a blob flipped (read back in workdir B)", "blob", 0),
    ("store unreachable (cache root is a file)", "unreachable", 0),
    ("disk full while storing", "full", 1),
]


@pytest.mark.parametrize("what,kind,bodies", STRICT_FAULTS, ids=[f[1] for f in STRICT_FAULTS])
def test_strict_mode_fails_the_task(golden, tmp_path, request, fault, what, kind, bodies):
    fault(
        area=FAIL_OPEN,
        fault="METAFLOW_MEMOIZE_STRICT=1: " + what,
        store="local",
        expected="the task fails naming the cause and METAFLOW_MEMOIZE_STRICT",
    )
    args = []
    if kind in ("manifest", "blob"):
        s = share(golden, tmp_path)
        if kind == "manifest":
            s.manifest_file.write_bytes(b"garbage")
        else:
            _break_blob(s.blob("payload"), "flipped")
        runner, root = s.runner, s.root
    else:
        runner = FlowRunner(tmp_path / "work")
        runner.add_flow(TINY_FILE)
        if kind == "unreachable":
            root = tmp_path / "file"
            root.write_text("")
        else:
            root = request.getfixturevalue("tiny_disk")
            args = ["--size", "2000000"]
    env = {ROOT_ENV: str(root), "METAFLOW_MEMOIZE_STRICT": "1"}
    result = runner.run(TINY_FILE, *args, env=env, check=False)
    assert result.returncode != 0, result
    assert "METAFLOW_MEMOIZE_STRICT" in result.output, result
    assert runner.count("start") == bodies and runner.count("end") == 0
    line = next(
        (ln for ln in result.output.splitlines() if "METAFLOW_MEMOIZE_STRICT is set" in ln), ""
    )
    fault(observed="task failed: %s" % short(line))


# =============================================================================
# 3. Crash safety
# =============================================================================
def _blob_files(root: Path):
    temps, finals = [], []
    blobs = root / "v1" / "blobs"
    try:
        for sub in os.scandir(blobs):
            for f in os.scandir(sub.path):
                (temps if f.name.startswith(".tmp-") else finals).append(f.name)
    except FileNotFoundError:
        pass
    return temps, finals


def _kill_while_storing(runner: FlowRunner, flow_file: str, root: Path, timeout=240) -> dict:
    """Start a run, SIGKILL its process group as soon as the cache's blob area changes."""
    log = open(runner.workdir / "killed-run.log", "w")
    proc = subprocess.Popen(
        [sys.executable, flow_file, "--no-pylint", "run"],
        cwd=runner.workdir,
        env=runner.env({ROOT_ENV: str(root)}),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    seen = ([], [])
    try:
        while proc.poll() is None and time.time() < deadline:
            seen = _blob_files(root)
            if seen[0] or seen[1]:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        log.close()
    return {
        "returncode": proc.returncode,
        "temps_at_kill": len(seen[0]),
        "blobs_at_kill": len(seen[1]),
    }


def test_sigkill_while_writing_an_entry(tmp_path, fault):
    fault(
        area=CRASH,
        fault="SIGKILL of the whole run while the entry's blobs are being written (64 MB)",
        store="local",
        expected="no entry a reader takes as a hit; next run recomputes, stores a complete "
        "entry, correct artifacts",
    )
    runner = FlowRunner(tmp_path / "work")
    runner.add_flow("t6_crash_flow.py")
    root = tmp_path / "cache"
    notes = []
    for _attempt in range(3):
        state = _kill_while_storing(runner, "t6_crash_flow.py", root)
        manifests = entries(root, "T6CrashFlow", "start")
        # the invariant, whenever the kill landed: any entry present is complete
        for manifest in manifests:
            assert entry_problems(root, manifest) == []
        notes.append(
            "killed with %d temp + %d complete blob(s) in the cache, %d entr%s after"
            % (
                state["temps_at_kill"],
                state["blobs_at_kill"],
                len(manifests),
                "y" if len(manifests) == 1 else "ies",
            )
        )
        if state["returncode"] == -signal.SIGKILL and not manifests:
            break  # killed mid-write: the interesting case
        shutil.rmtree(root, ignore_errors=True)
    leftovers = temp_files(root)
    notes.append("%d orphaned .tmp- file(s) left" % len(leftovers))
    fault(observed="; ".join(notes))
    assert state["returncode"] == -signal.SIGKILL

    after = runner.run("t6_crash_flow.py", env={ROOT_ENV: str(root)})
    verdicts = [p.read_text().strip() for p in runner.counter_dir.glob("end--*")]
    assert verdicts == ["intact"], verdicts
    (manifest,) = entries(root, "T6CrashFlow", "start")
    assert entry_problems(root, manifest) == []
    status = "hit" if " hit start" in after.output else "miss"
    assert status == "miss"  # the killed run published nothing
    fault(observed="next run: %s, stored a complete entry, artifacts intact" % status)


def test_prune_reclaims_temp_files_of_killed_writers(tmp_path, fault):
    fault(
        area=CRASH,
        fault="a 40-day-old .tmp- file left in v1/blobs/ by a killed writer; "
        "`metaflow-memoize prune --yes`",
        store="local",
        expected="prune deletes it (it is older than the grace period)",
    )
    cli = Path(sys.executable).parent / "metaflow-memoize"
    if not cli.exists():
        pytest.skip("the metaflow-memoize command is not installed")
    orphan = tmp_path / "cache" / "v1" / "blobs" / "ab" / ".tmp-abc123def4567890"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half a blob")
    old = time.time() - 40 * 86400
    os.utime(orphan, (old, old))
    done = subprocess.run(
        [str(cli), "--root", str(tmp_path / "cache"), "prune", "--yes"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    fault(
        observed="prune said %s; the temp file %s"
        % (
            short(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""),
            "is still there" if orphan.exists() else "was deleted",
        )
    )
    assert not orphan.exists()


# =============================================================================
# 4. Concurrency and leases
# =============================================================================
def _run_many(runner: FlowRunner, flow_file: str, n: int, env=None) -> list[FlowResult]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [
            pool.submit(runner.run, flow_file, env=env, check=False, timeout=400) for _ in range(n)
        ]
        return [f.result() for f in futures]


@pytest.mark.slow
def test_eight_concurrent_runs_without_lock(runner, fault):
    fault(
        area=CONCURRENCY,
        fault="8 runs of the same flow at once on an empty cache (no lock)",
        store="local",
        expected="all succeed with the same results; exactly 1 entry for the key",
    )
    runner.add_flow(TINY_FILE)
    results = _run_many(runner, TINY_FILE, 8)
    assert all(r.returncode == 0 for r in results), [r for r in results if r.returncode]
    root = runner.workdir / ".metaflow" / "memoize-cache"
    (manifest,) = entries(root, TINY, "start")
    assert entry_problems(root, manifest) == []
    checks = {runner.artifacts(TINY, r.run_id)["end"][0]["check"] for r in results[:2]}
    assert len(checks) == 1
    bodies = runner.count("start")
    assert 1 <= bodies <= 8
    fault(observed="all 8 succeeded; 1 entry; body ran %d time(s)" % bodies)


@pytest.mark.slow
def test_eight_concurrent_runs_with_lock(runner, fault):
    fault(
        area=CONCURRENCY,
        fault="8 runs at once, @memoize(lock=True), 3 s body",
        store="local",
        expected="all succeed; 1 entry; the body runs far fewer than 8 times (ideally once)",
    )
    runner.add_flow("t6_lock_flow.py")
    results = _run_many(runner, "t6_lock_flow.py", 8)
    assert all(r.returncode == 0 for r in results), [r for r in results if r.returncode]
    root = runner.workdir / ".metaflow" / "memoize-cache"
    (manifest,) = entries(root, "T6LockFlow", "start")
    assert entry_problems(root, manifest) == []
    waited = sum("another task is computing it" in r.output for r in results)
    bodies = runner.count("start")
    fault(
        observed="all 8 succeeded; 1 entry; body ran %d time(s); %d run(s) waited"
        % (bodies, waited)
    )
    assert bodies < 8
    results_seen = {
        runner.artifacts("T6LockFlow", r.run_id)["end"][0]["result"] for r in results[:2]
    }
    assert results_seen == {"42"}


def test_four_concurrent_runs_with_lock_on_s3(runner, s3_env, fault):
    fault(
        area=CONCURRENCY,
        fault="4 runs at once, @memoize(lock=True), 3 s body",
        store="S3",
        expected="all succeed; 1 entry; the body runs fewer than 4 times",
    )
    runner.add_flow("t6_lock_flow.py")
    env = dict(s3_env.env, **{ROOT_ENV: s3_env.url("cache")})
    results = _run_many(runner, "t6_lock_flow.py", 4, env=env)
    assert all(r.returncode == 0 for r in results), [r for r in results if r.returncode]
    listing = s3_env.client.list_objects_v2(
        Bucket=s3_env.bucket, Prefix="cache/v1/entries/T6LockFlow/start/"
    )
    assert len(listing.get("Contents", [])) == 1
    bodies = runner.count("start")
    fault(observed="all 4 succeeded; 1 entry; body ran %d time(s)" % bodies)
    assert bodies < 4


def _lock_file(root: Path, flow: str, step: str) -> list[Path]:
    return sorted((root / "v1" / "locks" / flow / step).glob("*"))


def test_crashed_lock_holder_does_not_block(tmp_path, fault):
    fault(
        area=CONCURRENCY,
        fault="lock holder SIGKILLed mid-body (lease 3 s); then a stale lock object "
        "(`expires` in the past, default 600 s lease)",
        store="local",
        expected="the next run takes over after the lease expires and computes; a stale "
        "lock is broken at once",
    )
    runner = FlowRunner(tmp_path / "work")
    runner.add_flow("t6_lock_flow.py")
    root = tmp_path / "cache"
    env = {ROOT_ENV: str(root), "METAFLOW_MEMOIZE_LOCK_LEASE": "3"}
    log = open(runner.workdir / "holder.log", "w")
    holder = subprocess.Popen(
        [sys.executable, "t6_lock_flow.py", "--no-pylint", "run"],
        cwd=runner.workdir,
        env=runner.env(dict(env, T6_SLEEP="120")),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # kill once the holder has the lease *and* its body has started
        deadline = time.time() + 120
        while time.time() < deadline and not (
            _lock_file(root, "T6LockFlow", "start") and runner.count("start") == 1
        ):
            assert holder.poll() is None, (runner.workdir / "holder.log").read_text()
            time.sleep(0.05)
        (lock,) = _lock_file(root, "T6LockFlow", "start")
        os.killpg(holder.pid, signal.SIGKILL)
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        log.close()
    started = time.time()
    after = runner.run("t6_lock_flow.py", env=dict(env, T6_SLEEP="0"), timeout=120)
    took = time.time() - started
    took_over = "the task that held the lock stored no entry" in after.output
    assert runner.count("start") == 2  # the killed holder's body, then this one
    assert entries(root, "T6LockFlow", "start")
    notes = [
        "after the crash the next run finished in %.0f s%s"
        % (took, " (waited, then took over the expired lease)" if took_over else "")
    ]

    # a stale lock left by a crashed holder long ago: broken at once, whatever the lease
    key = lock.name
    for path in entries(root, "T6LockFlow", "start"):
        path.unlink()
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"owner": "ghost:1:dead", "expires": time.time() - 60}))
    started = time.time()
    runner.run("t6_lock_flow.py", env={ROOT_ENV: str(root), "T6_SLEEP": "0"}, timeout=120)
    took = time.time() - started
    assert runner.count("start") == 3
    assert (root / "v1" / "entries" / "T6LockFlow" / "start" / (key + ".json")).exists()
    notes.append("stale lock object: run finished in %.0f s" % took)
    fault(observed="; ".join(notes))


def test_a_failed_lock_holder_releases_its_lease(runner, fault):
    fault(
        area=CONCURRENCY,
        fault="lock=True body raises: is the lease released?",
        store="local",
        expected="no lock object left, so waiters take over at once (fixed in bb7c2c4: "
        "the decorator never released leases)",
    )
    runner.add_flow("t6_lock_flow.py")
    result = runner.run("t6_lock_flow.py", env={"T6_FAIL": "1", "T6_SLEEP": "0"}, check=False)
    assert result.returncode != 0
    root = runner.workdir / ".metaflow" / "memoize-cache"
    locks = _lock_file(root, "T6LockFlow", "start")
    if locks:
        held = json.loads(locks[0].read_text())
        fault(observed="lock object left, expires in %.0f s" % (held["expires"] - time.time()))
    assert locks == []
    fault(observed="lease released")


def test_a_lock_that_is_never_renewed_does_not_block_forever(tmp_path, fault):
    from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
    from metaflow_extensions.memoize.plugins.memoize.cache.singleflight import Lease
    from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore

    fault(
        area=CONCURRENCY,
        fault="lock object whose `expires` is a year ahead and never renewed (in process, "
        "fake clock; waiter lease 3 s)",
        store="local",
        expected="the waiter takes over once the lock has gone unrenewed for a lease or so",
    )
    now = [1_000_000.0]

    def clock():
        now[0] += 1.0  # every look at the clock is a second later
        return now[0]

    cache = Cache(LocalStore(str(tmp_path)), clock=clock)
    key = "k" * 32
    cache.store.put(
        Cache.lock_key("F", "s", key),
        json.dumps({"owner": "skewed-host:1:x", "expires": now[0] + 365 * 86400}).encode(),
    )
    lease = Lease(cache, "F", "s", key, duration=3)
    started = now[0]
    polls = [0]

    class StillWaiting(Exception):
        pass

    def entry_ready():
        polls[0] += 1
        if polls[0] > 300:
            raise StillWaiting
        return False

    try:
        outcome = lease.wait(entry_ready, poll=0)
    except StillWaiting:
        outcome = "still waiting"
    finally:
        lease.release()
    waited = now[0] - started
    fault(observed="after %d polls (%.0f s of fake time): %s" % (polls[0], waited, outcome))
    assert outcome == "acquired"


# =============================================================================
# 5. Bad input
# =============================================================================
BAD_DECORATORS = [
    ("bad ttl", 'ttl="soon"', ["Step work", "ttl", "soon", "Example"]),
    ("negative ttl", "ttl=-5", ["Step work", "ttl", "negative", "Example"]),
    (
        "`inputs` names an artifact no step sets",
        'inputs=["nosuch"]',
        ["Step work", "inputs", "nosuch", "Use the names of artifacts"],
    ),
    (
        "`depends_on` names a missing path",
        'depends_on=["missing.txt"]',
        ["Step work", "depends_on", "missing.txt", "Give a path"],
    ),
    ("`lock` is not a boolean", 'lock="maybe"', ["Step work", "lock", "Use True or False"]),
]


def _assert_fails_at_start(runner, result, words, steps):
    assert result.returncode != 0, result
    for word in words:
        assert word in result.output, (word, result)
    assert "Traceback" not in result.output, result
    assert all(runner.count(s) == 0 for s in steps), runner.executions()


@pytest.mark.parametrize("what,arguments,words", BAD_DECORATORS, ids=[b[1] for b in BAD_DECORATORS])
def test_bad_argument_fails_at_start(runner, fault, what, arguments, words):
    fault(
        area=BAD_INPUT,
        fault="@memoize(%s): %s" % (arguments, what),
        store="-",
        expected="fails before any step runs; message names the step and the fix",
    )
    source = (FLOWS_DIR / "t6_badinput_flow.py").read_text()
    runner.add_flow(
        "t6_badinput_flow.py",
        source=source.replace("@memoize()  # T6-DECORATOR", "@memoize(%s)" % arguments),
    )
    result = runner.run("t6_badinput_flow.py", check=False)
    _assert_fails_at_start(runner, result, words, ("start", "work", "end"))
    line = next(ln for ln in result.output.splitlines() if "Step work" in ln)
    fault(observed=short(line))


def test_unknown_argument_fails_at_start_naming_the_step(runner, fault):
    fault(
        area=BAD_INPUT,
        fault="@memoize(foo=1): unknown argument",
        store="-",
        expected="fails before any step runs; message names the step and the fix (fixed in "
        "bb7c2c4: was Metaflow's generic traceback)",
    )
    source = (FLOWS_DIR / "t6_badinput_flow.py").read_text()
    runner.add_flow(
        "t6_badinput_flow.py",
        source=source.replace("@memoize()  # T6-DECORATOR", "@memoize(foo=1)"),
    )
    result = runner.run("t6_badinput_flow.py", check=False)
    _assert_fails_at_start(
        runner, result, ["Step work", "foo", "Supported arguments"], ("start", "work", "end")
    )
    line = next(ln for ln in result.output.splitlines() if "Step work" in ln)
    fault(observed=short(line))


def test_memoize_on_a_parallel_step_fails_at_start(runner, fault):
    fault(
        area=BAD_INPUT,
        fault="@memoize on a @parallel step",
        store="-",
        expected="fails before any step runs; message names the step and the fix",
    )
    runner.add_flow("t6_parallel_flow.py")
    result = runner.run("t6_parallel_flow.py", check=False)
    _assert_fails_at_start(
        runner,
        result,
        ["Step train", "@parallel", "Remove @memoize"],
        ("start", "train", "join", "end"),
    )
    line = next(ln for ln in result.output.splitlines() if "Step train" in ln)
    fault(observed=short(line))


UNSTORABLE = [
    ("generator", "the task fails exactly as without @memoize; nothing stored"),
    ("lambda", "as without @memoize: Metaflow skips functions, the run succeeds without it"),
]


@pytest.mark.parametrize("kind,expected", UNSTORABLE, ids=[u[0] for u in UNSTORABLE])
def test_unstorable_artifact_behaves_as_without_memoize(runner, fault, kind, expected):
    fault(
        area=BAD_INPUT,
        fault="step assigns a %s to self" % kind,
        store="local",
        expected=expected,
    )
    source = (FLOWS_DIR / "t6_unstorable_flow.py").read_text()
    runner.add_flow("t6_unstorable_flow.py")
    runner.add_flow("plain_flow.py", source=source.replace("    @memoize  # T6-MEMOIZE\n", ""))
    env = {"T6_KIND": kind}
    memoized = runner.run("t6_unstorable_flow.py", env=env, check=False)
    plain = runner.run("plain_flow.py", env=env, check=False)
    assert "@memoize" not in (runner.workdir / "plain_flow.py").read_text().split("class")[1]
    assert memoized.returncode == plain.returncode, (memoized, plain)
    assert not warning_lines(memoized)
    root = runner.workdir / ".metaflow" / "memoize-cache"
    stored = entries(root, "T6UnstorableFlow", "start")
    if plain.returncode != 0:
        error = 'Cannot pickle dump artifact named "bad"'
        assert error in plain.output and error in memoized.output, memoized
        assert "Step start (task-id 1) failed" in memoized.output
        assert stored == [] and "stored start" not in memoized.output
        assert runner.count("start") == 2 and runner.count("end") == 0
        fault(observed="both fail with %s; no entry, no memoize warning" % short(error))
    else:
        flow = "T6UnstorableFlow"
        assert runner.artifacts(flow, memoized.run_id) == runner.artifacts(flow, plain.run_id)
        (entry,) = stored
        assert "bad" not in json.loads(entry.read_text())["artifacts"]
        fault(observed="both succeed with the same artifacts (no `bad`); entry without it")
