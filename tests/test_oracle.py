"""The differential oracle (tests/oracle/, docs/oracle.md) as part of the suite.

The quick subset runs real mutated flows memoized and uncached; the broken-key
check proves the oracle can fail; the rest checks the corpus and the ratchet of
the known false hits list without running flows.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from flowrunner import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

from tests.oracle import run as oracle  # noqa: E402
from tests.oracle.corpus import corpus  # noqa: E402
from tests.oracle.mutations import KINDS, apply  # noqa: E402
from tests.oracle.run import Case, Outcome, _write_flow, judge, read_known  # noqa: E402


def _oracle(*args):
    return subprocess.run(
        [sys.executable, "-m", "tests.oracle", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )


#: the case that was a false hit before the key was observed: in make test, the
#: oracle end to end on real flows; the quick subset (make test-slow) has 3 more
ONCE_A_FALSE_HIT = "kitchen:foreach_reorder"


def test_the_case_that_was_a_false_hit_is_none_now():
    assert ONCE_A_FALSE_HIT in oracle.QUICK
    proc = _oracle("--case", ONCE_A_FALSE_HIT, "--jobs", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "oracle: 1 cases" in out
    assert "errors: 0" in out and "false hits: 0 unexpected, 0 known" in out


@pytest.mark.slow
def test_quick_subset_finds_no_unlisted_false_hit():
    proc = _oracle("--quick", "--jobs", "2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "oracle: %d cases" % len(oracle.QUICK) in out
    assert "0 unexpected" in out and "errors: 0" in out
    # the subset includes the case that was a false hit before the key was
    # observed (kitchen:foreach_reorder): it must now be none at all
    assert "false hits: 0 unexpected, 0 known" in out


@pytest.mark.slow
def test_a_broken_key_fails_the_oracle_and_names_the_cases():
    """broken_key/sitecustomize.py leaves helper code out of the key."""
    proc = _oracle(
        "--broken-key",
        "--case",
        "core_foreach:helper_d1",
        "--case",
        "core_foreach:step_body:end",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-6000:]
    unexpected = out.split("UNEXPECTED FALSE HITS:")[1].split("\n\n")[0]
    assert "core_foreach:helper_d1" in unexpected
    assert "artifact val" in unexpected  # the step, the artifact and both values
    # a step-body edit still misses: the broken key keeps the step's own code
    assert "core_foreach:step_body:end" not in unexpected


def test_every_mutation_applies_to_its_flow(tmp_path):
    kinds = set()
    for flow in corpus():
        ids = [m.id for m in flow.sites]
        assert len(ids) == len(set(ids)), flow.name
        for m in flow.sites:
            kinds.add(m.kind)
            d = Path(tempfile.mkdtemp(dir=tmp_path))
            _write_flow(flow, d)
            before = {p: p.read_text() for p in d.rglob("*") if p.is_file()}
            apply(d, [m])
            after = {p: p.read_text() for p in d.rglob("*") if p.is_file()}
            assert m.args or before != after, m.id
    assert kinds == set(KINDS), set(KINDS) - kinds


def test_the_known_list_names_real_cases_and_why():
    flows = {f.name: f for f in corpus()}
    known = read_known()
    for cid, why in known.items():
        flow, _, mutations = cid.partition(":")
        for m in mutations.split("+"):
            flows[flow].site(m)  # raises on a case that does not exist
        assert why, cid


def test_the_ratchet_fails_on_new_and_on_fixed_false_hits():
    flow = next(f for f in corpus() if f.name == "kitchen")
    listed = Case(flow, [flow.site("read_file")])
    new = Case(flow, [flow.site("helper_d1")])
    combo = Case(flow, [flow.site("read_file"), flow.site("constant")])
    diff = [{"step": "s", "task": "s", "artifact": "a", "memoized": 1, "uncached": 2}]
    known = {"kitchen:read_file": "files read without depends_on"}
    verdict = judge([Outcome(listed, diffs=diff), Outcome(new, diffs=diff)], known)
    assert [o.case.id for o in verdict["unexpected"]] == ["kitchen:helper_d1"]
    assert [o.case.id for o in verdict["known"]] == ["kitchen:read_file"]
    assert verdict["fixed"] == []
    # a combination containing a listed mutation is known, not a failure
    assert judge([Outcome(combo, diffs=diff)], known)["unexpected"] == []
    # a listed case that ran alone without a false hit must leave the list
    assert judge([Outcome(listed)], known)["fixed"] == ["kitchen:read_file"]


def test_random_cases_are_seeded_and_distinct():
    flows = corpus()
    import random

    a = oracle.random_cases(flows, random.Random(7), 50)
    b = oracle.random_cases(flows, random.Random(7), 50)
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == 50
    for c in a:
        for i, m in enumerate(c.mutations):
            assert not any(m.conflicts(n) for n in c.mutations[i + 1 :]), c.id


class _Task:
    """The part of analyze.T that classify reads: a linear task, no foreach."""

    def __init__(self, step, status, **shas):
        self.step, self.stack, self.shas = step, (), shas
        self.task = type("Meta", (), {"metadata_dict": {"memoize_status": status}})()

    @property
    def exact(self):
        return (self.step, ())

    @property
    def position(self):
        return ()


def _classify(memo, off):
    from tests.oracle import analyze

    order = ["start", "a", "end"]
    preds = {"a": ["start"], "end": ["a"]}
    diffs = analyze.differences(memo, off, order)
    # artifact values are compared by sha only here: a value loader that never matches
    return analyze.classify(diffs, memo, off, preds, [], (), lambda sha: object())


def test_a_difference_is_a_false_hit_only_where_the_memoized_task_did_not_run(monkeypatch):
    from tests.oracle import analyze

    monkeypatch.setattr(analyze, "_value", lambda art: (True, art))
    off = [_Task("start", "miss", x="1"), _Task("a", "miss", y="2"), _Task("end", "miss", z="3")]
    for t in off:
        t.arts = dict(t.shas)

    def memo(a_status, a_sha, end_sha):
        tasks = [_Task("start", "hit", x="1"), _Task("a", a_status, y=a_sha)]
        tasks.append(_Task("end", "hit", z=end_sha))
        for t in tasks:
            t.arts = dict(t.shas)
        return tasks

    # a hit on equal inputs that restores another value: the cache's fault
    false, nondet = _classify(memo("hit", "9", "3"), off)
    assert [(d["step"], d["artifact"]) for d in false] == [("a", "y")] and nondet == []
    # and what follows from it (end's inputs differ) is part of that false hit
    false, nondet = _classify(memo("hit", "9", "8"), off)
    assert [d["step"] for d in false] == ["a", "end"] and nondet == []
    # a body both runs executed on equal inputs: the flow is nondeterministic,
    # and end, whose input differs because of it, is not blamed on the cache
    false, nondet = _classify(memo("miss", "9", "8"), off)
    assert false == [] and [d["step"] for d in nondet] == ["a", "end"]
    assert "both runs executed" in nondet[0]["why"]
    # a hit on equal inputs below an executed task: the cache's fault again
    false, nondet = _classify(memo("miss", "2", "8"), off)
    assert [(d["step"], d["artifact"]) for d in false] == [("end", "z")] and nondet == []
    # a task missing from one run, with nothing above to explain it: in doubt, a false hit
    false, nondet = _classify(memo("miss", "2", "3")[:2], off)
    assert [(d["step"], d["artifact"]) for d in false] == [("end", "<task>")]


def test_a_nondeterministic_case_fails_the_oracle_apart_from_false_hits():
    flow = next(f for f in corpus() if f.name == "kitchen")
    case = Case(flow, [flow.site("helper_d1")])
    diff = {"step": "s", "task": "s", "artifact": "a", "memoized": 1, "uncached": 2}
    o = Outcome(case, nondeterministic=[dict(diff, why="both runs executed this task")])
    verdict = judge([o], {})
    assert verdict["unexpected"] == []
    assert oracle._mark(o) == "NONDETERMINISTIC" and oracle._failed([o], verdict)
    text = oracle.tally([o], verdict, {}, 1.0, 0, False)
    assert "nondeterministic cases: 1" in text
    assert "NONDETERMINISTIC" in text and "kitchen:helper_d1" in text.split("NONDETERMINISTIC")[1]
    assert not oracle._failed([Outcome(case)], judge([Outcome(case)], {}))
