"""The fault table: what the reliability and security suites broke, and what happened.

Two halves:

* ``fault_notes`` (test modules wrap it in a ``fault`` fixture): a test
  describes the fault it injects and what it observed, e.g.::

      fault(area="Fail open", fault="manifest is not JSON", store="local",
            expected="step runs; status=error; entry removed")
      ...
      fault(observed="warning: ...; next run: miss")

  The fields travel as pytest ``user_properties`` (``fault.<field>``), so they
  reach the controller under pytest-xdist too.

* A pytest plugin (this module, loaded with ``-p reliability_report``) that
  collects every test's fields and outcome and, at the end of the session,
  writes docs/reliability.md -- only when MEMOIZE_WRITE_RELIABILITY_DOC=1, so
  ordinary test runs never rewrite the docs.

Regenerate the document with::

    .venv/bin/python tests/reliability_report.py          # runs the suites, -n 2

(``MEMOIZE_FAULT_RUNS=10`` for the figures of the flaky-S3 suite: see test_faults.py)

which is the same as::

    MEMOIZE_WRITE_RELIABILITY_DOC=1 PYTHONPATH=tests .venv/bin/python -m pytest \\
        -p reliability_report -n 2 -q tests/test_reliability.py tests/test_security.py ...
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ENV_WRITE = "MEMOIZE_WRITE_RELIABILITY_DOC"
PREFIX = "fault."
REPO_ROOT = Path(__file__).resolve().parent.parent
DOC = REPO_ROOT / "docs" / "reliability.md"
SUITES = (
    "tests/test_reliability.py",
    "tests/test_security.py",
    "tests/test_faults.py",
    "tests/test_foreign_objects.py",
    "tests/test_manifest_edits.py",
    "tests/test_prune_safety.py",
    "tests/test_store_clock.py",
    "tests/test_multipart.py",
    "tests/test_single_flight.py",
    "tests/test_disk.py",
)
COLUMNS = ("area", "fault", "store", "expected", "observed")


# -- what tests use ------------------------------------------------------------
def fault_notes(record_property):
    """fault(field=value, ...): describe the injected fault and what happened.

    Test modules wrap it in a fixture named ``fault``. Calling it again with
    ``observed`` appends to what was observed so far.
    """

    def note(**fields):
        for name, value in fields.items():
            text = " ".join(str(value).split())
            record_property(PREFIX + name, text)

    return note


# -- the plugin (controller side) ---------------------------------------------
class _Collector:
    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.order: list[str] = []
        self.started = time.time()

    def add(self, report):
        fields: dict[str, list[str]] = {}
        for name, value in getattr(report, "user_properties", ()) or ():
            if isinstance(name, str) and name.startswith(PREFIX):
                fields.setdefault(name[len(PREFIX) :], []).append(str(value))
        outcome = _outcome(report)
        if report.nodeid not in self.rows:
            if not fields:
                return
            self.order.append(report.nodeid)
            self.rows[report.nodeid] = {"fields": fields, "outcome": outcome}
            return
        row = self.rows[report.nodeid]
        for name, values in fields.items():
            known = row["fields"].setdefault(name, [])
            known += [v for v in values if v not in known]
        if report.when == "call" or outcome.startswith(("FAILED", "skipped")):
            row["outcome"] = outcome


def _outcome(report) -> str:
    if hasattr(report, "wasxfail"):
        reason = report.wasxfail or ""
        if report.skipped:
            return "xfail: " + reason.replace("reason: ", "", 1)
        return "FAILED (xfail passed unexpectedly: %s)" % reason
    if report.passed:
        return "pass"
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        return "skipped: %s" % str(reason).replace("Skipped: ", "")
    return "FAILED"


_collector: _Collector | None = None


def pytest_configure(config):
    global _collector
    _collector = _Collector()


def pytest_runtest_logreport(report):
    # under xdist this runs in the controller too, with the workers' reports
    if _collector is not None:
        _collector.add(report)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get(ENV_WRITE, "").strip() not in ("1", "true", "yes"):
        return
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller writes the document
    if _collector is None or not _collector.rows:
        return
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render(_collector, time.time() - _collector.started))
    print("\nwrote %s (%d faults)" % (DOC.relative_to(REPO_ROOT), len(_collector.rows)))


def _cell(values) -> str:
    text = "; ".join(values) if values else ""
    return text.replace("|", "\\|").replace("\n", " ")


def _short_outcome(outcome: str) -> str:
    if outcome.startswith("xfail"):
        return "**xfail**: known bug (below)"
    return outcome


def _metaflow_version() -> str:
    try:
        from metaflow.metaflow_version import get_version

        return get_version()
    except Exception:
        return "unknown"


def render(collector: _Collector, seconds: float) -> str:
    rows = [collector.rows[n] for n in collector.order]
    passed = sum(r["outcome"] == "pass" for r in rows)
    bugs = [r for r in rows if r["outcome"].startswith("xfail")]
    failed = [r for r in rows if r["outcome"].startswith("FAILED")]
    skipped = [r for r in rows if r["outcome"].startswith("skipped")]
    out = [
        "# Reliability: faults tried and what happened",
        "",
        "<!-- GENERATED by tests/reliability_report.py from the results of",
        "     %s. Do not edit by hand: run" % " and ".join(SUITES),
        "     `.venv/bin/python tests/reliability_report.py` to regenerate. -->",
        "",
        "Every row is one test of `%s` that injects a fault into a real run (or, for"
        % "` / `".join(SUITES),
        "the path and signature checks, calls the cache directly) and checks what",
        "@memoize did. **pass**: the behaviour in *expected* was observed. **xfail**:",
        "a known bug, kept as a strict expected failure until it is fixed (see *Known",
        "bugs* at the end). Regenerate with `.venv/bin/python tests/reliability_report.py`.",
        "",
        "Summary: %d faults, %d behave as expected, %d known bugs (xfail), %d failed, "
        "%d skipped. Metaflow %s, Python %d.%d; suite wall time %.0f s."
        % (
            len(rows),
            passed,
            len(bugs),
            len(failed),
            len(skipped),
            _metaflow_version(),
            sys.version_info[0],
            sys.version_info[1],
            seconds,
        ),
        "",
    ]
    areas: dict[str, list[dict]] = {}
    for row in rows:
        area = (row["fields"].get("area") or ["Other"])[0]
        areas.setdefault(area, []).append(row)
    for area, area_rows in sorted(areas.items()):
        out += [
            "## %s" % area,
            "",
            "| Fault | Store | Expected | Observed | Outcome |",
            "|---|---|---|---|---|",
        ]
        for row in area_rows:
            f = row["fields"]
            out.append(
                "| %s | %s | %s | %s | %s |"
                % (
                    _cell(f.get("fault")),
                    _cell(f.get("store")),
                    _cell(f.get("expected")),
                    _cell(f.get("observed")),
                    _cell([_short_outcome(row["outcome"])]),
                )
            )
        out.append("")
    if bugs:
        out += ["## Known bugs", ""]
        for row in bugs:
            reason = row["outcome"][len("xfail: ") :].replace("BUG: ", "", 1)
            out.append("- **%s**: %s" % (_cell(row["fields"].get("fault")), reason))
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Run the suites with this plugin and write docs/reliability.md."""
    env = dict(os.environ)
    env[ENV_WRITE] = "1"
    tests_dir = str(REPO_ROOT / "tests")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "-p", "reliability_report", "-q"]
    cmd += argv or ["-n", "2"]
    cmd += list(SUITES)
    return subprocess.call(cmd, cwd=REPO_ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
