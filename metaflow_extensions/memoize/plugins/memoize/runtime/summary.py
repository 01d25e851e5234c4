"""The end-of-run line: `[memoize] 7 hits, 2 misses, saved 41m12s`."""

from __future__ import annotations

from collections import Counter

from ..durations import format_count, format_duration


def summarize(statuses: list[tuple[str, float]]) -> str:
    """One line from (memoize_status, saved seconds) per memoized task."""
    if not statuses:
        return ""
    counts = Counter(status for status, _ in statuses)
    saved = sum(seconds for status, seconds in statuses if status == "hit")

    parts = [format_count(counts.pop("hit", 0), "hit"), format_count(counts.pop("miss", 0), "miss")]
    if counts.get("refresh"):
        parts.append(format_count(counts.pop("refresh"), "refresh"))
    for status, count in sorted(counts.items()):
        parts.append("%d %s" % (count, status))
    return "%s, saved %s" % (", ".join(parts), format_duration(saved))


def _status(task) -> tuple[str, float] | None:
    meta = task.metadata_dict
    status = meta.get("memoize_status")
    if not status:
        return None
    if meta.get("memoize_audit") == "mismatch":
        status = "AUDIT MISMATCH"  # audit.py: the entry did not reproduce
    return status, float(meta.get("memoize_saved_seconds") or 0.0)


def run_summary_line(flow_name: str, run_id: str) -> str:
    """From every task of the run, through the Client API."""
    from metaflow import Run, namespace

    namespace(None)
    statuses = [_status(task) for step in Run("%s/%s" % (flow_name, run_id)) for task in step]
    return summarize([s for s in statuses if s])


def summary_line_of(known: list[tuple[str, float]], pathspecs: list[str]) -> str:
    """From what the orchestrator already knows, plus the metadata of the given tasks."""
    from metaflow import Task, namespace

    namespace(None)
    statuses = [_status(Task(p)) for p in pathspecs]
    return summarize(list(known) + [s for s in statuses if s])
