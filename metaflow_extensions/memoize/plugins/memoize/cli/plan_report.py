"""Text and JSON for `memoize plan` and `memoize explain` (formatting only)."""

from __future__ import annotations

import json
from typing import Any

from ..durations import format_count, format_duration
from ..runtime import causes
from ..runtime.explain import COMPONENTS, TaskExplanation
from ..runtime.plan import HIT, MAYBE, NOT_MEMOIZED, RUN, UNKNOWN, PlanResult, StepPlan


def _detail(step: StepPlan) -> str:
    tasks = step.tasks
    if not tasks:
        return "a switch does not take this branch"
    if len(tasks) == 1:
        t = tasks[0]
        if t.verdict == HIT:
            return "from %s (saves %s)" % (t.origin, format_duration(t.saved_seconds))
        return t.reason
    reasons = sorted({t.reason for t in tasks if t.verdict != HIT and t.reason})
    saved = sum(t.saved_seconds for t in tasks if t.verdict == HIT)
    parts = []
    if saved:
        parts.append("saves %s" % format_duration(saved))
    if reasons:
        parts.append("; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else ""))
    return ", ".join(parts)


def plan_text(result: PlanResult) -> str:
    rows = [(s.step, s.summary(), _detail(s)) for s in result.steps]
    width_step = max([len("STEP")] + [len(r[0]) for r in rows])
    width_verdict = max([len("VERDICT")] + [len(r[1]) for r in rows])
    lines = ["%-*s  %-*s  %s" % (width_step, "STEP", width_verdict, "VERDICT", "DETAIL")]
    for step, verdict, detail in rows:
        lines.append("%-*s  %-*s  %s" % (width_step, step, width_verdict, verdict, detail))
    lines.append(plan_summary_line(result))
    for step, tasks, saved in result.at_stake():
        lines.append(
            "Note: %s will run above %s%s that hit only if its outputs come "
            "out unchanged; otherwise they run too"
            % (
                step,
                format_count(tasks, "cached task"),
                " (%s of compute)" % format_duration(saved) if saved >= 1 else "",
            )
        )
    return "\n".join(lines)


def plan_summary_line(result: PlanResult) -> str:
    runs = sum(1 for s in result.steps if any(t.verdict == RUN for t in s.tasks))
    hits = sum(1 for s in result.steps if s.tasks and all(t.verdict == HIT for t in s.tasks))
    maybe = sum(
        1
        for s in result.steps
        if any(t.verdict == MAYBE for t in s.tasks) and not any(t.verdict == RUN for t in s.tasks)
    )
    unknown = sum(1 for s in result.steps if any(t.verdict == UNKNOWN for t in s.tasks))
    plain = sum(1 for s in result.steps if any(t.verdict == NOT_MEMOIZED for t in s.tasks))
    return (
        "Summary: %s will run, %d will hit, %d may hit, %d unknown, %d not memoized; saves %s"
        % (
            format_count(runs, "step"),
            hits,
            maybe,
            unknown,
            plain,
            format_duration(result.saved_seconds),
        )
    )


def plan_json(result: PlanResult) -> str:
    return json.dumps(result.to_dict(), indent=2, sort_keys=True)


def explain_text(run_pathspec: str, step: str, explanations: list[TaskExplanation]) -> str:
    lines = ["%s, step %s: %s" % (run_pathspec, step, format_count(len(explanations), "task"))]
    for e in explanations:
        head = "%s  %s" % (e.pathspec, e.status)
        if e.key:
            head += "  key=%s" % e.key[:12]
        lines.append(head)
        if e.origin:
            lines.append("    from %s" % e.origin)
        if e.reason:
            lines.append("    reason: %s" % causes.with_cause(e.reason, e.cause))
        if e.components:
            if e.compared_with:
                lines.append("    compared with the entry from %s:" % e.compared_with)
            for part in COMPONENTS:
                if part in e.components:
                    lines.append("      %-8s %s" % (part, e.components[part]))
        for change in e.changes:
            lines.append("    - %s" % change)
    return "\n".join(lines)


def explain_json(run_pathspec: str, step: str, explanations: list[TaskExplanation]) -> str:
    payload: dict[str, Any] = {
        "run": run_pathspec,
        "step": step,
        "tasks": [e.to_dict() for e in explanations],
    }
    return json.dumps(payload, indent=2, sort_keys=True)
