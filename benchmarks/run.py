#!/usr/bin/env python3
"""Performance benchmarks of metaflow-memoize (issue 7): measure, compare, report.

    .venv/bin/python benchmarks/run.py            # full run, writes docs/performance.md
    .venv/bin/python benchmarks/run.py --quick    # small sizes, < 1 min, writes to a temp dir
    .venv/bin/python benchmarks/run.py --quick --output /tmp/perf.md
    .venv/bin/python benchmarks/run.py --only 1,4 --keep   # some targets, keep the work dir

Everything runs on this machine: a private Metaflow datastore per benchmark
(local datastore + local metadata, as tests/flowrunner.py does) and a moto S3
server started here, in its own process. Every comparison is measured side by
side in the same run, interleaved, and repeated; the report gives the median
and the min-max. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
FLOWS = REPO / "benchmarks" / "flows"
DEFAULT_OUTPUT = REPO / "docs" / "performance.md"
PY = sys.executable
MB = 1 << 20
BUCKET = "memoize-bench"
#: moto keeps every object in memory: no S3 object in these benchmarks is larger
S3_OBJECT_CAP_MB = 128


# -- what to run ---------------------------------------------------------------
class Plan:
    """Sizes and repeat counts. Repeats are per measured variant."""

    def __init__(self, quick: bool):
        self.quick = quick
        if quick:
            self.hit_sizes = [1.0, 10.0]
            self.hit_reps = {1.0: 2, 10.0: 2}
            self.miss_mb = 10.0
            self.miss_reps = 2
            self.s3_mb = 10.0
            self.s3_reps = 2
            self.copy_local_sizes = [10.0]
            self.copy_reps = {10.0: 2}
            self.key_synthetic = [1000, 10000]
            self.key_synthetic_reps = 11
            self.key_flow = [1000]
            self.key_flow_reps = 2
            self.hit_remote = ["S3 cache"]
            self.remote_reps = 1
            self.s3_miss_reps = 1
            self.warm = False
            self.eight_sleep = 0.1
            self.eight_reps = 1
            self.eight_variants = ["memo", "resume"]
            self.probes = 1
            self.prune_entries = 200
            self.prune_reps = 1
        else:
            self.hit_sizes = [1.0, 100.0, 1024.0]
            self.hit_reps = {1.0: 7, 100.0: 7, 1024.0: 7}
            self.miss_mb = 100.0
            self.miss_reps = 5
            self.s3_mb = 100.0
            self.s3_reps = 5
            self.copy_local_sizes = [100.0, 1024.0]
            self.copy_reps = {100.0: 5, 1024.0: 5}
            self.key_synthetic = [1000, 10000]
            self.key_synthetic_reps = 21
            self.key_flow = [1000, 10000]
            self.key_flow_reps = 5
            self.hit_remote = ["S3 cache", "S3 datastore + S3 cache"]
            self.remote_reps = 11
            self.s3_miss_reps = 5
            self.warm = True
            self.eight_sleep = 2.0
            self.eight_reps = 7
            self.eight_variants = ["memo", "memo_tasks", "resume", "resume_end", "plain", "empty"]
            self.probes = 3
            self.prune_entries = 10000
            self.prune_reps = 2
        assert self.miss_mb in self.hit_sizes and self.s3_mb in self.hit_sizes
        assert all(s in self.hit_sizes for s in self.copy_local_sizes)
        assert self.s3_mb <= S3_OBJECT_CAP_MB


class BenchError(Exception):
    pass


# -- statistics ----------------------------------------------------------------
def summary(values):
    values = [float(v) for v in values]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "samples": [round(v, 6) for v in values],
    }


def fmt(value, unit=""):
    if value is None:
        return "n/a"
    if unit == "s":
        if abs(value) < 0.1:
            return "%.1f ms" % (value * 1000)
        return "%.3f s" % value
    if unit == "ms":
        return "%.2f ms" % (value * 1000)
    if unit == "x":
        return "%.2fx" % value
    if unit == "%":
        return "%.0f%%" % (value * 100)
    if unit == "MB":
        return "%.1f MB" % value
    if unit == "MB/s":
        return "%.0f MB/s" % value
    return "%.3g" % value


def rng(s, unit=""):
    return "%s – %s" % (fmt(s["min"], unit), fmt(s["max"], unit))


# -- machine load ------------------------------------------------------------------
def load1():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return 0.0


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every 2 s, so the report can say how busy the
    machine was (other work on these 2 cores inflates every wall-clock number)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples = []  # (perf_counter, load1)
        self._stop = threading.Event()

    def run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), load1()))
            self._stop.wait(2.0)

    def stop(self):
        self._stop.set()

    def between(self, t0, t1):
        return [v for t, v in self.samples if t0 <= t <= t1] or [load1()]


def wait_quiet(limit_s, threshold=1.0):
    """Wait (at most limit_s) until the 1-minute load average drops below threshold."""
    deadline = time.time() + limit_s
    while load1() >= threshold and time.time() < deadline:
        time.sleep(5)
    return load1()


# -- the S3 endpoint -------------------------------------------------------------
_MOTO_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()  # until the harness closes our stdin (or dies)
    server.stop()
    """
)


class Moto:
    """moto's S3 server in a process of its own (so it never shares our GIL)."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [PY, "-c", _MOTO_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            raise BenchError("moto server did not start")
        self.endpoint = "http://127.0.0.1:%s" % line
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", int(line)), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "METAFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1"
        )

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.terminate()
                self.proc.wait(timeout=10)


def empty_prefix(client, prefix):
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        for start in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=BUCKET, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
            )


# -- flows and tasks -------------------------------------------------------------
_RUN_ID = re.compile(r"run-id (\d+)")
_TASK = re.compile(r"\[(\d+)/(\w+)/(\w+) \(pid")
_MEMOIZE = re.compile(r"\[memoize\] (hit|miss|stored|refresh)\b")

# Phase timer, run in place of `python flow.py ...` for a few extra tasks: it
# wraps product and Metaflow functions with perf_counter timers (no profiler
# overhead) and writes the totals as JSON. BENCH_PROFILE=1 adds cProfile.
_PROBE = textwrap.dedent(
    """
    import json, os, runpy, sys, time
    T0 = time.perf_counter()
    import metaflow  # noqa: F401
    from metaflow.task import MetaflowTask
    from metaflow.datastore.task_datastore import TaskDataStore
    from metaflow_extensions.memoize.plugins.memoize.runtime import decorator as D
    from metaflow_extensions.memoize.plugins.memoize.cache import entries as C
    IMPORTED = time.perf_counter() - T0
    phases = {}

    def wrap(owner, name, label):
        fn = getattr(owner, name, None)
        if fn is None:
            return
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - started
        setattr(owner, name, timed)

    wrap(MetaflowTask, "run_step", "metaflow: run_step (the whole task after imports)")
    wrap(MetaflowTask, "_exec_step_function", "metaflow: step body (or hit replay)")
    wrap(TaskDataStore, "persist", "metaflow: persist (pickle + gzip + write artifacts)")
    wrap(D.MemoizeDecorator, "task_pre_step", "memoize: task_pre_step (all)")
    wrap(D, "task_components", "memoize: key components (task_components)")
    wrap(D, "key_of", "memoize: key digest (key_of)")
    wrap(C.Cache, "lookup", "memoize: lookup (read manifest)")
    wrap(C.Cache, "latest_entry", "memoize: latest_entry (explain a miss)")
    wrap(D, "import_blobs", "memoize: import_blobs (restore)")
    wrap(C.Cache, "record_use", "memoize: record_use (last-use marker)")
    wrap(D.MemoizeDecorator, "task_finished", "memoize: task_finished (all)")
    wrap(D, "export_blobs", "memoize: export_blobs (store)")
    wrap(C.Cache, "publish", "memoize: publish (manifest)")
    wrap(D.MemoizeDecorator, "_register", "memoize: register task metadata")
    profile = None
    if os.environ.get("BENCH_PROFILE") == "1":
        import cProfile
        profile = cProfile.Profile()
        profile.enable()
    sys.argv = sys.argv[1:]
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    finally:
        total = time.perf_counter() - T0
        top = []
        if profile is not None:
            import pstats
            profile.disable()
            st = pstats.Stats(profile)
            for (path, line, func), (cc, nc, tt, ct, _) in st.stats.items():
                mine = "plugins/memoize" in path.replace(os.sep, "/")
                top.append([os.path.basename(path) + ":" + func, tt, ct, nc, mine])
            top.sort(key=lambda r: -r[1])
            ours = sorted((r for r in top if r[4]), key=lambda r: -r[2])[:25]
            top = top[:30] + ours
        with open(os.environ["BENCH_PROBE_OUT"], "w") as out:
            json.dump({"total": total, "imports": IMPORTED, "phases": phases, "top": top}, out)
    sys.exit(code)
    """
)


# Launches one task and measures exactly that process. Peak RSS comes from wait4()'s
# ru_maxrss, which on Linux also counts the memory image the child was forked from (its
# parent's RSS before exec): so the task is spawned from this small launcher (~10 MB),
# never from the harness (whose RSS grows to 100+ MB), or every task would report the
# harness's size.
_LAUNCHER = """
import json, os, sys, time
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(sys.argv[1], "w") as out:
    json.dump([os.waitstatus_to_exitcode(status), wall, ru.ru_maxrss, ru.ru_utime + ru.ru_stime], out)
"""


class Task:
    def __init__(self, step, wall, rss_kb, output, returncode, probe=None, cpu=0.0):
        self.step = step
        self.wall = wall
        self.cpu = cpu  # user + system CPU seconds of the task process
        self.rss_mb = rss_kb / 1024.0
        self.output = output
        self.returncode = returncode
        self.probe = probe

    @property
    def memoize(self):
        return _MEMOIZE.findall(self.output)


class RunResult:
    def __init__(self, wall, output, returncode):
        self.wall = wall
        self.output = output
        self.returncode = returncode
        m = _RUN_ID.search(output)
        self.run_id = m.group(1) if m else None
        self.tasks = {}
        for run_id, step, task_id in _TASK.findall(output):
            if run_id == self.run_id and task_id not in self.tasks.setdefault(step, []):
                self.tasks[step].append(task_id)

    @property
    def memoize(self):
        return _MEMOIZE.findall(self.output)

    def input_path(self, step):
        return "%s/%s/%s" % (self.run_id, step, self.tasks[step][0])


class FlowDir:
    """A private working directory: its own datastore, metadata and default cache."""

    def __init__(self, root: Path, flow_file: str, env: dict, s3_root: str | None = None):
        """``s3_root``: use Metaflow's S3 datastore there instead of the local one."""
        self.s3_root = s3_root
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copy(FLOWS / flow_file, self.root / flow_file)
        self.flow_file = flow_file
        self.env = dict(env)
        self._n = 0

    @property
    def datastore_root(self) -> Path:
        return self.root / ".metaflow"

    @property
    def default_cache(self) -> Path:
        return self.datastore_root / "memoize-cache"

    def _env(self, extra):
        env = dict(self.env)
        if self.s3_root:
            env["METAFLOW_DATASTORE_SYSROOT_S3"] = self.s3_root
        env.update(extra or {})
        return env

    def run(self, *args, command="run", env=None, timeout=3600) -> RunResult:
        top = ["--datastore=s3"] if self.s3_root else []
        cmd = [PY, self.flow_file, "--no-pylint", *top, command, *args]
        started = time.perf_counter()
        proc = subprocess.run(
            cmd,
            cwd=self.root,
            env=self._env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        result = RunResult(time.perf_counter() - started, proc.stdout, proc.returncode)
        if proc.returncode != 0:
            raise BenchError(
                "`%s` failed in %s:\n%s" % (" ".join(cmd[1:]), self.root, proc.stdout[-4000:])
            )
        return result

    def task(self, step, run_id, input_paths, env=None, probe=False, profile=False) -> Task:
        """Launch one task exactly as Metaflow's runtime does (same command line) and
        measure that process: wall time, and peak RSS from wait4()."""
        self._n += 1
        task_id = "b%d" % self._n
        cmd = [
            self.flow_file,
            "--quiet",
            "--metadata",
            "local",
            "--environment",
            "local",
            "--datastore",
            "s3" if self.s3_root else "local",
            "--event-logger",
            "nullSidecarLogger",
            "--monitor",
            "nullSidecarMonitor",
            "--datastore-root",
            self.s3_root or str(self.datastore_root),
            "step",
            step,
            "--run-id",
            run_id,
            "--task-id",
            task_id,
            "--input-paths",
            input_paths,
            "--retry-count",
            "0",
            "--max-user-code-retries",
            "0",
            "--namespace",
            "user:bench",
        ]
        extra = dict(env or {})
        probe_out = None
        if probe:
            probe_script = self.root / "_bench_probe.py"
            probe_script.write_text(_PROBE)
            probe_out = self.root / ("probe-%s.json" % task_id)
            extra["BENCH_PROBE_OUT"] = str(probe_out)
            if profile:
                extra["BENCH_PROFILE"] = "1"
            cmd = [str(probe_script)] + cmd
        measured = self.root / ("usage-%s.json" % task_id)
        with tempfile.TemporaryFile(mode="w+") as log:
            proc = subprocess.run(
                [PY, "-S", "-c", _LAUNCHER, str(measured), PY] + cmd,
                cwd=self.root,
                env=self._env(extra),
                stdout=log,
                stderr=log,
            )
            log.seek(0)
            output = log.read()
        if proc.returncode != 0 or not measured.exists():
            raise BenchError("task %s/%s failed:\n%s" % (step, task_id, output[-4000:]))
        code, wall, maxrss_kb, cpu = json.loads(measured.read_text())
        measured.unlink()
        if code != 0:
            raise BenchError("task %s/%s failed:\n%s" % (step, task_id, output[-4000:]))
        data = None
        if probe_out is not None:
            data = json.loads(probe_out.read_text())
        return Task(step, wall, maxrss_kb, output, code, data, cpu)


def expect(task: Task, status: str):
    found = task.memoize
    ok = status in found if status != "none" else not found
    if status == "hit" and "miss" in found:
        ok = False
    if not ok:
        raise BenchError(
            "expected a memoize %s in task %s, saw %s:\n%s"
            % (status, task.step, found or "nothing", task.output[-3000:])
        )


def settle():
    """After a setup that wrote a lot (a 1 GB blob and its cache copy), let the kernel write
    it back before measuring: writeback competes with the tasks for the 2 cores."""
    os.sync()
    time.sleep(1.0)


def interleaved(reps, variants):
    """Run each variant ``reps`` times, alternating the order every round."""
    out = {name: [] for name, _ in variants}
    for i in range(reps):
        order = variants if i % 2 == 0 else list(reversed(variants))
        for name, fn in order:
            out[name].append(fn(i))
    return out


# -- product objects used in-process ----------------------------------------------
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


def stored_digest(path):
    """xxh3-128 of a file's stored (still compressed) bytes: the cheaper check that
    could replace inflate + sha1 on copy-in (see the report's target 2)."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stored_bytes(manifest):
    return sum(a.stored_size or 0 for a in manifest.artifacts.values())


# -- the benchmarks ----------------------------------------------------------------
class Bench:
    def __init__(self, plan: Plan, work: Path, moto: Moto | None):
        self.plan = plan
        self.work = work
        self.moto = moto
        self.results = {}
        self.errors = {}
        self.notes = {}
        self.hit_dirs = {}
        self.spans = {}
        self.sampler = None
        self.machine = None  # captured when the measurements end
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "PYTEST", "AWS_"))
        }
        env.update(
            {
                "USERNAME": "bench",
                "METAFLOW_DEFAULT_DATASTORE": "local",
                "METAFLOW_DEFAULT_METADATA": "local",
            }
        )
        if moto is not None:
            env.update(moto.env)
        self.env = env

    def log(self, msg):
        print(
            "[bench %6.1fs] %s" % (time.perf_counter() - T_START, msg), file=sys.stderr, flush=True
        )

    # ---- target 1 -------------------------------------------------------------
    def hit_flow(self, mb, s3_datastore=False) -> tuple[FlowDir, RunResult]:
        key = (mb, s3_datastore)
        if key not in self.hit_dirs:
            name = "artifacts-%gMB%s" % (mb, "-s3" if s3_datastore else "")
            s3_root = "s3://%s/%s" % (BUCKET, name) if s3_datastore else None
            fd = FlowDir(self.work / name, "artifacts_flow.py", self.env, s3_root=s3_root)
            self.log(
                "setting up ArtifactsFlow --mb %g%s (first run: a miss that stores the entry)"
                % (mb, " on the S3 datastore" if s3_datastore else "")
            )
            run = fd.run("--mb", "%g" % mb, env={"BENCH_PLAIN": "0"})
            if "stored" not in run.memoize:
                raise BenchError("setup run did not store an entry:\n" + run.output[-3000:])
            settle()
            self.hit_dirs[key] = (fd, run)
        return self.hit_dirs[key]

    def target1(self):
        rows = [self._hit_cost(mb) for mb in self.plan.hit_sizes]
        if self.moto is not None:
            rows += [self._hit_cost(self.plan.hit_sizes[0], m) for m in self.plan.hit_remote]
        self.results[1] = rows

    def _hit_cost(self, mb, store="local"):
        """``store``: "local" (local datastore, local cache), "S3 cache" (the same entry
        published to an S3 cache), "S3 datastore + S3 cache" (a run on Metaflow's S3
        datastore with the default cache root under it)."""
        fd, run = self.hit_flow(mb, s3_datastore=store.startswith("S3 datastore"))
        start = run.input_path("start")
        env = None
        floor = None
        if store == "S3 cache":
            floor = self._boto3_floor()
            # the same entry, published to an S3 store; the blob stays in the datastore
            P = product()
            _, manifest = work_entry(fd)
            prefix = "hit-%g" % mb
            cache = P.Cache(P.S3Store("s3://%s/%s" % (BUCKET, prefix)))
            src = datastore_blobs(fd.datastore_root, "ArtifactsFlow")
            P.transfer.export_blobs(src, cache, fresh_records(manifest))
            cache.publish(manifest)
            env = {"METAFLOW_MEMOIZE_ROOT": cache.store.url}
        reps = self.plan.hit_reps[mb] if store == "local" else self.plan.remote_reps
        if self.plan.warm:
            expect(fd.task("work", run.run_id, start, env=env), "hit")
            fd.task("empty", run.run_id, start)
        self.log("target 1: %g MB, %s, %d x (hit, empty)" % (mb, store, reps))

        def hit(_):
            t = fd.task("work", run.run_id, start, env=env)
            expect(t, "hit")
            return t

        samples = interleaved(
            reps,
            [("hit", hit), ("empty", lambda _: fd.task("empty", run.run_id, start))],
        )
        hits, empties = samples["hit"], samples["empty"]
        probe = fd.task("work", run.run_id, start, env=env, probe=True)
        expect(probe, "hit")
        return {
            "mb": mb,
            "store": store,
            "hit_s": summary([t.wall for t in hits]),
            "empty_s": summary([t.wall for t in empties]),
            "ratio": summary([h.wall / e.wall for h, e in zip(hits, empties)]),
            "delta_s": summary([h.wall - e.wall for h, e in zip(hits, empties)]),
            "hit_cpu": summary([t.cpu for t in hits]),
            "empty_cpu": summary([t.cpu for t in empties]),
            "cpu_ratio": summary([h.cpu / e.cpu for h, e in zip(hits, empties)]),
            "hit_rss": summary([t.rss_mb for t in hits]),
            "empty_rss": summary([t.rss_mb for t in empties]),
            "rss_delta": summary([h.rss_mb - e.rss_mb for h, e in zip(hits, empties)]),
            "probe": probe.probe,
            **({"floor": floor} if floor else {}),
        }

    def _boto3_floor(self):
        """What any boto3-based store pays in a fresh task process whose datastore is local:
        importing boto3, then building the store's client (S3Store's own construction),
        after importing Metaflow as a task does. One fresh process per sample."""
        reps = self.plan.remote_reps
        self.log("target 1: boto3 floor, %d fresh processes" % reps)
        code = textwrap.dedent(
            """
            import json, time
            import metaflow
            t0 = time.perf_counter()
            import boto3
            t1 = time.perf_counter()
            from metaflow_extensions.memoize.plugins.memoize.cache.stores import s3
            s3._client_for(s3._endpoint_url(), s3._region())
            t2 = time.perf_counter()
            print(json.dumps([t1 - t0, t2 - t1]))
            """
        )
        env = dict(self.env)
        samples = []
        for _ in range(reps):
            out = subprocess.run(
                [PY, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
        return {
            "import_s": summary([a for a, _ in samples]),
            "client_s": summary([b for _, b in samples]),
            "total_s": summary([a + b for a, b in samples]),
        }

    # ---- target 3 (local and S3 misses, end to end) ---------------------------
    def target3(self):
        mb = self.plan.miss_mb
        fd, run = self.hit_flow(mb)
        start = run.input_path("start")
        caches = self.work / "miss-caches"

        def miss_local(i):
            root = caches / ("local-%d-%s" % (i, uuid.uuid4().hex[:6]))
            t = fd.task("work", run.run_id, start, env={"METAFLOW_MEMOIZE_ROOT": str(root)})
            expect(t, "stored")
            shutil.rmtree(root, ignore_errors=True)
            return t

        plain = lambda _: fd.task("plain", run.run_id, start)  # noqa: E731
        self.log("target 3: %g MB local misses, %d x (miss, plain)" % (mb, self.plan.miss_reps))
        local = interleaved(self.plan.miss_reps, [("miss", miss_local), ("plain", plain)])
        probe_root = caches / "probe"
        probe = fd.task(
            "work", run.run_id, start, env={"METAFLOW_MEMOIZE_ROOT": str(probe_root)}, probe=True
        )
        expect(probe, "stored")
        shutil.rmtree(probe_root, ignore_errors=True)
        result = {"mb": mb, "local": self._miss_stats(local), "probe": probe.probe}

        if self.moto is not None:
            client = self.moto.client()

            def miss_s3(i):
                prefix = "miss-%d-%s" % (i, uuid.uuid4().hex[:6])
                t = fd.task(
                    "work",
                    run.run_id,
                    start,
                    env={"METAFLOW_MEMOIZE_ROOT": "s3://%s/%s" % (BUCKET, prefix)},
                )
                expect(t, "stored")
                empty_prefix(client, prefix + "/")
                return t

            reps = self.plan.s3_miss_reps
            self.log("target 3: %g MB S3 misses, %d x (miss, plain)" % (mb, reps))
            s3 = interleaved(reps, [("miss", miss_s3), ("plain", plain)])
            result["s3"] = self._miss_stats(s3)
            probe_prefix = "miss-probe"
            probe = fd.task(
                "work",
                run.run_id,
                start,
                env={"METAFLOW_MEMOIZE_ROOT": "s3://%s/%s" % (BUCKET, probe_prefix)},
                probe=True,
            )
            expect(probe, "stored")
            empty_prefix(client, probe_prefix + "/")
            result["s3_probe"] = probe.probe
            result["upload"] = self.s3_upload()
        self.results[3] = result

    @staticmethod
    def _miss_stats(samples):
        misses, plains = samples["miss"], samples["plain"]
        overhead = [m.wall - p.wall for m, p in zip(misses, plains)]
        allowed = [0.05 * p.wall + 0.3 for p in plains]
        return {
            "miss_s": summary([t.wall for t in misses]),
            "plain_s": summary([t.wall for t in plains]),
            "overhead_s": summary(overhead),
            "allowed_s": summary(allowed),
            "excess_s": summary([o - a for o, a in zip(overhead, allowed)]),
            "miss_rss": summary([t.rss_mb for t in misses]),
            "plain_rss": summary([t.rss_mb for t in plains]),
            "rss_delta": summary([m.rss_mb - p.rss_mb for m, p in zip(misses, plains)]),
        }

    def s3_upload(self):
        """export_blobs (local datastore -> S3 store) vs boto3 upload_file of the same bytes."""
        P = product()
        mb = self.plan.s3_mb
        fd, _ = self.hit_flow(mb)
        _, manifest = work_entry(fd)
        src = datastore_blobs(fd.datastore_root, "ArtifactsFlow")
        client = self.moto.client()
        files = [src.url(a.sha) for a in manifest.artifacts.values()]
        nbytes = sum(os.path.getsize(f) for f in files)

        def product_upload(i):
            prefix = "upload-%d" % i
            cache = P.Cache(P.S3Store("s3://%s/%s" % (BUCKET, prefix)))
            started = time.perf_counter()
            P.transfer.export_blobs(src, cache, fresh_records(manifest))
            took = time.perf_counter() - started
            empty_prefix(client, prefix + "/")
            return took

        def boto3_upload(i):
            prefix = "baseline-up-%d" % i
            started = time.perf_counter()
            for n, f in enumerate(files):
                client.upload_file(f, BUCKET, "%s/%d" % (prefix, n))
            took = time.perf_counter() - started
            empty_prefix(client, prefix + "/")
            return took

        self.log("target 3: S3 upload %d x (export_blobs, boto3)" % self.plan.s3_reps)
        s = interleaved(self.plan.s3_reps, [("product", product_upload), ("boto3", boto3_upload)])
        return self._throughput(s, nbytes)

    @staticmethod
    def _throughput(s, nbytes):
        return {
            "bytes": nbytes,
            "product_s": summary(s["product"]),
            "baseline_s": summary(s["boto3"] if "boto3" in s else s["copy"]),
            "product_mbps": summary([nbytes / MB / t for t in s["product"]]),
            "baseline_mbps": summary(
                [nbytes / MB / t for t in (s["boto3"] if "boto3" in s else s["copy"])]
            ),
            "ratio": summary(
                [b / p for p, b in zip(s["product"], s["boto3"] if "boto3" in s else s["copy"])]
            ),
        }

    # ---- target 2 -------------------------------------------------------------
    def target2(self):
        out = {"local": [], "s3": None, "e2e": []}
        for mb in self.plan.copy_local_sizes:
            row, e2e = self._local_copyin(mb)
            out["local"].append(row)
            out["e2e"].append(e2e)
        if self.moto is not None:
            out["s3"] = self._s3_copyin()
        self.results[2] = out

    def _local_copyin(self, mb):
        P = product()
        fresh = self.work / "fresh-datastores"
        fd, run = self.hit_flow(mb)
        cache, manifest = work_entry(fd)
        blob_files = [
            cache.store.url_for(cache.blob_key(a.sha)) for a in manifest.artifacts.values()
        ]
        nbytes = sum(os.path.getsize(f) for f in blob_files)

        def importer(link):
            how = "link" if link else "copy"

            def product_import(i):
                root = fresh / ("import-%d" % i)
                dest = datastore_blobs(root, "ArtifactsFlow")
                # the default links when it can (here: the same filesystem);
                # METAFLOW_MEMOIZE_LINK=0 measures the copy path (another filesystem)
                os.environ["METAFLOW_MEMOIZE_LINK"] = "1" if link else "0"
                os.sync()  # the previous variant's writes must not throttle this one
                try:
                    started = time.perf_counter()
                    moved = P.transfer.import_blobs(dest, cache, manifest.artifacts)
                    took = time.perf_counter() - started
                finally:
                    os.environ.pop("METAFLOW_MEMOIZE_LINK", None)
                if (moved.linked if link else moved.copied) != len(blob_files):
                    raise BenchError("import_blobs did not %s: %s" % (how, moved.describe()))
                shutil.rmtree(root)
                return took

            return product_import

        def plain_copy(i):
            root = fresh / ("copy-%d" % i)
            root.mkdir(parents=True)
            os.sync()
            started = time.perf_counter()
            for n, f in enumerate(blob_files):
                shutil.copyfile(f, root / str(n))
            took = time.perf_counter() - started
            shutil.rmtree(root)
            return took

        reps = self.plan.copy_reps[mb]
        self.log(
            "target 2: local copy-in %g MB, %d x (import_blobs link, import_blobs copy, copy)"
            % (mb, reps)
        )
        s = interleaved(
            reps,
            [("product", importer(True)), ("nolink", importer(False)), ("copy", plain_copy)],
        )
        row = self._throughput({"product": s["product"], "copy": s["copy"]}, nbytes)
        row["nolink"] = self._throughput({"product": s["nolink"], "copy": s["copy"]}, nbytes)
        row["mb"] = mb
        row["parts"] = self._import_parts(cache, manifest)
        return row, self._copyin_task(fd, run, manifest, mb)

    def _import_parts(self, cache, manifest):
        """The pieces of one import, timed alone: fetch, verify, and their sum."""
        P = product()
        tmpdir = self.work / "parts"
        tmpdir.mkdir(exist_ok=True)
        fetch = verify = fast = 0.0
        for a in manifest.artifacts.values():
            tmp = tmpdir / a.sha
            started = time.perf_counter()
            cache.store.get_file(cache.blob_key(a.sha), str(tmp))
            fetch += time.perf_counter() - started
            started = time.perf_counter()
            P.transfer.verify_blob_file(str(tmp), a.sha, a.cas_raw)
            verify += time.perf_counter() - started
            started = time.perf_counter()
            stored_digest(tmp)
            fast += time.perf_counter() - started
            tmp.unlink()
        return {"fetch_s": fetch, "verify_s": verify, "stored_digest_s": fast}

    def _copyin_task(self, fd, run, manifest, mb):
        """End to end: a hit task in a datastore that lacks the blobs (deleted before each
        rep), restored from the local cache, vs the empty task of the same run."""
        src = datastore_blobs(fd.datastore_root, "ArtifactsFlow")
        start = run.input_path("start")
        env = {"METAFLOW_MEMOIZE_ROOT": str(fd.default_cache)}

        def copyin(_):
            for a in manifest.artifacts.values():
                for suffix in ("", "_meta"):
                    path = src.url(a.sha) + suffix
                    if os.path.exists(path):
                        os.unlink(path)
            t = fd.task("work", run.run_id, start, env=env)
            expect(t, "hit")
            if "copied" not in t.output and "linked" not in t.output:
                raise BenchError("expected a copy-in:\n" + t.output[-2000:])
            return t

        reps = self.plan.copy_reps[mb]
        self.log("target 2: copy-in hit tasks %g MB, %d x (copy-in hit, empty)" % (mb, reps))
        s = interleaved(
            reps, [("hit", copyin), ("empty", lambda _: fd.task("empty", run.run_id, start))]
        )
        nbytes = stored_bytes(manifest)
        inc = [h.wall - e.wall for h, e in zip(s["hit"], s["empty"])]
        return {
            "mb": mb,
            "bytes": nbytes,
            "hit_s": summary([t.wall for t in s["hit"]]),
            "empty_s": summary([t.wall for t in s["empty"]]),
            "increment_s": summary(inc),
            "hit_rss": summary([t.rss_mb for t in s["hit"]]),
            "empty_rss": summary([t.rss_mb for t in s["empty"]]),
        }

    def _s3_copyin(self):
        P = product()
        mb = self.plan.s3_mb
        fd, _ = self.hit_flow(mb)
        _, manifest = work_entry(fd)
        src = datastore_blobs(fd.datastore_root, "ArtifactsFlow")
        client = self.moto.client()
        prefix = "copyin"
        cache = P.Cache(P.S3Store("s3://%s/%s" % (BUCKET, prefix)))
        P.transfer.export_blobs(src, cache, fresh_records(manifest))
        keys = ["%s/%s" % (prefix, cache.blob_key(a.sha)) for a in manifest.artifacts.values()]
        nbytes = sum(client.head_object(Bucket=BUCKET, Key=k)["ContentLength"] for k in keys)
        fresh = self.work / "fresh-datastores"

        def product_import(i):
            root = fresh / ("s3-import-%d" % i)
            dest = datastore_blobs(root, "ArtifactsFlow")
            started = time.perf_counter()
            P.transfer.import_blobs(dest, cache, manifest.artifacts)
            took = time.perf_counter() - started
            shutil.rmtree(root)
            return took

        def boto3_download(i):
            root = fresh / ("s3-download-%d" % i)
            root.mkdir(parents=True)
            started = time.perf_counter()
            for n, k in enumerate(keys):
                client.download_file(BUCKET, k, str(root / str(n)))
            took = time.perf_counter() - started
            shutil.rmtree(root)
            return took

        self.log("target 2: S3 copy-in %g MB, %d x (import_blobs, boto3)" % (mb, self.plan.s3_reps))
        s = interleaved(self.plan.s3_reps, [("product", product_import), ("boto3", boto3_download)])
        row = self._throughput(s, nbytes)
        row["mb"] = mb
        row["parts"] = self._import_parts(cache, manifest)
        empty_prefix(client, prefix + "/")
        return row

    # ---- target 4 -------------------------------------------------------------
    def target4(self):
        P = product()
        keys = P.keys
        synthetic = []
        for n in self.plan.key_synthetic:
            artifacts = {"in%05d" % i: hashlib.sha1(str(i).encode()).hexdigest() for i in range(n)}
            artifacts.update({name: "0" * 40 for name in keys.BOOKKEEPING_ARTIFACTS})
            code = {"step": "f" * 32, "helper:make_payload": "e" * 32}
            args = {"version": None, "inputs": None, "ignore": [], "outputs": None}
            env = {"python": "3.11"}
            times = []
            for _ in range(self.plan.key_synthetic_reps):
                started = time.perf_counter()
                selected = keys.select_inputs(artifacts, None, [], [])
                components = keys.build_components(
                    "KeysFlow", "work", code, args, selected, [], env
                )
                keys.key_of(components)
                times.append(time.perf_counter() - started)
            synthetic.append({"n": n, "seconds": summary(times)})
        # audit at 0 (the default): what a hit pays for deciding not to audit (audit.py)
        from metaflow_extensions.memoize.plugins.memoize import config
        from metaflow_extensions.memoize.plugins.memoize.cache import audit

        os.environ.pop(config.ENV_AUDIT, None)
        times = []
        for _ in range(self.plan.key_synthetic_reps):
            started = time.perf_counter()
            audit.sampled(config.audit_fraction())
            times.append(time.perf_counter() - started)
        flows = [self._keys_flow(n) for n in self.plan.key_flow]
        self.results[4] = {"synthetic": synthetic, "flows": flows, "audit0": summary(times)}

    def _keys_flow(self, n):
        fd = FlowDir(self.work / ("keys-%d" % n), "keys_flow.py", self.env)
        self.log("target 4: KeysFlow --n %d setup" % n)
        run = fd.run("--n", str(n))
        settle()
        start = run.input_path("start")
        if self.plan.warm:
            expect(fd.task("work", run.run_id, start), "hit")

        def hit(_):
            t = fd.task("work", run.run_id, start)
            expect(t, "hit")
            return t

        self.log("target 4: %d inputs, %d x (hit, empty)" % (n, self.plan.key_flow_reps))
        s = interleaved(
            self.plan.key_flow_reps,
            [("hit", hit), ("empty", lambda _: fd.task("empty", run.run_id, start))],
        )
        probes = [fd.task("work", run.run_id, start, probe=True) for _ in range(self.plan.probes)]
        for p in probes:
            expect(p, "hit")
        profiled = fd.task("work", run.run_id, start, probe=True, profile=True)

        def phase(name):
            return summary([p.probe["phases"].get(name, 0.0) for p in probes])

        return {
            "n": n,
            "hit_s": summary([t.wall for t in s["hit"]]),
            "empty_s": summary([t.wall for t in s["empty"]]),
            "increment_s": summary([h.wall - e.wall for h, e in zip(s["hit"], s["empty"])]),
            "task_components_s": phase("memoize: key components (task_components)"),
            "key_of_s": phase("memoize: key digest (key_of)"),
            "pre_step_s": phase("memoize: task_pre_step (all)"),
            "probe": probes[0].probe,
            "profile_top": profiled.probe["top"],
        }

    # ---- target 5 -------------------------------------------------------------
    def target5(self):
        sleep = self.plan.eight_sleep
        fd = FlowDir(self.work / "eight", "eight_flow.py", self.env)
        self.log("target 5: EightFlow first run (all misses, %gs per step)" % sleep)
        first = fd.run(env={"BENCH_SLEEP": str(sleep)})
        stored = first.memoize.count("stored")
        if stored != 10:
            raise BenchError("first EightFlow run stored %d entries, expected 10" % stored)
        origin = first.run_id
        settle()

        def memo(_):
            r = fd.run(env={"BENCH_SLEEP": str(sleep)})
            if r.output.count("cloned in the orchestrator") != 10:
                raise BenchError("memoized re-run was not all cloned hits:\n" + r.output[-3000:])
            return r.wall

        def memo_tasks(_):
            # the same hits, each inside a launched task (what runs when no clone is possible)
            r = fd.run(env={"BENCH_SLEEP": str(sleep), "METAFLOW_MEMOIZE_CLONE": "0"})
            if r.memoize.count("hit") != 10 or "miss" in r.memoize:
                raise BenchError("memoized re-run was not all hits:\n" + r.output[-3000:])
            return r.wall

        def resume_all(_):
            return fd.run("--origin-run-id", origin, command="resume").wall

        def resume_end(_):
            return fd.run("end", "--origin-run-id", origin, command="resume").wall

        def plain(_):
            return fd.run(env={"BENCH_MEMOIZE": "0", "BENCH_SLEEP": str(sleep)}).wall

        def empty(_):
            return fd.run(env={"BENCH_MEMOIZE": "0", "BENCH_SLEEP": "0"}).wall

        self.log(
            "target 5: %d rounds of %d variants"
            % (self.plan.eight_reps, len(self.plan.eight_variants))
        )
        variants = {
            "memo": memo,
            "memo_tasks": memo_tasks,
            "resume": resume_all,
            "resume_end": resume_end,
            "plain": plain,
            "empty": empty,
        }
        s = interleaved(self.plan.eight_reps, [(v, variants[v]) for v in self.plan.eight_variants])

        def ratio(a, b):
            if a in s and b in s:
                return summary([x / y for x, y in zip(s[a], s[b])])
            return None

        self.results[5] = {
            "sleep": sleep,
            "first_s": first.wall,
            **{k + "_s": summary(v) for k, v in s.items()},
            "ratio_resume": ratio("memo", "resume"),
            "ratio_resume_end": ratio("memo", "resume_end"),
            "ratio_tasks_resume": ratio("memo_tasks", "resume"),
            "ratio_tasks_empty": ratio("memo_tasks", "empty"),
            "empty_vs_resume": ratio("empty", "resume"),
            "speedup": ratio("plain", "memo"),
        }

    # ---- target 6 -------------------------------------------------------------
    def target6(self):
        P = product()
        client = self.moto.client()
        n = self.plan.prune_entries
        try:
            from metaflow_extensions.memoize.plugins.memoize.cache import maintenance
        except ImportError:
            maintenance = None
        api = maintenance is not None and all(
            hasattr(maintenance, a)
            for a in ("open_target", "plan_prune", "execute", "PruneCriteria")
        )
        rows = []
        for rep in range(self.plan.prune_reps):
            prefix = "prune-%d" % rep
            self.log(
                "target 6: writing %d entries (manifest + marker + blob) under %s" % (n, prefix)
            )
            setup_s = self._write_entries(client, prefix, n)
            url = "s3://%s/%s" % (BUCKET, prefix)
            row = {"setup_s": setup_s, "objects": (4 if hasattr(P.Cache, "index_key") else 3) * n}
            if rep == 0:  # as slow as the prune itself on moto: once is enough
                row["floor_scan_s"] = self._floor_scan(prefix)
            started = time.perf_counter()
            if api:
                target = maintenance.open_target(url)
                now = time.time()
                plan = maintenance.plan_prune(
                    target, maintenance.PruneCriteria(older_than=0.0), now, grace=0.0
                )
                t_plan = time.perf_counter() - started
                outcome = maintenance.execute(target, plan)
                row.update(
                    method="maintenance.plan_prune + execute",
                    plan_s=t_plan,
                    execute_s=time.perf_counter() - started - t_plan,
                    entries=getattr(outcome, "entries", None),
                    markers=getattr(outcome, "markers", None),
                    index=len(getattr(plan, "index", ())),
                    blobs=getattr(outcome, "blobs", None),
                )
            else:
                store = P.S3Store(url)
                listed = [o.key for o in store.list("")]
                t_list = time.perf_counter() - started
                store.delete(listed)
                row.update(
                    method="S3Store.list + S3Store.delete (no maintenance API yet)",
                    plan_s=t_list,
                    execute_s=time.perf_counter() - started - t_list,
                    entries=n,
                    markers=n,
                    blobs=n,
                )
            row["total_s"] = time.perf_counter() - started
            left = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("KeyCount", 0)
            row["left"] = left
            empty_prefix(client, prefix + "/")
            rows.append(row)
        self.results[6] = {
            "n": n,
            "method": rows[0]["method"],
            "total_s": summary([r["total_s"] for r in rows]),
            "plan_s": summary([r["plan_s"] for r in rows]),
            "execute_s": summary([r["execute_s"] for r in rows]),
            "setup_s": summary([r["setup_s"] for r in rows]),
            "floor_scan_s": summary([r["floor_scan_s"] for r in rows if "floor_scan_s" in r]),
            "floor_s": summary(
                [r["floor_scan_s"] + r["execute_s"] for r in rows if "floor_scan_s" in r]
            ),
            "rows": rows,
        }

    def _floor_scan(self, prefix):
        """Plain boto3, the least any prune that reads every manifest must do: list the
        prefix, GET every manifest with 16 threads (the maintenance module's parallelism).
        Read-only: the product prune then runs on the same objects."""
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.moto.endpoint,
            region_name="us-east-1",
            config=Config(max_pool_connections=16),
        )
        started = time.perf_counter()
        keys = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            keys += [o["Key"] for o in page.get("Contents", ())]
        manifests = [k for k in keys if k.endswith(".json")]

        def get(key):
            return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(get, manifests))
        return time.perf_counter() - started

    def _write_entries(self, client, prefix, n):
        P = product()
        Cache, Manifest, Record = P.Cache, P.manifest.Manifest, P.manifest.ArtifactRecord
        created = time.time() - 7200
        started = time.perf_counter()

        def one(i):
            payload = ("blob %d" % i).encode() * 8
            sha = hashlib.sha1(payload).hexdigest()
            key = hashlib.sha256(b"key%d" % i).hexdigest()[:32]
            step = "step%d" % (i % 10)
            manifest = Manifest(
                key=key,
                flow="PruneFlow",
                step=step,
                components={"inputs": {"x": sha}},
                artifacts={
                    "x": Record(sha=sha, info={"size": len(payload)}, stored_size=len(payload))
                },
                transition={},
                created=created,
                expires=None,
                origin="PruneFlow/1/%s/%d" % (step, i),
            )
            base = prefix + "/"
            client.put_object(Bucket=BUCKET, Key=base + Cache.blob_key(sha), Body=payload)
            client.put_object(
                Bucket=BUCKET,
                Key=base + Cache.manifest_key("PruneFlow", step, key),
                Body=manifest.dumps(),
            )
            client.put_object(
                Bucket=BUCKET,
                Key=base + Cache.used_key("PruneFlow", step, key),
                Body=json.dumps({"used": created}).encode(),
            )
            if hasattr(Cache, "index_key"):  # what Cache.publish writes on S3
                md5 = hashlib.md5(manifest.dumps()).hexdigest()
                client.put_object(
                    Bucket=BUCKET, Key=base + Cache.index_key(manifest, md5), Body=b""
                )

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, range(n)))
        return time.perf_counter() - started


# -- report --------------------------------------------------------------------------
def _version(module):
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def machine():
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        commit = commit + (" (plus uncommitted changes)" if dirty else "")
    except OSError:
        commit = "unknown"
    return {
        "nproc": os.cpu_count(),
        "memory": mem,
        "cpu": model,
        "os": platform.platform(),
        "python": platform.python_version(),
        "metaflow": _version("metaflow"),
        "metaflow-memoize": _version("metaflow-memoize"),
        "boto3": _version("boto3"),
        "botocore": _version("botocore"),
        "moto": _version("moto"),
        "numpy": _version("numpy"),
        "commit": commit or "unknown",
    }


def verdict(ok):
    return "**PASS**" if ok else "**FAIL**"


TITLES = {
    1: "Target 1: a hit costs the same whatever the artifact size",
    2: "Target 2: hit with copy-in (fresh datastore, entry in the cache)",
    3: "Target 3: miss overhead",
    4: "Target 4: key cost",
    5: "Target 5: against the alternatives (resume, plain re-run)",
    6: "Target 6: pruning entries on the S3 store",
}


class Report:
    def __init__(self, bench: Bench, plan: Plan, elapsed: float):
        self.b = bench
        self.plan = plan
        self.elapsed = elapsed
        self.summary_rows = []  # (target, criterion, median, range, n, verdict)
        self.sections = []

    def load_line(self):
        sampler = self.b.sampler
        if sampler is None or not sampler.samples:
            return "not sampled"
        loads = [v for _, v in sampler.samples]
        text = "median %.1f, max %.1f (at start %.1f)" % (
            statistics.median(loads),
            max(loads),
            self.b.start_load,
        )
        if statistics.median(loads) > 2.5:
            text += ": **the machine was busy with other work; wall times are inflated and noisy**"
        return text

    def row(self, target, criterion, s, unit, ok):
        self.summary_rows.append(
            (
                target,
                criterion,
                fmt(s["median"], unit),
                rng(s, unit),
                s["n"],
                verdict(ok) if ok is not None else "info",
            )
        )

    def render(self) -> str:
        for t in range(1, 7):
            body = []
            if t in self.b.errors:
                body.append(
                    "ERROR: the benchmark failed, no result:\n\n```\n%s\n```" % self.b.errors[t]
                )
                self.summary_rows.append((t, TITLES[t], "error", "", 0, "**ERROR**"))
            elif t in self.b.results:
                body = getattr(self, "t%d" % t)(self.b.results[t])
            else:
                body.append("Not run (`--only`).")
                self.summary_rows.append((t, TITLES[t], "not run", "", 0, "skipped"))
            if t in self.b.spans and self.b.sampler is not None:
                loads = self.b.sampler.between(*self.b.spans[t])
                t0, t1 = self.b.spans[t]
                body.append(
                    "\n_Took %.0f s. Load average (1 min) meanwhile: median %.1f, max %.1f "
                    "(this benchmark alone keeps it near 1-2)._"
                    % (t1 - t0, statistics.median(loads), max(loads))
                )
            self.sections.append("## %s\n\n%s\n" % (TITLES[t], "\n".join(body)))
        m = self.b.machine or machine()
        mode = (
            "quick (`--quick`: small sizes, few repeats; a smoke test, not a measurement)"
            if self.plan.quick
            else "full"
        )
        head = [
            "# Performance of metaflow-memoize",
            "",
            "Generated by `benchmarks/run.py` (`make bench`); do not edit by hand. "
            "Mode: %s. Date: %s. The whole benchmark took %.0f s."
            % (mode, datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), self.elapsed),
            "",
            "## Summary",
            "",
            "| target | criterion | measured (median) | min – max | n | result |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.summary_rows:
            head.append("| %s | %s | %s | %s | %s | %s |" % r)
        head += ["", self.findings()]
        head += [
            "",
            "## Machine",
            "",
            "| | |",
            "|---|---|",
            "| CPU | %s, %s cores (`nproc`) |" % (m["cpu"], m["nproc"]),
            "| memory | %s |" % m["memory"],
            "| OS | %s |" % m["os"],
            "| versions | python %s, metaflow %s, metaflow-memoize %s, boto3 %s, botocore %s, moto %s, numpy %s |"
            % (
                m["python"],
                m["metaflow"],
                m["metaflow-memoize"],
                m["boto3"],
                m["botocore"],
                m["moto"],
                m["numpy"],
            ),
            "| commit | %s |" % m["commit"],
            "| load average (1 min) during the run | %s |" % self.load_line(),
            "",
            HOW_TO_READ,
            METHOD,
        ]
        tail = [
            "## Raw samples",
            "",
            "Every measured sample, in seconds / MB, as JSON (phase-probe and profile data left out).",
            "",
            "```json",
            json.dumps(_strip(self.b.results), indent=None, sort_keys=True, default=str),
            "```",
            "",
        ]
        return "\n".join(head) + "\n" + "\n".join(self.sections) + "\n" + "\n".join(tail)

    # -- findings ---------------------------------------------------------------
    def findings(self) -> str:
        """Where the time goes, from this run's own numbers (phase probes, decompositions)."""
        res = self.b.results
        items = []

        def ph(probe, name):
            return (probe or {}).get("phases", {}).get(name, 0.0)

        for item in (
            self._finding_hit,
            self._finding_s3,
            self._finding_copyin,
            self._finding_miss,
            self._finding_alternatives,
            self._finding_prune,
        ):
            try:
                text = item(res, ph)
            except (KeyError, IndexError, TypeError, ZeroDivisionError, ValueError):
                text = None
            if text:
                items.append("* " + text)
        if not items:
            return ""
        return (
            "## Findings: where the time goes\n\nComputed from this run's phase probes and decompositions (see each target).\n\n"
            + "\n".join(items)
            + "\n"
        )

    @staticmethod
    def _finding_hit(res, ph):
        local = [r for r in res[1] if r.get("store", "local") == "local"]
        p = local[-1]["probe"]
        pre = ph(p, "memoize: task_pre_step (all)")
        return (
            "**A local hit** does %s of its own work (task_pre_step: key components %s, "
            "manifest lookup %s, last-use marker %s), against a task process of %s of which "
            "%s is importing Metaflow and the extension: the hit is at the floor of a "
            "Metaflow task whatever the artifact size (%g MB here). Nothing is loaded: peak RSS "
            "is within %s of the empty task."
            % (
                fmt(pre, "s"),
                fmt(ph(p, "memoize: key components (task_components)"), "s"),
                fmt(ph(p, "memoize: lookup (read manifest)"), "s"),
                fmt(ph(p, "memoize: record_use (last-use marker)"), "s"),
                fmt(p["total"], "s"),
                fmt(p["imports"], "s"),
                local[-1]["mb"],
                fmt(max(r["rss_delta"]["max"] for r in local), "MB"),
            )
        )

    @staticmethod
    def _finding_s3(res, ph):
        rows = {r.get("store"): r for r in res[1]}
        r = rows["S3 cache"]
        look = ph(r["probe"], "memoize: lookup (read manifest)")
        text = (
            "**An S3-cache hit inside a task** with a local datastore costs %s more than an "
            "empty task (%s): "
            "its manifest lookup takes %s in a fresh task process, nearly all of it importing "
            "boto3 and building a client, before one small GET."
            % (fmt(r["delta_s"]["median"], "s"), fmt(r["ratio"]["median"], "x"), fmt(look, "s"))
        )
        floor = r.get("floor")
        if floor:
            text += (
                " Measured apart in fresh processes, importing boto3 takes %s and building the "
                "client %s (%s together): the floor of any boto3-based store when nothing else "
                "in the task uses boto3, so this row cannot reach 1.1x. In a `run` on the same "
                "datastore as the entry's origin, such hits are cloned by the orchestrator, "
                "which builds its client once per run, and no task pays for boto3."
                % (
                    fmt(floor["import_s"]["median"], "s"),
                    fmt(floor["client_s"]["median"], "s"),
                    fmt(floor["total_s"]["median"], "s"),
                )
            )
        both = rows.get("S3 datastore + S3 cache")
        if both:
            text += (
                " With Metaflow's S3 datastore, boto3 is already imported and Metaflow's client "
                "has parsed the service models, which the store's client reuses: the lookup "
                "takes %s and the hit adds %s (%s) to an empty task on the same datastore."
                % (
                    fmt(ph(both["probe"], "memoize: lookup (read manifest)"), "s"),
                    fmt(both["delta_s"]["median"], "s"),
                    fmt(both["ratio"]["median"], "x"),
                )
            )
        return text

    @staticmethod
    def _finding_copyin(res, ph):
        rows = res[2]["local"]
        r = rows[-1]
        parts = r["parts"]
        s3_text = ""
        s3 = res[2].get("s3")
        if s3:
            s3_text = (
                " **From S3** the download takes %s alone and the verification %s (%s with the "
                "stored-bytes digest), one after the other; import_blobs reaches %s of boto3's "
                "default `download_file` (%s vs %s)."
                % (
                    fmt(s3["parts"]["fetch_s"], "s"),
                    fmt(s3["parts"]["verify_s"], "s"),
                    fmt(s3["parts"].get("stored_digest_s"), "s"),
                    fmt(s3["ratio"]["median"], "%"),
                    fmt(s3["product_mbps"]["median"], "MB/s"),
                    fmt(s3["baseline_mbps"]["median"], "MB/s"),
                )
            )
        nolink = r.get("nolink")
        copy_text = ""
        if nolink:
            copy_text = (
                " With linking off (`METAFLOW_MEMOIZE_LINK=0`, or across filesystems) the blob "
                "is copied by the kernel, each chunk hashed as it lands: %s, %s of the plain copy."
                % (
                    fmt(nolink["product_mbps"]["median"], "MB/s"),
                    fmt(nolink["ratio"]["median"], "%"),
                )
            )
        return (
            "**Copy-in from the local store** (on the datastore's filesystem, so the blob is "
            "hard-linked and the link hashed with xxh3-128, %s for these %g MB alone) runs at "
            "%s against %s for a plain copy of the same bytes (%s).%s Unpacking and sha1 of the "
            "payload, the check left for entries without a stored-bytes digest, takes %s.%s"
            % (
                fmt(parts.get("stored_digest_s"), "s"),
                r["mb"],
                fmt(r["product_mbps"]["median"], "MB/s"),
                fmt(r["baseline_mbps"]["median"], "MB/s"),
                fmt(r["ratio"]["median"], "%"),
                copy_text,
                fmt(parts["verify_s"], "s"),
                s3_text,
            )
        )

    @staticmethod
    def _finding_miss(res, ph):
        r = res[3]
        p = r["probe"]
        text = (
            "**A local miss** costs its body plus Metaflow's pickle + gzip (%s in `persist` for "
            "%g MB, the dominant cost, as without memoize); the extension adds %s to store the "
            "entry (export_blobs %s, a kernel file copy of the already-compressed blob) and "
            "%s before the body."
            % (
                fmt(ph(p, "metaflow: persist (pickle + gzip + write artifacts)"), "s"),
                r["mb"],
                fmt(ph(p, "memoize: task_finished (all)"), "s"),
                fmt(ph(p, "memoize: export_blobs (store)"), "s"),
                fmt(ph(p, "memoize: task_pre_step (all)"), "s"),
            )
        )
        sp = r.get("s3_probe")
        if sp:
            text += (
                " **An S3 miss** adds %s over `plain` (median; the criterion is for the local "
                "store); in the probed task the upload took %s (at boto3's own speed on this "
                "endpoint, see the upload ratio; moto shares the 2 cores with the task) and the "
                "first lookup, which builds the boto3 client, %s."
                % (
                    fmt(r["s3"]["overhead_s"]["median"], "s"),
                    fmt(ph(sp, "memoize: export_blobs (store)"), "s"),
                    fmt(ph(sp, "memoize: lookup (read manifest)"), "s"),
                )
            )
        return text

    @staticmethod
    def _finding_alternatives(res, ph):
        r = res[5]
        if "empty_s" not in r:
            return None
        text = (
            "**Against resume**: a memoized re-run of the 8-step flow takes %s (%s of `resume`, "
            "%s): its hits are decided in the orchestrator and completed as clones of the "
            "entries' origin tasks, as `resume` clones, so no task process starts."
            % (
                fmt(r["memo_s"]["median"], "s"),
                fmt(r["ratio_resume"]["median"], "x"),
                fmt(r["resume_s"]["median"], "s"),
            )
        )
        if "memo_tasks_s" in r:
            text += (
                " When hits must run inside tasks (origin not in the run's datastore, "
                "`METAFLOW_MEMOIZE_CLONE=0`) the re-run takes %s, against %s for an empty flow "
                "run (no memoize, no compute): each task process costs ~0.4 s of Python + "
                "Metaflow start-up, two at a time on 2 cores."
                % (fmt(r["memo_tasks_s"]["median"], "s"), fmt(r["empty_s"]["median"], "s"))
            )
        return text

    @staticmethod
    def _finding_prune(res, ph):
        r = res[6]
        return (
            "**Pruning %d entries** spends %s scanning (listings only: what pruning needs is in "
            "the names of the entry index objects, so no manifest is read) and %s deleting "
            "(batched). Reading every manifest instead, as the first version did, cannot take "
            "less than a plain boto3 list + GET of them: %s here (moto serves one request at a "
            "time from one Python process), so the whole prune now takes %s of that floor."
            % (
                r["n"],
                fmt(r["plan_s"]["median"], "s"),
                fmt(r["execute_s"]["median"], "s"),
                fmt(r["floor_scan_s"]["median"], "s"),
                fmt(r["total_s"]["median"] / r["floor_s"]["median"], "x"),
            )
        )

    # -- sections ---------------------------------------------------------------
    def t1(self, rows):
        out = [
            "A memoized step whose artifact is *N* MB of incompressible bytes (`ArtifactsFlow.work`) "
            "hits with its blob already in the run's datastore (so nothing is copied); compared "
            "with the empty step `empty` of the same run, same inputs. Criterion: hit task wall "
            "time ≤ 1.1x the empty task's (median of the paired ratios), and peak RSS within "
            '50 MB of it (every sample). The "S3 cache" row publishes the same entry to an S3 '
            "store instead of the local one (the blob is still in the run's datastore); the "
            '"S3 datastore + S3 cache" row runs the flow on Metaflow\'s S3 datastore with the '
            "default cache root (under the datastore root, on S3).",
            "",
            "These are hits **inside a task**: the task is launched directly with the runtime's "
            "command line. In a `run`, a hit whose entry's origin task is in the run's datastore "
            "is completed by the orchestrator as a clone of that task and launches no task at "
            "all (target 5 measures it: a whole re-run of cloned hits costs what `resume` "
            "costs); the in-task hit measured here is what runs when no clone is possible (the "
            "origin is in another datastore, or an input outside the key changed).",
            "",
            "| artifact | cache | hit task | empty task | hit − empty | ratio hit/empty (min – max) | CPU time hit / empty | peak RSS hit / empty | ΔRSS (max) | result |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            store = r.get("store", "local")
            ok = r["ratio"]["median"] <= 1.1 and r["rss_delta"]["max"] <= 50
            out.append(
                "| %g MB | %s | %s | %s | %s | %s (%s) | %s / %s | %s / %s | %s | %s |"
                % (
                    r["mb"],
                    store,
                    fmt(r["hit_s"]["median"], "s"),
                    fmt(r["empty_s"]["median"], "s"),
                    fmt(r["delta_s"]["median"], "s"),
                    fmt(r["ratio"]["median"], "x"),
                    rng(r["ratio"], "x"),
                    fmt(r["hit_cpu"]["median"], "s"),
                    fmt(r["empty_cpu"]["median"], "s"),
                    fmt(r["hit_rss"]["median"], "MB"),
                    fmt(r["empty_rss"]["median"], "MB"),
                    fmt(r["rss_delta"]["max"], "MB"),
                    verdict(ok),
                )
            )
            label = "%g MB%s" % (r["mb"], "" if store == "local" else ", " + store)
            self.row(
                1, "hit/empty task time, " + label, r["ratio"], "x", r["ratio"]["median"] <= 1.1
            )
            self.row(
                1,
                "hit − empty peak RSS, %s (max ≤ 50 MB)" % label,
                r["rss_delta"],
                "MB",
                r["rss_delta"]["max"] <= 50,
            )
        local = [r for r in rows if r.get("store", "local") == "local"]
        if len(local) > 1:
            first, last = local[0], local[-1]
            growth = last["delta_s"]["median"] - first["delta_s"]["median"]
            out += [
                "",
                "From %g MB to %g MB (%.0fx the bytes) the hit's extra time over the empty task "
                "goes from %s to %s (%+.0f ms)%s."
                % (
                    first["mb"],
                    last["mb"],
                    last["mb"] / first["mb"],
                    fmt(first["delta_s"]["median"], "s"),
                    fmt(last["delta_s"]["median"], "s"),
                    growth * 1000,
                    ": within noise, the hit cost does not grow with the artifact size"
                    if abs(growth) < 0.05
                    else ": more than the 50 ms this benchmark can resolve",
                ),
            ]
        out += [
            "",
            phase_table(
                "Where the %g MB hit task's time goes (phase probe, one task)" % local[-1]["mb"],
                local[-1]["probe"],
            ),
        ]
        for r in rows:
            floor = r.get("floor")
            if not floor:
                continue
            out += [
                "",
                "**Floor of an S3 cache with a local datastore** (fresh processes that import "
                "Metaflow, as a task does, then boto3, then build the store's client): importing "
                "boto3 %s (%s), building the client %s (%s), together %s. The S3-cache hit "
                "above costs %s more than the empty task, of which this floor is %s."
                % (
                    fmt(floor["import_s"]["median"], "s"),
                    rng(floor["import_s"], "s"),
                    fmt(floor["client_s"]["median"], "s"),
                    rng(floor["client_s"], "s"),
                    fmt(floor["total_s"]["median"], "s"),
                    fmt(r["delta_s"]["median"], "s"),
                    fmt(floor["total_s"]["median"] / r["delta_s"]["median"], "%")
                    if r["delta_s"]["median"] > 0
                    else "n/a",
                ),
            ]
            self.row(
                1,
                "floor: import boto3 + build the client (local datastore, S3 cache)",
                floor["total_s"],
                "s",
                None,
            )
        for r in rows:
            if r.get("store", "local") != "local":
                out += [
                    "",
                    phase_table(
                        "Where the %g MB hit task's time goes, %s (phase probe)"
                        % (r["mb"], r["store"]),
                        r["probe"],
                    ),
                ]
        return out

    def t2(self, r):
        out = [
            "The entry is in the cache, the run's datastore lacks the blob. Measured in-process "
            "(the product's `transfer.import_blobs` into a fresh real Metaflow local datastore) "
            "against the plain copy of the same stored bytes: `shutil.copyfile` from the local "
            "cache, boto3 `download_file` (default settings) from the same moto endpoint. Files "
            "are warm in the page cache for both. Criterion: throughput ≥ 80% of the baseline "
            "(median of the paired time ratios baseline/product). The local cache here is on the "
            "datastore's filesystem, so by default the blob is hard-linked and the link hashed "
            '("local, link"); "local, copy" is the same import with `METAFLOW_MEMOIZE_LINK=0`, '
            "the path taken when linking is off or unsafe: a kernel copy (`copy_file_range`) "
            "whose chunks are hashed as they land, overlapping the copy (across filesystems "
            "the kernel may refuse it, and the bytes then pass through a buffer). The three "
            "variants are interleaved.",
            "",
            "| store | bytes | import_blobs | baseline | import_blobs MB/s | baseline MB/s | ratio (min – max) | alone: fetch / verify (inflate + sha1) / xxh3 of stored bytes | result |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        rows = []
        for x in r["local"]:
            if "nolink" in x:
                rows.append(("local, link", x))
                rows.append(("local, copy", dict(x["nolink"], parts=x["parts"])))
            else:
                rows.append(("local", x))
        rows += [("S3 (moto)", r["s3"])] if r["s3"] else []
        for store, x in rows:
            ok = x["ratio"]["median"] >= 0.8
            out.append(
                "| %s | %.0f MB | %s | %s | %s | %s | %s (%s) | %s / %s / %s | %s |"
                % (
                    store,
                    x["bytes"] / MB,
                    fmt(x["product_s"]["median"], "s"),
                    fmt(x["baseline_s"]["median"], "s"),
                    fmt(x["product_mbps"]["median"], "MB/s"),
                    fmt(x["baseline_mbps"]["median"], "MB/s"),
                    fmt(x["ratio"]["median"], "%"),
                    rng(x["ratio"], "%"),
                    fmt(x["parts"]["fetch_s"], "s"),
                    fmt(x["parts"]["verify_s"], "s"),
                    fmt(x["parts"].get("stored_digest_s"), "s"),
                    verdict(ok),
                )
            )
            self.row(
                2,
                "copy-in throughput vs %s, %s %.0f MB"
                % (
                    "file copy" if store.startswith("local") else "boto3 download",
                    store,
                    x["bytes"] / MB,
                ),
                x["ratio"],
                "%",
                ok,
            )
        out += [
            "",
            "End to end (informational): a whole hit task that copies the blob in from the local "
            "cache, against the empty task of the same run. The increment is what the copy-in "
            "adds to a task.",
            "",
            "| artifact | copy-in hit task | empty task | increment (min – max) | implied MB/s | peak RSS copy-in / empty |",
            "|---|---|---|---|---|---|",
        ]
        for e in r["e2e"]:
            inc = e["increment_s"]["median"]
            out.append(
                "| %g MB | %s | %s | %s (%s) | %s | %s / %s |"
                % (
                    e["mb"],
                    fmt(e["hit_s"]["median"], "s"),
                    fmt(e["empty_s"]["median"], "s"),
                    fmt(inc, "s"),
                    rng(e["increment_s"], "s"),
                    fmt(e["bytes"] / MB / inc, "MB/s") if inc > 0 else "n/a",
                    fmt(e["hit_rss"]["median"], "MB"),
                    fmt(e["empty_rss"]["median"], "MB"),
                )
            )
        return out

    def t3(self, r):
        out = [
            "The memoized step `work` misses (a fresh, empty cache root for every task) and "
            "stores its entry; `plain` is the same body without `@memoize`, same run, same "
            "inputs. Each task draws new random bytes, so both pay Metaflow's full pickle + gzip. "
            "Criterion: miss − plain ≤ 5% of plain + 0.3 s (median of the paired excess ≤ 0); "
            "peak RSS: the miss must not hold the artifact a second time: median ΔRSS < half "
            "the artifact size, or < 50 MB (as in target 1) for small artifacts, where fixed "
            "costs such as importing boto3 (~20 MB) dominate.",
            "",
            "| store | artifact | miss task | plain task | overhead (min – max) | allowed | peak RSS miss / plain | ΔRSS (min – max) | time | memory |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for store in ("local", "s3"):
            x = r.get(store)
            if not x:
                continue
            ok_t = x["excess_s"]["median"] <= 0 if store == "local" else None
            ok_m = x["rss_delta"]["median"] < max(50.0, r["mb"] / 2)
            out.append(
                "| %s | %g MB | %s | %s | %s (%s) | %s | %s / %s | %s (%s) | %s | %s |"
                % (
                    store,
                    r["mb"],
                    fmt(x["miss_s"]["median"], "s"),
                    fmt(x["plain_s"]["median"], "s"),
                    fmt(x["overhead_s"]["median"], "s"),
                    rng(x["overhead_s"], "s"),
                    fmt(x["allowed_s"]["median"], "s"),
                    fmt(x["miss_rss"]["median"], "MB"),
                    fmt(x["plain_rss"]["median"], "MB"),
                    fmt(x["rss_delta"]["median"], "MB"),
                    rng(x["rss_delta"], "MB"),
                    verdict(ok_t)
                    if ok_t is not None
                    else "info (the criterion is for the local store)",
                    verdict(ok_m),
                )
            )
            self.row(
                3,
                "miss − plain task time, %s store, %g MB (allowed %s)"
                % (store, r["mb"], fmt(x["allowed_s"]["median"], "s")),
                x["overhead_s"],
                "s",
                ok_t,
            )
            self.row(
                3,
                "miss − plain peak RSS, %s store (< %g MB)" % (store, max(50.0, r["mb"] / 2)),
                x["rss_delta"],
                "MB",
                ok_m,
            )
        up = r.get("upload")
        if up:
            ok = up["ratio"]["median"] >= 0.8
            out += [
                "",
                "S3 upload: `transfer.export_blobs` (local datastore → S3 store) against boto3 "
                "`upload_file` (default settings) of the same stored bytes to the same endpoint. "
                "Criterion: ≥ 80% of boto3's throughput.",
                "",
                "| bytes | export_blobs | boto3 | export_blobs MB/s | boto3 MB/s | ratio (min – max) | result |",
                "|---|---|---|---|---|---|---|",
                "| %.0f MB | %s | %s | %s | %s | %s (%s) | %s |"
                % (
                    up["bytes"] / MB,
                    fmt(up["product_s"]["median"], "s"),
                    fmt(up["baseline_s"]["median"], "s"),
                    fmt(up["product_mbps"]["median"], "MB/s"),
                    fmt(up["baseline_mbps"]["median"], "MB/s"),
                    fmt(up["ratio"]["median"], "%"),
                    rng(up["ratio"], "%"),
                    verdict(ok),
                ),
            ]
            self.row(
                3,
                "S3 upload throughput vs boto3 upload_file, %.0f MB" % (up["bytes"] / MB),
                up["ratio"],
                "%",
                ok,
            )
        out += [
            "",
            phase_table(
                "Where a %g MB local miss task's time goes (phase probe, one task)" % r["mb"],
                r["probe"],
            ),
        ]
        if r.get("s3_probe"):
            out += [
                "",
                phase_table(
                    "Where a %g MB S3 miss task's time goes (phase probe, one task)" % r["mb"],
                    r["s3_probe"],
                ),
            ]
        return out

    def t4(self, r):
        out = [
            "Synthetic: `keys.select_inputs` + `keys.build_components` + `keys.key_of` on a "
            "{name: sha1} map of *n* inputs (plus Metaflow's bookkeeping names), in-process. "
            "End to end: `KeysFlow.start` sets *n* tiny artifacts, `work` (memoized) hits; the "
            "phase probe times `identity.task_components` + `key_of` inside the real task (no "
            "artifact is loaded). Criterion: < 50 ms for 1,000 inputs, < 0.5 s for 10,000.",
            "",
            "| inputs | what | median | min – max | limit | result |",
            "|---|---|---|---|---|---|",
        ]
        limit = {1000: 0.05, 10000: 0.5}
        for x in r["synthetic"]:
            lim = limit.get(x["n"], 0.05 * x["n"] / 1000)
            ok = x["seconds"]["median"] < lim
            out.append(
                "| %d | keys.select_inputs + build_components + key_of | %s | %s | %s | %s |"
                % (
                    x["n"],
                    fmt(x["seconds"]["median"], "ms"),
                    rng(x["seconds"], "ms"),
                    fmt(lim, "s"),
                    verdict(ok),
                )
            )
            self.row(4, "key from %d input hashes (synthetic)" % x["n"], x["seconds"], "ms", ok)
        if "audit0" in r:  # audit.py: the hit path's only audit work at fraction 0
            a = r["audit0"]
            ok = a["median"] < 0.001
            out.append(
                "| – | audit 0: deciding not to audit a hit (read the setting, compare with 0) "
                "| %s | %s | 1 ms | %s |" % (fmt(a["median"], "ms"), rng(a, "ms"), verdict(ok))
            )
            self.row(4, "audit 0: cost on the hit path", a, "ms", ok)
        for x in r["flows"]:
            lim = limit.get(x["n"], 0.05 * x["n"] / 1000)
            key_s = summary(
                [a + b for a, b in zip(x["task_components_s"]["samples"], x["key_of_s"]["samples"])]
            )
            ok = key_s["median"] < lim
            out.append(
                "| %d | in a real hit task: task_components + key_of | %s | %s | %s | %s |"
                % (x["n"], fmt(key_s["median"], "ms"), rng(key_s, "ms"), fmt(lim, "s"), verdict(ok))
            )
            out.append(
                "| %d | in a real hit task: all of task_pre_step | %s | %s | | info |"
                % (x["n"], fmt(x["pre_step_s"]["median"], "ms"), rng(x["pre_step_s"], "ms"))
            )
            out.append(
                "| %d | hit task − empty task (whole processes) | %s | %s | | info |"
                % (x["n"], fmt(x["increment_s"]["median"], "s"), rng(x["increment_s"], "s"))
            )
            self.row(
                4,
                "key in a real task, %d inputs (task_components + key_of)" % x["n"],
                key_s,
                "ms",
                ok,
            )
        if r["flows"]:
            last = r["flows"][-1]
            out += [
                "",
                phase_table(
                    "Where the %d-input hit task's time goes (phase probe)" % last["n"],
                    last["probe"],
                ),
            ]
            out += [
                "",
                profile_table(
                    "Top functions by own time in that hit task (cProfile; inflates Python-heavy code)",
                    last["profile_top"],
                ),
            ]
        return out

    def t5(self, r):
        out = [
            "`EightFlow`: 8 steps, 10 tasks (a static branch and a 3-way foreach), `@memoize` on "
            "every step, each step body sleeps %g s as its stand-in compute. The first run "
            "(all misses) took %.1f s. Then, interleaved, whole commands timed:"
            % (r["sleep"], r["first_s"]),
            "",
            "* **memoized re-run**: `run` again, unchanged: all 10 tasks hit, each completed by "
            "the orchestrator as a clone of the entry's origin task (no task launched).",
            "* **memoized re-run, hits in tasks**: the same with `METAFLOW_MEMOIZE_CLONE=0`: "
            "each hit runs inside a launched task (what happens when the origin is not in the "
            "run's datastore).",
            "* **resume (clone all)**: `resume --origin-run-id <first>` with no step: the origin "
            "run succeeded, so every task is cloned and none runs. This is what `resume` reuses "
            "most, and the comparison the target is judged on.",
            "* **resume end**: `resume end --origin-run-id <first>`: 9 tasks cloned, `end` runs "
            "(a memoize hit): the least `resume` can re-run when a step is named. Reported, not "
            "judged: its `end` is itself a memoize hit (cloned by the orchestrator), and its 9 "
            "other clones are made in parallel by `resume`.",
            "* **plain re-run**: the same flow without `@memoize` (`BENCH_MEMOIZE=0`): every "
            "step computes.",
            "* **empty run**: no `@memoize`, no compute (`BENCH_SLEEP=0`): the cost of launching "
            "10 task processes, the floor of any design that runs each step as a task.",
            "",
            "| command | median | min – max |",
            "|---|---|---|",
        ]
        for key, label in (
            ("memo", "memoized re-run (10 hits, cloned)"),
            ("memo_tasks", "memoized re-run (10 hits in tasks)"),
            ("resume", "resume (clone all)"),
            ("resume_end", "resume end"),
            ("plain", "plain re-run (%g s per step)" % r["sleep"]),
            ("empty", "empty run (floor of a task per step)"),
        ):
            if key + "_s" in r:
                x = r[key + "_s"]
                out.append("| %s | %s | %s |" % (label, fmt(x["median"], "s"), rng(x, "s")))
        out += ["", "| ratio | median | min – max | target | result |", "|---|---|---|---|---|"]
        for key, label, limit in (
            ("ratio_resume", "memoized re-run / resume (clone all)", 1.05),
            ("ratio_resume_end", "memoized re-run / resume end", None),
            ("ratio_tasks_resume", "hits in tasks: memoized re-run / resume (clone all)", None),
            ("empty_vs_resume", "empty run / resume (clone all): floor of a task per step", None),
            ("ratio_tasks_empty", "hits in tasks: memoized re-run / empty run", None),
            ("speedup", "speed-up: plain re-run / memoized re-run", None),
        ):
            x = r.get(key)
            if x is None:
                continue
            ok = None if limit is None else x["median"] <= limit
            out.append(
                "| %s | %s | %s | %s | %s |"
                % (
                    label,
                    fmt(x["median"], "x"),
                    rng(x, "x"),
                    "≤ %.2f" % limit if limit else "report",
                    verdict(ok) if ok is not None else "info",
                )
            )
            self.row(5, label, x, "x", ok)
        return out

    def t6(self, r):
        limit = 30.0 * r["n"] / 10000
        ok = r["total_s"]["median"] < limit
        out = [
            "%d entries on the S3 store (moto), each a manifest, a last-use marker, an index "
            "object and its own tiny blob (%d objects), all older than the prune age. Pruned "
            "with %s: scan (list entries, index, markers, blobs; read only the manifests that "
            "have no verified index object: none here), then delete manifests, markers, index "
            "objects and the blobs left unreferenced. Criterion: < 30 s for 10,000 entries%s."
            % (
                r["n"],
                r["rows"][0].get("objects", 3 * r["n"]),
                r["method"],
                "" if r["n"] == 10000 else " (scaled linearly: %.1f s for %d)" % (limit, r["n"]),
            ),
            "",
            "| phase | median | min – max |",
            "|---|---|---|",
            "| plan (scan) | %s | %s |" % (fmt(r["plan_s"]["median"], "s"), rng(r["plan_s"], "s")),
            "| execute (delete) | %s | %s |"
            % (fmt(r["execute_s"]["median"], "s"), rng(r["execute_s"], "s")),
            "| **total** | %s | %s |" % (fmt(r["total_s"]["median"], "s"), rng(r["total_s"], "s")),
            "| (setup: writing the entries, not measured) | %s | %s |"
            % (fmt(r["setup_s"]["median"], "s"), rng(r["setup_s"], "s")),
            "| reading every manifest instead: plain boto3 list + GET (16 threads) | %s | %s |"
            % (fmt(r["floor_scan_s"]["median"], "s"), rng(r["floor_scan_s"], "s")),
            "| that + the product's delete phase | %s | %s |"
            % (fmt(r["floor_s"]["median"], "s"), rng(r["floor_s"], "s")),
            "",
            "A prune that reads every manifest pays at least one GET per entry, and moto serves "
            "one request at a time from one Python process (on AWS S3 GETs run in parallel). The "
            "index objects, written by `Cache.publish` after each manifest, carry the manifest's "
            "MD5, creation and expiry times and its blob references in their names; an index is "
            "used only while that MD5 equals the one the listing reports for the manifest, "
            "otherwise the manifest is read.",
            "",
            "Deleted per run: %s; objects left under the prefix: %s. Result: %s."
            % (
                ", ".join(
                    "%s %s" % (r["rows"][0].get(k), k)
                    for k in ("entries", "markers", "index", "blobs")
                ),
                ", ".join(str(x["left"]) for x in r["rows"]),
                verdict(ok),
            ),
        ]
        self.row(6, "prune %d entries on S3" % r["n"], r["total_s"], "s", ok)
        self.row(
            6,
            "reading every manifest: plain boto3 scan + delete, %d entries" % r["n"],
            r["floor_s"],
            "s",
            None,
        )
        return out


def phase_table(title, probe):
    if not probe:
        return ""
    lines = [
        "**%s**" % title,
        "",
        "| phase | seconds |",
        "|---|---|",
        "| whole process (interpreter start to exit, as seen inside) | %s |"
        % fmt(probe["total"], "s"),
        "| importing metaflow + the extension | %s |" % fmt(probe["imports"], "s"),
    ]
    for name, sec in sorted(probe["phases"].items(), key=lambda kv: -kv[1]):
        lines.append("| %s | %s |" % (name, fmt(sec, "s")))
    lines.append("")
    lines.append(
        "Phases nest (task_pre_step contains the key and lookup; run_step contains the rest)."
    )
    return "\n".join(lines)


def profile_table(title, top):
    if not top:
        return ""
    lines = [
        "**%s**" % title,
        "",
        "All code by own time (Metaflow's work is common to the hit and the empty task), then "
        "the extension's functions by cumulative time.",
        "",
        "| function (all code, by own time) | own | cumulative | calls |",
        "|---|---|---|---|",
    ]
    overall = sorted(top, key=lambda r: -r[1])[:10]
    ours = sorted((r for r in top if r[4]), key=lambda r: -r[2])[:10]
    for name, tt, ct, nc, _ in overall:
        lines.append("| `%s` | %s | %s | %d |" % (name, fmt(tt, "s"), fmt(ct, "s"), nc))
    lines += [
        "",
        "| extension function (by cumulative time) | own | cumulative | calls |",
        "|---|---|---|---|",
    ]
    for name, tt, ct, nc, _ in ours:
        lines.append("| `%s` | %s | %s | %d |" % (name, fmt(tt, "s"), fmt(ct, "s"), nc))
    return "\n".join(lines)


def _strip(value):
    if isinstance(value, dict):
        return {
            k: _strip(v)
            for k, v in value.items()
            if k not in ("probe", "profile_top", "median", "min", "max", "n")
        }
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


HOW_TO_READ = (
    """## How to read this

* Every comparison is measured **side by side in the same run**, interleaved (A, B, B, A, ...),
  and repeated: the tables give the **median** and the **min – max** over the repeats. Ratios
  are computed per pair of neighbouring samples, then summarised.
* A result is judged on the median (this machine has 2 cores and is noisy); the range says how
  much to trust it. Memory criteria are judged as stated in each section.
* "Task" numbers are whole task processes (`python flow.py step ...`, launched exactly as
  Metaflow's runtime launches them), so they include the ~0.3-0.4 s every Metaflow task pays to
  start Python and import Metaflow. Microbenchmarks (copy-in, upload, keys) call the product's
  functions in-process on real Metaflow datastores and real stores.
* S3 is moto's server on 127.0.0.1, in its own process. It holds objects in memory, so no object
  here is larger than %d MB; its throughput is not AWS's: only the ratios against plain boto3 on
  the same endpoint mean anything.
"""
    % S3_OBJECT_CAP_MB
)

METHOD = """## Method

* **Flows** (benchmarks/flows/): `ArtifactsFlow` (start → work | plain | empty → join → end;
  `work` is memoized and sets one artifact of *N* MB of random bytes; `plain` is the same body
  without `@memoize`; `empty` does nothing), `KeysFlow` (start sets *n* tiny artifacts → memoized
  `work` | `empty`), `EightFlow` (8 steps, branch + foreach, all memoized). Each benchmark has a
  private directory: local datastore, local metadata, default cache under the datastore root.
* **Task time and memory.** After one real `run` (which stores the entry), single tasks are
  launched again in that run with the runtime's own command line (`flow.py step work --run-id R
  --task-id T --input-paths R/start/1 ...`), against the same `start` task. The harness times
  the process and reads its peak RSS from `wait4()` (`ru_maxrss` of exactly that process). This
  isolates the task from the runtime's scheduling loop (which polls, and would add noise to
  whole-`run` timings) and gives a per-process peak memory that no Client timestamp or whole-run
  measurement could. A hit task is checked to have logged `[memoize] hit`, a miss `stored`.
* **Phases.** A few extra tasks run under a probe that wraps product and Metaflow functions with
  timers (`task_pre_step`, `task_components`, `lookup`, `import_blobs`, `export_blobs`,
  `persist`, ...) and, once, cProfile. Probe runs are never part of the headline numbers.
* **Throughput.** Copy-in and upload call `transfer.import_blobs` / `transfer.export_blobs`
  in-process with `DatastoreBlobs` over a real Metaflow `FlowDataStore` (local) and the real
  `LocalStore` / `S3Store`; baselines move the same stored bytes with `shutil.copyfile` or boto3
  `download_file` / `upload_file` with default settings, to/from the same endpoint.
* **Alternatives.** Whole `run` / `resume` commands, timed from start to exit.
* **Pruning.** Entries are written straight to the bucket (not timed), then pruned through the
  maintenance API when it exists (else `S3Store.list` + `S3Store.delete`), and the prefix is
  checked empty.
"""


# -- main ------------------------------------------------------------------------
T_START = time.perf_counter()


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats (< 1 min)"
    )
    parser.add_argument(
        "--output",
        help="report path (default: docs/performance.md for a full run of every target, "
        "else a file in a new temp dir)",
    )
    parser.add_argument("--only", help="comma-separated target numbers to run, e.g. 1,4")
    parser.add_argument(
        "--workdir", help="where to put datastores and caches (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="measure nothing: re-render a report from the results file a run saved",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="first wait up to this many seconds for the load average to drop below 1 "
        "(default: 120 for a full run, 0 for --quick)",
    )
    return parser


def output_path(args) -> Path:
    """Only a full run of every target replaces the committed report by default."""
    if args.output:
        return Path(args.output)
    if args.quick or args.only:
        return Path(tempfile.mkdtemp(prefix="memoize-bench-report-")) / "performance.md"
    return DEFAULT_OUTPUT


def save_state(bench: Bench, plan: Plan, elapsed: float) -> Path:
    """Everything a report is made of, so that --render can redo the text without re-measuring."""
    path = Path(tempfile.gettempdir()) / (
        "memoize-bench-results-%s.json" % datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    state = {
        "quick": plan.quick,
        "elapsed": elapsed,
        "results": {str(k): v for k, v in bench.results.items()},
        "errors": {str(k): v for k, v in bench.errors.items()},
        "spans": {str(k): v for k, v in bench.spans.items()},
        "load_samples": bench.sampler.samples if bench.sampler else [],
        "start_load": bench.start_load,
        "machine": bench.machine,
    }
    path.write_text(json.dumps(state, default=str))
    return path


def render_saved(path: str, output: Path) -> int:
    state = json.loads(Path(path).read_text())
    plan = Plan(state["quick"])
    bench = Bench(plan, Path(tempfile.gettempdir()), None)
    bench.results = {int(k): v for k, v in state["results"].items()}
    bench.errors = {int(k): v for k, v in state["errors"].items()}
    bench.spans = {int(k): tuple(v) for k, v in state["spans"].items()}
    bench.sampler = LoadSampler()
    bench.sampler.samples = [tuple(x) for x in state["load_samples"]]
    bench.start_load = state["start_load"]
    bench.machine = state.get("machine")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(Report(bench, plan, state["elapsed"]).render())
    print(output)
    return 0


def main(argv=None):
    global T_START
    args = build_parser().parse_args(argv)
    if args.render:
        state_quick = json.loads(Path(args.render).read_text())["quick"]
        args.quick = args.quick or state_quick
        return render_saved(args.render, output_path(args))
    wait = args.wait_quiet if args.wait_quiet is not None else (0 if args.quick else 120)
    if wait > 0:
        print(
            "[bench] waiting up to %.0f s for a quiet machine (load %.1f)" % (wait, load1()),
            file=sys.stderr,
        )
        wait_quiet(wait)
    T_START = time.perf_counter()

    plan = Plan(args.quick)
    only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 7))
    output = output_path(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="memoize-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    moto = None
    if only & {1, 2, 3, 6}:
        moto = Moto()
        os.environ.update(moto.env)
        for name in (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
        ):
            os.environ.pop(name, None)
        moto.client().create_bucket(Bucket=BUCKET)
    bench = Bench(plan, work, moto)
    bench.start_load = load1()
    bench.sampler = LoadSampler()
    bench.sampler.start()
    bench.log("work dir %s; report %s" % (work, output))
    # order matters: 1 needs blobs present; 3 adds misses; 2 deletes and restores blobs
    order = [1, 4, 3, 2, 5, 6]
    try:
        for t in order:
            if t not in only:
                continue
            started = time.perf_counter()
            try:
                getattr(bench, "target%d" % t)()
            except Exception:
                bench.errors[t] = traceback.format_exc()[-4000:]
                bench.log("target %d FAILED:\n%s" % (t, bench.errors[t]))
            bench.spans[t] = (started, time.perf_counter())
            bench.log("target %d done in %.1f s" % (t, time.perf_counter() - started))
    finally:
        bench.sampler.stop()
        if moto is not None:
            moto.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - T_START
    bench.machine = machine()
    bench.log("results saved to %s (re-render with --render)" % save_state(bench, plan, elapsed))
    report = Report(bench, plan, elapsed)
    text = report.render()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    bench.log("report written to %s" % output)
    print(output)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
