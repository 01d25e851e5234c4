"""Failed, caught, retried and resumed steps; invalid decorator arguments."""

import pytest
from test_shapes import (
    assert_restored_from,
    counts,
    edited,
    entry_files,
    of_step,
    statuses,
    step_status,
    tasks,
)

FLOW = "T2FailFlow"
STEPS = ("start", "risky", "caught", "flaky", "end")


def expect(**changed):
    out = {s: 1 for s in STEPS}
    out.update(changed)
    return out


def test_a_failed_step_stores_nothing_and_the_next_run_runs_it(runner):
    runner.add_flow("t2_fail_flow.py")
    failed = runner.run("t2_fail_flow.py", env={"T2_FAIL": "risky"}, check=False)
    assert failed.returncode != 0
    assert "risky failed on purpose" in failed.output
    assert counts(runner, STEPS) == expect(caught=0, flaky=0, end=0)
    assert len(entry_files(runner, FLOW, "start")) == 1
    assert entry_files(runner, FLOW, "risky") == []
    assert "stored risky" not in failed.output

    # same code, same inputs: only a missing entry explains a re-run
    fixed = runner.run("t2_fail_flow.py")
    assert counts(runner, STEPS) == expect(risky=2)
    fixed_tasks = tasks(runner, FLOW, fixed.run_id)
    assert statuses(fixed_tasks) == {
        "start": ["hit"],
        "risky": ["miss"],
        "caught": ["miss"],
        "flaky": ["miss"],
        "end": ["miss"],
    }
    assert of_step(fixed_tasks, "end")[0]["artifacts"]["final"] == repr((10, 11, 30))
    assert len(entry_files(runner, FLOW, "risky")) == 1


@pytest.mark.slow
def test_a_caught_exception_stores_nothing(runner):
    runner.add_flow("t2_fail_flow.py")
    caught = runner.run("t2_fail_flow.py", env={"T2_FAIL": "caught"})
    assert counts(runner, STEPS) == expect()
    caught_tasks = tasks(runner, FLOW, caught.run_id)
    (task,) = of_step(caught_tasks, "caught")
    assert "caught failed on purpose" in task["artifacts"]["problem"]
    assert entry_files(runner, FLOW, "caught") == []
    assert of_step(caught_tasks, "end")[0]["artifacts"]["final"] == repr((10, None, 30))

    # the swallowed failure was not cached: the step body runs again and now succeeds
    fixed = runner.run("t2_fail_flow.py")
    assert counts(runner, ("start", "risky", "caught")) == {"start": 1, "risky": 1, "caught": 2}
    fixed_tasks = tasks(runner, FLOW, fixed.run_id)
    (task,) = of_step(fixed_tasks, "caught")
    assert task["metadata"]["memoize_status"] == "miss"
    assert task["artifacts"]["problem"] == "None"
    assert len(entry_files(runner, FLOW, "caught")) == 1
    assert of_step(fixed_tasks, "end")[0]["artifacts"]["final"] == repr((10, 11, 30))


@pytest.mark.slow
def test_retry_stores_one_entry_from_the_successful_attempt(runner):
    runner.add_flow("t2_fail_flow.py")
    first = runner.run("t2_fail_flow.py", env={"T2_FAIL": "flaky"})
    assert "flaky fails on its first attempt" in first.output
    assert counts(runner, STEPS) == expect(flaky=2)  # two attempts
    assert len(entry_files(runner, FLOW, "flaky")) == 1
    first_tasks = tasks(runner, FLOW, first.run_id)

    second = runner.run("t2_fail_flow.py", env={"T2_FAIL": "flaky"})
    assert counts(runner, STEPS) == expect(flaky=2)
    second_tasks = tasks(runner, FLOW, second.run_id)
    assert_restored_from(second_tasks, first_tasks, first.run_id)
    assert of_step(second_tasks, "flaky")[0]["artifacts"]["steady"] == "30"
    assert len(entry_files(runner, FLOW, "flaky")) == 1


@pytest.mark.slow
def test_resume_after_a_failure(runner):
    runner.add_flow("t2_fail_flow.py")
    failed = runner.run("t2_fail_flow.py", env={"T2_FAIL": "risky"}, check=False)
    assert failed.returncode != 0
    assert counts(runner, STEPS) == expect(caught=0, flaky=0, end=0)

    resumed = runner.run("t2_fail_flow.py", "--origin-run-id", failed.run_id, command="resume")
    # start is cloned, not re-executed; the failed step and the rest run
    assert counts(runner, STEPS) == expect(risky=2)
    resumed_tasks = tasks(runner, FLOW, resumed.run_id)
    assert step_status(resumed_tasks, "risky") == "miss"
    assert of_step(resumed_tasks, "end")[0]["artifacts"]["final"] == repr((10, 11, 30))
    for step in STEPS:
        assert len(entry_files(runner, FLOW, step)) == 1, step

    # a fresh run hits everything: start from the failed run, the rest from the resume
    again = runner.run("t2_fail_flow.py")
    assert counts(runner, STEPS) == expect(risky=2)
    again_tasks = tasks(runner, FLOW, again.run_id)
    for t in again_tasks:
        assert t["metadata"]["memoize_status"] == "hit", t
        origin = t["metadata"]["memoize_origin"]
        expected_run = failed.run_id if t["step"] == "start" else resumed.run_id
        assert origin.split("/")[1] == expected_run, (t["step"], origin)
    assert of_step(again_tasks, "end")[0]["artifacts"]["final"] == repr((10, 11, 30))


BAD_ARGUMENTS = [
    ('ttl="soon"', "ttl", "soon"),
    ("ttl=-1", "ttl", "negative"),
    ('depends_on=["missing.txt"]', "depends_on", "missing.txt"),
    ("foo=1", "foo", "foo"),
]


@pytest.mark.parametrize("arguments,argument,detail", BAD_ARGUMENTS)
def test_bad_arguments_fail_before_any_step_runs(runner, arguments, argument, detail):
    source = edited("t2_badargs_flow.py", ("@memoize()  # BAD-ARGS", "@memoize(%s)" % arguments))
    runner.add_flow("t2_badargs_flow.py", source=source)
    result = runner.run("t2_badargs_flow.py", check=False)
    assert result.returncode != 0, result
    assert argument in result.output and detail in result.output, result
    assert counts(runner, ("start", "train_model", "end")) == {
        "start": 0,
        "train_model": 0,
        "end": 0,
    }
    if argument != "foo":  # see test_unknown_argument_message_names_the_step
        assert "train_model" in result.output and "`%s`" % argument in result.output, result


def test_unknown_argument_message_names_the_step(runner):
    source = edited("t2_badargs_flow.py", ("@memoize()  # BAD-ARGS", "@memoize(foo=1)"))
    runner.add_flow("t2_badargs_flow.py", source=source)
    result = runner.run("t2_badargs_flow.py", check=False)
    assert result.returncode != 0
    assert "train_model" in result.output and "foo" in result.output, result
    assert "Traceback" not in result.output, result
