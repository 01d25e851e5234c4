"""What the native file recorder (key/_fsrecord.c) costs per 100,000 file operations.

Every process the orchestrator starts has the recorder preloaded; it records
only while a memoized body runs. This measures, in fresh processes, the same
file operations three ways:

- bare: no LD_PRELOAD
- preloaded, off: the library loaded, not recording (every task process and
  every child of the orchestrator outside a body: one flag check per call)
- preloaded, on: recording (a body's task process and its children: one line
  written with write(2) per call, plus an fstat for files opened to read)

Operations, 100,000 each: ``os.stat`` of an existing file, ``os.stat`` of a
missing one (ENOENT), ``os.open`` + ``os.close`` of an existing file for
reading. They are made from Python, so each includes the interpreter's own
cost (about a microsecond); the difference between the rows is the recorder's.

    .venv/bin/python benchmarks/fsrecord_cost.py            # 5 rounds, prints a table
    .venv/bin/python benchmarks/fsrecord_cost.py --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

N = 100_000

_WORKER = r"""
import ctypes, json, os, sys, time
n, folder, record = int(sys.argv[1]), sys.argv[2], sys.argv[3]
present = os.path.join(folder, "present.txt")
missing = os.path.join(folder, "missing.txt")
if record != "-":
    ctypes.CDLL(None).memoize_fsrecord_start(record.encode())
def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
def stats():
    for _ in range(n):
        os.stat(present)
def stats_missing():
    for _ in range(n):
        try:
            os.stat(missing)
        except FileNotFoundError:
            pass
def opens():
    for _ in range(n):
        os.close(os.open(present, os.O_RDONLY))
out = {"stat": timed(stats), "stat ENOENT": timed(stats_missing), "open+close": timed(opens)}
print(json.dumps(out))
"""


def _library() -> str:
    from metaflow_extensions.memoize.plugins.memoize.key import native

    path = native.library_path()
    if path is None:
        sys.exit("the native file recorder is not built (pip install -e . on Linux)")
    return path


def run(rounds: int) -> dict:
    library = _library()
    folder = tempfile.mkdtemp(prefix="fsrecord-bench-")
    with open(os.path.join(folder, "present.txt"), "w") as f:
        f.write("x" * 100)
    variants = {"bare": (None, False), "preloaded, off": (library, False)}
    variants["preloaded, on"] = (library, True)
    samples: dict = {v: {} for v in variants}
    record_bytes = 0
    try:
        for _ in range(rounds):
            for variant, (preload, recording) in variants.items():  # interleaved
                env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
                env.pop("METAFLOW_MEMOIZE_FSRECORD", None)
                if preload:
                    env["LD_PRELOAD"] = preload
                record = "-"
                if recording:
                    record = tempfile.mkdtemp(prefix="rec-", dir=folder)
                out = subprocess.run(
                    [sys.executable, "-c", _WORKER, str(N), folder, record],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                for op, seconds in json.loads(out).items():
                    samples[variant].setdefault(op, []).append(seconds)
                if recording:
                    record_bytes = sum(
                        os.path.getsize(os.path.join(record, name)) for name in os.listdir(record)
                    )
                    shutil.rmtree(record)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    medians = {
        variant: {op: statistics.median(values) for op, values in ops.items()}
        for variant, ops in samples.items()
    }
    starts = _process_starts(library, rounds)
    return {
        "operations": N,
        "rounds": rounds,
        "seconds_median": medians,
        "record_bytes_per_round": record_bytes,
        "process_start_ms_median": starts,
        "python": sys.version.split()[0],
    }


def _process_starts(library: str, rounds: int) -> dict:
    """Milliseconds to start and end a program, with and without the library
    preloaded (not recording): what every child of the orchestrator pays."""
    times: dict = {}
    for _ in range(rounds):
        for program in (["/bin/true"], [sys.executable, "-c", "pass"]):
            for variant, preload in (("bare", None), ("preloaded", library)):
                env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
                if preload:
                    env["LD_PRELOAD"] = preload
                for _ in range(10):
                    t = time.perf_counter()
                    subprocess.run(program, env=env, check=True)
                    key = "%s, %s" % (os.path.basename(program[0]), variant)
                    times.setdefault(key, []).append((time.perf_counter() - t) * 1000)
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def table(result: dict) -> str:
    medians = result["seconds_median"]
    ops = list(medians["bare"])
    lines = [
        "ms per %s operations (median of %d rounds; Python %s)"
        % (format(result["operations"], ","), result["rounds"], result["python"]),
        "| variant | " + " | ".join(ops) + " |",
        "|---|" + "---:|" * len(ops),
    ]
    for variant, row in medians.items():
        cells = []
        for op in ops:
            ms = row[op] * 1000
            extra = ms - medians["bare"][op] * 1000
            cells.append("%.0f" % ms if variant == "bare" else "%.0f (%+.0f)" % (ms, extra))
        lines.append("| %s | %s |" % (variant, " | ".join(cells)))
    lines.append(
        "record written while on: %.1f MB for %s operations"
        % (result["record_bytes_per_round"] / 1e6, format(3 * result["operations"], ","))
    )
    lines.append(
        "process start and exit, ms (median): "
        + ", ".join("%s %.2f" % kv for kv in result["process_start_ms_median"].items())
    )
    lines.append("load average (1 min) at the end: %.1f" % os.getloadavg()[0])
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    result = run(args.rounds)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
