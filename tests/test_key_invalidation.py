"""The invalidation table: each change to a flow either keeps the hit or misses
with the reason a user needs (issue: no false hits, few false misses).

A baseline run fills a cache; every case copies that cache, edits a fresh copy
of the flow and runs it once, so each reason is measured against the baseline.
"""

import json
import re
import shutil

import pytest
from flowrunner import FLOWS_DIR, FlowRunner

TEMPLATE = FLOWS_DIR / "t5_invalidation"
FLOW = "invalidation_flow.py"


def _copy_template(runner):
    for path in TEMPLATE.iterdir():
        shutil.copy(path, runner.workdir / path.name)


def _edit(runner, filename, old, new):
    path = runner.workdir / filename
    text = path.read_text()
    assert old in text, "template changed: %r not in %s" % (old, filename)
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def baseline_cache(tmp_path_factory):
    work = tmp_path_factory.mktemp("baseline")
    runner = FlowRunner(work / "work")
    _copy_template(runner)
    cache = work / "cache"
    runner.run(FLOW, env={"METAFLOW_MEMOIZE_ROOT": str(cache)})
    assert runner.count("featurize") == 1
    return cache


# (case, file, old, new, extra run args, expect hit?, reason pattern on a miss)
CASES = [
    ("nothing changed", None, None, None, (), True, None),
    (
        "step code",
        FLOW,
        "len(w) > THRESHOLD",
        "len(w) >= THRESHOLD",
        (),
        False,
        r"code changed \(step body\)",
    ),
    (
        "comment-only edit",
        FLOW,
        "# a comment",
        "# a different comment\n        # and another",
        (),
        True,
        None,
    ),
    (
        "docstring and blank lines",
        FLOW,
        '"""Clean the words."""',
        '"""Clean them all."""\n\n',
        (),
        True,
        None,
    ),
    (
        "helper edit",
        "helpers.py",
        "word.strip().lower()",
        "word.lower().strip()",
        (),
        False,
        r"helper `helpers\.normalize` changed \(observed\)",
    ),
    ("unrelated helper edit", FLOW, "return x + 1", "return x + 2", (), True, None),
    (
        "module constant",
        FLOW,
        "THRESHOLD = 3",
        "THRESHOLD = 4",
        (),
        False,
        r"global `THRESHOLD` changed \(observed\)",
    ),
    (
        "depends_on file",
        "vocab.txt",
        "alpha",
        "omega",
        (),
        False,
        r"dependency changed \(vocab\.txt\)",
    ),
    (
        # start reads the parameter and re-runs; featurize reads what start made of it
        "parameter",
        None,
        None,
        None,
        ("--words", "alpha,beta,delta"),
        False,
        r"input 'raw' changed \(read by the step\)",
    ),
    # an upstream artifact featurize never reads does not invalidate it
    (
        "upstream output value it does not read",
        FLOW,
        'self.upstream = "v1"',
        'self.upstream = "v2"',
        (),
        True,
        None,
    ),
    (
        "upstream code, same output (early cut-off)",
        FLOW,
        'self.raw = self.words.split(",")',
        'self.raw = list(self.words.split(","))',
        (),
        True,
        None,
    ),
    (
        "@environment variable",
        FLOW,
        '"MODE": "fast"',
        '"MODE": "slow"',
        (),
        False,
        r"environment 'environment\.vars' changed",
    ),
    (
        "memoize version",
        FLOW,
        'version="1"',
        'version="2"',
        (),
        False,
        r"argument 'version' changed",
    ),
    ("ttl only", FLOW, 'ttl="1d"', 'ttl="2d"', (), True, None),
]


#: cases that run more flows or bigger ones: in `make test-slow` (the mechanisms
#: they share with the rest are covered in `make test` too)
SLOW_CASES = {
    "module constant",
    "depends_on file",
    "parameter",
    "upstream output value it does not read",
    "upstream code, same output (early cut-off)",
}


@pytest.mark.parametrize(
    "case,filename,old,new,args,expect_hit,reason",
    [pytest.param(*c, marks=pytest.mark.slow) if c[0] in SLOW_CASES else c for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_change_hits_or_misses_with_reason(
    tmp_path, baseline_cache, case, filename, old, new, args, expect_hit, reason
):
    runner = FlowRunner(tmp_path / "work")
    _copy_template(runner)
    cache = tmp_path / "cache"
    shutil.copytree(baseline_cache, cache)
    if filename:
        _edit(runner, filename, old, new)
    env = {"METAFLOW_MEMOIZE_ROOT": str(cache)}
    planned = runner.cli(FLOW, "memoize", "plan", "--json", *args, env=env).stdout
    planned = {s["step"]: s["verdict"] for s in json.loads(planned[planned.index("{") :])["steps"]}
    result = runner.run(FLOW, *args, env=env)
    lines = [line for line in result.memoize_lines() if " featurize " in line]
    verdict = [line for line in lines if " hit " in line or " miss " in line]
    assert len(verdict) == 1, result
    # the dry run agrees with the run wherever it can know (start did not re-run)
    if planned["start"] == "hit":
        assert planned["featurize"] == ("hit" if expect_hit else "run"), planned
    elif expect_hit:
        # start will run: featurize hits if start's outputs come out as before
        assert planned["featurize"] == "maybe", planned
    else:
        assert planned["featurize"] in ("maybe", "run"), planned
    if expect_hit:
        assert " hit featurize" in verdict[0], verdict[0]
        assert runner.count("featurize") == 0
    else:
        assert " miss featurize" in verdict[0], verdict[0]
        assert re.search(reason, verdict[0]), verdict[0]
        assert runner.count("featurize") == 1
        md = runner.metadata("InvalidationFlow", result.run_id)["featurize"][0]
        assert md["memoize_status"] == "miss"
        assert re.search(reason, md["memoize_reason"])
        # and `memoize explain` says the same, component by component
        out = runner.cli(FLOW, "memoize", "explain", "featurize", "--json", env=env).stdout
        (task,) = json.loads(out[out.index("{") :])["tasks"]
        assert task["status"] == "miss"
        assert any(re.search(reason, change) for change in task["changes"]), task
        assert "changed" in task["components"].values()


def test_pypi_and_conda_packages_and_images_enter_the_key():
    """@pypi/@conda cannot resolve here (no package index for micromamba), so the
    environment component is checked on real decorator objects instead."""
    import metaflow  # noqa: F401  (loads the plugins)
    from metaflow.plugins import STEP_DECORATORS

    from metaflow_extensions.memoize.plugins.memoize.key.identity import environment_component

    by_name = {d.name: d for d in STEP_DECORATORS}

    def env(**decos):
        return environment_component(
            [by_name[name](attributes=attrs) for name, attrs in decos.items()], []
        )

    base = env(pypi={"packages": {"regex": "2024.1.1"}})
    assert base != env(pypi={"packages": {"regex": "2024.2.1"}})
    assert env(conda={"packages": {"numpy": "1.26"}}) != env(conda={"packages": {"numpy": "2.0"}})
    assert env(kubernetes={"image": "python:3.11@sha256:aa"}) != env(
        kubernetes={"image": "python:3.11@sha256:bb"}
    )
    # resources and retries never change a result: they stay out of the key
    assert env(resources={"cpu": 1}) == env(resources={"cpu": 8}) == env()
    assert env(retry={"times": 1}) == env(retry={"times": 5})


def test_env_argument_adds_package_versions():
    from metaflow_extensions.memoize.plugins.memoize.key.identity import environment_component

    comp = environment_component([], ["xxhash", "boto3"])
    assert comp["package:xxhash"] and comp["package:boto3"]
    assert comp["python"].count(".") == 1
