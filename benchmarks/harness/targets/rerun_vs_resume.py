"""Target 5: a memoized re-run against `resume` and a plain re-run, whole commands timed."""

from __future__ import annotations

from ..config import BenchError
from ..flows import FlowDir, settle
from ..markdown import fmt, rng, verdict
from ..stats import interleaved, paired_ratios, summary

TITLE = "Target 5: against the alternatives (resume, plain re-run)"


def measure(bench):
    sleep = bench.plan.eight_sleep
    fd = FlowDir(bench.work / "eight", "eight_flow.py", bench.env)
    bench.log("target 5: EightFlow first run (all misses, %gs per step)" % sleep)
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

    bench.log(
        "target 5: %d rounds of %d variants"
        % (bench.plan.eight_reps, len(bench.plan.eight_variants))
    )
    variants = {
        "memo": memo,
        "memo_tasks": memo_tasks,
        "resume": resume_all,
        "resume_end": resume_end,
        "plain": plain,
        "empty": empty,
    }
    s = interleaved(bench.plan.eight_reps, [(v, variants[v]) for v in bench.plan.eight_variants])

    def ratio(a, b):
        if a in s and b in s:
            return paired_ratios(s[a], s[b])
        return None

    return {
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


def section(report, r):
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
        report.row(5, label, x, "x", ok)
    return out


def alternatives_finding(res, ph):
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


FINDINGS = (alternatives_finding,)
