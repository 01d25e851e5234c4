"""The memoize card as HTML: pure, from a data.CardReport.

One self-contained document: inline CSS, an inline SVG chart, no script, no
font or image fetched from anywhere (cards are opened offline, in `card view`
and `card server`, and in the Metaflow UI's sandboxed frame). Every value from
the run is escaped.

Layout: the totals, the time saved per step as bars, then one section per
memoized step with a row per task. A step with more than ``OPEN_ROWS`` tasks
(a wide foreach) shows its rows folded (``<details>``), at most ``MAX_ROWS`` of
them, the tasks that ran first; the rest are counted, and ``memoize explain``
lists them all.
"""

from __future__ import annotations

from html import escape

from ..durations import format_count, format_duration
from .data import CLONED_HIT, CardReport, StepRows, TaskRow

#: a step with more tasks than this shows its rows folded
OPEN_ROWS = 12
#: at most this many task rows per step
MAX_ROWS = 100
#: the chart: width of the step-name column and of the longest bar, in pixels
_LABEL_WIDTH = 170
_BAR_WIDTH = 420
_BAR_HEIGHT = 18
_BAR_GAP = 8

#: row order within a step: what ran (and why) before what hit
_DECISION_ORDER = {
    "miss": 0,
    "refresh": 1,
    "audit mismatch": 2,
    "cache error": 3,
    "uncacheable": 4,
    "audited hit": 5,
    "off": 6,
    "hit": 7,
    CLONED_HIT: 8,
}
#: CSS class of each decision's badge
_BADGE = {
    "hit": "hit",
    CLONED_HIT: "clone",
    "miss": "miss",
    "refresh": "refresh",
    "audit mismatch": "error",
    "cache error": "error",
}

_CSS = """
:root { color-scheme: light; }
body { margin: 0; padding: 20px 24px; background: #fff; color: #1f2328;
  font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 20px; margin: 0 0 2px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 0; display: inline; }
.sub { color: #57606a; margin: 0 0 16px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.totals { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0 4px; }
.tile { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; min-width: 92px; }
.tile .n { font-size: 22px; font-weight: 600; }
.tile .l { color: #57606a; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.tile.saved { border-color: #2da44e; }
.note { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; }
.step { border: 1px solid #d0d7de; border-radius: 6px; margin: 12px 0; padding: 10px 14px; }
.step .meta { color: #57606a; margin-left: 8px; }
table { border-collapse: collapse; width: 100%; margin-top: 8px; }
th, td { text-align: left; padding: 5px 8px; border-top: 1px solid #eaeef2; vertical-align: top; }
th { font-size: 12px; color: #57606a; font-weight: 600; border-top: none; }
td.num, th.num { text-align: right; white-space: nowrap; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; white-space: nowrap; background: #eaeef2; color: #424a53; }
.badge.hit { background: #dafbe1; color: #116329; }
.badge.clone { background: #ddf4ff; color: #0a5a8a; }
.badge.miss { background: #fff1e5; color: #953800; }
.badge.refresh { background: #fbefff; color: #6e40c9; }
.badge.error { background: #ffebe9; color: #a40e26; }
details > summary { cursor: pointer; color: #0969da; margin-top: 6px; }
.more { color: #57606a; font-style: italic; }
svg text { font: 12px -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #1f2328; }
"""


def render_html(report: CardReport) -> str:
    """The whole card, a complete HTML document."""
    flow, _, run_id = report.run.partition("/")
    title = "@memoize in %s" % report.run
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>%s</title>" % escape(title),
        "<style>%s</style></head><body>" % _CSS,
        '<h1>@memoize <span class="mono">%s</span></h1>' % escape(report.run),
    ]
    totals = report.totals()
    memoized = [s for s in report.steps if s.memoized]
    plain = [s.step for s in report.steps if not s.memoized and not s.unreadable]
    if not memoized:
        parts.append(_no_memoized_steps(report, plain))
        parts.append(_footer(report))
        parts.append("</body></html>")
        return "\n".join(parts)
    parts.append('<p class="sub">%s</p>' % escape(_sentence(totals)))
    parts.append(_totals_html(totals))
    parts.append("<h2>Time saved per step</h2>")
    parts.append(_chart(memoized))
    parts.append("<h2>Steps</h2>")
    for step in memoized:
        parts.append(_step_html(step, flow, run_id))
    if plain:
        parts.append(
            '<p class="sub" id="not-memoized">Not memoized (no <code>@memoize</code>): %s</p>'
            % ", ".join("<code>%s</code>" % escape(s) for s in plain)
        )
    unreadable = sum(s.unreadable for s in report.steps)
    if unreadable:
        parts.append(
            '<p class="note">%s could not be read; they are left out.</p>'
            % escape(format_count(unreadable, "task's metadata", "tasks' metadata"))
        )
    parts.append(_footer(report))
    parts.append("</body></html>")
    return "\n".join(parts)


def _sentence(totals) -> str:
    """The end-of-run line's words: '4 hits (3 cloned), 2 misses, 1 refresh, saved 41s'."""
    hits = format_count(int(totals["hits"]), "hit")
    if totals["cloned"]:
        hits += " (%d cloned)" % totals["cloned"]
    parts = [hits, format_count(int(totals["misses"]), "miss")]
    if totals["refreshes"]:
        parts.append(format_count(int(totals["refreshes"]), "refresh"))
    if totals["other"]:
        parts.append("%d other" % totals["other"])
    return "%s of %s: %s, saved %s" % (
        "All" if totals["hits"] == totals["tasks"] else "Decisions",
        format_count(int(totals["tasks"]), "memoized task"),
        ", ".join(parts),
        format_duration(totals["saved_seconds"]),
    )


def _totals_html(totals) -> str:
    tiles = [
        ("tasks", "memoized tasks", str(int(totals["tasks"]))),
        ("hits", "hits", str(int(totals["hits"]))),
        ("cloned", "of them cloned", str(int(totals["cloned"]))),
        ("misses", "misses", str(int(totals["misses"]))),
        ("refreshes", "refreshes", str(int(totals["refreshes"]))),
        ("other", "other", str(int(totals["other"]))),
        ("saved", "time saved", format_duration(totals["saved_seconds"])),
    ]
    cells = [
        '<div class="tile%s" data-total="%s"><div class="n">%s</div><div class="l">%s</div></div>'
        % (" saved" if name == "saved" else "", name, escape(value), escape(label))
        for name, label, value in tiles
    ]
    return '<div class="totals" id="memoize-totals">%s</div>' % "".join(cells)


def _chart(steps: list[StepRows]) -> str:
    """Horizontal bars, one per memoized step: the body time its hits skipped."""
    longest = max([s.saved_seconds for s in steps] + [0.0])
    height = len(steps) * (_BAR_HEIGHT + _BAR_GAP) + _BAR_GAP
    width = _LABEL_WIDTH + _BAR_WIDTH + 90
    out = [
        '<svg id="saved-chart" role="img" width="%d" height="%d" viewBox="0 0 %d %d" '
        'xmlns="http://www.w3.org/2000/svg">' % (width, height, width, height),
        "<title>Time saved per step</title>",
    ]
    for i, step in enumerate(steps):
        y = _BAR_GAP + i * (_BAR_HEIGHT + _BAR_GAP)
        saved = step.saved_seconds
        bar = (
            0 if longest <= 0 else max(int(round(_BAR_WIDTH * saved / longest)), 2 if saved else 0)
        )
        label = step.step if len(step.step) <= 22 else step.step[:21] + "\u2026"
        out.append(
            '<g data-step="%s" data-saved="%.3f">'
            '<text x="%d" y="%d" text-anchor="end">%s</text>'
            '<rect x="%d" y="%d" width="%d" height="%d" rx="3" fill="%s"></rect>'
            '<text x="%d" y="%d">%s</text></g>'
            % (
                escape(step.step),
                saved,
                _LABEL_WIDTH - 8,
                y + _BAR_HEIGHT - 5,
                escape(label),
                _LABEL_WIDTH,
                y,
                bar,
                _BAR_HEIGHT,
                "#2da44e" if saved else "#d0d7de",
                _LABEL_WIDTH + bar + 6,
                y + _BAR_HEIGHT - 5,
                escape(format_duration(saved)),
            )
        )
    out.append("</svg>")
    if longest <= 0:
        out.append('<p class="sub">No hits in this run: no step body was skipped.</p>')
    return "".join(out)


def _step_html(step: StepRows, flow: str, run_id: str) -> str:
    decisions = step.decisions()
    head = ", ".join(
        "%d %s" % (n, d) for d, n in sorted(decisions.items(), key=lambda kv: _order(kv[0]))
    )
    tasks = len(step.tasks)
    out = [
        '<section class="step" data-step="%s">' % escape(step.step),
        "<h3>%s</h3>" % escape(step.step),
        '<span class="meta">%s: %s; saved %s</span>'
        % (escape(format_count(tasks, "task")), escape(head), format_duration(step.saved_seconds)),
    ]
    if tasks > MAX_ROWS:  # the tasks that ran first (a stable sort: in task order)
        rows = sorted(step.tasks, key=lambda r: _order(r.decision))[:MAX_ROWS]
    else:
        rows = list(step.tasks)  # in task order
    table = _task_table(step, rows, flow, run_id)
    if tasks > OPEN_ROWS:
        out.append(
            "<details><summary>%s</summary>%s</details>"
            % (escape("Show the %s" % format_count(tasks, "task")), table)
        )
    else:
        out.append(table)
    if tasks > len(rows):
        out.append(
            '<p class="more">%s not shown (the tasks that ran are listed first); '
            "<code>python flow.py memoize explain %s --run %s</code> lists them all.</p>"
            % (
                escape(format_count(tasks - len(rows), "more task")),
                escape(step.step),
                escape(run_id),
            )
        )
    out.append("</section>")
    return "\n".join(out)


def _task_table(step: StepRows, rows: list[TaskRow], flow: str, run_id: str) -> str:
    has_items = any(r.item for r in rows)
    headers = ["Task"] + (["Item"] if has_items else []) + ["Decision", "Reason", "Origin"]
    out = ["<table><thead><tr>"]
    out += ["<th>%s</th>" % h for h in headers]
    out.append('<th class="num">Saved</th></tr></thead><tbody>')
    for r in rows:
        cells = ['<td class="mono">%s</td>' % escape(r.task_id or "?")]
        if has_items:
            cells.append('<td class="mono">%s</td>' % escape(r.item or "-"))
        cells.append(
            '<td><span class="badge %s">%s</span></td>'
            % (_BADGE.get(r.decision, "other"), escape(r.decision))
        )
        cells.append("<td>%s</td>" % escape(r.reason or "-"))
        cells.append('<td class="mono">%s</td>' % escape(_origin_text(r.origin, flow, run_id)))
        cells.append(
            '<td class="num">%s</td>' % (format_duration(r.saved_seconds) if r.is_hit else "")
        )
        out.append(
            '<tr data-step="%s" data-task="%s" data-decision="%s">%s</tr>'
            % (escape(step.step), escape(r.task_id), escape(r.decision), "".join(cells))
        )
    out.append("</tbody></table>")
    return "".join(out)


def _origin_text(origin: str, flow: str, run_id: str) -> str:
    """``run 1795/train/4``; ``this run: train/4``; ``-`` when none is recorded."""
    if not origin:
        return "-"
    parts = origin.split("/")
    if len(parts) == 4 and parts[0] == flow:
        if parts[1] == run_id:
            return "this run: %s/%s" % (parts[2], parts[3])
        return "run %s" % "/".join(parts[1:])
    return origin


def _order(decision: str) -> int:
    return _DECISION_ORDER.get(decision, 5)


def _no_memoized_steps(report: CardReport, plain: list[str]) -> str:
    steps = ", ".join("<code>%s</code>" % escape(s) for s in plain) or "none"
    return (
        '<div class="note" id="no-memoized-steps"><p><strong>No memoized task in this run'
        "</strong>: nothing was looked up in the cache, and nothing was saved.</p>"
        "<p>Steps of the run: %s. Put <code>@memoize</code> on the steps whose results "
        "should be reused, or run with <code>--with memoize</code>.</p></div>" % steps
    )


def _footer(report: CardReport) -> str:
    where = " (rendered in %s)" % report.rendered_in if report.rendered_in else ""
    return (
        '<p class="sub" style="margin-top:24px">Decisions as each task recorded them in its '
        "metadata%s. Why a step hit or missed, component by component: "
        "<code>memoize explain STEP</code>.</p>" % escape(where)
    )
