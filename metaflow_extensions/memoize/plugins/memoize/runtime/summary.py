"""After a run: `[memoize] 7 hits, 2 misses, saved 41m12s`, then one line per
step that ran, with its root cause (causes.py)::

    [memoize]   featurize: miss: code changed (helper features)
    [memoize]   train: miss: input 'features' changed (read by the step), because featurize re-ran
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .. import metaflow_compat as mf
from ..durations import format_count, format_duration
from . import causes
from .explain import NO_ENTRY_FOR_ITEM

NOT_MEMOIZED = "not memoized"
#: the reason of a miss that had no entry at its key (cache/entries.py)
NO_ENTRY = "no entry"
#: at most this many per-step cause lines after a run
MAX_CAUSE_LINES = 20


@dataclass(frozen=True)
class TaskOutcome:
    """What one memoized task of a run decided, as its metadata records it."""

    step: str
    status: str
    saved_seconds: float = 0.0
    reason: str = ""
    changed_inputs: tuple[str, ...] = ()
    # what the memoize card shows besides (card/data.py); older tasks may lack them
    task_id: str = ""
    origin: str = ""  # a hit: pathspec of the task that produced the entry
    cloned: bool = False  # a hit completed in the orchestrator, no task launched
    item: str = ""  # a foreach task: its item, as `memoize list` shows it


def summarize(outcomes: list[TaskOutcome]) -> str:
    """One line from the memoized tasks' outcomes."""
    if not outcomes:
        return ""
    counts = Counter(o.status for o in outcomes)
    saved = sum(o.saved_seconds for o in outcomes if o.status == "hit")

    parts = [format_count(counts.pop("hit", 0), "hit"), format_count(counts.pop("miss", 0), "miss")]
    if counts.get("refresh"):
        parts.append(format_count(counts.pop("refresh"), "refresh"))
    for status, count in sorted(counts.items()):
        parts.append("%d %s" % (count, status))
    return "%s, saved %s" % (", ".join(parts), format_duration(saved))


def cause_lines(
    outcomes: list[TaskOutcome], flow_class: type, graph, memoized: set[str]
) -> list[str]:
    """`step: miss: reason, because parent re-ran`, for each step whose tasks missed."""
    statuses: dict[str, list[str]] = {
        step: ([] if step in memoized else [NOT_MEMOIZED]) for step in mf.sorted_steps(graph)
    }
    per_step: dict[str, list[TaskOutcome]] = {}
    for o in outcomes:
        statuses.setdefault(o.step, []).append(o.status)
        per_step.setdefault(o.step, []).append(o)
    assigns = causes.static_assignments(flow_class)
    lines, first_time = [], []
    for step in mf.sorted_steps(graph):
        missed = [o for o in per_step.get(step, ()) if o.status in ("miss", "refresh")]
        if not missed:
            continue
        if all(o.status == "miss" and o.reason in (NO_ENTRY, NO_ENTRY_FOR_ITEM) for o in missed):
            first_time.append(step)  # nothing to explain: one line for them all
            continue
        tasks = len(per_step[step])
        head = missed[0].status if tasks == 1 else "%d of %d tasks ran" % (len(missed), tasks)
        reasons = Counter(
            causes.with_cause(
                o.reason or o.status,
                causes.cause(graph, assigns, step, o.changed_inputs, statuses),
            )
            for o in missed
        )
        (reason, _), *others = reasons.most_common()
        more = " (and %s)" % format_count(len(others), "other reason") if others else ""
        lines.append("  %s: %s: %s%s" % (step, head, reason, more))
    if first_time:
        lines.insert(0, "  no entry yet: %s" % ", ".join(first_time))
    if len(lines) > MAX_CAUSE_LINES:
        hidden = len(lines) - MAX_CAUSE_LINES
        lines = lines[:MAX_CAUSE_LINES] + [
            "  ... and %s: memoize explain STEP" % format_count(hidden, "more step")
        ]
    return lines


def outcome_of(task) -> TaskOutcome | None:
    """From a Client API task's metadata; None for a task without @memoize."""
    meta = task.metadata_dict
    status = meta.get("memoize_status")
    if not status:
        return None
    if meta.get("memoize_audit") == "mismatch":
        status = "AUDIT MISMATCH"  # audit.py: the entry did not reproduce
    hit = status == "hit"  # a clone shows its origin's fields it does not write
    changed = meta.get("memoize_changed_inputs") or ""
    return TaskOutcome(
        step=task.path_components[2],
        status=status,
        saved_seconds=_seconds(meta.get("memoize_saved_seconds")) if hit else 0.0,
        reason="" if hit else meta.get("memoize_reason") or meta.get("memoize_error") or "",
        changed_inputs=() if hit else tuple(n for n in changed.split(",") if n),
        task_id=task.path_components[3],
        origin=(meta.get("memoize_origin") or "") if hit else "",
        cloned=hit and meta.get("memoize_cloned") == "true",
        item=meta.get("memoize_foreach") or "",
    )


def _seconds(value) -> float:
    """A recorded duration; 0 when missing or unreadable (a task of another version)."""
    try:
        return max(float(value or 0.0), 0.0)
    except (TypeError, ValueError):
        return 0.0


def run_outcomes(flow_name: str, run_id: str) -> list[TaskOutcome]:
    """Every memoized task of the run, through the Client API."""
    from metaflow import Run, namespace

    namespace(None)
    found = [outcome_of(task) for step in Run("%s/%s" % (flow_name, run_id)) for task in step]
    return [o for o in found if o]


def outcomes_of(known: list[TaskOutcome], pathspecs: list[str]) -> list[TaskOutcome]:
    """What the orchestrator already knows, plus the metadata of the given tasks."""
    from metaflow import Task, namespace

    namespace(None)
    found = [outcome_of(Task(p)) for p in pathspecs]
    return list(known) + [o for o in found if o]
