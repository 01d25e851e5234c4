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
"""

from __future__ import annotations

import argparse
import os
import statistics
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


MARKDOWN_HEADER = """# Cost of observation

Written by `make bench` (`benchmarks/observe_cost.py`). On a miss, the step body
runs under memoize's recorder ([concepts.md](concepts.md#observed-dependencies)),
then the recording becomes the entry's dependencies. Both variants of each body
run alternately in one process, so machine load hits them alike; the ratio is
the median of the per-pair ratios. A hit records nothing: it only fingerprints
the entry's dependencies again (part of the hit-path figures in
[performance.md](performance.md)).

"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny bodies, 3 rounds")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    text = render(run(args.quick))
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(MARKDOWN_HEADER + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
