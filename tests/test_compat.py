"""What must hold on every supported Metaflow release (docs/compatibility.md).

`make test-compat` runs it against each release of the matrix, in a venv of its
own (tests/compat.sh), and CI against the oldest. On the newest release the same
behaviours are covered by the rest of the suite (test_shapes, test_orchestrator_hits,
test_modes_refresh), so `make test` and `make test-slow` leave this module out.
Each test is one shape of use: cloned hits, hits inside tasks, refresh, an edit.
"""

import metaflow
import pytest

pytestmark = [pytest.mark.compat, pytest.mark.slow]

FLOW = "CompatFlow"
STEPS = ["start", "left", "right", "branch_join", "fan_out", "body", "fan_join", "end"]


def _bodies(runner):
    return {s: runner.count(s) for s in STEPS}


def test_the_running_metaflow_is_the_one_under_test():
    import os

    wanted = os.environ.get("MEMOIZE_COMPAT_METAFLOW")
    if wanted:
        assert metaflow.__version__ == wanted, metaflow.__version__


def test_a_rerun_clones_every_task_and_restores_every_artifact(runner):
    runner.add_flow("compat_flow.py")
    first = runner.run("compat_flow.py")
    once = _bodies(runner)
    assert once == dict({s: 1 for s in STEPS}, body=3)
    second = runner.run("compat_flow.py")
    assert _bodies(runner) == once  # no body ran again
    assert second.launched_steps() == set()  # every hit completed in the orchestrator
    hits = [line for line in second.memoize_lines() if " hit " in line]
    assert len(hits) == 10 and all("cloned in the orchestrator" in line for line in hits)
    assert runner.artifacts(FLOW, second.run_id) == runner.artifacts(FLOW, first.run_id)
    md = runner.metadata(FLOW, second.run_id)
    assert {m["memoize_status"] for tasks in md.values() for m in tasks} == {"hit"}
    end = runner.artifacts(FLOW, second.run_id)["end"][0]
    assert end["result"] == repr(20 + 1 + 20 + 2 + 2 * (1 + 4 + 9))


def test_hits_inside_tasks_restore_every_artifact(runner):
    runner.add_flow("compat_flow.py")
    first = runner.run("compat_flow.py")
    once = _bodies(runner)
    second = runner.run("compat_flow.py", env={"METAFLOW_MEMOIZE_CLONE": "0"})
    assert _bodies(runner) == once
    assert second.launched_steps() == set(STEPS)
    assert runner.artifacts(FLOW, second.run_id) == runner.artifacts(FLOW, first.run_id)


def test_refresh_and_an_edit_run_what_they_must(runner):
    path = runner.add_flow("compat_flow.py")
    runner.run("compat_flow.py")
    runner.run("compat_flow.py", "--memoize-refresh-step", "body")
    assert runner.count("body") == 6 and runner.count("start") == 1
    # the refreshed bodies computed the same squares: fan_join and end still hit
    assert runner.count("fan_join") == 1
    path.write_text(
        path.read_text().replace("self.input * self.input", "self.input + self.input")
    )  # x + x * scale
    third = runner.run("compat_flow.py")
    assert runner.count("body") == 9 and runner.count("fan_join") == 2
    assert runner.count("end") == 2 and runner.count("branch_join") == 1
    assert runner.artifacts(FLOW, third.run_id)["end"][0]["result"] == repr(43 + 3 * (1 + 2 + 3))
    runner.run("compat_flow.py", "--memoize-refresh")
    assert _bodies(runner)["start"] == 2 and runner.count("body") == 12


def test_a_parameter_change_misses_from_the_step_that_reads_it(runner):
    runner.add_flow("compat_flow.py")
    runner.run("compat_flow.py")
    second = runner.run("compat_flow.py", "--scale", "3")
    assert runner.count("start") == 2 and runner.count("body") == 6
    assert runner.artifacts(FLOW, second.run_id)["end"][0]["result"] == repr(63 + 3 * 14)
