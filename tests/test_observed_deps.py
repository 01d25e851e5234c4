"""Observed dependencies (issue 13): a hit only when everything the step used is
unchanged, and no miss when only something it did not use changed.

Each case of tests/observed_cases.py runs its flow, applies one change and
runs it again: the watched step must run again and produce what the changed
code computes (a step-body counter and the artifact values prove both). Every
case in CASES served a stale result before the key was observed.
"""

import os
import sys
from pathlib import Path

import pytest
from observed_cases import CASES, HIT_CASES


def _write_case(runner, case):
    for rel, source in case["files"].items():
        path = runner.workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        if rel.endswith("flow.py") and rel != "flow.py":
            # the counter module sits beside every flow file
            (path.parent / "_counter.py").write_text((runner.workdir / "_counter.py").read_text())
    setup = case.get("setup")
    if setup:
        verb, source, target = setup.split()
        assert verb == "symlink"
        target_path = runner.workdir / target
        target_path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(runner.workdir / source, target_path)


def _change(runner, case):
    for rel, old, new in case["change"]:
        path = runner.workdir / rel
        text = path.read_text()
        assert old in text, "case out of date: %r not in %s" % (old, rel)
        path.write_text(text.replace(old, new, 1))


def _run_case(runner, case):
    _write_case(runner, case)
    flow = case.get("flow", "flow.py")
    step = case.get("step", "start")
    per_run = case.get("runs_per_step", 1)
    runner.run(flow, env=case.get("env_before"))
    assert runner.count(step) == per_run
    _change(runner, case)
    second = runner.run(flow, env=case.get("env_after"))
    artifacts = runner.artifacts("CaseFlow", second.run_id)[case.get("expect_step", step)]
    return second, runner.count(step) - per_run, artifacts[0]


#: one case per mechanism runs in `make test`; the whole corpus in `make test-slow`
QUICK = {
    "method calls a method",
    "closure factory argument",
    "decorator arguments",
    "import inside the step",
    "a file the step reads, without depends_on",
    "self.index after the list is reordered",
    "user step decorator code",
    "flow file reached through a symlink",
    "ignore= and a method that sets the ignored artifact",
}


def _corpus(names):
    return [
        pytest.param(name, marks=() if name in QUICK else pytest.mark.slow)
        for name in sorted(names)
    ]


@pytest.mark.parametrize("name", _corpus(CASES))
def test_a_changed_dependency_is_never_a_hit(runner, name):
    case = CASES[name]
    second, new_runs, artifacts = _run_case(runner, case)
    for artifact, expected in case["expect"].items():
        assert artifacts[artifact] == expected, (name, artifact, second)
    if not case.get("hit_allowed"):
        assert new_runs >= case.get("min_new_runs", 1), (name, second)


@pytest.mark.parametrize("name", sorted(HIT_CASES))
def test_an_unused_change_still_hits(runner, name):
    case = HIT_CASES[name]
    second, new_runs, artifacts = _run_case(runner, case)
    assert new_runs == 0, (name, second)
    for artifact, expected in case["expect"].items():
        assert artifacts[artifact] == expected


def test_a_miss_names_the_observed_dependency(runner):
    case = CASES["method calls a method"]
    second, _, _ = _run_case(runner, case)
    assert "helper `CaseFlow._scale` changed (observed)" in second.output, second


@pytest.mark.slow
def test_a_file_change_is_named(runner):
    second, _, _ = _run_case(runner, CASES["a file the step reads, without depends_on"])
    assert "file vocab.txt changed" in second.output, second


@pytest.mark.slow
def test_switching_back_and_forth_hits_both_ways(runner):
    """Two entries share a static key and differ by an observed helper."""
    case = CASES["import inside the step"]
    _write_case(runner, case)
    lib = runner.workdir / "lib.py"
    original = lib.read_text()
    changed = original.replace("return v + 1", "return v + 2")
    runner.run("flow.py")
    lib.write_text(changed)
    runner.run("flow.py")
    assert runner.count("start") == 2
    for text, value in ((original, "6"), (changed, "7"), (original, "6")):
        lib.write_text(text)
        result = runner.run("flow.py")
        assert runner.artifacts("CaseFlow", result.run_id)["start"][0]["y"] == value
    assert runner.count("start") == 2


def test_user_step_decorator_is_not_applied_twice_on_a_hit(runner):
    """With nothing changed, a hit restores x10 once (it was x100 in-task)."""
    case = CASES["user step decorator code"]
    _write_case(runner, case)
    env = {"METAFLOW_MEMOIZE_CLONE": "0"}  # the in-task hit path
    runner.run("flow.py", env=env)
    result = runner.run("flow.py", env=env)
    assert runner.count("start") == 1
    assert runner.artifacts("CaseFlow", result.run_id)["start"][0]["y"] == "50"


@pytest.mark.slow
def test_flow_beside_the_python_installation_is_user_code(runner):
    """A flow folder whose path shares a prefix with sys.prefix (``<venv>-flows``)
    is the user's code, not installed code."""
    shadow = Path(sys.prefix + "-flows-%d" % os.getpid())
    shadow.mkdir()
    try:
        case = CASES["getattr(module, name)"]
        for rel, source in case["files"].items():
            (shadow / rel).write_text(source)
        (shadow / "_counter.py").write_text((runner.workdir / "_counter.py").read_text())
        flow = str(shadow / "flow.py")
        runner.run(flow)
        _change_in(shadow, case)
        result = runner.run(flow)
        assert runner.count("start") == 2
        assert runner.artifacts("CaseFlow", result.run_id)["start"][0]["y"] == "7"
    finally:
        import shutil

        shutil.rmtree(shadow, ignore_errors=True)


def _change_in(folder, case):
    for rel, old, new in case["change"]:
        path = folder / rel
        path.write_text(path.read_text().replace(old, new, 1))


NESTED_FOREACH = '''
from metaflow import FlowSpec, step, memoize
import _counter


class CaseFlow(FlowSpec):
    """The shape of Metaflow's own test/core graph nested_foreach.json."""

    @memoize
    @step
    def start(self):
        _counter.record("start")
        self.x = "ab"
        self.y = "cd"
        self.z = "ef"
        self.next(self.foreach_split_x)

    @memoize
    @step
    def foreach_split_x(self):
        _counter.record("foreach_split_x")
        self.next(self.foreach_split_y, foreach="x")

    @memoize
    @step
    def foreach_split_y(self):
        _counter.record("foreach_split_y")
        self.next(self.foreach_split_z, foreach="y")

    @memoize
    @step
    def foreach_split_z(self):
        _counter.record("foreach_split_z")
        self.next(self.foreach_inner, foreach="z")

    @memoize
    @step
    def foreach_inner(self):
        _counter.record("foreach_inner")
        self.word = "".join(str(v) for _, _, v in self.foreach_stack()) + self.input
        self.next(self.foreach_join_z)

    @memoize
    @step
    def foreach_join_z(self, inputs):
        _counter.record("foreach_join_z")
        self.words = [i.word for i in inputs]
        self.next(self.foreach_join_y)

    @memoize
    @step
    def foreach_join_y(self, inputs):
        _counter.record("foreach_join_y")
        self.words = sum((i.words for i in inputs), [])
        self.next(self.foreach_join_x)

    @memoize
    @step
    def foreach_join_x(self, inputs):
        _counter.record("foreach_join_x")
        self.words = sorted(sum((i.words for i in inputs), []))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
'''


@pytest.mark.slow
def test_metaflow_nested_foreach_graph_caches_every_step(runner):
    """Its inner joins were `uncacheable` on every run (an outer foreach list is
    not visible behind a join)."""
    runner.add_flow("flow.py", source=NESTED_FOREACH)
    first = runner.run("flow.py")
    assert "not cached" not in first.output, first
    counts = runner.executions()
    assert counts["foreach_inner"] == 8 and counts["foreach_join_y"] == 2
    second = runner.run("flow.py")
    assert runner.executions() == counts, second
    assert "not cached" not in second.output
    words = runner.artifacts("CaseFlow", second.run_id)["foreach_join_x"][0]["words"]
    assert words == runner.artifacts("CaseFlow", first.run_id)["foreach_join_x"][0]["words"]


def test_plan_sees_an_observed_change(runner):
    """`memoize plan` verifies the recorded dependencies too: after a helper edit
    it says the step will run, and why."""
    import json

    def planned():
        out = runner.cli("flow.py", "memoize", "plan", "--json").stdout
        return {s["step"]: s for s in json.loads(out[out.index("{") :])["steps"]}

    case = CASES["method calls a method"]
    _write_case(runner, case)
    runner.run("flow.py")
    assert planned()["start"]["verdict"] == "hit"
    _change(runner, case)
    start = planned()["start"]
    assert start["verdict"] == "run", start
    assert "helper `CaseFlow._scale` changed (observed)" in json.dumps(start), start


PARAMETERS = """
from metaflow import FlowSpec, Parameter, step, memoize
import _counter


class CaseFlow(FlowSpec):
    epochs = Parameter("epochs", default=1)
    note = Parameter("note", default="a")

    @memoize
    @step
    def start(self):
        _counter.record("start")
        self.data = [1, 2, 3]
        self.next(self.train)

    @memoize
    @step
    def train(self):
        _counter.record("train")
        self.model = sum(getattr(self, "da" + "ta")) * self.epochs
        self.next(self.end)

    @step
    def end(self):
        self.summary = "%s %s" % (self.model, self.note)


if __name__ == "__main__":
    CaseFlow()
"""


@pytest.mark.slow
def test_a_parameter_a_step_does_not_read_does_not_invalidate_it(runner):
    """Inputs are keyed by what the body reads: `--note` (read by no memoized
    step) re-runs nothing, `--epochs` re-runs `train` only, and switching it
    back hits the first entry."""
    runner.add_flow("flow.py", source=PARAMETERS)
    runs = [
        ((), {"start": 1, "train": 1}, "6 a"),
        (("--note", "b"), {"start": 1, "train": 1}, "6 b"),
        (("--epochs", "2"), {"start": 1, "train": 2}, "12 a"),
        (("--epochs", "1", "--note", "c"), {"start": 1, "train": 2}, "6 c"),
    ]
    for args, counts, summary in runs:
        result = runner.run("flow.py", *args)
        assert runner.count("start") == counts["start"], result
        assert runner.count("train") == counts["train"], result
        assert runner.artifacts("CaseFlow", result.run_id)["end"][0]["summary"] == repr(summary)
    assert (
        "input 'epochs' changed (read by the step)" in runner.run("flow.py", "--epochs", "3").output
    )


@pytest.mark.slow
def test_an_artifact_read_by_a_computed_name_is_keyed(runner):
    """Guards the read-based input key: a read the source does not name
    (getattr with a computed name) is still seen, through the datastore."""
    runner.add_flow("flow.py", source=PARAMETERS)
    runner.run("flow.py")
    source = (runner.workdir / "flow.py").read_text()
    (runner.workdir / "flow.py").write_text(source.replace("[1, 2, 3]", "[1, 2, 4]"))
    result = runner.run("flow.py")
    assert runner.count("train") == 2, result
    assert runner.artifacts("CaseFlow", result.run_id)["train"][0]["model"] == "7"


OUTPUTS = """
from metaflow import FlowSpec, step, memoize
import _counter


class CaseFlow(FlowSpec):
    @step
    def start(self):
        self.x = 1
        self.next(self.work)

    @memoize(outputs=["y"])
    @step
    def work(self):
        _counter.record("work")
        self.y = 10
        self.x = 2  # overwrites an inherited artifact that outputs= leaves out
        self.next(self.end)

    @step
    def end(self):
        self.seen = (self.x, self.y)


if __name__ == "__main__":
    CaseFlow()
"""


def test_outputs_that_leave_out_a_changed_artifact_are_not_cached(runner):
    """A hit would have left x at its inherited value (1) where the step sets 2."""
    runner.add_flow("flow.py", source=OUTPUTS)
    first = runner.run("flow.py")
    assert "outputs= leaves out 'x'" in first.output, first
    second = runner.run("flow.py")
    assert runner.count("work") == 2
    assert runner.artifacts("CaseFlow", second.run_id)["end"][0]["seen"] == "(2, 10)"


MERGE_IN_NESTED_FOREACH = """
from metaflow import FlowSpec, step, memoize
import _counter


class CaseFlow(FlowSpec):
    @step
    def start(self):
        self.outer = ["a", "b"]
        self.next(self.split_inner, foreach="outer")

    @step
    def split_inner(self):
        self.inner = [1, 2]
        self.next(self.body, foreach="inner")

    @step
    def body(self):
        self.v = "%s%d" % (self.foreach_stack()[0][2], self.input)
        self.next(self.join_inner)

    @memoize
    @step
    def join_inner(self, inputs):
        _counter.record("join_inner")
        self.vs = sorted(i.v for i in inputs)
        self.merge_artifacts(inputs, exclude=["v"])
        self.next(self.join_outer)

    @step
    def join_outer(self, inputs):
        self.outers = [i.outer for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
"""


@pytest.mark.slow
def test_a_merged_artifact_comes_from_the_current_inputs(runner):
    """After the outer list is reordered, the inner join may hit, but the foreach
    list it merges through is this run's (it was the entry's old order)."""
    runner.add_flow("flow.py", source=MERGE_IN_NESTED_FOREACH)
    runner.run("flow.py")
    assert runner.count("join_inner") == 2
    source = (runner.workdir / "flow.py").read_text()
    (runner.workdir / "flow.py").write_text(source.replace('["a", "b"]', '["b", "a"]'))
    result = runner.run("flow.py")
    outers = runner.artifacts("CaseFlow", result.run_id)["join_outer"][0]["outers"]
    assert outers == repr([["b", "a"], ["b", "a"]]), result
    assert runner.count("join_inner") == 2, "the inner joins' own work is unchanged: hits"


JOIN_READS = """
import os
from metaflow import FlowSpec, Parameter, step, memoize
import _counter


class CaseFlow(FlowSpec):
    note = Parameter("note", default="a")
    scale = Parameter("scale", default=1)

    @step
    def start(self):
        self.items = [int(v) for v in os.environ.get("CASE_ITEMS", "1,2,3").split(",")]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.value = self.input % 10
        self.debug = os.environ.get("CASE_DEBUG", "x")
        self.next(self.join)

    @memoize
    @step
    def join(self, inputs):
        _counter.record("join")
        self.total = sum(i.value for i in inputs) * self.scale
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
"""


@pytest.mark.slow  # 5 runs; the join tests of test_join_passdown.py run in make test
def test_a_join_is_keyed_by_what_it_reads_from_its_inputs(runner):
    """A join reads `value` from each input and the `scale` parameter: `--note`
    and an input artifact it never reads (`debug`) do not re-run it, a read
    parameter or a read artifact does, and a changed foreach list whose
    outputs the join reads are unchanged is still a hit (early cut-off)."""
    runner.add_flow("flow.py", source=JOIN_READS)
    runs = [
        ((), {}, 1, 6),
        (("--note", "b"), {"CASE_DEBUG": "y"}, 1, 6),
        (("--scale", "2"), {}, 2, 12),
        (("--scale", "2"), {"CASE_ITEMS": "1,2,13"}, 2, 12),
        (("--scale", "2"), {"CASE_ITEMS": "1,2,4"}, 3, 14),
    ]
    for args, env, joins, total in runs:
        result = runner.run("flow.py", *args, env=env)
        assert runner.count("join") == joins, result
        assert runner.artifacts("CaseFlow", result.run_id)["join"][0]["total"] == repr(total)
    assert "input 'value' of body[2] changed (read by the step)" in result.output, result


JOIN_POSITIONS_AND_MERGE = """
import os
from metaflow import FlowSpec, step, memoize
import _counter


class CaseFlow(FlowSpec):
    @step
    def start(self):
        self.items = [int(v) for v in os.environ.get("CASE_ITEMS", "1,2,3").split(",")]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.value = self.input % 10
        self.next(self.join)

    @memoize
    @step
    def join(self, inputs):
        _counter.record("join")
        self.seen = [i.input for i in inputs]
        self.next(self.fork)

    @step
    def fork(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.x = 1
        if os.environ.get("CASE_EXTRA"):
            self.extra = 5
        self.next(self.merge)

    @step
    def b(self):
        self.y = 2
        self.next(self.merge)

    @memoize
    @step
    def merge(self, inputs):
        _counter.record("merge")
        self.merge_artifacts(inputs)
        self.next(self.end)

    @step
    def end(self):
        self.extra_seen = getattr(self, "extra", None)


if __name__ == "__main__":
    CaseFlow()
"""


@pytest.mark.slow
def test_a_join_reading_items_or_merging_is_keyed_by_whole_inputs(runner):
    """What Metaflow reads for a join on its own is not recorded: `inp.input`
    (the item, read through the foreach list) and `merge_artifacts` (which
    enumerates every artifact) key the join by its whole inputs. A new item
    value whose outputs are unchanged re-runs `join`; a new artifact upstream
    of `merge` reaches `end`."""
    runner.add_flow("flow.py", source=JOIN_POSITIONS_AND_MERGE)
    runner.run("flow.py")
    changed = runner.run("flow.py", env={"CASE_ITEMS": "11,2,3"})
    assert runner.count("join") == 2, changed
    arts = runner.artifacts("CaseFlow", changed.run_id)
    assert arts["join"][0]["seen"] == repr([11, 2, 3])
    merges = runner.count("merge")
    extra = runner.run("flow.py", env={"CASE_ITEMS": "11,2,3", "CASE_EXTRA": "1"})
    assert runner.count("merge") == merges + 1, extra
    assert runner.artifacts("CaseFlow", extra.run_id)["end"][0]["extra_seen"] == "5"
