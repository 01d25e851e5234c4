"""`spin STEP` (Metaflow 2.19+) on a memoized step: the step always runs (spin is
for debugging one step), nothing is looked up or stored, and memoize says so once
instead of Metaflow's four "Ignoring Step decorator 'memoize'" warnings."""

import re

import metaflow.metaflow_config
import pytest
from test_cli import default_root

pytestmark = pytest.mark.skipif(
    not hasattr(metaflow.metaflow_config, "SPIN_ALLOWED_DECORATORS"),
    reason="this Metaflow has no spin (added in 2.19)",
)

SPIN_FLOW = """
from metaflow import FlowSpec, step, memoize
import _counter


class SpinFlow(FlowSpec):
    @step
    def start(self):
        self.numbers = [1, 2, 3]
        self.next(self.double)

    @memoize
    @step
    def double(self):
        _counter.record("double")
        self.doubled = [2 * n for n in self.numbers]
        self.next(self.end)

    @step
    def end(self):
        print("doubled:", self.doubled)


if __name__ == "__main__":
    SpinFlow()
"""


def _entries(runner):
    base = default_root(runner.workdir) / "v1" / "entries"
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []


def _about_memoize(result):
    # "[memoize] ...", Metaflow's "Ignoring Step decorator 'memoize'"; not a path
    # such as /tmp/pytest-of-memoize-user/test_a_spun_memoized_step0
    return [
        line
        for line in result.output.splitlines()
        if re.search(r"(?<![\w/-])memoize(?![\w/-])", line)
    ]


def test_a_spun_memoized_step_runs_says_so_once_and_stores_nothing(runner):
    runner.add_flow("spin_flow.py", SPIN_FLOW)
    runner.run("spin_flow.py", env={"METAFLOW_MEMOIZE_MODE": "off"})
    assert runner.count("double") == 1 and _entries(runner) == []

    spun = runner.cli("spin_flow.py", "spin", "double")
    assert runner.count("double") == 2, spun  # the body ran
    lines = _about_memoize(spun)
    assert len(lines) == 1, lines
    assert "spin: double runs" in lines[0]
    assert _entries(runner) == [], spun  # and nothing was stored

    # with an entry for the step in the cache, a spin still runs the body (no lookup)
    runner.run("spin_flow.py")
    stored = _entries(runner)
    assert runner.count("double") == 3 and stored
    spun = runner.cli("spin_flow.py", "spin", "double")
    assert runner.count("double") == 4, spun
    assert len(_about_memoize(spun)) == 1, spun
    assert _entries(runner) == stored
    # ... and a run after the spins hits as before
    again = runner.run("spin_flow.py")
    assert runner.count("double") == 4
    assert any(" hit double" in line for line in again.memoize_lines()), again
