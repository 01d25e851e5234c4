"""A whole benchmark run: the chosen targets in order, the saved results, the report; and
re-rendering a report from saved results."""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from .bench import Bench
from .config import Plan
from .machine import LoadSampler, load1, machine
from .moto_s3 import serve_bucket
from .report import Report
from .targets import NEED_S3, OWN_S3_SERVER, RUN_ORDER, TARGETS


def measure_and_report(
    plan: Plan, only: set, output: Path, workdir: str | None, keep: bool, started: float
) -> int:
    """``started``: when the benchmark began (perf_counter), for the log and the report."""
    work = Path(workdir or tempfile.mkdtemp(prefix="memoize-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    moto = serve_bucket() if only & NEED_S3 else None
    bench = Bench(plan, work, moto, started)
    bench.start_load = load1()
    bench.sampler = LoadSampler()
    bench.sampler.start()
    bench.log("work dir %s; report %s" % (work, output))
    try:
        for t in RUN_ORDER:
            if t not in only:
                continue
            shared = bench.moto
            target_started = time.perf_counter()
            try:
                if t in OWN_S3_SERVER:  # a subset of NEED_S3: `shared` is running
                    bench.use_moto(serve_bucket())
                    bench.log(
                        "target %d: on a moto server of its own, %s" % (t, bench.moto.endpoint)
                    )
                bench.results[t] = TARGETS[t].measure(bench)
            except Exception:
                bench.errors[t] = traceback.format_exc()[-4000:]
                bench.log("target %d FAILED:\n%s" % (t, bench.errors[t]))
            finally:
                if bench.moto is not shared:
                    bench.moto.stop()
                    bench.use_moto(shared)
            bench.spans[t] = (target_started, time.perf_counter())
            bench.log("target %d done in %.1f s" % (t, time.perf_counter() - target_started))
    finally:
        bench.sampler.stop()
        if moto is not None:
            moto.stop()
        if not keep and not workdir:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    bench.machine = machine()
    bench.log("results saved to %s (re-render with --render)" % save_state(bench, plan, elapsed))
    report = Report(bench, plan, elapsed)
    text = report.render()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    bench.log("report written to %s" % output)
    print(output)
    return 1 if bench.errors else 0


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
