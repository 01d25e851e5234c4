"""A Metaflow release newer than any tested: the extension keeps working where the
internals it relies on still hold, disables only what they no longer support, and
says so once (docs/compatibility.md#newer-releases).

tests/newer_release/sitecustomize.py makes the flow's processes report Metaflow
2.20.0; METAFLOW_MEMOIZE_TEST_FAIL_INVARIANT makes one part's check fail there.
"""

import os
from pathlib import Path

import pytest

from metaflow_extensions.memoize.plugins.memoize import metaflow_compat as mf

NEWER = Path(__file__).parent / "newer_release"
FLOW = """
from _counter import record
from metaflow import FlowSpec, memoize, step


class NewerFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        record("start")
        self.x = 41
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")
        self.y = self.x + 1


if __name__ == "__main__":
    NewerFlow()
"""
WARNING = "is newer than the newest release metaflow-memoize was tested with"


def _env(broken_part=""):
    path = str(NEWER)
    if os.environ.get("PYTHONPATH"):
        path += os.pathsep + os.environ["PYTHONPATH"]
    env = {"PYTHONPATH": path, "MEMOIZE_TEST_METAFLOW_VERSION": "2.20.0"}
    if broken_part:
        env["METAFLOW_MEMOIZE_TEST_FAIL_INVARIANT"] = broken_part
    return env


def _twice(runner, env):
    runner.add_flow("newer_flow.py", source=FLOW)
    first = runner.run("newer_flow.py", env=env)
    second = runner.run("newer_flow.py", env=env)
    y = runner.artifacts("NewerFlow", second.run_id, env=env)["end"][0]["y"]
    return first, second, y


def test_every_invariant_holds_on_the_installed_release():
    for part, checks in mf._invariants().items():
        for what, check in checks:
            assert check(), "%s: %s" % (part, what)
    assert not mf.is_untested_release() and mf.untrusted() == {}
    assert mf.is_untested_release("2.20.0") and mf.is_untested_release("3.0.1")
    assert not mf.is_untested_release("2.19.99") and not mf.is_untested_release("2.12.37")


@pytest.mark.slow  # flows; make test keeps the invariant check above
def test_a_newer_release_whose_invariants_hold_changes_nothing(runner):
    first, second, y = _twice(runner, _env())
    version = runner.client_json(
        "import json, metaflow; print(json.dumps(metaflow.__version__))", env=_env()
    )
    assert version == "2.20.0"  # the flows really ran on the "newer" release
    assert WARNING not in first.output + second.output
    assert runner.count("start") == 1 and runner.count("end") == 1
    assert second.launched_steps() == set()  # hits still cloned by the orchestrator
    assert y == "42"
    runner.run("newer_flow.py", "--memoize-refresh", env=_env())  # the run option is there
    assert runner.count("start") == 2


@pytest.mark.slow  # flows; make test keeps the invariant check above
def test_a_newer_release_that_changed_the_clone_protocol_hits_inside_tasks(runner):
    first, second, y = _twice(runner, _env("orchestrator"))
    warnings = [line for line in second.output.splitlines() if WARNING in line]
    assert len(warnings) == 1, second.output
    assert "Metaflow 2.20.0" in warnings[0] and "(2.19)" in warnings[0]
    assert "hits completed in the orchestrator" in warnings[0]
    assert runner.count("start") == 1 and runner.count("end") == 1  # still hits
    assert second.launched_steps() == {"start", "end"}  # but inside their tasks
    assert y == "42"


@pytest.mark.slow  # flows; make test keeps the invariant check above
def test_a_newer_release_that_changed_the_datastore_runs_every_step_uncached(runner):
    first, second, y = _twice(runner, _env("memoize"))
    warnings = [line for line in first.output.splitlines() if WARNING in line]
    assert len(warnings) == 1 and "@memoize is disabled" in warnings[0], first.output
    assert runner.count("start") == 2 and runner.count("end") == 2
    md = runner.metadata("NewerFlow", second.run_id, env=_env("memoize"))
    assert md["start"][0]["memoize_status"] == "disabled"
    assert y == "42"
