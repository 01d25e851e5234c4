"""What the memoize card shows, read from a run's task metadata.

Each memoized task recorded its decision (``memoize_status``, ``memoize_reason``,
``memoize_origin``, ...: concepts.md, "What a task records"); summary.py reads it
(``outcome_of``) for the end-of-run lines, and causes.py names a miss's root
cause upstream. This module only groups those outcomes per step for the card:
the rows of a :class:`CardReport`, which render.py turns into HTML.

Tasks of older versions of the extension lack some fields: a row then shows
what is there (a missing origin or saved time is left empty, never an error).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..runtime import causes
from ..runtime.orchestrator_hits import HIT_REASON
from ..runtime.summary import NOT_MEMOIZED, TaskOutcome, outcome_of

#: the decision a row shows, from a task's status (summary.TaskOutcome.status)
DECISIONS = {
    "hit": "hit",
    "miss": "miss",
    "refresh": "refresh",
    "audit": "audited hit",
    "AUDIT MISMATCH": "audit mismatch",
    "uncacheable": "uncacheable",
    "disabled": "off",
    "error": "cache error",
}
CLONED_HIT = "cloned hit"


@dataclass(frozen=True)
class TaskRow:
    """One task of a step, as the card shows it."""

    task_id: str
    decision: str  # hit, cloned hit, miss, refresh, uncacheable, off, ... (DECISIONS)
    reason: str  # with its root cause upstream, when one is known
    origin: str = ""  # a hit: the task that produced the entry
    saved_seconds: float = 0.0
    item: str = ""  # a foreach task: its item

    @property
    def is_hit(self) -> bool:
        return self.decision in ("hit", CLONED_HIT)


@dataclass
class StepRows:
    """A step of the run: its memoized tasks (none: the step has no @memoize)."""

    step: str
    tasks: list[TaskRow] = field(default_factory=list)
    unreadable: int = 0  # tasks whose metadata could not be read

    @property
    def memoized(self) -> bool:
        return bool(self.tasks)

    @property
    def saved_seconds(self) -> float:
        return sum(t.saved_seconds for t in self.tasks if t.is_hit)

    def decisions(self) -> Counter:
        return Counter(t.decision for t in self.tasks)


@dataclass
class CardReport:
    """Everything the card shows about one run."""

    run: str  # pathspec: Flow/run_id
    steps: list[StepRows]  # in graph order
    rendered_in: str = ""  # pathspec of the task whose card this is

    @property
    def tasks(self) -> list[TaskRow]:
        return [t for s in self.steps for t in s.tasks]

    def totals(self) -> dict[str, float]:
        """tasks, hits (cloned ones included), cloned, misses, refreshes, other,
        saved_seconds."""
        tasks = self.tasks
        counts = Counter(t.decision for t in tasks)
        hits = counts["hit"] + counts[CLONED_HIT]
        return {
            "tasks": len(tasks),
            "hits": hits,
            "cloned": counts[CLONED_HIT],
            "misses": counts["miss"],
            "refreshes": counts["refresh"],
            "other": len(tasks) - hits - counts["miss"] - counts["refresh"],
            "saved_seconds": sum(t.saved_seconds for t in tasks if t.is_hit),
        }


def row_of(outcome: TaskOutcome, because: str = "") -> TaskRow:
    """A card row from what a task recorded (summary.outcome_of)."""
    hit = outcome.status == "hit"
    if hit:
        decision = CLONED_HIT if outcome.cloned else "hit"
        reason = HIT_REASON
    else:
        decision = DECISIONS.get(outcome.status, outcome.status)
        reason = causes.with_cause(outcome.reason or _DEFAULT_REASONS.get(decision, ""), because)
    return TaskRow(
        task_id=outcome.task_id,
        decision=decision,
        reason=reason,
        origin=outcome.origin if hit else "",
        saved_seconds=outcome.saved_seconds if hit else 0.0,
        item=outcome.item,
    )


#: what a row says when the task recorded no reason (statuses that never do, or
#: a task of an older version)
_DEFAULT_REASONS = {
    "off": "METAFLOW_MEMOIZE_MODE=off, or a task of an unbounded foreach",
    "cache error": "the cache failed; the step ran uncached",
}


def build_report(
    run_pathspec: str,
    outcomes_per_step: list[tuple[str, list[TaskOutcome], int]],
    flow_class=None,
    graph=None,
    rendered_in: str = "",
) -> CardReport:
    """A CardReport from each step's outcomes, in the order given: (step, the
    outcomes of its memoized tasks, how many tasks could not be read).

    With the flow class and its graph, a miss also names its root cause upstream
    (causes.py), as the end-of-run lines do."""
    statuses = {
        step: [o.status for o in outcomes] or [NOT_MEMOIZED]
        for step, outcomes, _ in outcomes_per_step
    }
    assigns = causes.static_assignments(flow_class) if flow_class is not None else None
    steps = []
    for step, outcomes, unreadable in outcomes_per_step:
        rows = []
        for o in outcomes:
            because = ""
            if assigns is not None and graph is not None and o.changed_inputs:
                try:
                    because = causes.cause(graph, assigns, step, o.changed_inputs, statuses)
                except Exception:  # a cause is a hint: the decision stands without it
                    because = ""
            rows.append(row_of(o, because))
        rows.sort(key=lambda r: _task_order(r.task_id))
        steps.append(StepRows(step, rows, unreadable))
    return CardReport(run_pathspec, steps, rendered_in)


def _task_order(task_id: str):
    return (0, int(task_id), "") if task_id.isdigit() else (1, 0, task_id)


def read_run(run, step_order: list[str] | None = None) -> list[tuple[str, list[TaskOutcome], int]]:
    """(step, outcomes of its memoized tasks, unreadable tasks) for every step of
    a Client API run, in ``step_order`` (steps it does not name go last, in the
    order the run lists them)."""
    found = []
    for step in run:
        outcomes, unreadable = [], 0
        for task in step:
            try:
                outcome = outcome_of(task)
            except Exception:  # metadata of one task unreadable: show the rest
                unreadable += 1
                continue
            if outcome is not None:
                outcomes.append(outcome)
        found.append((step.id, outcomes, unreadable))
    order = {name: i for i, name in enumerate(step_order or [])}
    listed = {name: i for i, (name, _, _) in enumerate(reversed(found))}
    found.sort(key=lambda s: (order.get(s[0], len(order)), listed[s[0]]))
    return found
