"""Hits decided in the orchestrator: a task whose entry's origin is in the run's own
datastore is completed as a clone of that origin, and no task process is launched.

The clone must be exactly what the task would have produced; whenever it would
not be (different foreach position, an inherited artifact outside the key
changed, origin gone), the orchestrator composes the task instead
(tests/test_composed_hits.py); a decorator with task-side output, a refresh or
clones turned off launch the task, which decides for itself.
"""

import shutil
import textwrap

import pytest

from metaflow_extensions.memoize.plugins.memoize.runtime.orchestrator_hits import clone_mismatch

_TASKS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from metaflow import Flow, namespace
    namespace(None)
    run = Flow(sys.argv[1])[sys.argv[2]]
    out = {}
    for step in run:
        rows = []
        for task in step:
            arts = {a.id: repr(a.data) for a in task.artifacts
                    if not a.id.startswith("_") and a.id != "name"}
            stack = [[f.step, f.var, f.num_splits, f.index] for f in task["_foreach_stack"].data]
            md = {k: v for k, v in task.metadata_dict.items() if k.startswith("memoize_")}
            rows.append({"index": task.index, "stack": stack, "artifacts": arts, "meta": md})
        out[step.id] = sorted(rows, key=lambda r: json.dumps([r["stack"], r["artifacts"]]))
    print(json.dumps(out, sort_keys=True))
    """
)


def tasks_of(runner, flow_name, run_id, env=None):
    """{step: [{index, foreach stack, user artifacts, memoize metadata}]} of a run."""
    return runner.client_json(_TASKS_SCRIPT, flow_name, run_id, env=env)


def without_meta(tasks):
    return {
        step: [{k: v for k, v in row.items() if k != "meta"} for row in rows]
        for step, rows in tasks.items()
    }


# An unchanged re-run of every shape launching no task and equal to the first:
# test_shapes.py's test_every_shape_is_restored_exactly_on_the_second_run checks
# it on the same two runs of shapes_flow.py it already makes.

FOREACH_DUPLICATES = """
    from _counter import record
    from metaflow import FlowSpec, memoize, step

    class DupFlow(FlowSpec):
        @step
        def start(self):
            self.items = ["x", "x", "y"]
            self.next(self.work, foreach="items")

        @memoize
        @step
        def work(self):
            record("work", self.input)
            self.out = "%s-done" % self.input
            self.next(self.join)

        @step
        def join(self, inputs):
            self.outs = sorted(i.out for i in inputs)
            self.next(self.end)

        @step
        def end(self):
            pass

    if __name__ == "__main__":
        DupFlow()
"""


@pytest.mark.slow
def test_a_foreach_task_is_not_cloned_from_an_origin_at_another_index(runner):
    # items 0 and 1 are equal, so they share one key; the entry's origin has one
    # index only, and a clone would give the other task the wrong position
    runner.add_flow("dup_flow.py", FOREACH_DUPLICATES)
    runner.run("dup_flow.py")
    executed = runner.count("work")
    second = runner.run("dup_flow.py")

    assert runner.count("work") == executed
    work = tasks_of(runner, "DupFlow", second.run_id)["work"]
    assert sorted(row["index"] for row in work) == [0, 1, 2]
    assert [row["artifacts"]["out"] for row in sorted(work, key=lambda r: r["index"])] == [
        "'x-done'",
        "'x-done'",
        "'y-done'",
    ]
    how = sorted(row["meta"].get("memoize_completed") for row in work)
    # the third one is composed in the orchestrator at its own position
    assert how == ["cloned", "cloned", "composed"], work
    assert all(r["meta"]["memoize_status"] == "hit" for r in work)
    assert "work" not in second.launched_steps()
    assert "[memoize] 3 hits, 0 misses" in second.output
    join = tasks_of(runner, "DupFlow", second.run_id)["join"][0]
    assert join["artifacts"]["outs"] == repr(["x-done", "x-done", "y-done"])


UNKEYED_INPUT = """
    from _counter import record
    from metaflow import FlowSpec, Parameter, memoize, step

    class UnkeyedFlow(FlowSpec):
        note = Parameter("note", default="one")

        @step
        def start(self):
            self.x = 3
            self.label = "label-" + self.note
            self.next(self.square)

        @memoize(inputs=["x"])
        @step
        def square(self):
            record("square")
            self.y = self.x * self.x
            self.next(self.end)

        @step
        def end(self):
            self.seen = (self.y, self.label)

    if __name__ == "__main__":
        UnkeyedFlow()
"""


def test_a_task_whose_unkeyed_inherited_artifact_changed_is_not_cloned(runner):
    runner.add_flow("unkeyed_flow.py", UNKEYED_INPUT)
    runner.run("unkeyed_flow.py", "--note", "one")
    second = runner.run("unkeyed_flow.py", "--note", "two")

    assert runner.count("square") == 1  # the key is x only: a hit
    tasks = tasks_of(runner, "UnkeyedFlow", second.run_id)
    square = tasks["square"][0]
    assert square["meta"]["memoize_status"] == "hit"
    assert square["meta"]["memoize_completed"] == "composed"
    # the origin carried label-one; the task must carry this run's label
    assert square["artifacts"]["label"] == "'label-two'"
    assert tasks["end"][0]["artifacts"]["seen"] == repr((9, "label-two"))


@pytest.mark.slow
def test_origin_run_deleted_every_hit_is_composed(runner):
    runner.add_flow("shapes_flow.py")
    first = runner.run("shapes_flow.py")
    counts = runner.executions()
    before = without_meta(tasks_of(runner, "ShapesFlow", first.run_id))
    shutil.rmtree(runner.workdir / ".metaflow" / "ShapesFlow" / first.run_id)

    second = runner.run("shapes_flow.py")

    assert runner.executions() == counts
    assert second.launched_steps() == set(), second.output
    tasks = tasks_of(runner, "ShapesFlow", second.run_id)
    assert without_meta(tasks) == before
    metas = [row["meta"] for rows in tasks.values() for row in rows]
    assert all(m["memoize_status"] == "hit" for m in metas)
    assert all(m.get("memoize_completed") == "composed" for m in metas)
    assert tasks["end"][0]["artifacts"]["final"] == repr(("big:182", 43, [10, 18, 154]))


@pytest.mark.slow
def test_clone_hits_can_be_turned_off(runner):
    runner.add_flow("shapes_flow.py")
    first = runner.run("shapes_flow.py")
    second = runner.run("shapes_flow.py", env={"METAFLOW_MEMOIZE_CLONE": "0"})

    assert "inner" in second.launched_steps()
    tasks = tasks_of(runner, "ShapesFlow", second.run_id)
    assert without_meta(tasks) == without_meta(tasks_of(runner, "ShapesFlow", first.run_id))
    metas = [row["meta"] for rows in tasks.values() for row in rows]
    assert all(m["memoize_status"] == "hit" and "memoize_cloned" not in m for m in metas)


@pytest.mark.slow
def test_refresh_launches_and_recomputes(runner):
    runner.add_flow("shapes_flow.py")
    runner.run("shapes_flow.py")
    before = runner.count("start")
    second = runner.run("shapes_flow.py", "--memoize-refresh-step", "start")

    assert runner.count("start") == before + 1
    assert "start" in second.launched_steps()


CARD_FLOW = """
    from _counter import record
    from metaflow import FlowSpec, card, memoize, step

    class CardFlow(FlowSpec):
        @card
        @memoize
        @step
        def start(self):
            record("start")
            self.value = 5
            self.next(self.end)

        @memoize
        @step
        def end(self):
            record("end")

    if __name__ == "__main__":
        CardFlow()
"""


def test_a_step_with_task_side_output_is_launched(runner):
    # @card renders a card in the task: a clone would have none
    runner.add_flow("card_flow.py", CARD_FLOW)
    runner.run("card_flow.py")
    second = runner.run("card_flow.py")

    assert runner.count("start") == 1 and runner.count("end") == 1
    assert second.launched_steps() == {"start"}


_REGISTRATION_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from metaflow import Flow, namespace
    namespace(None)
    out = {}
    for step in Flow(sys.argv[1])[sys.argv[2]]:
        out[step.id] = [
            {
                "runtime": sum(1 for m in task.metadata if m.name == "runtime"),
                "user": task.metadata_dict.get("user"),
                "completed": task.metadata_dict.get("memoize_completed"),
                "ok": task.successful,
            }
            for task in step
        ]
    print(json.dumps(out))
    """
)


def test_every_task_is_registered_once_whether_completed_or_launched(runner):
    # The orchestrator registers a task's metadata in the check's thread, not when
    # the runtime creates the task; each task must still be registered (listed by
    # the client, with its system metadata), a launched one before it starts, and
    # a completed one only once: registering it again repeated the system fields.
    runner.add_flow("card_flow.py", CARD_FLOW)
    runner.run("card_flow.py")
    second = runner.run("card_flow.py")
    assert second.launched_steps() == {"start"}

    tasks = runner.client_json(_REGISTRATION_SCRIPT, "CardFlow", second.run_id)
    assert sorted(tasks) == ["end", "start"]
    for step in ("start", "end"):
        assert len(tasks[step]) == 1, tasks
        (task,) = tasks[step]
        assert task["ok"] and task["user"], (step, task)
    # the launched task registers itself as well (Metaflow's task.py)
    assert tasks["start"][0]["runtime"] >= 1 and tasks["start"][0]["completed"] is None
    assert tasks["end"][0]["completed"] == "cloned"
    assert tasks["end"][0]["runtime"] == 1, tasks["end"]


# -- the comparison itself --------------------------------------------------------
@pytest.mark.parametrize(
    "origin, parent, produced, expected",
    [
        ({"a": "1", "y": "9"}, {"a": "1"}, {"y": "9"}, None),
        ({"a": "1", "y": "9"}, {"a": "2"}, {"y": "9"}, "a differs"),
        ({"a": "1", "y": "9"}, {"a": "1", "b": "3"}, {"y": "9"}, "lacks b"),
        ({"a": "1", "y": "8"}, {"a": "1"}, {"y": "9"}, "not the entry's"),
        ({"a": "1", "y": "9", "z": "0"}, {"a": "1"}, {"y": "9"}, "z differs"),
        ({"a": "1", "y": "9", "_catch_exception": "e"}, {"a": "1"}, {"y": "9"}, "has _catch"),
    ],
)
def test_clone_mismatch_for_a_linear_step(origin, parent, produced, expected):
    found = clone_mismatch(
        is_join=False, origin=origin, parent=parent, produced=produced, class_level=set()
    )
    assert (found is None) if expected is None else (expected in found)


def test_clone_mismatch_for_a_join():
    produced = {"total": "t"}
    parent = {"p": "1", "_graph_info": "g", "branch_only": "b"}
    origin = {"p": "1", "_graph_info": "g", "total": "t"}
    kwargs = dict(is_join=True, produced=produced, class_level={"p"})
    # artifacts of one branch that the join did not merge are not carried
    assert clone_mismatch(origin=origin, parent=parent, **kwargs) is None
    # a parameter that the join would carry now but the origin lacks
    assert "lacks q" in clone_mismatch(
        origin=origin, parent=dict(parent, q="2"), **dict(kwargs, class_level={"p", "q"})
    )
    assert "p differs" in clone_mismatch(origin=origin, parent=dict(parent, p="7"), **kwargs)


@pytest.mark.slow
def test_a_clone_carries_this_runs_graph(runner):
    # a comment line shifts every step's line number in the graph Metaflow stores
    # with each task (`_graph_info`), not the keys: hits are still cloned, and
    # the clones carry this run's graph, not their origin's
    path = runner.add_flow("shapes_flow.py")
    first = runner.run("shapes_flow.py")
    path.write_text("# a comment\n" + path.read_text())
    second = runner.run("shapes_flow.py")

    assert second.launched_steps() == set(), second.output
    script = (
        "import json, sys; from metaflow import Task, namespace; namespace(None); "
        "print(json.dumps(Task('ShapesFlow/%s/start/1')['_graph_info'].data"
        "['steps']['end']['line']))"
    )
    before = runner.client_json(script % first.run_id)
    after = runner.client_json(script % second.run_id)
    assert after == before + 1


# -- which tasks the orchestrator tries at all --------------------------------------
class _Deco:
    def __init__(self, name, **args):
        self.name = name
        self.args = dict({"refresh": False, "outputs": None}, **args)


class _Task:
    def __init__(self, decorators, step="work", recursive=False, inputs=1):
        self.decorators = decorators
        self.step = step
        self.input_paths = ["1/start/%d" % i for i in range(inputs)]
        self.pathspec = "Flow/1/%s/9" % step
        self._recursive = recursive

    def is_recursive(self):
        return self._recursive


@pytest.mark.parametrize(
    "others, kwargs, eligible",
    [
        ([], {}, True),
        (["resources", "retry", "timeout", "environment", "secrets"], {}, True),
        (["card"], {}, False),
        (["catch"], {}, False),
        (["kubernetes"], {}, False),  # runs in another Python environment
        (["batch"], {}, False),
        (["pypi"], {}, False),
        (["conda"], {}, False),
        (["my_own_decorator"], {}, False),
        ([], {"outputs": ["a"]}, False),
        ([], {"refresh": True}, False),
        ([], {"recursive": True}, False),
        ([], {"inputs": 257}, False),
    ],
)
def test_which_tasks_the_orchestrator_may_clone(monkeypatch, others, kwargs, eligible):
    from metaflow_extensions.memoize.plugins.memoize.runtime.orchestrator_hits import (
        OrchestratorHits,
    )

    for name in ("METAFLOW_MEMOIZE_MODE", "METAFLOW_MEMOIZE_REFRESH", "METAFLOW_MEMOIZE_CLONE"):
        monkeypatch.delenv(name, raising=False)
    deco_args = {k: v for k, v in kwargs.items() if k in ("outputs", "refresh")}
    memoize = _Deco("memoize", **deco_args)
    task = _Task(
        [memoize] + [_Deco(n) for n in others],
        recursive=kwargs.get("recursive", False),
        inputs=kwargs.get("inputs", 1),
    )
    assert OrchestratorHits()._eligible(memoize, task) is eligible


def test_the_orchestrator_stops_checking_a_step_that_keeps_missing(monkeypatch):
    from metaflow_extensions.memoize.plugins.memoize.runtime import orchestrator_hits

    for name in ("METAFLOW_MEMOIZE_MODE", "METAFLOW_MEMOIZE_REFRESH", "METAFLOW_MEMOIZE_CLONE"):
        monkeypatch.delenv(name, raising=False)
    hits = orchestrator_hits.OrchestratorHits()
    outcomes = iter([True, False, False, False, False, False, False])
    tried = []

    def try_clone(deco, task):
        tried.append(task)
        return next(outcomes)

    monkeypatch.setattr(hits, "_try_clone", try_clone)
    memoize = _Deco("memoize")
    results = [hits(_Task([memoize])) for _ in range(7)]
    assert results == [True] + [False] * 6
    # a clone resets the count; after GIVE_UP_AFTER failures in a row, no more checks
    assert len(tried) == 1 + orchestrator_hits.GIVE_UP_AFTER
    # what the end-of-run summary learns: the six tasks that were launched
    assert len(hits.launched) == 6


@pytest.mark.slow
def test_a_clone_is_not_made_when_the_origins_blobs_are_gone_but_a_composed_hit_is(runner):
    runner.add_flow("shapes_flow.py")
    first = runner.run("shapes_flow.py")
    counts = runner.executions()
    # delete the blob of the artifact `start` produced from the datastore (the
    # cache still has it): a clone would reference a missing blob
    tasks = tasks_of(runner, "ShapesFlow", first.run_id)
    assert tasks["start"][0]["artifacts"]["base"] == "20"
    sha = runner.client_json(
        "import json; from metaflow import Task, namespace; namespace(None); "
        "print(json.dumps(Task('ShapesFlow/%s/start/1')['base']._object['sha']))" % first.run_id
    )
    blob = runner.workdir / ".metaflow" / "ShapesFlow" / "data" / sha[:2] / sha
    blob.unlink()

    second = runner.run("shapes_flow.py")

    assert runner.executions() == counts
    assert second.launched_steps() == set(), second.output
    after = tasks_of(runner, "ShapesFlow", second.run_id)
    # composed instead, with the blob copied back in from the cache
    assert after["start"][0]["meta"]["memoize_completed"] == "composed"
    assert blob.exists()
    assert after["start"][0]["artifacts"]["base"] == "20"
    assert after["fan_out"][0]["meta"].get("memoize_completed") == "cloned"
