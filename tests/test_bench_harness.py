"""The benchmark harness (benchmarks/run.py) runs end to end and reports every target.

Runs `run.py --quick` once (about a minute: real flows, a moto server) and checks the
report's shape: every target section is there, with numbers and without errors. No
timing is asserted: this machine's speed is not what the test is about.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN_PY = REPO / "benchmarks" / "run.py"

# a measured value as the report prints it: "0.470 s", "7.04 ms", "1.06x", "93%", "41.8 MB"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?\s?(?:ms|s|x|%|MB|MB/s)(?![A-Za-z0-9])")


def _load_run_module():
    spec = importlib.util.spec_from_file_location("bench_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(text, title):
    start = text.index("## " + title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "performance.md"
    proc = subprocess.run(
        [sys.executable, str(RUN_PY), "--quick", "--output", str(out)],
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert out.exists()
    return out.read_text()


@pytest.mark.slow
def test_report_has_every_target_with_numbers(quick_report):
    run = _load_run_module()
    summary = _section(quick_report, "Summary")
    for number, title in sorted(run.TITLES.items()):
        section = _section(quick_report, title)
        assert "ERROR" not in section, section[:3000]
        assert "Not run" not in section
        assert NUMBER.search(section), "no measured value in %r" % title
        rows = [line for line in summary.splitlines() if line.startswith("| %d |" % number)]
        assert rows, "target %d has no summary row" % number
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert NUMBER.fullmatch(cells[2]), row  # measured (median)
            assert cells[5] in ("**PASS**", "**FAIL**", "info"), row


@pytest.mark.slow
def test_report_describes_machine_and_method(quick_report):
    machine = _section(quick_report, "Machine")
    for word in ("cores", "GiB", "python", "metaflow", "boto3", "moto"):
        assert word in machine
    assert "## How to read this" in quick_report
    assert "## Method" in quick_report
    assert "Mode: quick" in quick_report
    assert "```json" in _section(quick_report, "Raw samples")


def test_quick_mode_never_overwrites_the_committed_report():
    run = _load_run_module()
    parse = run.build_parser().parse_args
    quick = run.output_path(parse(["--quick"]))
    quick.parent.rmdir()  # a fresh temp dir, still empty
    assert quick != run.DEFAULT_OUTPUT
    assert run.output_path(parse([])) == run.DEFAULT_OUTPUT
    assert run.output_path(parse(["--quick", "--output", "x.md"])) == Path("x.md")


def test_observation_cost_harness_runs():
    """benchmarks/observe_cost.py --quick prints its table (no timing asserted)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "observe_cost.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "worst case (1,000,000 small Python calls)" in proc.stdout
    assert "Recording -> dependencies after the body" in proc.stdout
