"""Why a step ran, named from its root cause: in the end-of-run lines, in
`memoize explain` (the decision recorded when it was made, for clones too) and
in `memoize plan` below a step that will run (issue 15, points 1, 2 and 8)."""

import json

import pytest

FLOW = "causes_flow.py"
HIT_REASON = "same key, and everything the entry recorded using is unchanged"


def _edit(runner, old, new):
    source = runner.workdir / FLOW
    text = source.read_text()
    assert old in text
    source.write_text(text.replace(old, new))


def _plan(runner):
    out = runner.cli(FLOW, "memoize", "plan", "--json").stdout
    return {s["step"]: s for s in json.loads(out[out.index("{") :])["steps"]}


def _explain(runner, step, *args):
    out = runner.cli(FLOW, "memoize", "explain", step, "--json", *args).stdout
    return json.loads(out)["tasks"]


def _cause_line(result, step):
    lines = [line for line in result.memoize_lines() if "]   %s: " % step in line]
    assert len(lines) == 1, result.memoize_lines()
    return lines[0].split("]   %s: " % step, 1)[1]


@pytest.mark.slow
def test_why_a_step_ran_is_named_from_its_root_cause(runner):
    runner.add_flow(FLOW)
    first = runner.run(FLOW)
    assert "[memoize]   no entry yet: featurize, train, fit, pick" in first.output

    # a clone shows its own decision, not its origin's miss reason
    cloned = runner.run(FLOW)
    assert runner.executions() == {"featurize": 1, "train": 1, "fit": 3, "pick": 1}
    for task in _explain(runner, "fit", "--run", cloned.run_id):
        assert task["status"] == "hit" and task["reason"] == HIT_REASON, task
        assert task["compared_with"] == task["origin"]
        assert task["origin"].startswith("CausesFlow/%s/fit/" % first.run_id)

    # a parameter that changes the model of 2 of the 3 items
    boost = runner.run(FLOW, "--boost", "2")
    assert runner.executions() == {"featurize": 1, "train": 1, "fit": 6, "pick": 2}
    assert _cause_line(boost, "fit") == "3 of 3 tasks ran: input 'boost' changed (read by the step)"
    assert _cause_line(boost, "pick") == (
        "miss: input 'model' changed in 2 of 3 inputs (read by the step), because fit re-ran"
    )

    # featurize's output changes: everything below runs, each naming why
    _edit(runner, "OFFSET = 0", "OFFSET = 1")
    plan = _plan(runner)
    assert plan["featurize"]["verdict"] == "run"
    # start has no @memoize: it always runs, and the plan goes by its last run
    assert plan["train"]["verdict"] == "maybe"
    assert plan["train"]["tasks"][0]["reason"] == (
        "hits if the outputs of start and featurize come out unchanged"
    )
    assert plan["fit"]["summary"] == "0/3 hit, 3 maybe"
    text = runner.cli(FLOW, "memoize", "plan").stdout
    assert "Note: featurize will run above 5 cached tasks" in text
    offset = runner.run(FLOW)
    assert runner.executions() == {"featurize": 2, "train": 2, "fit": 9, "pick": 3}
    assert "OFFSET" in _cause_line(offset, "featurize")
    assert _cause_line(offset, "train") == (
        "miss: input 'features' changed (read by the step), because featurize re-ran"
    )
    assert _cause_line(offset, "fit") == (
        "3 of 3 tasks ran: input 'weights' changed (read by the step), because train re-ran"
    )
    assert _cause_line(offset, "pick") == (
        "miss: input 'model' changed in 3 of 3 inputs (read by the step), because fit re-ran"
    )
    (train,) = _explain(runner, "train")
    assert train["status"] == "miss" and train["cause"] == "because featurize re-ran"
    assert train["compared_with"].startswith("CausesFlow/%s/" % first.run_id)
    assert train["components"]["observed"] == "changed"

    # featurize's code changes but not its output: the `maybe` below it hits
    _edit(runner, "return x * 2", "return 2 * x")
    plan = _plan(runner)
    assert plan["featurize"]["verdict"] == "run"
    assert plan["train"]["verdict"] == "maybe" and plan["pick"]["verdict"] == "maybe"
    refactor = runner.run(FLOW)
    assert runner.executions() == {"featurize": 3, "train": 2, "fit": 9, "pick": 3}
    assert "helper" in _cause_line(refactor, "featurize")
    assert not [line for line in refactor.memoize_lines() if "]   train: " in line]

    # the run with boost=2 is explained as it decided, against the first run's
    # entry of each item, though newer entries of every item exist now
    origins = {t["pathspec"] for t in _explain(runner, "fit", "--run", first.run_id)}
    for task in _explain(runner, "fit", "--run", boost.run_id):
        assert task["status"] == "miss", task
        assert task["compared_with"] in origins, task
        assert task["changes"] == ["input 'boost' changed (read by the step)"], task
