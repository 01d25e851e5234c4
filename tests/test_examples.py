"""Every example under examples/*/ runs twice; the second run hits the cache."""

import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
FLOW_FILES = sorted(EXAMPLES.glob("*/*_flow.py"))


def test_examples_are_discovered():
    assert (EXAMPLES / "quickstart" / "quickstart_flow.py") in FLOW_FILES
    # every example directory has a flow
    for directory in EXAMPLES.iterdir():
        if directory.is_dir() and not directory.name.startswith((".", "_")):
            assert list(directory.glob("*_flow.py")), directory


#: the longest examples run in make test-slow (make test keeps the rest)
SLOW_EXAMPLES = {"foreach_training"}


@pytest.mark.parametrize(
    "flow_file",
    [
        pytest.param(
            p,
            id=p.parent.name + "/" + p.name,
            marks=[pytest.mark.slow] if p.parent.name in SLOW_EXAMPLES else [],
        )
        for p in FLOW_FILES
    ],
)
def test_example_hits_on_its_second_run(runner, flow_file):
    # a copy of the example's directory, so runs never write into the repository
    target = runner.workdir / flow_file.parent.name
    shutil.copytree(
        flow_file.parent, target, ignore=shutil.ignore_patterns(".metaflow", "__pycache__")
    )
    relative = "%s/%s" % (target.name, flow_file.name)

    first = runner.run(relative)
    assert first.returncode == 0
    assert "[memoize] hit" not in first.output, first

    second = runner.run(relative)
    assert second.returncode == 0
    assert "[memoize] hit" in second.output, second
