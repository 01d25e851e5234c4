"""Target 4: the cost of computing a key, and of deciding not to audit a hit."""

from __future__ import annotations

import hashlib
import os
import time

from ..flows import FlowDir, expect, hit_vs_empty, settle
from ..markdown import fmt, phase_table, profile_table, rng, verdict
from ..product import product
from ..stats import paired_differences, summary

TITLE = "Target 4: key cost"


def measure(bench):
    synthetic = _synthetic_keys(bench)
    audit0 = _audit_decision(bench)
    flows = [_keys_flow(bench, n) for n in bench.plan.key_flow]
    return {"synthetic": synthetic, "flows": flows, "audit0": audit0}


def _synthetic_keys(bench):
    keys = product().keys
    synthetic = []
    for n in bench.plan.key_synthetic:
        artifacts = {"in%05d" % i: hashlib.sha1(str(i).encode()).hexdigest() for i in range(n)}
        artifacts.update({name: "0" * 40 for name in keys.BOOKKEEPING_ARTIFACTS})
        code = {"step": "f" * 32, "helper:make_payload": "e" * 32}
        args = {"version": None, "inputs": None, "ignore": [], "outputs": None}
        env = {"python": "3.11"}
        times = []
        for _ in range(bench.plan.key_synthetic_reps):
            started = time.perf_counter()
            selected = keys.select_inputs(artifacts, None, [], [])
            components = keys.build_components("KeysFlow", "work", code, args, selected, [], env)
            keys.key_of(components)
            times.append(time.perf_counter() - started)
        synthetic.append({"n": n, "seconds": summary(times)})
    return synthetic


def _audit_decision(bench):
    """Audit at 0 (the default): what a hit pays for deciding not to audit (audit.py)."""
    from metaflow_extensions.memoize.plugins.memoize import config
    from metaflow_extensions.memoize.plugins.memoize.cache import audit

    os.environ.pop(config.ENV_AUDIT, None)
    times = []
    for _ in range(bench.plan.key_synthetic_reps):
        started = time.perf_counter()
        audit.sampled(config.audit_fraction())
        times.append(time.perf_counter() - started)
    return summary(times)


def _keys_flow(bench, n):
    fd = FlowDir(bench.work / ("keys-%d" % n), "keys_flow.py", bench.env)
    bench.log("target 4: KeysFlow --n %d setup" % n)
    run = fd.run("--n", str(n))
    settle()
    start = run.input_path("start")
    if bench.plan.warm:
        expect(fd.task("work", run.run_id, start), "hit")
    bench.log("target 4: %d inputs, %d x (hit, empty)" % (n, bench.plan.key_flow_reps))
    s = hit_vs_empty(fd, run, bench.plan.key_flow_reps)
    probes = [fd.task("work", run.run_id, start, probe=True) for _ in range(bench.plan.probes)]
    for p in probes:
        expect(p, "hit")
    profiled = fd.task("work", run.run_id, start, probe=True, profile=True)

    def phase(name):
        return summary([p.probe["phases"].get(name, 0.0) for p in probes])

    hit_wall, empty_wall = [t.wall for t in s["hit"]], [t.wall for t in s["empty"]]
    return {
        "n": n,
        "hit_s": summary(hit_wall),
        "empty_s": summary(empty_wall),
        "increment_s": paired_differences(hit_wall, empty_wall),
        "task_components_s": phase("memoize: key components (task_components)"),
        "key_of_s": phase("memoize: key digest (key_of)"),
        "pre_step_s": phase("memoize: task_pre_step (all)"),
        "probe": probes[0].probe,
        "profile_top": profiled.probe["top"],
    }


def section(report, r):
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
        report.row(4, "key from %d input hashes (synthetic)" % x["n"], x["seconds"], "ms", ok)
    if "audit0" in r:  # audit.py: the hit path's only audit work at fraction 0
        a = r["audit0"]
        ok = a["median"] < 0.001
        out.append(
            "| – | audit 0: deciding not to audit a hit (read the setting, compare with 0) "
            "| %s | %s | 1 ms | %s |" % (fmt(a["median"], "ms"), rng(a, "ms"), verdict(ok))
        )
        report.row(4, "audit 0: cost on the hit path", a, "ms", ok)
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
        report.row(
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


FINDINGS = ()
