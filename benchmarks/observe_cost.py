"""What observing a step body costs on a miss (issue 13).

A miss runs the body under memoize's recorder (observe.py) and then turns the
recording into dependencies (deps.py). This measures both, side by side with
the same body run bare, interleaved in one process so that machine load hits
both variants alike:

- realistic: about 1 s of numpy work (matrix products, sorts, reductions);
  the target is at most +5%
- worst case: a pure-Python body making a million small calls (reported, no
  target: a profile hook slows every call on Python <= 3.11)
- recording -> dependencies: the work done once after the body

    .venv/bin/python benchmarks/observe_cost.py            # full, prints a table
    .venv/bin/python benchmarks/observe_cost.py --quick    # seconds, smoke test
    .venv/bin/python benchmarks/observe_cost.py --markdown out.md
    # one row per Python, each measured under its own interpreter (make test-python's
    # venvs, with numpy), written into the per-Python table of the markdown file:
    .venv/bin/python benchmarks/observe_cost.py --python .venv-python/3.9/bin/python \
        --python .venv-python/3.13/bin/python --markdown docs/observation-cost.md

With --markdown, the row of each Python measured replaces that Python's row in
the file's table; the other rows stay (each names its date and commit).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time

from metaflow_extensions.memoize.plugins.memoize.key import deps, observe


def _numpy_body(scale: float):
    import numpy as np

    rng = np.random.default_rng(0)
    size = int(900 * scale) or 8
    a = rng.random((size, size))
    total = 0.0
    for _ in range(3):
        b = a @ a.T
        total += float(np.sort(b, axis=None)[-10:].sum())
        a = b / b.max()
    return total


def _python_body(scale: float):
    def small(x):
        return x + 1

    n = int(1_000_000 * scale) or 1000
    s = 0
    for _ in range(n):
        s = small(s)
    return s


def _timed(fn, scale, observed: bool, repeat: int = 1) -> float:
    observer = observe.Observer() if observed else None
    started = time.perf_counter()
    if observer:
        observer.start()
    for _ in range(repeat):
        fn(scale)
    if observer:
        observer.stop()
    return time.perf_counter() - started


def measure(fn, scale: float, rounds: int, target_s: float = 0.0) -> dict:
    """Bare and observed times of ``fn``, alternated; with ``target_s``, the body
    repeats ``fn`` as often as it takes to last about that long bare (the machine's
    speed decides, so the realistic body is ~1 s on a fast or a loaded machine)."""
    bare, seen = [], []
    fn(scale)  # warm caches and imports
    repeat = 1
    if target_s:
        once = min(_timed(fn, scale, False) for _ in range(3))
        repeat = max(1, round(target_s / max(once, 1e-6)))
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        for observed in order:
            (seen if observed else bare).append(_timed(fn, scale, observed, repeat))
    ratios = [o / b for o, b in zip(seen, bare)]
    return {
        "bare_s": statistics.median(bare),
        "observed_s": statistics.median(seen),
        "ratio": statistics.median(ratios),
        "rounds": rounds,
        "repeat": repeat,
    }


def dependency_cost(rounds: int) -> dict:
    """Recording -> dependencies for a body that ran user code and read a file."""

    class _Flow:
        pass

    context = deps.DepContext(flow_class=_Flow, flow_dir=".")
    times = []
    for _ in range(rounds):
        observer = observe.Observer()
        observer.start()
        _python_body(0.001)
        recording = observer.stop()
        started = time.perf_counter()
        deps.observed_dependencies(recording, context)
        times.append(time.perf_counter() - started)
    return {"median_ms": 1000 * statistics.median(times), "rounds": rounds}


def run(quick: bool) -> dict:
    results = {"mechanism": observe.mechanism(), "python": sys.version.split()[0], "quick": quick}
    rounds = 3 if quick else 9
    scale = 0.05 if quick else 1.0
    try:
        import numpy  # noqa: F401

        results["realistic"] = measure(_numpy_body, scale, rounds, target_s=0.05 if quick else 1.0)
    except ImportError:
        results["realistic"] = None
    results["worst"] = measure(_python_body, scale, rounds)
    results["worst_profiler"] = None
    if results["mechanism"] == "C frame-evaluation hook":
        # the recorder it replaced on 3.9-3.11, on the same body, for comparison
        chosen = observe._recorder
        observe._recorder = observe._CProfiler
        try:
            results["worst_profiler"] = measure(_python_body, scale, rounds)
        finally:
            observe._recorder = chosen
    results["deps"] = dependency_cost(rounds)
    results["load"] = os.getloadavg()[0]
    return results


def render(results: dict) -> str:
    lines = [
        "| body | bare | observed | ratio (median of pairs) | target |",
        "|---|---|---|---|---|",
    ]
    real = results["realistic"]
    if real is None:
        lines.append("| realistic (numpy, ~1 s) | numpy not installed | | | <= 1.05x |")
    else:
        verdict = "PASS" if real["ratio"] <= 1.05 else "FAIL"
        if results.get("quick"):
            verdict = "(quick run: tiny bodies, no verdict)"
        lines.append(
            "| realistic (numpy, ~1 s: the body %d times) | %.3f s | %.3f s | %.3fx | <= 1.05x %s |"
            % (real["repeat"], real["bare_s"], real["observed_s"], real["ratio"], verdict)
        )
    worst = results["worst"]
    lines.append(
        "| worst case (1,000,000 small Python calls) | %.3f s | %.3f s | %.2fx | reported |"
        % (worst["bare_s"], worst["observed_s"], worst["ratio"])
    )
    if results.get("worst_profiler"):
        prof = results["worst_profiler"]
        lines.append(
            "| worst case under the C profiler (the fallback) | %.3f s | %.3f s | %.2fx | reported |"
            % (prof["bare_s"], prof["observed_s"], prof["ratio"])
        )
    lines.append("")
    lines.append(
        "Recording -> dependencies after the body: %.1f ms (median of %d). Recorder: %s, "
        "Python %s."
        % (
            results["deps"]["median_ms"],
            results["deps"]["rounds"],
            results["mechanism"],
            results["python"],
        )
    )
    lines.append(
        "Load average (1 min) when the measurement ended: %.1f on %d cores."
        % (results["load"], os.cpu_count() or 1)
    )
    return "\n".join(lines) + "\n"


ROW_PREFIX = "| Python "
TABLE_HEAD = [
    "| Python | recorder | realistic (numpy, ~1 s) | worst case (1,000,000 small calls) "
    "| worst case, C profiler | recording -> deps | measured |",
    "|---|---|---|---|---|---|---|",
]


def table_row(results: dict, commit: str, day: str) -> str:
    real = results["realistic"]
    prof = results.get("worst_profiler")
    return (
        "| Python %s | %s | %s | %.2fx (%.3f s -> %.3f s) | %s | %.1f ms | %s, %s, load %.1f |"
        % (
            results["python"],
            results["mechanism"],
            "numpy not installed" if real is None else "%.3fx" % real["ratio"],
            results["worst"]["ratio"],
            results["worst"]["bare_s"],
            results["worst"]["observed_s"],
            "%.2fx" % prof["ratio"] if prof else "-",
            results["deps"]["median_ms"],
            day,
            commit,
            results["load"],
        )
    )


def _minor(row: str) -> str:
    match = re.match(r"\| Python (\d+\.\d+)", row)
    return match.group(1) if match else row


def merge_rows(existing: str, rows: list) -> list:
    """The table's rows: those just measured, and the other Pythons' rows kept
    from ``existing`` (a markdown file), by minor version."""
    kept = {
        _minor(line): line
        for line in existing.splitlines()
        if line.startswith(ROW_PREFIX) and _minor(line) != line
    }
    kept.update({_minor(row): row for row in rows})
    return [kept[k] for k in sorted(kept, key=lambda v: tuple(int(p) for p in v.split(".")))]


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def under(python: str, quick: bool) -> dict:
    """Runs this benchmark under another interpreter; its results."""
    proc = subprocess.run(
        [python, os.path.abspath(__file__), "--json"] + (["--quick"] if quick else []),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


MARKDOWN_HEADER = """# Cost of observation

Written by `benchmarks/observe_cost.py`: `make bench` refreshes the row of the
Python in `.venv`; the other rows come from running it under `make test-python`'s
venvs (`--python .venv-python/3.9/bin/python ...`, numpy installed there for the
measurement). On a miss, the step body runs under memoize's recorder
([concepts.md](concepts.md#observed-dependencies)), then the recording becomes the
entry's dependencies. Both variants of each body run alternately in one process,
so machine load hits them alike; a ratio is observed / bare, the median of the
per-pair ratios. Realistic: about 1 s of numpy work (target: at most 1.05x).
Worst case: a pure-Python body making a million small calls, no target. A hit
records nothing: it only fingerprints the entry's dependencies again (part of the
hit-path figures in [performance.md](performance.md)).

"""

MARKDOWN_NOTES = """
## The recorders

- **Python 3.12+: `sys.monitoring`.** Each code object is reported once
  (`PY_START`), then that event is disabled for it: the body runs at full speed
  after its first call of each function.
- **Python 3.9, 3.10 and 3.11.4+: a frame-evaluation hook** (PEP 523, in
  `key/_tracer.c`). Every frame CPython evaluates passes through it, in every
  thread: a call, a generator or coroutine resumed, a module run. It records the
  frame's code object in a table (one lookup) and hands the frame to the default
  evaluator. Nothing else changes. On 3.11 CPython stops inlining Python-to-Python
  calls while a hook is set (each call gets a C frame, as on 3.10): that is the
  rest of its cost on 3.11, and deep recursion uses as much C stack as on 3.10.
- **The C profile function** (`PyEval_SetProfile`, the "worst case, C profiler"
  column): the recorder of 3.9-3.11 before the hook, kept for 3.11.0-3.11.3
  (before 3.11.4 one specialized instruction, `BINARY_SUBSCR_GETITEM`, ran a
  Python `__getitem__` without calling the hook: CPython gh-104405) and for a
  process where another frame-evaluation hook is set (a JIT, a debugger's frame
  evaluator). On 3.11 any profile function moves the whole eval loop to its
  tracing path, every instruction and not only calls, and turns specialized
  instructions off: hence 3.2x on the worst case.
- **`sys.setprofile`**: where `_tracer` could not be compiled.

Every recorder records each code object that starts running in the body's thread
and in the threads it starts (the hook and `sys.monitoring` see every thread, a
superset), and marks the recording incomplete when something replaces it during
the body: cProfile or a debugger replacing a profile function, another hook
replacing ours, another tool taking `sys.monitoring`'s events; deps.py then falls
back to hashing whole modules. A profiler started during the body does not
disturb the hook or `sys.monitoring`, so their recordings stay whole. Tested on
every Python by `make test-python` (tests/test_units_observe.py: threads,
generators and coroutines created before the body, call sites specialized before
the body, each replacement).
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny bodies, 3 rounds")
    parser.add_argument(
        "--markdown", help="also write this Python's row (or each --python's) into this file"
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        help="measure under this interpreter instead (repeatable; one after the other)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.python:
        measured = []
        for python in args.python:
            results = under(python, args.quick)
            print(render(results))
            measured.append(results)
    else:
        measured = [run(args.quick)]
        if args.json:
            print(json.dumps(measured[0]))
            return 0
        print(render(measured[0]))
    if args.markdown:
        existing = ""
        if os.path.exists(args.markdown):
            with open(args.markdown, encoding="utf-8") as f:
                existing = f.read()
        day = datetime.date.today().isoformat()
        rows = merge_rows(existing, [table_row(r, _commit(), day) for r in measured])
        body = MARKDOWN_HEADER + "\n".join(TABLE_HEAD + rows) + "\n" + MARKDOWN_NOTES
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
