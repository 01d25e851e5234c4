"""`memoize plan` predicts exactly what `run` then does; `memoize explain` says why."""

import json

import pytest
from flowrunner import FlowRunner

FLOW = "shapes_flow.py"


def _plan(runner, *args):
    result = runner.cli(FLOW, "memoize", "plan", "--json", *args)
    return json.loads(result.stdout[result.stdout.index("{") :])


def _statuses(runner, run_id):
    """{step: set of memoize_status of its tasks} as the run recorded them."""
    meta = runner.metadata("ShapesFlow", run_id)
    return {step: {t.get("memoize_status") for t in tasks} for step, tasks in meta.items()}


def _assert_agrees(plan, statuses):
    """Every task the plan calls hit did hit; every task it calls run did miss."""
    checked = 0
    for step in plan["steps"]:
        verdicts = {t["verdict"] for t in step["tasks"]}
        if verdicts == {"hit"}:
            assert statuses[step["step"]] == {"hit"}, (step, statuses[step["step"]])
            checked += 1
        elif verdicts == {"run"}:
            assert statuses[step["step"]] <= {"miss", "refresh"}, (step, statuses[step["step"]])
            checked += 1
    return checked


# make test plans a foreach after a body edit (test_cli_scale.py)
@pytest.mark.slow
def test_plan_agrees_with_run_through_every_shape(runner):
    runner.add_flow(FLOW)
    empty = _plan(runner)
    by_step = {s["step"]: s for s in empty["steps"]}
    assert by_step["start"]["verdict"] == "run" and by_step["start"]["tasks"][0]["reason"]
    assert by_step["end"]["verdict"] == "unknown"
    assert _assert_agrees(empty, _statuses(runner, runner.run(FLOW).run_id)) == 1

    full = _plan(runner)
    by_step = {s["step"]: s for s in full["steps"]}
    # a chain of hits is followed through branches, nested foreach and the switch
    assert by_step["inner"]["summary"] == "6/6 hit"
    assert by_step["outer"]["summary"] == "3/3 hit"
    assert by_step["small"]["verdict"] == "not reached"
    assert full["counts"]["run"] == 0 and full["counts"]["unknown"] == 0
    before = runner.executions()
    second = runner.run(FLOW)
    assert runner.executions() == before  # nothing ran, as planned
    assert _assert_agrees(full, _statuses(runner, second.run_id)) == 12


@pytest.mark.slow
def test_plan_after_a_code_change_and_with_parameters(runner):
    runner.add_flow(FLOW)
    runner.run(FLOW)
    source = runner.workdir / FLOW
    source.write_text(source.read_text().replace('self.side = "L"', 'self.side = "LL"'))
    plan = _plan(runner)
    by_step = {s["step"]: s for s in plan["steps"]}
    assert by_step["start"]["verdict"] == "hit"
    assert by_step["right"]["verdict"] == "hit"
    assert by_step["left"]["verdict"] == "run"
    assert "code changed (step body)" in by_step["left"]["tasks"][0]["reason"]
    # below a step that will run: a hit if left's outputs come out as before
    assert by_step["branch_join"]["verdict"] == "maybe"
    assert by_step["branch_join"]["tasks"][0]["reason"] == (
        "hits if left's outputs come out unchanged"
    )
    run = runner.run(FLOW)
    assert _assert_agrees(plan, _statuses(runner, run.run_id)) == 3

    changed = _plan(runner, "--scale", "3")
    by_step = {s["step"]: s for s in changed["steps"]}
    assert by_step["start"]["verdict"] == "run"
    assert "input 'scale' changed" in by_step["start"]["tasks"][0]["reason"]
    text = runner.cli(FLOW, "memoize", "plan", "--scale", "3").stdout
    # below start, steps that read scale run anyway; the others hit if start's
    # outputs come out as before, and start is flagged once for them
    assert "Summary: 5 steps will run, 0 will hit, 7 may hit, 0 unknown" in text
    notes = [line for line in text.splitlines() if line.startswith("Note: ")]
    assert len(notes) == 1 and notes[0].startswith("Note: start will run above 9 cached tasks")


@pytest.mark.slow
def test_explain_names_the_changed_component(runner):
    runner.add_flow(FLOW)
    runner.run(FLOW)
    source = runner.workdir / FLOW
    source.write_text(source.read_text().replace('self.side = "L"', 'self.side = "LL"'))
    run = runner.run(FLOW)
    text = runner.cli(FLOW, "memoize", "explain", "left").stdout
    assert "miss" in text and "code changed (step body)" in text
    assert "code     changed" in text and "inputs   same" in text
    hit = json.loads(
        runner.cli(FLOW, "memoize", "explain", "right", "--run", run.run_id, "--json").stdout
    )
    assert hit["tasks"][0]["status"] == "hit"
    assert hit["tasks"][0]["origin"].startswith("ShapesFlow/")
    missing = runner.cli(FLOW, "memoize", "explain", "nosuchstep", check=False)
    assert missing.returncode != 0 and "no step" in missing.output


@pytest.mark.slow
def test_end_of_run_summary_line(tmp_path):
    runner = FlowRunner(tmp_path / "w")
    runner.add_flow(FLOW)
    first = runner.run(FLOW)
    assert "[memoize] 0 hits, 21 misses" in first.output
    second = runner.run(FLOW)
    assert "[memoize] 21 hits, 0 misses, saved" in second.output
