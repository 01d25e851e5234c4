"""What machine the benchmark ran on, and how busy it was."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time

from .config import REPO


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
