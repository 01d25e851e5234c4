"""Metaflow Client reads (issue 31): a step that reads another flow's results
through the Client depends on what its query resolved to.

Real flows in subprocesses: an upstream flow (not memoized) and a downstream
flow run with ``--with memoize`` whose ``start`` reads the upstream through the
Client; tests/flows/_counter.py counts the downstream body's executions, and a
run without ``--with memoize`` is the uncached result a miss must equal. Each
test world has its own datastore, metadata and Client download cache
(``METAFLOW_CLIENT_CACHE_PATH``).

On 3fc6791 (before Client reads were recorded) the stale cases hit and return
the old result, and the Client-cache case misses: each test here fails there.
"""

import ast
import json
import shutil
import time
from pathlib import Path

import pytest

UPSTREAM = """
from metaflow import FlowSpec, Parameter, step


class UpstreamFlow(FlowSpec):
    value = Parameter("value", default=1, type=int)

    @step
    def start(self):
        self.x = self.value * 10
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UpstreamFlow()
"""

DOWNSTREAM = """
from _counter import record
from metaflow import Flow, FlowSpec, step


class DownstreamFlow(FlowSpec):
    @step
    def start(self):
        record("start")
        %s
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DownstreamFlow()
"""

LATEST_SUCCESSFUL = 'self.x = Flow("UpstreamFlow").latest_successful_run.data.x + 1'
LATEST = 'self.x = Flow("UpstreamFlow").latest_run.data.x + 1'
TAGGED = 'self.x = sorted(r.data.x for r in Flow("UpstreamFlow").runs("good"))'


@pytest.fixture
def world(runner):
    runner.extra_env["METAFLOW_CLIENT_CACHE_PATH"] = str(runner.workdir / "client-cache")
    runner.add_flow("upstream.py", source=UPSTREAM)
    return runner


def _downstream(world, body):
    world.add_flow("downstream.py", source=DOWNSTREAM % body)


def _harness(world):
    """The test's own Client reads use a download cache of their own: only the
    flows' reads go to the world's cache."""
    return {"METAFLOW_CLIENT_CACHE_PATH": str(world.workdir / "harness-client-cache")}


def _x(world, result):
    return world.artifacts("DownstreamFlow", result.run_id, env=_harness(world))["start"][0]["x"]


def _memoized(world):
    return world.run("downstream.py", "--with", "memoize")


def _uncached_equals(world, memoized):
    """The memoized run's artifacts are those of a run without memoize."""
    uncached = world.run("downstream.py")
    assert world.artifacts("DownstreamFlow", uncached.run_id, env=_harness(world)) == (
        world.artifacts("DownstreamFlow", memoized.run_id, env=_harness(world))
    )


def test_latest_successful_run_rerun_on_new_data_misses(world):
    _downstream(world, LATEST_SUCCESSFUL)
    first_upstream = world.run("upstream.py", "--value", "1")
    first = _memoized(world)
    assert world.count("start") == 1 and _x(world, first) == "11"

    # upstream unchanged: a hit
    again = _memoized(world)
    assert world.count("start") == 1, again.memoize_lines()
    assert _x(world, again) == "11"

    second_upstream = world.run("upstream.py", "--value", "2")
    after = _memoized(world)
    assert world.count("start") == 2, after.memoize_lines()
    assert _x(world, after) == "21"
    assert (
        "upstream `Flow('UpstreamFlow').latest_successful_run` in namespace user:tester "
        "now resolves to UpstreamFlow/%s (was UpstreamFlow/%s)"
        % (second_upstream.run_id, first_upstream.run_id)
    ) in after.output, after
    _uncached_equals(world, after)


@pytest.mark.slow
def test_latest_run_rerun_misses(world):
    _downstream(world, LATEST)
    world.run("upstream.py", "--value", "1")
    first = _memoized(world)
    assert _x(world, first) == "11"
    assert _x(world, _memoized(world)) == "11"
    assert world.count("start") == 1

    world.run("upstream.py", "--value", "3")
    after = _memoized(world)
    assert world.count("start") == 2, after.memoize_lines()
    assert _x(world, after) == "31"
    _uncached_equals(world, after)


def test_a_listing_by_tag_changes_only_with_a_tagged_run(world):
    _downstream(world, TAGGED)
    world.run("upstream.py", "--value", "1", "--tag", "good")
    first = _memoized(world)
    assert _x(world, first) == "[10]"

    # a run without the tag is not in the listing: a hit
    world.run("upstream.py", "--value", "5")
    untagged = _memoized(world)
    assert world.count("start") == 1, untagged.memoize_lines()
    assert _x(world, untagged) == "[10]"

    world.run("upstream.py", "--value", "2", "--tag", "good")
    after = _memoized(world)
    assert world.count("start") == 2, after.memoize_lines()
    assert _x(world, after) == "[10, 20]"
    assert "upstream `Flow('UpstreamFlow').runs('good')`" in after.output, after
    _uncached_equals(world, after)


ABSENT_UNTIL_LATER = "\n        ".join(
    [
        "from metaflow.exception import MetaflowNotFound",
        "try:",
        '    self.x = Flow("UpstreamFlow").latest_successful_run.data.x + 1',
        "except MetaflowNotFound:",
        "    self.x = 0",
    ]
)


@pytest.mark.slow
def test_a_flow_that_did_not_exist_yet(world):
    """A query that failed (the flow had never run) is a dependency too."""
    _downstream(world, ABSENT_UNTIL_LATER)
    assert _x(world, _memoized(world)) == "0"
    again = _memoized(world)
    assert world.count("start") == 1, again.memoize_lines()
    world.run("upstream.py", "--value", "1")
    after = _memoized(world)
    assert world.count("start") == 2, after.memoize_lines()
    assert _x(world, after) == "11"
    assert "upstream `Flow('UpstreamFlow')` now exists (was error: MetaflowNotFound)" in (
        after.output
    ), after


@pytest.mark.slow
def test_another_users_namespace_misses(world):
    """The namespace a body starts in (the user's, or --namespace) chooses
    among the upstream runs: the same step run by another user misses."""
    _downstream(world, LATEST_SUCCESSFUL)
    world.run("upstream.py", "--value", "1")
    world.run("upstream.py", "--value", "2", env={"USERNAME": "other"})
    mine = _memoized(world)
    assert _x(world, mine) == "11"
    theirs = world.run("downstream.py", "--with", "memoize", env={"USERNAME": "other"})
    assert world.count("start") == 2, theirs.memoize_lines()
    assert _x(world, theirs) == "21"
    assert "the Client namespace is now" in theirs.output, theirs


TRIGGERED = """
from _counter import record
from metaflow import FlowSpec, current, step, trigger_on_finish


@trigger_on_finish(flow="UpstreamFlow")
class DownstreamFlow(FlowSpec):
    @step
    def start(self):
        record("start")
        self.x = current.trigger.run.data.x + 1
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DownstreamFlow()
"""


def test_current_trigger_names_the_run_read(world):
    """``current.trigger.run``: which run triggered this one is a dependency
    (asked again from ``current`` before a hit; here set by ``--trigger``)."""
    world.add_flow("downstream.py", source=TRIGGERED)
    one = world.run("upstream.py", "--value", "1")
    two = world.run("upstream.py", "--value", "2")

    def triggered(run):
        # a top-level option: before `run` (FlowRunner puts its command first)
        return world.run(
            "downstream.py",
            "UpstreamFlow/%s" % run.run_id,
            "run",
            "--with",
            "memoize",
            command="--trigger",
        )

    first = triggered(one)
    assert _x(world, first) == "11"
    again = triggered(one)
    assert world.count("start") == 1, again.memoize_lines()
    after = triggered(two)
    assert world.count("start") == 2, after.memoize_lines()
    assert _x(world, after) == "21"
    assert "current.trigger now names UpstreamFlow/%s" % two.run_id in after.output, after


CLIENT_ACTIVITY = """
import sys
from metaflow import Flow, namespace
namespace(None)
runs = list(Flow("UpstreamFlow"))
for run in runs[-1:] if sys.argv[1] == "oldest" else runs:
    for step in run:
        for task in step:
            for artifact in task:
                artifact.data
print(1)
"""


def test_client_cache_activity_of_another_process_still_hits(world):
    """The Client's download cache is machine-wide: a body that reads through
    the Client lists it (Metaflow indexes it before its first download), and
    another process's downloads change that listing."""
    _downstream(world, LATEST_SUCCESSFUL)
    world.run("upstream.py", "--value", "1")
    world.run("upstream.py", "--value", "4")
    cache = world.workdir / "client-cache"
    world.client_json(CLIENT_ACTIVITY, "oldest")  # the cache exists before the body runs
    assert any(cache.rglob("*.blob")), "the Client cached nothing: this test would prove nothing"
    first = _memoized(world)
    assert world.count("start") == 1 and _x(world, first) == "41"
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))

    # another process downloads every upstream artifact through the Client
    world.client_json(CLIENT_ACTIVITY, "all")
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) != before

    again = _memoized(world)
    assert world.count("start") == 1, again.memoize_lines()
    assert _x(world, again) == "41"


RECORDING_FAILS = """
import json
from metaflow import Flow
from metaflow_extensions.memoize.plugins.memoize.key import client_reads, observe
from metaflow_extensions.memoize.plugins.memoize.metaflow_compat import client as seam


def broken(*args, **kwargs):
    raise RuntimeError("cannot describe")


seam.run_value = seam.listing_value = broken
observer = observe.Observer()
observer.start()
try:
    x = Flow("UpstreamFlow").latest_successful_run.data.x
    listed = [r.pathspec for r in Flow("UpstreamFlow").runs()]
finally:
    recording = observer.stop()
outside = Flow("UpstreamFlow").latest_successful_run.pathspec
print(json.dumps({
    "x": x, "listed": listed, "outside": outside,
    "unobserved": recording.unobserved, "values": sorted(recording.values),
}))
"""


def test_a_failure_while_recording_never_breaks_the_users_call(world):
    """The user's Client call returns what it returns without memoize; what
    could not be recorded becomes a line that makes the entry miss."""
    run = world.run("upstream.py", "--value", "3")
    out = world.client_json(RECORDING_FAILS)
    assert out["x"] == 30
    assert out["listed"] == ["UpstreamFlow/%s" % run.run_id]
    assert out["outside"] == "UpstreamFlow/%s" % run.run_id
    assert out["unobserved"] == [
        "a Metaflow Client read (latest_successful) could not be recorded: RuntimeError",
        "a Metaflow Client read (runs) could not be recorded: RuntimeError",
    ]
    # the artifact read was still recorded, by its sha
    assert any('"q":"artifacts"' in dep for dep in out["values"]), out


TRIGGER_NOW = """
import json
from metaflow_extensions.memoize.plugins.memoize.key import client_reads
print(json.dumps(client_reads.current_value('{"q":"trigger"}', None)))
"""


def test_a_trigger_not_set_yet_where_the_check_runs_never_verifies(world):
    """Under Argo, ``current.trigger`` is set from the event payload by a task
    hook that may run after memoize's check: there it cannot be asked, and the
    dependency misses; where no payload is coming, no trigger is an answer."""
    assert world.client_json(TRIGGER_NOW) == "none"
    payload = {"METAFLOW_ARGO_EVENT_PAYLOAD_run_upstream": "{}"}
    assert world.client_json(TRIGGER_NOW, env=payload).startswith("unavailable")


# -- Metaflow's tutorials 00-04 (tests/tutorials, see its README) --------------------

TUTORIALS = Path(__file__).parent / "tutorials"
FLOWS = {
    "00": ("00-helloworld/helloworld.py", "HelloFlow"),
    "01": ("01-playlist/playlist.py", "PlayListFlow"),
    "02": ("02-statistics/stats.py", "MovieStatsFlow"),
    "03": ("03-playlist-redux/playlist.py", "PlayListFlow"),
    "04": ("04-playlist-plus/playlist.py", "PlayListFlow"),
}
#: lists the tutorials shuffle or build from a set: compared as sorted
_UNORDERED = ("genres", "movies", "playlist")
#: tutorials 01 and 03 choose the bonus movie at random (04 by edit distance)
_RANDOM = {"01": ("bonus",), "03": ("bonus",)}

_NORMALIZED_DUMP = """
import json, sys
from metaflow import Flow, namespace
namespace(None)
flow_name, run_id, unordered, random = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
out = {}
for step in Flow(flow_name)[run_id]:
    tasks = []
    for task in step:
        arts = {}
        for a in task.artifacts:
            if a.id.startswith("_") or a.id == "name":
                continue
            value = a.data
            if a.id in unordered.split(","):
                value = sorted(value)
            if a.id in random.split(","):
                value = "(random)"
            arts[a.id] = json.dumps(value, sort_keys=True, default=repr)
        tasks.append(arts)
    out[step.id] = sorted(tasks, key=lambda t: json.dumps(t, sort_keys=True))
print(json.dumps(out, sort_keys=True))
"""


def _with_counters(source: str, tag: str) -> str:
    """One counting line as the first statement of each step body (after its
    docstring): how the test sees which bodies ran. Nothing else changes."""
    tree = ast.parse(source)
    inserts = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        if not any(getattr(d, "id", None) == "step" for d in node.decorator_list):
            continue
        first = node.body[0]
        docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        anchor = first.end_lineno if docstring else first.lineno - 1
        line = '%s__import__("_counter").record("%s.%s")' % (
            " " * first.col_offset,
            tag,
            node.name,
        )
        inserts.append((anchor, line))
    lines = source.splitlines()
    for anchor, line in sorted(inserts, reverse=True):
        lines.insert(anchor, line)
    return "\n".join(lines) + "\n"


def _copy_tutorials(world):
    for tag, (rel, _) in FLOWS.items():
        folder = (TUTORIALS / rel).parent
        target = world.workdir / folder.name
        target.mkdir(exist_ok=True)
        for item in folder.iterdir():
            if item.suffix == ".py":
                (target / item.name).write_text(_with_counters(item.read_text(), tag))
            elif item.suffix == ".csv":
                shutil.copy(item, target / item.name)
        shutil.copy(world.workdir / "_counter.py", target / "_counter.py")


def _steps(world, tag):
    return {
        name.split(".", 1)[1]: n
        for name, n in world.executions().items()
        if name.startswith(tag + ".")
    }


def _ran(world, tag, before):
    """{step: bodies run} since ``before`` (a _steps snapshot)."""
    now = _steps(world, tag)
    return {s: n - before.get(s, 0) for s, n in now.items() if n - before.get(s, 0)}


def _dump(world, tag, result):
    return world.client_json(
        _NORMALIZED_DUMP,
        FLOWS[tag][1],
        result.run_id,
        ",".join(_UNORDERED),
        ",".join(_RANDOM.get(tag, ())),
        env=_harness(world),
    )


def _run(world, tag, *args, memoize=True):
    extra = ("--with", "memoize") if memoize else ()
    before = _steps(world, tag)
    result = world.run(FLOWS[tag][0], *extra, *args, timeout=900)
    return result, _ran(world, tag, before)


@pytest.mark.slow
def test_metaflow_tutorials_00_to_04(world):
    pytest.importorskip("editdistance", reason="tutorial 04 needs it (the test extra)")
    _copy_tutorials(world)
    timings = {}
    started = time.monotonic()

    # 1. every tutorial, memoized: every body runs once
    first = {}
    for tag in FLOWS:
        first[tag], ran = _run(world, tag)
        assert ran and set(ran.values()) >= {1}, (tag, ran)
    timings["first pass"] = time.monotonic() - started

    # 2. again, the upstream flow (02) last: every memoized step hits and every
    # artifact is what the first pass made
    for tag in ("00", "01", "03", "04", "02"):
        second, ran = _run(world, tag)
        assert ran == {}, (tag, ran, second.memoize_lines())
        assert _dump(world, tag, second) == _dump(world, tag, first[tag]), tag
    timings["second pass"] = time.monotonic() - started - timings["first pass"]

    # 3. new data: a movie appended to both copies of movies.csv
    for folder in ("01-playlist", "02-statistics"):
        with open(world.workdir / folder / "movies.csv", "a") as f:
            f.write("Metaflow Releases,2026,Action|Sci-Fi,999999999\n")
    changed, ran = _run(world, "01")
    assert ran == {"start": 1, "bonus_movie": 1, "genre_movies": 1, "join": 1, "end": 1}, ran
    assert _dump(world, "01", changed) == _dump(world, "01", _run(world, "01", memoize=False)[0])

    # the upstream flow re-run on the changed data: every task of it runs
    stats, ran = _run(world, "02")
    assert ran["start"] == 1 and ran["join"] == 1, ran
    assert ran["compute_statistics"] == len(
        json.loads(_dump(world, "02", stats)["start"][0]["genres"])
    )

    # the downstream tutorials read the new statistics: every step runs
    playlists = {}
    for tag in ("03", "04"):
        playlist, ran = _run(world, tag)
        assert ran == {"start": 1, "bonus_movie": 1, "genre_movies": 1, "join": 1, "end": 1}, (
            tag,
            ran,
        )
        uncached, _ = _run(world, tag, memoize=False)
        assert _dump(world, tag, playlist) == _dump(world, tag, uncached), tag
        assert "Metaflow Releases" in _dump(world, tag, playlist)["join"][0]["playlist"]
        playlists[tag] = playlist
    assert "Metaflow Releases" in _dump(world, "04", playlist)["join"][0]["bonus"]

    # 4. a parameter changed: only the steps that read it run
    hinted, ran = _run(world, "04", "--hint", "Data Science Strikes Back")
    assert ran == {"bonus_movie": 1, "join": 1, "end": 1}, ran
    uncached, _ = _run(world, "04", "--hint", "Data Science Strikes Back", memoize=False)
    assert _dump(world, "04", hinted) == _dump(world, "04", uncached)
    assert _dump(world, "04", hinted) != _dump(world, "04", playlist)

    # the upstream flow uncached gives what its memoized run gave
    assert _dump(world, "02", stats) == _dump(world, "02", _run(world, "02", memoize=False)[0])

    # 5. the upstream flow re-run on the same data is a new run: the steps that
    # read it through the Client run again (they print which run they read),
    # what they produce is unchanged, and the steps after them hit
    _run(world, "02")
    for tag, args in (("03", ()), ("04", ("--hint", "Data Science Strikes Back"))):
        before = playlists["03"] if tag == "03" else hinted
        rerun, ran = _run(world, tag, *args)
        assert ran == {"start": 1}, (tag, ran, rerun.memoize_lines())
        assert "upstream `Flow('MovieStatsFlow').latest_successful_run`" in rerun.output
        assert _dump(world, tag, rerun) == _dump(world, tag, before)
    timings["changes"] = time.monotonic() - started - sum(timings.values())
    print("tutorial timings: %s" % {k: round(v, 1) for k, v in timings.items()})
