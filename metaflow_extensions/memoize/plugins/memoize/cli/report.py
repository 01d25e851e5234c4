"""Formatting for the memoize commands: aligned tables for people, JSON for scripts.

Pure: takes what maintenance.py computed and a clock value, returns strings
and JSON-ready dicts. The JSON shapes are documented in docs (field names are
stable; new fields may be added, none removed or renamed):

* entry (``list --json`` items, ``show --json``)::

    root, flow, step, key, object, created, expires, expired, last_used,
    size, manifest_bytes, artifacts{name: {sha, size, type}}, origin, body_seconds,
    components, versions, signed, error,
    foreach[{step, var, value, digest}], parameters{name: {value, digest}}

  ``show --json`` adds ``dependencies`` (key/dep_groups.py; null when unreadable)::

    {group id: {title, about, items[{id, kind, text, value}]}}

* stats (``stats --json``): the totals, ``steps`` (one per flow/step) and
  ``roots`` (one per cache root), each with::

    entries, expired, corrupt, blobs, bytes, blob_bytes, manifest_bytes

* removal (``prune --json``, ``invalidate --json``)::

    dry_run, entries, markers, blobs, bytes_freed,
    roots[{root, entries[{flow, step, key, reason, created, last_used, size}],
           markers, blobs, blobs_kept_young, blobs_spared, locks, bytes_freed}]

Times are seconds since the epoch (floats); sizes are bytes (ints).
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..cache.maintenance import LIST_ORDERS, EntryInfo, Outcome, Plan, StepStats
from ..cache.manifest import ShownValue, context_of
from ..durations import format_count, format_duration, format_size
from ..key.dep_groups import (
    group_dependencies,
    groups_from_json,
    groups_json,
    groups_text,
    observed_count,
)

SHORT_KEY = 12
#: tables longer than this are cut (`list`) or summed up per step (`prune`,
#: `invalidate`) unless asked for in full
TABLE_ROWS = 50
#: widest VALUES cell in `list` (the foreach items and parameter values)
VALUES_WIDTH = 48
#: `explain` prints at most this many blocks of dependencies (one per distinct
#: entry); --json has every task's
DEPENDENCY_BLOCKS = 10


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


# -- building blocks -----------------------------------------------------------
def table(headers: list[str], rows: list[list[str]], right: tuple[str, ...] = ("SIZE",)) -> str:
    """Columns aligned on the widest cell; headers in ``right`` are right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        out = []
        for i, cell in enumerate(cells):
            last = i == len(cells) - 1
            if headers[i] in right:
                out.append(cell.rjust(widths[i]))
            else:
                out.append(cell if last else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def age(then: float | None, now: float) -> str:
    """'3d ago', 'in 4h10m', 'never' (None)."""
    if then is None:
        return "never"
    delta = now - then
    if delta >= 0:
        return "%s ago" % format_duration(delta)
    return "in %s" % format_duration(-delta)


def expiry(entry: EntryInfo, now: float) -> str:
    if not entry.readable:
        return "-"
    if entry.expires is None:
        return "never"
    if entry.expired(now):
        return "expired %s" % age(entry.expires, now)
    return age(entry.expires, now)


def timestamp(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


# -- entries -------------------------------------------------------------------
def entry_dict(
    entry: EntryInfo, root: str, now: float, dependencies: bool = False
) -> dict[str, Any]:
    """An entry object; with ``dependencies`` (`show`), what it relied on, by group."""
    m = entry.manifest
    artifacts = None
    if m is not None:
        artifacts = {
            name: {"sha": a.sha, "size": a.stored_size, "type": a.info.get("type")}
            for name, a in sorted(m.artifacts.items())
        }
    return {
        "root": root,
        "flow": entry.flow,
        "step": entry.step,
        "key": entry.key,
        "object": entry.object.key,
        "created": entry.created,
        "expires": entry.expires,
        "expired": entry.expired(now),
        "last_used": entry.last_used,
        "size": entry.size,
        "manifest_bytes": entry.object.size,
        "artifacts": artifacts,
        "origin": m.origin if m else None,
        "body_seconds": m.body_seconds if m else None,
        "components": m.components if m else None,
        "versions": m.versions if m else None,
        "signed": bool(m and m.signature),
        "error": entry.error,
        **_values_dict(m),
    } | ({"dependencies": dependencies_dict(m)} if dependencies else {})


def dependencies_dict(m) -> dict[str, Any] | None:
    """What an entry relied on, by group (JSON); None for an unreadable entry."""
    if m is None:
        return None
    return groups_json(group_dependencies(m.observed, m.components))


def dependencies_text(m, indent: str = "  ") -> str:
    """What an entry relied on: a heading line, then one block per group.

    Lines marked ``(in the key)`` are parts of the key; the others were observed
    while the step ran and are checked again before every hit."""
    groups = group_dependencies(m.observed, m.components)
    head = "what a hit relies on (%s observed while the step ran, checked before every hit):" % (
        observed_count(groups)
    )
    return "\n".join([head, groups_text(groups, indent)])


def _values_dict(m) -> dict[str, Any]:
    """``foreach`` and ``parameters`` of an entry dict: null when not known."""
    if m is None:
        return {"foreach": None, "parameters": None}
    items, params = context_of(m)

    def one(v: ShownValue) -> dict[str, Any]:
        return {"value": v.value, "digest": v.digest}

    return {
        "foreach": [dict(step=v.step, var=v.name, **one(v)) for v in items],
        "parameters": None if params is None else {v.name: one(v) for v in params},
    }


def explain_dependencies_text(explanations: list[Any]) -> str:
    """After `explain`'s decisions: what each task's entry relies on (the entry a
    hit used, the one a miss stored), by group. Tasks whose entries read the
    same in words share one block, so a wide foreach is not listed task by task."""
    blocks: dict[str, list[Any]] = {}
    absent = []
    for e in explanations:
        if e.dependencies is None:
            absent.append(e)
            continue
        blocks.setdefault(groups_text(groups_from_json(e.dependencies)), []).append(e)
    lines = []
    for text, tasks in list(blocks.items())[:DEPENDENCY_BLOCKS]:
        first = tasks[0]
        who = "%s (entry %s)" % (first.pathspec, (first.entry or "?")[:SHORT_KEY])
        if len(tasks) > 1:
            who += " and %s with the same" % format_count(len(tasks) - 1, "other task")
        observed = observed_count(groups_from_json(first.dependencies))
        lines += [
            "",
            "%s relies on (%d observed while the step ran, checked before every hit):"
            % (who, observed),
            text,
        ]
    if len(blocks) > DEPENDENCY_BLOCKS:
        rest = sum(len(tasks) for tasks in list(blocks.values())[DEPENDENCY_BLOCKS:])
        lines += [
            "",
            "%s with other dependencies not shown: --json lists every task's"
            % format_count(rest, "more task"),
        ]
    if absent and blocks:
        lines += [
            "",
            "no entry to show for %s (not stored, or removed since)"
            % ", ".join(e.pathspec for e in absent),
        ]
    return "\n".join(lines)


def values_text(entry: EntryInfo) -> str:
    """The VALUES cell of `list`: foreach items, then parameters (``-``: none known)."""
    if entry.manifest is None:
        return "-"
    items, params = context_of(entry.manifest)
    parts = ", ".join("%s=%s" % (v.name, v.text) for v in items)
    if params:
        shown = ", ".join("%s=%s" % (v.name, v.text) for v in params)
        parts = "%s | %s" % (parts, shown) if parts else shown
    if len(parts) > VALUES_WIDTH:
        parts = parts[: VALUES_WIDTH - 3] + "..."
    return parts or "-"


def entries_table(entries: list[EntryInfo], now: float, show_flow: bool) -> str:
    headers = (["FLOW"] if show_flow else []) + [
        "STEP",
        "KEY",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "SIZE",
        "ORIGIN",
        "VALUES",
    ]
    rows = []
    for e in entries:
        origin = e.manifest.origin if e.manifest else "corrupt: %s" % e.error if e.error else "-"
        rows.append(
            ([e.flow] if show_flow else [])
            + [
                e.step,
                e.key[:SHORT_KEY],
                age(e.created, now),
                expiry(e, now),
                age(e.last_used, now),
                format_size(e.size) if e.readable else "-",
                origin,
                values_text(e),
            ]
        )
    return table(headers, rows)


def root_heading(root: str, count: int, shown: int | None = None) -> str:
    """'Cache ROOT: 3 entries', or with ``shown`` (fewer listed) '..., 2 shown'."""
    head = "Cache %s: %s" % (root, format_count(count, "entry"))
    return head if shown is None or shown == count else "%s, %d shown" % (head, shown)


def listing_cut(hidden: int, order: str) -> str:
    """The line that ends a `list` whose rows were cut."""
    return "%s not shown (sorted %s): --limit 0 shows all; --step, --since and --sort choose" % (
        format_count(hidden, "more entry", "more entries"),
        LIST_ORDERS[order],
    )


def entry_text(entry: EntryInfo, root: str, now: float) -> str:
    m = entry.manifest
    lines = [
        ("key", entry.key),
        ("flow", entry.flow),
        ("step", entry.step),
        ("root", root),
        ("object", entry.object.key),
    ]
    if m is None:
        lines.append(("error", entry.error or "unreadable"))
        return _fields(lines)
    lines += [
        ("origin", m.origin),
        ("created", "%s (%s)" % (timestamp(m.created), age(m.created, now))),
        (
            "expires",
            "never"
            if m.expires is None
            else "%s (%s)" % (timestamp(m.expires), expiry(entry, now)),
        ),
        ("last used", "%s (%s)" % (timestamp(entry.last_used), age(entry.last_used, now))),
        ("step time", format_duration(m.body_seconds)),
        ("size", format_size(entry.size)),
        ("signed", "yes" if m.signature else "no"),
        ("versions", ", ".join("%s %s" % kv for kv in sorted(m.versions.items())) or "-"),
    ]
    items, params = context_of(m)
    if items:
        lines.append(("foreach", "; ".join("%s=%s" % (v.name, v.detail) for v in items)))
    if params is None:
        lines.append(("parameters", "not recorded (stored by an older version)"))
    else:
        lines.append(
            ("parameters", ", ".join("%s=%s" % (v.name, v.detail) for v in params) or "none")
        )
    out = [_fields(lines), "", "key components:"]
    width = max([len(k) for k in m.components] + [0])
    for name in sorted(m.components):
        out.append("  %s  %s" % (name.ljust(width), _compact(m.components[name])))
    out += ["", "artifacts (%d):" % len(m.artifacts)]
    rows = [
        [name, format_size(a.stored_size), str(a.info.get("type") or "-"), a.sha]
        for name, a in sorted(m.artifacts.items())
    ]
    if rows:
        out += ["  " + line for line in table(["NAME", "SIZE", "TYPE", "SHA"], rows).splitlines()]
    if m.passthrough:
        out += [
            "",
            "inherited artifacts a hit requires unchanged: %s" % ", ".join(sorted(m.passthrough)),
        ]
    out += ["", dependencies_text(m)]
    return "\n".join(out)


def _fields(pairs: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join("%s  %s" % (k.ljust(width), v) for k, v in pairs)


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


# -- stats ---------------------------------------------------------------------
def stats_dict(stats: StepStats) -> dict[str, Any]:
    return {
        "entries": stats.entries,
        "expired": stats.expired,
        "corrupt": stats.corrupt,
        "blobs": stats.blobs,
        "bytes": stats.bytes,
        "blob_bytes": stats.blob_bytes,
        "manifest_bytes": stats.manifest_bytes,
    }


def stats_json(
    flow: str | None,
    step: str | None,
    per_root: list[tuple[str, StepStats, list[StepStats]]],
) -> dict[str, Any]:
    """Totals (summed over roots), then per flow/step, then per root."""
    total = StepStats(flow, step)
    steps: dict[tuple, StepStats] = {}
    for _root, t, per_step in per_root:
        _add(total, t)
        for s in per_step:
            _add(steps.setdefault((s.flow, s.step), StepStats(s.flow, s.step)), s)
    doc = {"flow": flow, "step": step}
    doc.update(stats_dict(total))
    doc["steps"] = [
        dict(flow=s.flow, step=s.step, **stats_dict(s)) for _, s in sorted(steps.items())
    ]
    doc["roots"] = [
        dict(
            root=root,
            steps=[dict(flow=s.flow, step=s.step, **stats_dict(s)) for s in per_step],
            **stats_dict(t),
        )
        for root, t, per_step in per_root
    ]
    return doc


def _add(into: StepStats, other: StepStats) -> None:
    for name in ("entries", "expired", "corrupt", "blobs", "blob_bytes", "manifest_bytes"):
        setattr(into, name, getattr(into, name) + getattr(other, name))


def stats_text(root: str, total: StepStats, per_step: list[StepStats], show_flow: bool) -> str:
    headers = (["FLOW"] if show_flow else []) + ["STEP", "ENTRIES", "EXPIRED", "BLOBS", "SIZE"]
    rows = [
        ([s.flow or ""] if show_flow else [])
        + [s.step or "", str(s.entries), str(s.expired), str(s.blobs), format_size(s.bytes)]
        for s in per_step
    ]
    rows.append(
        (["total"] if show_flow else [])
        + [
            "" if show_flow else "total",
            str(total.entries),
            str(total.expired),
            str(total.blobs),
            format_size(total.bytes),
        ]
    )
    head = "Cache %s: %s, %s, %s (shared blobs counted once)%s" % (
        root,
        format_count(total.entries, "entry"),
        format_count(total.blobs, "blob"),
        format_size(total.bytes),
        ", %d expired" % total.expired if total.expired else "",
    )
    if total.corrupt:
        head += ", %d corrupt" % total.corrupt
    if not per_step:
        return head
    right = ("ENTRIES", "EXPIRED", "BLOBS", "SIZE")
    return head + "\n" + table(headers, rows, right=right)


def audit_rows(counts, step: str | None = None) -> list[dict[str, Any]]:
    """Audited hits and mismatches per step (audit.py), from Cache.audit_counts."""
    return [
        {"flow": flow, "step": name, "audited": audited, "mismatches": bad}
        for (flow, name), (audited, bad) in sorted(counts.items())
        if step is None or name == step
    ]


def audits_text(rows: list[dict[str, Any]]) -> str:
    table_rows = [[r["flow"], r["step"], str(r["audited"]), str(r["mismatches"])] for r in rows]
    return "Audits:\n" + table(
        ["FLOW", "STEP", "AUDITED", "MISMATCHES"], table_rows, right=("AUDITED", "MISMATCHES")
    )


# -- removals ------------------------------------------------------------------
def removal_json(results: list[tuple[Plan, Outcome | None]], dry_run: bool) -> dict[str, Any]:
    roots = []
    for plan, outcome in results:
        roots.append(
            {
                "root": plan.root,
                "entries": [
                    {
                        "flow": e.flow,
                        "step": e.step,
                        "key": e.key,
                        "reason": reason,
                        "created": e.created,
                        "last_used": e.last_used,
                        "size": e.size,
                    }
                    for e, reason in plan.entries
                ],
                "markers": outcome.markers if outcome else len(plan.markers),
                "blobs": outcome.blobs if outcome else len(plan.blobs),
                "blobs_kept_young": len(plan.young_blobs),
                "blobs_spared": outcome.blobs_spared if outcome else 0,
                "locks": outcome.locks if outcome else len(plan.locks),
                "incomplete_uploads": outcome.uploads if outcome else len(plan.uploads),
                "audit_records": outcome.records if outcome else len(plan.records),
                "bytes_freed": outcome.bytes_freed if outcome else plan.bytes_freed,
            }
        )
    return {
        "dry_run": dry_run,
        "entries": sum(len(r["entries"]) for r in roots),
        "markers": sum(r["markers"] for r in roots),
        "blobs": sum(r["blobs"] for r in roots),
        "bytes_freed": sum(r["bytes_freed"] for r in roots),
        "roots": roots,
    }


def plan_summary(plan: Plan) -> str:
    """One line: what a plan would remove (for the confirmation question)."""
    what = format_count(len(plan.entries), "entry")
    if plan.blobs:
        what += " and " + format_count(len(plan.blobs), "blob")
    return "%s (%s) from %s" % (what, format_size(plan.bytes_freed), plan.root)


def removal_text(
    plan: Plan,
    outcome: Outcome | None,
    now: float,
    show_flow: bool,
    grace: float | None,
    verbose: bool = False,
) -> str:
    """What was removed (``outcome``) or would be (dry run: ``outcome`` is None).

    One row per entry, or, past TABLE_ROWS entries and unless ``verbose``, one
    row per step and reason."""
    entries = outcome.entries if outcome else len(plan.entries)
    blobs = outcome.blobs if outcome else len(plan.blobs)
    freed = format_size(outcome.bytes_freed if outcome else plan.bytes_freed)
    removed = "%s %s" % (
        "would remove" if outcome is None else "removed",
        format_count(entries, "entry"),
    )
    if grace is None:  # invalidate: entries only
        head = "%s: %s freed (unreferenced blobs are deleted by `prune`)" % (removed, freed)
    else:
        head = "%s and %s: %s %s" % (
            removed,
            format_count(blobs, "unreferenced blob"),
            freed,
            "would be freed" if outcome is None else "freed",
        )
    lines = ["Cache %s: %s" % (plan.root, head)]
    if len(plan.entries) > TABLE_ROWS and not verbose:
        lines += ["  " + line for line in removal_groups(plan, show_flow).splitlines()]
        lines.append("  (one row per step and reason; --verbose lists every entry)")
    elif plan.entries:
        headers = (["FLOW"] if show_flow else []) + [
            "STEP",
            "KEY",
            "REASON",
            "CREATED",
            "LAST USED",
            "SIZE",
        ]
        rows = [
            ([e.flow] if show_flow else [])
            + [
                e.step,
                e.key[:SHORT_KEY],
                reason,
                age(e.created, now),
                age(e.last_used, now),
                format_size(e.size),
            ]
            for e, reason in plan.entries
        ]
        lines += ["  " + line for line in table(headers, rows).splitlines()]
    if plan.young_blobs and grace is not None:
        lines.append(
            "  kept %s younger than %s (--grace): a run may be storing an entry that uses them"
            % (format_count(len(plan.young_blobs), "unreferenced blob"), format_duration(grace))
        )
    if plan.locks and grace is not None:
        lines.append(
            "  %s %s left by tasks that died holding them (lock=True)"
            % (
                "removed" if outcome else "would remove",
                format_count(len(plan.locks), "abandoned lock"),
            )
        )
    if plan.uploads and grace is not None:
        lines.append(
            "  %s %s that killed writers left"
            % (
                "aborted" if outcome else "would abort",
                format_count(len(plan.uploads), "incomplete multipart upload"),
            )
        )
    if plan.records:
        lines.append(
            "  %s %s about entries that were replaced or removed"
            % (
                "removed" if outcome else "would remove",
                format_count(len(plan.records), "audit record"),
            )
        )
    if outcome is not None and outcome.blobs_spared:
        lines.append(
            "  kept %s that an entry stored during the prune references"
            % format_count(outcome.blobs_spared, "blob")
        )
    return "\n".join(lines)


def removal_groups(plan: Plan, show_flow: bool) -> str:
    """The removed entries summed up per flow, step and reason: how many, and the
    size of their blobs (each distinct blob once, as in `stats`)."""
    groups: dict[tuple[str, str, str], list[EntryInfo]] = {}
    for entry, reason in plan.entries:
        groups.setdefault((entry.flow, entry.step, reason), []).append(entry)
    rows = []
    for (flow, step, reason), entries in sorted(groups.items()):
        sizes: dict[str, int] = {}
        for entry in entries:
            sizes.update(entry.blob_sizes())
        rows.append(
            ([flow] if show_flow else [])
            + [step, reason, str(len(entries)), format_size(sum(sizes.values()))]
        )
    headers = (["FLOW"] if show_flow else []) + ["STEP", "REASON", "ENTRIES", "SIZE"]
    return table(headers, rows, right=("ENTRIES", "SIZE"))
