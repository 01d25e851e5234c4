"""Audit (audit.py): a sample of hits runs its body anyway and checks the entry."""

import json

import pytest

from metaflow_extensions.memoize.plugins.memoize.cache import audit

FLOW = "audit_flow.py"


def _status(runner, run_id, step):
    (md,) = runner.metadata("AuditFlow", run_id)[step]
    return md


@pytest.fixture
def warmed(runner):
    runner.add_flow(FLOW)
    first = runner.run(FLOW)
    assert runner.executions() == {"start": 1, "det": 1, "rnd": 1, "end": 1}
    return runner, first


def test_a_deterministic_step_is_audited_without_mismatch(warmed):
    runner, _ = warmed
    audited = runner.run(FLOW, env={"METAFLOW_MEMOIZE_AUDIT": "1"})
    # every memoized step ran its body again instead of restoring
    assert runner.count("det") == 2 and runner.count("start") == 2
    md = _status(runner, audited.run_id, "det")
    assert md["memoize_status"] == "audit"
    assert md["memoize_audit"] == "match"
    assert "memoize_audit_artifacts" not in md
    assert "audit det key=" in audited.output and "reproduced the entry" in audited.output
    assert runner.artifacts("AuditFlow", audited.run_id)["det"] == [{"base": "21", "doubled": "42"}]
    # the entry stays trusted: the next run (no audit) hits it
    again = runner.run(FLOW)
    assert runner.count("det") == 2
    assert _status(runner, again.run_id, "det")["memoize_status"] == "hit"


@pytest.mark.slow
def test_a_nondeterministic_step_is_flagged_and_its_entry_set_aside(warmed):
    runner, first = warmed
    stored = runner.artifacts("AuditFlow", first.run_id)["rnd"][0]["noise"]
    audited = runner.run(FLOW, env={"METAFLOW_MEMOIZE_AUDIT": "1"})
    md = _status(runner, audited.run_id, "rnd")
    assert md["memoize_status"] == "audit"
    assert md["memoize_audit"] == "mismatch"
    assert md["memoize_audit_artifacts"].startswith("noise (entry ")
    assert "AUDIT MISMATCH rnd key=" in audited.output
    # the end-of-run summary says so too
    summary = [line for line in audited.memoize_lines() if "saved" in line][-1]
    assert "1 AUDIT MISMATCH" in summary
    # the audited task keeps what it computed, not the entry's value
    computed = runner.artifacts("AuditFlow", audited.run_id)["rnd"][0]["noise"]
    assert computed != stored
    ran = sorted(
        (runner.counter_dir / f).read_text().strip()
        for f in [p.name for p in runner.counter_dir.iterdir() if p.name.startswith("rnd--")]
    )
    assert computed in ran
    # the suspect entry is not used again: the next run misses and says why
    later = runner.run(FLOW)
    md = _status(runner, later.run_id, "rnd")
    assert md["memoize_status"] == "miss"
    assert "audit did not reproduce" in md["memoize_reason"]
    assert _status(runner, later.run_id, "det")["memoize_status"] == "hit"
    assert runner.count("rnd") == 3
    # `memoize stats` shows audited hits and mismatches per step
    out = runner.cli(FLOW, "memoize", "stats").stdout
    assert "Audits:" in out
    rows = {line.split()[1]: line.split()[2:] for line in out.split("Audits:")[1].splitlines()[2:]}
    assert rows["rnd"] == ["1", "1"] and rows["det"] == ["1", "0"], out
    doc = runner.cli(FLOW, "memoize", "stats", "--json").stdout
    audits = json.loads(doc[doc.index("{") :])["audits"]
    assert {"flow": "AuditFlow", "step": "rnd", "audited": 1, "mismatches": 1} in audits


@pytest.mark.slow
def test_a_forged_entry_is_flagged(warmed, tmp_path):
    runner, _ = warmed
    cache = runner.workdir / ".metaflow" / "memoize-cache" / "v1" / "entries" / "AuditFlow"
    (manifest_path,) = (cache / "det").iterdir()
    manifest = json.loads(manifest_path.read_text())
    # point `doubled` at another stored blob (start's `base`): a forged output
    start_manifest = json.loads(next((cache / "start").iterdir()).read_text())
    manifest["artifacts"]["doubled"] = start_manifest["artifacts"]["base"]
    manifest_path.write_text(json.dumps(manifest))
    # without an audit the forged entry is served as is
    trusted = runner.run(FLOW)
    assert runner.artifacts("AuditFlow", trusted.run_id)["det"][0]["doubled"] == "21"
    audited = runner.run(FLOW, env={"METAFLOW_MEMOIZE_AUDIT": "1"})
    md = _status(runner, audited.run_id, "det")
    assert md["memoize_audit"] == "mismatch"
    assert "doubled" in md["memoize_audit_artifacts"]
    assert runner.artifacts("AuditFlow", audited.run_id)["det"][0]["doubled"] == "42"
    assert not manifest_path.exists()  # set aside
    suspect = runner.workdir / ".metaflow" / "memoize-cache" / "v1" / "suspect" / "AuditFlow"
    assert (suspect / "det" / manifest_path.name).exists()


def test_the_decorator_argument_audits_one_step(runner):
    runner.add_flow(FLOW)
    path = runner.workdir / FLOW
    path.write_text(
        path.read_text().replace(
            "@memoize\n    @step\n    def det", "@memoize(audit=1.0)\n    @step\n    def det"
        )
    )
    runner.run(FLOW)
    second = runner.run(FLOW)
    assert _status(runner, second.run_id, "det")["memoize_audit"] == "match"
    assert _status(runner, second.run_id, "rnd")["memoize_status"] == "hit"
    assert runner.count("det") == 2 and runner.count("rnd") == 1


@pytest.mark.parametrize("value", ["2", "-0.1", "'often'"])
def test_a_bad_audit_argument_stops_the_run_naming_the_step(runner, value):
    runner.add_flow(FLOW)
    path = runner.workdir / FLOW
    path.write_text(
        path.read_text().replace(
            "@memoize\n    @step\n    def det", "@memoize(audit=%s)\n    @step\n    def det" % value
        )
    )
    result = runner.run(FLOW, check=False)
    assert result.returncode != 0
    assert "Step det: @memoize argument `audit`" in result.output
    assert runner.executions() == {}


def test_a_bad_audit_setting_stops_the_run(runner):
    runner.add_flow(FLOW)
    result = runner.run(FLOW, env={"METAFLOW_MEMOIZE_AUDIT": "sometimes"}, check=False)
    assert result.returncode != 0
    assert "METAFLOW_MEMOIZE_AUDIT='sometimes' is not a fraction" in result.output
    assert runner.executions() == {}


def test_sampling_and_comparison():
    drawn = []

    def draw():
        drawn.append(1)
        return 0.5

    assert not audit.sampled(0.0, draw) and drawn == []  # audit 0: no draw at all
    assert audit.sampled(1.0, draw) and drawn == []
    assert audit.sampled(0.6, draw) and not audit.sampled(0.4, draw)
    assert audit.compare({"a": "1", "b": "2"}, {"a": "1", "b": "2"}) == []
    assert audit.compare({"a": "1", "b": "2"}, {"a": "1", "c": "3"}) == ["b", "c"]
    assert audit.compare({}, {}, {"steps": ["x"]}, {"steps": ("x",)}) == []
    assert audit.compare({}, {}, {"steps": ["x"]}, {"steps": ["y"]}) == ["_transition"]
    assert audit.parse_fraction("0.25") == 0.25
    assert audit.parse_fraction(True) is None and audit.parse_fraction(float("nan")) is None
