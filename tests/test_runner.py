"""Refresh through Metaflow's programmatic API: ``Runner(...).run(memoize_refresh=True)``,
``.run(memoize_refresh_step=[...])``, the same on ``resume``, and ``NBRunner`` in an
IPython shell (docs/runner.md).

Each Runner call happens in its own Python process (``FlowRunner.client_json``), as a
user script would make it: the Runner builds its methods from the flow's click
commands in the calling process, which is where the options used to go missing.
Step bodies are counted through the counter files, and each run's statuses are
read back with the Client API.
"""

from __future__ import annotations

import json

import pytest
from test_shapes import counts

LINEAR = ("start", "middle", "end")

# Runs the flow through metaflow.Runner; prints what the Client API says of the run.
RUNNER_SCRIPT = """
import json, sys
from metaflow import Runner

flow_file, method, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with Runner(flow_file, show_output=False) as runner:
    try:
        executing = getattr(runner, method)(**kwargs)
    except RuntimeError as err:  # the run failed before it started: its output
        print(json.dumps({"error": str(err)}))
        sys.exit(0)
    run = executing.run
    statuses = {
        step.id: sorted(task.metadata_dict.get("memoize_status") for task in step)
        for step in run
    }
    print(json.dumps({
        "run_id": run.id,
        "status": executing.status,
        "statuses": statuses,
        "result": run["end"].task.data.result,
    }))
"""

# The command lines the Runner API builds, with the flow file left out.
COMMANDS_SCRIPT = """
import json, sys
from metaflow import Runner

api = Runner(sys.argv[1]).api
commands = {
    "run all": api().run(memoize_refresh=True),
    "run steps": api().run(memoize_refresh_step=["start", "end"]),
    "run with a parameter": api().run(alpha=3, memoize_refresh=True),
    "run without refresh": api().run(memoize_refresh=False),
    "resume all": api().resume(step_to_rerun="middle", memoize_refresh=True),
    "resume steps": api().resume(memoize_refresh_step=["middle"]),
}
print(json.dumps({name: command[1:] for name, command in commands.items()}))
"""

# An IPython shell running notebook cells: each cell defines the flow (as a notebook
# user would) and runs it with NBRunner, which writes the cell to a new temporary
# flow file every time.
NOTEBOOK_SCRIPT = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell

cell = open(sys.argv[1]).read()
shell = InteractiveShell.instance()
report = []
for kwargs in json.loads(sys.argv[2]):
    shell.user_ns["nbrun_kwargs"] = kwargs
    outcome = shell.run_cell(cell, store_history=True)
    outcome.raise_error()
    run = shell.user_ns["run"]
    report.append({
        "run_id": run.id,
        "successful": run.successful,
        "statuses": {
            step.id: sorted(task.metadata_dict.get("memoize_status") for task in step)
            for step in run
        },
        "result": run["end"].task.data.result,
    })
print(json.dumps(report))
"""


def through_runner(runner, method, **kwargs):
    return runner.client_json(RUNNER_SCRIPT, "t2_linear_flow.py", method, json.dumps(kwargs))


def test_the_runner_builds_run_and_resume_command_lines_with_the_refresh_options(runner):
    """No flow runs: the command lines Metaflow's Runner API builds (the options used
    to be an "Unknown argument" on `run`)."""
    runner.add_flow("t2_linear_flow.py")
    commands = runner.client_json(COMMANDS_SCRIPT, "t2_linear_flow.py")
    assert commands == {
        "run all": ["run", "--memoize-refresh"],
        "run steps": ["run", "--memoize-refresh-step", "start", "--memoize-refresh-step", "end"],
        "run with a parameter": ["run", "--alpha", "3", "--memoize-refresh"],
        "run without refresh": ["run"],
        "resume all": ["resume", "middle", "--memoize-refresh"],
        "resume steps": ["resume", "--memoize-refresh-step", "middle"],
    }


def test_runner_run_refreshes_the_steps_named(runner):
    runner.add_flow("t2_linear_flow.py")
    runner.run("t2_linear_flow.py")
    assert counts(runner, LINEAR) == {"start": 1, "middle": 1, "end": 1}

    # a list of steps: those recompute; middle's inputs are unchanged, so it hits
    some = through_runner(runner, "run", memoize_refresh_step=["start", "end"])
    assert some["status"] == "successful"
    assert some["statuses"] == {"start": ["refresh"], "middle": ["hit"], "end": ["refresh"]}
    assert counts(runner, LINEAR) == {"start": 2, "middle": 1, "end": 2}
    assert some["result"] == 21


@pytest.mark.slow
def test_runner_run_refreshes_every_step_and_refuses_unknown_steps(runner):
    runner.add_flow("t2_linear_flow.py")
    first = through_runner(runner, "run")
    assert first["statuses"] == {s: ["miss"] for s in LINEAR}

    # a flow parameter beside the option: both reach the command line
    every = through_runner(runner, "run", memoize_refresh=True, alpha=1)
    assert every["statuses"] == {s: ["refresh"] for s in LINEAR}
    assert counts(runner, LINEAR) == {"start": 2, "middle": 2, "end": 2}
    assert every["result"] == 21

    # a step that does not exist stops the run before any step starts, as on the CLI
    wrong = through_runner(runner, "run", memoize_refresh_step=["midle"])
    assert "--memoize-refresh-step midle: T2LinearFlow has no step 'midle'" in wrong["error"]
    assert counts(runner, LINEAR) == {"start": 2, "middle": 2, "end": 2}


@pytest.mark.slow
def test_runner_resume_accepts_memoize_refresh_and_memoize_refresh_step(runner):
    runner.add_flow("t2_linear_flow.py")
    origin = runner.run("t2_linear_flow.py").run_id
    assert counts(runner, LINEAR) == {"start": 1, "middle": 1, "end": 1}

    # resume re-executes middle and end; only the named one recomputes, end hits
    one = through_runner(
        runner,
        "resume",
        step_to_rerun="middle",
        origin_run_id=origin,
        memoize_refresh_step=["middle"],
    )
    assert one["statuses"]["middle"] == ["refresh"]
    assert one["statuses"]["end"] == ["hit"]
    assert counts(runner, LINEAR) == {"start": 1, "middle": 2, "end": 1}

    every = through_runner(
        runner, "resume", step_to_rerun="middle", origin_run_id=origin, memoize_refresh=True
    )
    assert every["statuses"]["middle"] == ["refresh"]
    assert every["statuses"]["end"] == ["refresh"]
    # start is cloned by resume itself: never refreshed, never run again
    assert counts(runner, LINEAR) == {"start": 1, "middle": 3, "end": 2}
    assert every["result"] == 21


@pytest.mark.slow
def test_nbrunner_in_an_ipython_shell_hits_and_refreshes(runner, tmp_path):
    pytest.importorskip("IPython")
    flow_source = (runner.add_flow("t2_linear_flow.py")).read_text()
    class_only = flow_source.split('if __name__ == "__main__":')[0]
    cell = runner.workdir / "cell.py"
    cell.write_text(
        "from metaflow import NBRunner\n"
        + class_only
        + "\nrun = NBRunner(T2LinearFlow, base_dir=%r, show_output=False).nbrun(**nbrun_kwargs)\n"
        % str(runner.workdir)
    )
    cells = [{}, {}, {"memoize_refresh_step": ["middle"]}, {"memoize_refresh": True}]
    proc_env = {"IPYTHONDIR": str(tmp_path / "ipython")}
    report = runner.client_json(NOTEBOOK_SCRIPT, str(cell), json.dumps(cells), env=proc_env)

    assert [r["successful"] for r in report] == [True] * 4
    assert [r["result"] for r in report] == [21] * 4
    assert report[0]["statuses"] == {s: ["miss"] for s in LINEAR}
    # the cell ran again: a new temporary flow file, same code, so every step hits
    assert report[1]["statuses"] == {s: ["hit"] for s in LINEAR}
    assert report[2]["statuses"] == {"start": ["hit"], "middle": ["refresh"], "end": ["hit"]}
    assert report[3]["statuses"] == {s: ["refresh"] for s in LINEAR}
    assert counts(runner, LINEAR) == {"start": 2, "middle": 3, "end": 2}
    # nbrun cleans up its temporary flow files
    assert sorted(p.name for p in runner.workdir.glob("T2LinearFlow*.py")) == []
