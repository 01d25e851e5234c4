"""Observed dependencies past the body's own Python (issue 31): the filesystem's
namespace, state set at import, classes reached through objects, modules found
by name, and the needless misses of module state observed after the body.

Each STALE case of tests/observed_cases_beyond.py runs its flow, changes one
thing and runs again: the watched step must run again (a body counter proves
it) and produce what the changed world computes. Each HIT case runs twice (or
changes something the step did not use): the second run must not run the body.
Every STALE case served a stale result, and every HIT case missed, on the code
before issue 31.
"""

import pytest
from flowrunner import FlowRunner
from observed_cases_beyond import HIT, STALE, move_checkout

#: one case per mechanism in `make test`; the rest in `make test-slow`
QUICK = {
    "a file checked with os.path.exists appears",
    "a symlink to a file is repointed",
    "a relative path opened from another working directory",
    "a seed set at the top of the flow file",
    "a class attribute read in a method of an artifact object",
    "a module memo dict filled by the step",
    "a write then a read inside a TemporaryDirectory",
}


def _params(cases):
    return [
        pytest.param(name, marks=() if name in QUICK else pytest.mark.slow)
        for name in sorted(cases)
    ]


def _write_case(runner, case):
    for rel, text in case["files"].items():
        path = runner.workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if case.get("setup"):
        case["setup"](runner.workdir)


def _artifacts(runner, result, case):
    step = case.get("expect_step", case.get("step", "start"))
    return runner.artifacts("CaseFlow", result.run_id)[step][0]


@pytest.mark.parametrize("name", _params(STALE))
def test_a_changed_namespace_or_import_state_is_never_a_hit(runner, name):
    case = STALE[name]
    step = case.get("step", "start")
    per_run = case.get("runs_per_step", 1)
    _write_case(runner, case)
    runner.run("flow.py", env=case.get("env"))
    assert runner.count(step) == per_run
    case["change"](runner.workdir)
    cwd = runner.workdir / case["cwd"] if case.get("cwd") else None
    second = runner.run(case.get("flow_arg", "flow.py"), cwd=cwd, env=case.get("env"))
    assert runner.count(step) > per_run, (name, second)
    artifacts = _artifacts(runner, second, case)
    for artifact, expected in case["expect"].items():
        assert artifacts[artifact] == expected, (name, artifact, second)


@pytest.mark.parametrize("name", _params(HIT))
def test_what_the_step_did_not_change_still_hits(runner, tmp_path, name):
    case = HIT[name]
    step = case.get("step", "start")
    _write_case(runner, case)
    runner.run("flow.py")
    assert runner.count(step) == 1
    if case.get("change"):
        case["change"](runner.workdir)
    if case.get("move"):
        moved = tmp_path / "moved" / "checkout"
        move_checkout(runner.workdir, moved)
        runner = FlowRunner(moved)
    second = runner.run("flow.py")
    assert runner.count(step) == 1, (name, second)
    artifacts = _artifacts(runner, second, case)
    for artifact, expected in case["expect"].items():
        assert artifacts[artifact] == expected, (name, artifact, second)
