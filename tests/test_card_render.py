"""The memoize card's data and HTML, on synthetic decisions (no flow runs):
rows from task metadata of this and older versions, totals, a wide foreach,
escaping, and a run with nothing memoized."""

import re

from metaflow_extensions.memoize.plugins.memoize.card.data import (
    CLONED_HIT,
    build_report,
    read_run,
    row_of,
)
from metaflow_extensions.memoize.plugins.memoize.card.render import MAX_ROWS, render_html
from metaflow_extensions.memoize.plugins.memoize.runtime.summary import TaskOutcome, outcome_of

RUN = "TrainFlow/17"
HIT = "same key, and everything the entry recorded using is unchanged"


class FakeTask:
    """What the card reads of a Client API task: its pathspec and metadata."""

    def __init__(self, step, task_id, metadata):
        self.path_components = ["TrainFlow", "17", step, task_id]
        self._metadata = metadata

    @property
    def metadata_dict(self):
        if isinstance(self._metadata, Exception):
            raise self._metadata
        return self._metadata


class FakeStep(list):
    def __init__(self, name, tasks):
        super().__init__(tasks)
        self.id = name


def _rows(html):
    return re.findall(r'<tr data-step="([^"]+)" data-task="([^"]*)" data-decision="([^"]+)">', html)


def _totals(html):
    return dict(re.findall(r'data-total="([a-z]+)"><div class="n">([^<]*)</div>', html))


def test_rows_from_metadata_of_this_version_and_older_ones():
    steps = [
        FakeStep(
            "train",
            [
                FakeTask(
                    "train",
                    "4",
                    {
                        "memoize_status": "hit",
                        "memoize_cloned": "true",
                        "memoize_origin": "TrainFlow/12/train/9",
                        "memoize_saved_seconds": "61.5",
                        "memoize_reason": HIT,
                        "memoize_foreach": "model='linear'",
                    },
                ),
                # an older version: a hit without saved time, origin or reason
                FakeTask("train", "5", {"memoize_status": "hit"}),
                FakeTask(
                    "train",
                    "6",
                    {
                        "memoize_status": "miss",
                        "memoize_reason": "no entry for this foreach item",
                        "memoize_saved_seconds": "not a number",
                    },
                ),
                FakeTask("train", "7", RuntimeError("metadata service down")),
            ],
        ),
        FakeStep("start", [FakeTask("start", "1", {})]),  # no @memoize
        FakeStep(
            "featurize",
            [FakeTask("featurize", "2", {"memoize_status": "disabled"})],
        ),
    ]
    found = read_run(steps, ["start", "featurize", "train"])
    assert [(name, len(outcomes), bad) for name, outcomes, bad in found] == [
        ("start", 0, 0),
        ("featurize", 1, 0),
        ("train", 3, 1),
    ]
    report = build_report(RUN, found)
    rows = {r.task_id: r for r in report.steps[2].tasks}
    assert rows["4"].decision == CLONED_HIT and rows["4"].saved_seconds == 61.5
    assert rows["4"].origin == "TrainFlow/12/train/9" and rows["4"].item == "model='linear'"
    assert rows["5"].decision == "hit" and rows["5"].origin == "" and rows["5"].saved_seconds == 0
    assert rows["6"].decision == "miss" and rows["6"].reason == "no entry for this foreach item"
    assert report.steps[1].tasks[0].decision == "off"
    assert report.totals() == {
        "tasks": 4,
        "hits": 2,
        "cloned": 1,
        "misses": 1,
        "refreshes": 0,
        "other": 1,
        "saved_seconds": 61.5,
    }

    html = render_html(report)
    assert _rows(html) == [
        ("featurize", "2", "off"),
        ("train", "4", CLONED_HIT),
        ("train", "5", "hit"),
        ("train", "6", "miss"),
    ]
    assert "this run" not in html and "run 12/train/9" in html
    assert "1 task&#x27;s metadata could not be read" in html
    assert '<p class="sub" id="not-memoized">' in html and "<code>start</code>" in html
    assert _totals(html)["saved"] == "1m02s"


def test_a_clone_of_an_older_version_does_not_show_its_origins_miss_reason():
    # the Client API shows a clone its origin's fields: a miss reason there is not the hit's
    outcome = outcome_of(
        FakeTask("train", "4", {"memoize_status": "hit", "memoize_reason": "no entry"})
    )
    assert row_of(outcome).reason == HIT


def _outcome(step, task_id, status, **kw):
    return TaskOutcome(step=step, status=status, task_id=str(task_id), **kw)


def test_a_wide_foreach_is_folded_and_cut_with_what_ran_first():
    tasks = [
        _outcome("fit", i, "hit", saved_seconds=2.0, origin="TrainFlow/17/x/1") for i in range(250)
    ]
    tasks[137] = _outcome("fit", 137, "miss", reason="no entry for this foreach item")
    html = render_html(build_report(RUN, [("fit", tasks, 0)]))
    assert "<details><summary>Show the 250 tasks</summary>" in html
    rows = _rows(html)
    assert len(rows) == MAX_ROWS
    assert rows[0] == ("fit", "137", "miss")  # what ran comes first
    assert [int(t) for _, t, _ in rows[1:]] == [i for i in range(250) if i != 137][: MAX_ROWS - 1]
    assert "150 more tasks not shown" in html
    assert "memoize explain fit --run 17" in html
    assert "this run: x/1" in html
    assert _totals(html)["hits"] == "249" and _totals(html)["saved"] == "8m18s"


def test_a_few_tasks_are_shown_open():
    tasks = [_outcome("fit", i, "hit") for i in range(3)]
    html = render_html(build_report(RUN, [("fit", tasks, 0)]))
    assert "<details>" not in html and len(_rows(html)) == 3


def test_values_from_the_run_are_escaped():
    evil = '<script>alert("x")</script>'
    report = build_report(
        "Flow/<b>",
        [("step<i>", [_outcome("step<i>", 1, "miss", reason=evil, item=evil)], 0)],
    )
    html = render_html(report)
    assert "<script" not in html and "<b>" not in html and "<i>" not in html
    assert "&lt;script&gt;" in html


def test_a_run_without_memoized_tasks_says_so():
    html = render_html(build_report(RUN, [("start", [], 0), ("end", [], 0)]))
    assert 'id="no-memoized-steps"' in html
    assert "No memoized task in this run" in html
    assert "<code>start</code>, <code>end</code>" in html
    assert "<svg" not in html and not _rows(html)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


def test_root_causes_need_the_flow_and_are_only_a_hint():
    broken = _outcome("train", 3, "miss", reason="input 'x' changed", changed_inputs=("x",))

    class NoGraph:
        def __getitem__(self, name):
            raise KeyError(name)

    report = build_report(RUN, [("train", [broken], 0)], flow_class=object, graph=NoGraph())
    assert report.steps[0].tasks[0].reason == "input 'x' changed"
