"""Flows and tasks: a private directory per flow, whole runs, and single tasks launched and
measured exactly as Metaflow's runtime launches them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .config import FLOWS, PY, BenchError
from .probe import PROBE_SCRIPT
from .stats import interleaved

_RUN_ID = re.compile(r"run-id (\d+)")
_TASK = re.compile(r"\[(\d+)/(\w+)/(\w+) \(pid")
_MEMOIZE = re.compile(r"\[memoize\] (hit|miss|stored|refresh)\b")


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
            probe_script.write_text(PROBE_SCRIPT)
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


def hit_vs_empty(fd: FlowDir, run: RunResult, reps, env=None):
    """``reps`` interleaved pairs of the memoized ``work`` task, which must hit, and the
    ``empty`` task of the same run with the same inputs."""
    start = run.input_path("start")

    def hit(_):
        t = fd.task("work", run.run_id, start, env=env)
        expect(t, "hit")
        return t

    return interleaved(
        reps,
        [("hit", hit), ("empty", lambda _: fd.task("empty", run.run_id, start))],
    )
