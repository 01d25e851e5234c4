"""Hits composed in the orchestrator: when the entry's origin cannot simply be
cloned (the foreach list grew, shrank or was reordered, the origin is in another
datastore), the orchestrator writes the task itself: its input's artifacts, the
entry's outputs and this run's bookkeeping, and launches no process.

A composed task must be exactly the task an uncached run writes: every
artifact, bookkeeping included (`_foreach_stack`, `_transition`, ...), is
compared by value with an uncached run of the same parameters.
"""

import textwrap

import pytest
from test_cli import default_root

#: Every artifact of every task of a run, underscore ones included (the client
#: API hides those): {step: sorted [{name: repr(value)}]}.
_ALL_ARTIFACTS = textwrap.dedent(
    """
    import json, sys
    from metaflow import Flow, namespace
    from metaflow.datastore import FlowDataStore
    from metaflow.plugins.datastores.local_storage import LocalStorage
    namespace(None)
    flow_name, run_id, root = sys.argv[1], sys.argv[2], sys.argv[3]
    fds = FlowDataStore(flow_name, None, storage_impl=LocalStorage, ds_root=root)
    out = {}
    for step in Flow(flow_name)[run_id]:
        rows = []
        for task in step:
            ds = fds.get_task_datastore(run_id, step.id, task.id, mode="r")
            values = dict(ds.load_artifacts(list(ds._objects)))
            rows.append({n: repr(v) for n, v in values.items()})
        out[step.id] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))
    print(json.dumps(out, sort_keys=True))
    """
)

ITEMS_FLOW = """
    from _counter import record
    from metaflow import FlowSpec, Parameter, memoize, step

    class ItemsFlow(FlowSpec):
        items = Parameter("items", default="a,b,c")
        scale = Parameter("scale", default=3)
        GREETING = "hello"

        @memoize
        @step
        def start(self):
            record("start")
            self.names = self.items.split(",")
            self.next(self.body, foreach="names")

        @memoize
        @step
        def body(self):
            record("body", self.input)
            self.value = "%s:%d" % (self.input, len(self.input) * self.scale)
            self.next(self.post)

        @memoize
        @step
        def post(self):
            record("post", self.input)
            self.label = self.value.upper()
            self.next(self.join)

        @memoize
        @step
        def join(self, inputs):
            record("join")
            # sorted: before 2.13, Metaflow hands a foreach join its inputs in no
            # fixed order
            self.labels = sorted(i.label for i in inputs)
            self.merge_artifacts(inputs, include=["names"])
            self.next(self.end)

        @step
        def end(self):
            self.final = (self.labels, self.names, self.GREETING)

    if __name__ == "__main__":
        ItemsFlow()
"""

EIGHT = ",".join("abcdefgh")


def all_artifacts(runner, flow_name, run_id, root=None, env=None):
    root = str(root or runner.workdir / ".metaflow")
    return runner.client_json(_ALL_ARTIFACTS, flow_name, run_id, root, env=env)


def task_processes(result, step):
    """How many task processes the runtime started for ``step``."""
    return sum(
        1
        for line in result.output.splitlines()
        if "Task is starting." in line and "/%s/" % step in line
    )


def composed(result, step):
    return sum(
        1
        for line in result.memoize_lines()
        if "hit %s " % step in line and "composed in the orchestrator" in line
    )


def uncached(runner, flow_file, *args, env=None):
    return runner.run(flow_file, *args, env=dict(env or {}, METAFLOW_MEMOIZE_MODE="off"))


@pytest.mark.compat
def test_appending_one_item_runs_one_body_and_writes_what_an_uncached_run_writes(runner):
    runner.add_flow("items_flow.py", ITEMS_FLOW)
    runner.run("items_flow.py", "--items", EIGHT)
    before = runner.executions()

    appended = runner.run("items_flow.py", "--items", EIGHT + ",i")

    # one new item: its body and post run; every other item is completed in the
    # orchestrator, although the list it inherits (names) changed
    assert runner.count("body") == before["body"] + 1
    assert runner.count("post") == before["post"] + 1
    assert task_processes(appended, "body") == 1 and task_processes(appended, "post") == 1
    assert composed(appended, "body") == 8 and composed(appended, "post") == 8
    # ... and the result is the uncached run's, bookkeeping included
    truth = uncached(runner, "items_flow.py", "--items", EIGHT + ",i")
    assert all_artifacts(runner, "ItemsFlow", appended.run_id) == all_artifacts(
        runner, "ItemsFlow", truth.run_id
    )
    metas = runner.metadata("ItemsFlow", appended.run_id)["body"]
    assert sorted(m.get("memoize_completed", "task") for m in metas) == ["composed"] * 8 + ["task"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "items",
    [
        pytest.param(",".join(reversed(EIGHT.split(","))), id="reordered"),
        pytest.param("c,a,e", id="shrunk"),
    ],
)
def test_a_reordered_or_shrunk_foreach_runs_no_body(runner, items):
    runner.add_flow("items_flow.py", ITEMS_FLOW)
    runner.run("items_flow.py", "--items", EIGHT)
    before = runner.executions()

    changed = runner.run("items_flow.py", "--items", items)

    assert runner.count("body") == before["body"] and runner.count("post") == before["post"], (
        changed.output
    )
    width = len(items.split(","))
    assert task_processes(changed, "body") == 0 and task_processes(changed, "post") == 0
    assert composed(changed, "body") == width and composed(changed, "post") == width
    truth = uncached(runner, "items_flow.py", "--items", items)
    assert all_artifacts(runner, "ItemsFlow", changed.run_id) == all_artifacts(
        runner, "ItemsFlow", truth.run_id
    )


@pytest.mark.slow
def test_every_shape_composes_from_a_cache_whose_origins_are_in_another_datastore(runner, tmp_path):
    # a team cache filled by someone else's runs: the origin tasks are in their
    # datastore, not this one; every hit is composed and its blobs copied in
    runner.add_flow("shapes_flow.py")
    cache = {"METAFLOW_MEMOIZE_ROOT": str(tmp_path / "shared-cache")}
    theirs = dict(cache, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "theirs"))
    ours = dict(cache, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ours"))
    (tmp_path / "theirs" / ".metaflow").mkdir(parents=True)
    (tmp_path / "ours" / ".metaflow").mkdir(parents=True)
    runner.run("shapes_flow.py", env=theirs)
    counts = runner.executions()

    second = runner.run("shapes_flow.py", env=ours)

    assert runner.executions() == counts, "a step body ran although every entry exists"
    assert second.launched_steps() == set(), second.output
    hits = [line for line in second.memoize_lines() if "] hit " in line]
    assert hits and all("composed in the orchestrator" in line for line in hits), hits
    truth = uncached(runner, "shapes_flow.py", env=ours)
    root = tmp_path / "ours" / ".metaflow"
    assert all_artifacts(runner, "ShapesFlow", second.run_id, root, ours) == all_artifacts(
        runner, "ShapesFlow", truth.run_id, root, ours
    )


@pytest.mark.slow
def test_hits_inside_tasks_after_an_append_inherit_this_runs_item_list(runner):
    # the same append with every hit inside its task: an entry used to record the
    # item list its step only inherited (_foreach_values) and replay the origin's,
    # stale once the list grew; it now inherits the current one, as uncached
    runner.add_flow("items_flow.py", ITEMS_FLOW)
    in_tasks = {"METAFLOW_MEMOIZE_CLONE": "0"}
    runner.run("items_flow.py", "--items", EIGHT, env=in_tasks)
    appended = runner.run("items_flow.py", "--items", EIGHT + ",i", env=in_tasks)

    assert task_processes(appended, "body") == 9 and composed(appended, "body") == 0
    truth = uncached(runner, "items_flow.py", "--items", EIGHT + ",i")
    assert all_artifacts(runner, "ItemsFlow", appended.run_id) == all_artifacts(
        runner, "ItemsFlow", truth.run_id
    )


def _manifest_sizes(runner, step):
    entries = default_root(runner.workdir) / "v1" / "entries" / "ItemsFlow"
    return {p.name: p.stat().st_size for p in (entries / step).glob("*.json")}


def test_a_foreach_childs_entry_does_not_grow_with_the_item_list(runner):
    # issue 17: each child's manifest used to record the whole inherited item
    # list, so a foreach's cache metadata grew as N^2; it records what the step
    # set, and its size is the same at 2 items and at 24
    runner.add_flow("items_flow.py", ITEMS_FLOW)
    long_item = "item-%02d-" + "x" * 60  # 24 of them: about 1.7 KB of item list
    runner.run("items_flow.py", "--items", ",".join(long_item % i for i in range(2)))
    narrow = {step: _manifest_sizes(runner, step) for step in ("body", "post")}

    runner.run("items_flow.py", "--items", ",".join(long_item % i for i in range(50, 74)))

    for step in ("body", "post"):
        wide = {n: s for n, s in _manifest_sizes(runner, step).items() if n not in narrow[step]}
        assert len(narrow[step]) == 2 and len(wide) == 24, (step, narrow, wide)
        # a few bytes of slack: numbers (split index, sizes, times) of other widths
        assert max(wide.values()) <= max(narrow[step].values()) + 32, (step, narrow, wide)
