"""--memoize-refresh must reach tasks through their command line, which Metaflow
forwards to remote tasks (@kubernetes/@batch), not only through the environment."""

import json

FLOW = """
import json, os, sys
from _counter import record
from metaflow import FlowSpec, memoize, step


class ArgvFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        record("start")
        with open(os.path.join(os.environ["MEMOIZE_TEST_COUNTERS"], "..", "argv.json"), "w") as f:
            json.dump(sys.argv, f)
        self.x = 1
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ArgvFlow()
"""


def _argv(runner):
    return json.loads((runner.workdir / "argv.json").read_text())


def test_refresh_request_is_on_the_task_command_line(runner):
    runner.add_flow("argv_flow.py", FLOW)
    runner.run("argv_flow.py")
    assert "--memoize-refresh-request" not in _argv(runner)

    result = runner.run("argv_flow.py", "--memoize-refresh-step", "start")
    argv = _argv(runner)
    assert argv[argv.index("--memoize-refresh-request") + 1] == "start"
    # the option precedes the `step` command: a top-level option, which
    # `kubernetes step` / `batch step` forward to the remote command
    assert argv.index("--memoize-refresh-request") < argv.index("step")
    assert runner.count("start") == 2
    assert any("refresh start" in line for line in result.memoize_lines())


def test_refresh_from_the_environment_is_on_the_task_command_line(runner):
    """METAFLOW_MEMOIZE_REFRESH in the shell that starts `run` is forwarded on each
    task's command line too, so remote tasks see it without the variable."""
    runner.add_flow("argv_flow.py", FLOW)
    runner.run("argv_flow.py")
    runner.run("argv_flow.py", env={"METAFLOW_MEMOIZE_REFRESH": "start"})
    argv = _argv(runner)
    assert argv[argv.index("--memoize-refresh-request") + 1] == "start"
    assert argv.index("--memoize-refresh-request") < argv.index("step")
    assert runner.count("start") == 2


def test_refresh_request_reaches_the_task_without_the_environment(runner):
    """Replay a task's own command line, as a remote worker would run it, with no
    METAFLOW_MEMOIZE_REFRESH in its environment: the task still refreshes."""
    import subprocess
    import sys

    runner.add_flow("argv_flow.py", FLOW)
    runner.run("argv_flow.py")  # an entry exists: a plain task would hit
    runner.run("argv_flow.py", "--memoize-refresh")
    argv = _argv(runner)
    assert argv[argv.index("--memoize-refresh-request") + 1] == "1"
    # a new attempt of the same task, started from the recorded command line
    argv[argv.index("--retry-count") + 1] = "1"
    env = runner.env()
    assert "METAFLOW_MEMOIZE_REFRESH" not in env
    proc = subprocess.run(
        [sys.executable, *argv[1:]] if argv[0].endswith("python") else [sys.executable, *argv],
        cwd=runner.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refresh start" in proc.stdout + proc.stderr
    assert runner.count("start") == 3
