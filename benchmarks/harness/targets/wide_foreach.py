"""Target 7: a wide foreach (issue 17): first run, unchanged re-run against `resume`,
and appending one item, at several widths, whole commands timed."""

from __future__ import annotations

from ..config import BenchError
from ..flows import FlowDir, settle
from ..markdown import fmt, rng, verdict
from ..moto_s3 import s3_url
from ..stats import interleaved, paired_ratios, summary

#: below this width the append criterion is reported, not judged: the 3-4 tasks an
#: append must start (start with the new list, the new item, the join; end when it
#: reads what the join changed), each a process (~0.7 s here), cost as much as a
#: re-run of 100 items does in all. Issue 17 states it at 1,000 items.
JUDGE_APPEND_FROM = 1000

TITLE = "Target 7: wide foreach (first run, re-run, append one item)"


def _rounds(by_width, width):
    """Interleaved rounds at ``width``: those of the smallest width listed at or above
    it, else 3 (1 for a quick run, which lists none)."""
    fitting = [w for w in sorted(by_width) if width <= w]
    return by_width[fitting[0]] if fitting else (3 if by_width else 1)


def _starts(result, step):
    """Task processes the runtime started for ``step``."""
    return sum(
        1
        for line in result.output.splitlines()
        if "Task is starting." in line and "/%s/" % step in line
    )


def _one_width(bench, width, datastore="local"):
    """``datastore``: "local", or "S3" (Metaflow's S3 datastore on moto, the default
    cache root under it)."""
    name = "wide-%d%s" % (width, "-s3" if datastore == "S3" else "")
    s3 = datastore == "S3"
    fd = FlowDir(bench.work / name, "wide_flow.py", bench.env, s3_root=s3_url(name) if s3 else None)
    plain_name = name.replace("wide-", "wide-plain-")
    plain_fd = FlowDir(
        bench.work / plain_name,
        "wide_flow.py",
        bench.env,
        s3_root=s3_url(plain_name) if s3 else None,
    )
    # Metaflow refuses more than 100 foreach children unless told
    splits = ("--max-num-splits", str(width + 10))
    args = ("--width", str(width)) + splits
    sleep = {"BENCH_SLEEP": str(bench.plan.wide_sleep)}
    steps = width + 3  # start, the items, join, end
    bench.log("target 7: width %d, %s datastore: first runs (memoized, plain)" % (width, datastore))
    first = fd.run(*args, env=sleep)
    if first.memoize.count("stored") != steps:
        raise BenchError("the first run stored %d entries" % first.memoize.count("stored"))
    plain_first = plain_fd.run(*args, env=dict(sleep, BENCH_MEMOIZE="0"))
    origin = first.run_id
    settle()
    appended = {"n": 0}

    def memo(_):
        r = fd.run(*args, env=sleep)
        if _starts(r, "body") or r.memoize.count("hit") != steps:
            raise BenchError("the unchanged re-run launched a body:\n" + r.output[-3000:])
        return r.wall

    def resume(_):
        return fd.run("--origin-run-id", origin, *splits, command="resume", env=sleep).wall

    def append(_):
        appended["n"] += 1
        r = fd.run(*args, "--extra", "new-%d" % appended["n"], env=sleep)
        bodies = _starts(r, "body")
        if bodies != 1:
            raise BenchError("appending one item started %d body tasks" % bodies)
        appended["starts"] = sum(_starts(r, s) for s in ("start", "body", "join", "end"))
        return r.wall

    reps = _rounds(bench.plan.wide_reps, width)
    bench.log(
        "target 7: width %d, %s datastore: %d rounds of re-run, resume, append"
        % (width, datastore, reps)
    )
    s = interleaved(reps, [("memo", memo), ("resume", resume), ("append", append)])
    return {
        "width": width,
        "datastore": datastore,
        "first_s": first.wall,
        "plain_first_s": plain_first.wall,
        "first_ratio": first.wall / plain_first.wall,
        **{k + "_s": summary(v) for k, v in s.items()},
        "ratio_resume": paired_ratios(s["memo"], s["resume"]),
        "ratio_append": paired_ratios(s["append"], s["memo"]),
        "append_starts": appended.get("starts"),
    }


def measure(bench):
    return {
        "sleep": bench.plan.wide_sleep,
        "widths": [_one_width(bench, w) for w in bench.plan.wide_widths]
        + (
            [_one_width(bench, w, "S3") for w in bench.plan.wide_s3_widths]
            if bench.moto is not None
            else []
        ),
    }


def _label(w):
    """The width, and the datastore when it is not the local one."""
    if w.get("datastore", "local") == "local":
        return "%d" % w["width"]
    return "%d (%s datastore)" % (w["width"], w["datastore"])


def section(report, r):
    out = [
        "`WideFlow`: start → foreach over *width* items → join → end, every step "
        "`@memoize`d; each body sleeps %g s. Per width: the first run memoized "
        "and plain (once each), then interleaved: the unchanged re-run, `resume "
        "--origin-run-id <first>` (clone all), and a run with one new item appended "
        "(a new item each round, so each is a real append)." % r["sleep"],
        "",
        "| width | first run: memoized / plain | re-run | resume | re-run / resume "
        "| append one item | append / re-run | tasks started by the append |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in r["widths"]:
        out.append(
            "| %s | %s (%s / %s) | %s | %s | %s (%s) | %s | %s (%s) | %s |"
            % (
                _label(w),
                fmt(w["first_ratio"], "x"),
                fmt(w["first_s"], "s"),
                fmt(w["plain_first_s"], "s"),
                fmt(w["memo_s"]["median"], "s"),
                fmt(w["resume_s"]["median"], "s"),
                fmt(w["ratio_resume"]["median"], "x"),
                rng(w["ratio_resume"], "x"),
                fmt(w["append_s"]["median"], "s"),
                fmt(w["ratio_append"]["median"], "x"),
                rng(w["ratio_append"], "x"),
                w["append_starts"],
            )
        )
    out += ["", "| criterion | median | min – max | target | result |", "|---|---|---|---|---|"]
    for w in r["widths"]:
        for key, label, limit in (
            ("ratio_resume", "width %s: unchanged re-run / resume" % _label(w), 1.0),
            ("ratio_append", "width %s: append one item / unchanged re-run" % _label(w), 1.5),
        ):
            x = w[key]
            ok = x["median"] <= limit
            if key == "ratio_append" and w["width"] < JUDGE_APPEND_FROM:
                # the 3-4 task processes an append must start outweigh a narrow re-run
                ok = None
            out.append(
                "| %s | %s | %s | ≤ %.2f | %s |"
                % (
                    label,
                    fmt(x["median"], "x"),
                    rng(x, "x"),
                    limit,
                    verdict(ok) if ok is not None else "info",
                )
            )
            report.row(7, label, x, "x", ok)
    return out


FINDINGS = ()
