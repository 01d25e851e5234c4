"""Every step shape, run twice: the second run executes no step body, restores
every artifact of every task exactly, and each task's metadata names the task
of the first run it was restored from.

Also home of the small per-task helpers the other t2 test modules import
(``tasks``, ``by_pathspec``, ``entry_files``, ...): the shared harness stays
untouched.
"""

import json
import textwrap
from collections import Counter
from pathlib import Path

import pytest

FLOWS = Path(__file__).parent / "flows"

_TASKS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from metaflow import Flow, namespace
    namespace(None)
    flow_name, run_id = sys.argv[1], sys.argv[2]
    run = Flow(flow_name)[run_id]
    out = []
    for step in run:
        for task in step:
            arts = {}
            for a in task.artifacts:
                if a.id.startswith("_") or a.id == "name":
                    continue
                arts[a.id] = repr(a.data)
            md = {k: v for k, v in task.metadata_dict.items() if k.startswith("memoize_")}
            out.append(
                {
                    "pathspec": task.pathspec,
                    "step": step.id,
                    "index": task.index,
                    "artifacts": arts,
                    "metadata": md,
                }
            )
    print(json.dumps(out, sort_keys=True))
    """
)


# -- helpers shared by the t2 test modules ------------------------------------
def tasks(runner, flow_name, run_id):
    """Every task of a run: {pathspec, step, index, artifacts{name: repr}, metadata{memoize_*}}."""
    return runner.client_json(_TASKS_SCRIPT, flow_name, run_id)


def by_pathspec(task_list):
    return {t["pathspec"]: t for t in task_list}


def of_step(task_list, step):
    return [t for t in task_list if t["step"] == step]


def statuses(task_list):
    """{step: sorted list of memoize_status of its tasks}."""
    out = {}
    for t in task_list:
        out.setdefault(t["step"], []).append(t["metadata"].get("memoize_status"))
    return {k: sorted(v, key=str) for k, v in out.items()}


def step_status(task_list, step):
    values = {t["metadata"].get("memoize_status") for t in of_step(task_list, step)}
    assert len(values) == 1, (step, values)
    return values.pop()


def counts(runner, steps):
    return {s: runner.count(s) for s in steps}


def cache_root(runner) -> Path:
    return runner.workdir / ".metaflow" / "memoize-cache"


def entry_files(runner, flow_name, step=None):
    """The manifest files of the default cache root (sorted paths)."""
    base = cache_root(runner) / "v1" / "entries" / flow_name
    if step is not None:
        base = base / step
    if not base.is_dir():
        return []
    return sorted(p for p in base.rglob("*.json") if not p.name.startswith("."))


def edited(flow_file, *replacements):
    """The text of tests/flows/<flow_file> with (old, new) replacements; each old must occur once."""
    source = (FLOWS / flow_file).read_text()
    for old, new in replacements:
        assert source.count(old) == 1, (flow_file, old)
        source = source.replace(old, new)
    return source


def assert_restored_from(current, previous, run_id):
    """Every task of ``current`` is a hit whose origin is the task of ``previous``
    (run ``run_id``) with the same artifacts and the same key."""
    origins = by_pathspec(previous)
    for t in current:
        md = t["metadata"]
        assert md.get("memoize_status") == "hit", t
        origin = md.get("memoize_origin")
        assert origin in origins, (t["pathspec"], origin, sorted(origins))
        assert origin.split("/")[1] == run_id, origin
        source = origins[origin]
        assert source["step"] == t["step"], (t, source)
        assert source["index"] == t["index"], (t, source)
        assert source["artifacts"] == t["artifacts"], (t, source)
        assert source["metadata"]["memoize_key"] == md["memoize_key"], (t, source)
    # each previous task is the origin of exactly one current task
    used = Counter(t["metadata"]["memoize_origin"] for t in current)
    assert all(n == 1 for n in used.values()), used


# -- the shapes ---------------------------------------------------------------
SHAPE_COUNTS = {
    "start": 1,
    "left": 1,
    "right": 1,
    "branch_join": 1,
    "fan_out": 1,
    "outer": 3,  # groups [[1, 2], [3], [4, 5, 6]]
    "inner": 6,
    "inner_join": 3,
    "outer_join": 1,
    "choose": 1,
    "big": 1,  # sum of squares * scale > 100
    "small": 0,
    "end": 1,
}


def test_every_shape_is_restored_exactly_on_the_second_run(runner):
    runner.add_flow("shapes_flow.py")

    first = runner.run("shapes_flow.py")
    assert counts(runner, SHAPE_COUNTS) == SHAPE_COUNTS
    first_tasks = tasks(runner, "ShapesFlow", first.run_id)
    assert all(
        t["metadata"].get("memoize_status") == "miss"
        for t in first_tasks
        if t["step"] != "_parameters"
    ), statuses(first_tasks)
    # one entry per distinct task (every task of this flow has distinct inputs)
    for step, n in SHAPE_COUNTS.items():
        assert len(entry_files(runner, "ShapesFlow", step)) == n, step

    second = runner.run("shapes_flow.py")
    assert second.run_id != first.run_id
    # no step body ran again
    assert counts(runner, SHAPE_COUNTS) == SHAPE_COUNTS
    assert second.output.count("[memoize] hit") == sum(SHAPE_COUNTS.values())
    assert "[memoize] miss" not in second.output
    # completed in the orchestrator: no task launched, each task a clone of its
    # origin (composing is for what cannot be cloned), at the same foreach position
    from test_orchestrator_hits import tasks_of, without_meta

    assert second.launched_steps() == set(), second.output
    before = tasks_of(runner, "ShapesFlow", first.run_id)
    after = tasks_of(runner, "ShapesFlow", second.run_id)
    assert without_meta(after) == without_meta(before)
    metas = [row["meta"] for rows in after.values() for row in rows]
    assert metas and all(m.get("memoize_completed") == "cloned" for m in metas), metas
    assert "%d hits, 0 misses" % len(metas) in second.output

    # every artifact of every task is what the first run produced
    assert runner.artifacts("ShapesFlow", second.run_id) == runner.artifacts(
        "ShapesFlow", first.run_id
    )
    second_tasks = tasks(runner, "ShapesFlow", second.run_id)
    assert len(second_tasks) == len(first_tasks)
    assert_restored_from(second_tasks, first_tasks, first.run_id)

    # spot-check values, not just equality with the first run
    (end,) = of_step(second_tasks, "end")
    assert end["artifacts"]["final"] == repr(("big:182", 43, [10, 18, 154]))
    squared = sorted(int(t["artifacts"]["squared"]) for t in of_step(second_tasks, "inner"))
    assert squared == [2, 8, 18, 32, 50, 72]
    (branch_join,) = of_step(second_tasks, "branch_join")
    assert "side" not in branch_join["artifacts"]  # excluded by merge_artifacts
    assert branch_join["artifacts"]["left_value"] == "21"
    assert branch_join["artifacts"]["right_value"] == "22"
    # no new entries were written by the all-hit run
    for step, n in SHAPE_COUNTS.items():
        assert len(entry_files(runner, "ShapesFlow", step)) == n, step


@pytest.mark.slow
def test_run_with_memoize_on_an_undecorated_flow_memoizes_every_step(runner):
    runner.add_flow("t2_plain_flow.py")
    steps = {"start": 1, "a": 1, "b": 1, "join_ab": 1, "body": 3, "join_body": 1, "end": 1}

    first = runner.run("t2_plain_flow.py", "--with", "memoize")
    assert counts(runner, steps) == steps
    first_tasks = tasks(runner, "T2PlainFlow", first.run_id)
    assert {t["metadata"].get("memoize_status") for t in first_tasks} == {"miss"}

    second = runner.run("t2_plain_flow.py", "--with", "memoize")
    assert counts(runner, steps) == steps, "a step body ran on the second run"
    second_tasks = tasks(runner, "T2PlainFlow", second.run_id)
    assert_restored_from(second_tasks, first_tasks, first.run_id)
    (end,) = of_step(second_tasks, "end")
    assert end["artifacts"]["final"] == repr((3, [2, 4, 6]))

    # arguments in their string form: a new version invalidates every step
    third = runner.run("t2_plain_flow.py", "--with", "memoize:version=2,ttl=7d")
    assert counts(runner, steps) == {k: 2 * v for k, v in steps.items()}
    third_tasks = tasks(runner, "T2PlainFlow", third.run_id)
    for t in third_tasks:
        assert t["metadata"]["memoize_status"] == "miss", t
        assert "version" in t["metadata"]["memoize_reason"], t
    expires = {json.loads(p.read_text())["expires"] for p in entry_files(runner, "T2PlainFlow")}
    assert None in expires and len(expires) > 1  # version=2 entries carry the ttl
