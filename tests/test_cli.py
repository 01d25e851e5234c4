"""`python flow.py memoize ...` and `metaflow-memoize`, on entries made by real flow runs.

One module-scoped seed (four runs of tests/flows/t4_cache_flow.py) is copied
into each test's own directory, so every test starts from the same real cache:

    run 1  --n 1  (T4_TTL=2s: start's entry expires)
    run 2  --n 2
    run 3  --n 3
    run 4  --n 2  (hits: start/2 and side/2 become the most recently used)

`start` entries live in the default root (<workdir>/.metaflow/memoize-cache);
`side` has @memoize(store="side-cache"), a second root the commands must cover.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest
from flowrunner import FlowRunner

from metaflow_extensions.memoize.plugins.memoize.cli.report import VALUES_WIDTH

FLOW = "t4_cache_flow.py"
SIDE_ENV = {"T4_SIDE_STORE": "side-cache"}
GAP = 4.0  # seconds between seed runs, so creation and use times are well apart
STANDALONE = Path(sys.executable).with_name("metaflow-memoize")


# -- helpers -------------------------------------------------------------------
def default_root(workdir: Path) -> Path:
    return workdir / ".metaflow" / "memoize-cache"


def roots(workdir: Path):
    return [default_root(workdir), workdir / "side-cache"]


def files(root: Path, area: str) -> dict:
    """{relative name: size} of the objects under root/v1/<area>."""
    base = root / "v1" / area
    if not base.is_dir():
        return {}
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in base.rglob("*")
        if p.is_file() and not p.name.startswith(".tmp-")
    }


def snapshot(workdir: Path) -> dict:
    return {str(r): {a: files(r, a) for a in ("entries", "used", "blobs")} for r in roots(workdir)}


def manifests(root: Path) -> dict:
    """{key: manifest dict} of every entry under a root."""
    out = {}
    for name in files(root, "entries"):
        doc = json.loads((root / name).read_text())
        out[doc["key"]] = doc
    return out


def blob_name(sha: str) -> str:
    return "v1/blobs/%s/%s" % (sha[:2], sha)


def assert_consistent(root: Path) -> None:
    """Every entry left has all its blobs."""
    blobs = files(root, "blobs")
    for key, doc in manifests(root).items():
        for art in doc["artifacts"].values():
            assert blob_name(art["sha"]) in blobs, "entry %s lost a blob" % key


def memoize(runner, *args, check=True, input=None):
    return runner.cli(FLOW, "memoize", *args, check=check, input=input)


def memoize_json(runner, *args):
    return json.loads(memoize(runner, *args, "--json").stdout)


def error_lines(result) -> list:
    return [line for line in result.stderr.splitlines() if line.startswith("Error")]


def standalone(*args, env=None, cwd=None, check=True):
    proc = subprocess.run(
        [str(STANDALONE), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        input="",
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# -- fixtures ------------------------------------------------------------------
@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    runner = FlowRunner(tmp_path_factory.mktemp("t4seed") / "work", extra_env=SIDE_ENV)
    runner.add_flow(FLOW)
    started = 0.0
    for n, env in [(1, {"T4_TTL": "2s"}), (2, {}), (3, {}), (2, {})]:
        time.sleep(max(0.0, started + GAP - time.time()))
        started = time.time()
        runner.run(FLOW, "--n", str(n), env=env)
    assert runner.count("start") == 3 and runner.count("side") == 3  # run 4 hit both
    return runner.workdir


@pytest.fixture
def cached(seed, tmp_path):
    """A private copy of the seeded work directory (datastore and both cache roots)."""
    workdir = tmp_path / "work"
    shutil.copytree(seed, workdir, symlinks=True)
    return FlowRunner(workdir, extra_env=SIDE_ENV)


# -- list / show / stats ---------------------------------------------------------
def test_list_show_stats_match_what_was_stored(cached):
    workdir = cached.workdir
    listed = memoize_json(cached, "list")
    on_disk = {str(r): manifests(r) for r in roots(workdir)}
    assert {(e["root"], e["key"]) for e in listed} == {
        (root, key) for root, docs in on_disk.items() for key in docs
    }
    assert sorted(e["step"] for e in listed) == ["side"] * 3 + ["start"] * 3
    for e in listed:
        doc = on_disk[e["root"]][e["key"]]
        root = Path(e["root"])
        blobs = files(root, "blobs")
        shas = {a["sha"] for a in doc["artifacts"].values()}
        assert e["size"] == sum(blobs[blob_name(s)] for s in shas)
        assert e["created"] == doc["created"] and e["origin"] == doc["origin"]
        assert e["components"] == doc["components"]
        assert e["manifest_bytes"] == files(root, "entries")[e["object"]]
        assert e["flow"] == "T4CacheFlow" and e["error"] is None
        assert e["last_used"] >= e["created"] - 1
        assert e["expired"] == (e["step"] == "start" and e["expires"] is not None)
    assert sum(e["expired"] for e in listed) == 1
    assert sorted(listed[0]) == sorted(
        [
            "root",
            "flow",
            "step",
            "key",
            "object",
            "created",
            "expires",
            "expired",
            "last_used",
            "size",
            "manifest_bytes",
            "artifacts",
            "origin",
            "body_seconds",
            "components",
            "versions",
            "signed",
            "error",
            "foreach",
            "parameters",
        ]
    )

    # people: one heading per root, one aligned row per entry
    text = memoize(cached, "list").stdout
    assert text.count("Cache %s: 3 entries" % default_root(workdir)) == 1
    assert text.count("Cache %s: 3 entries" % (workdir / "side-cache")) == 1
    for e in listed:
        assert e["key"][:12] in text
    header = next(line for line in text.splitlines() if line.startswith("STEP"))
    assert header.split() == [
        "STEP",
        "KEY",
        "CREATED",
        "EXPIRES",
        "LAST",
        "USED",
        "SIZE",
        "ORIGIN",
        "VALUES",
    ]
    # the VALUES column: the run's parameter (no foreach here)
    for e in listed:
        row = next(line for line in text.splitlines() if e["key"][:12] in line)
        assert row.endswith("n=%s" % e["parameters"]["n"]["value"])
    assert "expired" in text and "never" in text

    only_side = memoize_json(cached, "list", "--step", "side")
    assert sorted(e["step"] for e in only_side) == ["side"] * 3

    stats = memoize_json(cached, "stats")
    all_blobs = {r: files(r, "blobs") for r in roots(workdir)}
    assert stats["entries"] == 6 and stats["expired"] == 1 and stats["corrupt"] == 0
    # shared blob (`shared`, in every start entry) counted once: 3 data + 1 shared + 3 side
    assert stats["blobs"] == 7 == sum(len(b) for b in all_blobs.values())
    assert stats["blob_bytes"] == sum(sum(b.values()) for b in all_blobs.values())
    assert stats["manifest_bytes"] == sum(sum(files(r, "entries").values()) for r in roots(workdir))
    assert stats["bytes"] == stats["blob_bytes"] + stats["manifest_bytes"]
    steps = {s["step"]: s for s in stats["steps"]}
    assert (steps["start"]["entries"], steps["start"]["blobs"], steps["start"]["expired"]) == (
        3,
        4,
        1,
    )
    assert (steps["side"]["entries"], steps["side"]["blobs"]) == (3, 3)
    assert [r["root"] for r in stats["roots"]] == [str(r) for r in roots(workdir)]
    text = memoize(cached, "stats").stdout
    assert "7 blobs" not in text  # per root: 4 and 3
    assert "3 entries, 4 blobs" in text and "3 entries, 3 blobs" in text

    start = next(e for e in listed if e["step"] == "start" and not e["expired"])
    shown = memoize_json(cached, "show", start["key"][:7])
    # `show` adds what the entry relies on (tests/test_show_dependencies.py)
    assert "code" in shown.pop("dependencies")
    assert shown == dict(start, last_used=shown["last_used"])
    text = memoize(cached, "show", start["key"][:7]).stdout
    for field in (
        "key components:",
        "artifacts (2):",
        "data",
        "shared",
        start["origin"],
        start["key"],
    ):
        assert field in text


def test_list_limit_sort_and_step_on_real_entries(cached):
    workdir = cached.workdir
    listed = memoize_json(cached, "list")
    assert [e["created"] for e in listed] == sorted((e["created"] for e in listed), reverse=True)
    # the two newest are run 3's start (default root) and side (side root)
    text = memoize(cached, "list", "--limit", "2").stdout
    assert "Cache %s: 3 entries, 1 shown" % default_root(workdir) in text
    assert "Cache %s: 3 entries, 1 shown" % (workdir / "side-cache") in text
    assert text.splitlines()[-1].startswith("4 more entries not shown (sorted newest first)")
    for e in listed[:2]:
        assert e["key"][:12] in text
    for e in listed[2:]:
        assert e["key"][:12] not in text
    # run 4 hit run 2's entries: they are the most recently used
    by_use = memoize_json(cached, "list", "--sort", "last-used")
    assert [e["last_used"] for e in by_use] == sorted(
        (e["last_used"] for e in by_use), reverse=True
    )
    run2 = sorted(listed, key=lambda e: e["created"])[2:4]  # run 2's start and side
    assert {e["key"] for e in by_use[:2]} == {e["key"] for e in run2}
    assert len(memoize_json(cached, "list", "--since", "1h")) == 6
    # --step: a typo, or a step without @memoize, is an error (it would list nothing)
    typo = memoize(cached, "list", "--step", "sidee", check=False)
    assert error_lines(typo) == [
        "Error: T4CacheFlow has no step 'sidee'; its @memoize steps are: side, start"
    ]
    plain = memoize(cached, "list", "--step", "end", check=False)
    assert error_lines(plain)[0].startswith("Error: step 'end' of T4CacheFlow is not memoized")


def test_explain_a_run_that_does_not_exist(cached):
    result = memoize(cached, "explain", "start", "--run", "123", check=False)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert line.startswith("Error: T4CacheFlow has no run 123 (its latest run is ")
    assert "KeyError" not in result.stderr and "'123'" not in line


def test_show_needs_a_key_that_exists(cached):
    result = memoize(cached, "show", "ffffzzzz", check=False)
    assert result.returncode != 0
    assert error_lines(result) == [
        "Error: no cache entry has a key starting with 'ffffzzzz' in %s, %s"
        % tuple(roots(cached.workdir))
    ]


# -- prune -----------------------------------------------------------------------
def test_prune_expired_dry_run_then_for_real(cached):
    workdir = cached.workdir
    before = snapshot(workdir)
    listed = memoize_json(cached, "list")
    expired = next(e for e in listed if e["expired"])
    data_blob = blob_name(expired["artifacts"]["data"]["sha"])
    shared_blob = blob_name(expired["artifacts"]["shared"]["sha"])

    dry = memoize_json(cached, "prune", "--expired", "--dry-run", "--grace", "0")
    assert dry["dry_run"] is True
    assert [(e["key"], e["reason"]) for r in dry["roots"] for e in r["entries"]] == [
        (expired["key"], "expired")
    ]
    assert dry["blobs"] == 1 and dry["bytes_freed"] > 0
    text = memoize(cached, "prune", "--expired", "--dry-run", "--grace", "0").stdout
    assert "would remove 1 entry and 1 unreferenced blob" in text
    assert snapshot(workdir) == before

    # default grace (1h): the entry goes, its fresh blob stays for now
    done = memoize_json(cached, "prune", "--expired", "--yes")
    assert done["entries"] == 1 and done["blobs"] == 0
    assert done["roots"][0]["blobs_kept_young"] == 1
    root = default_root(workdir)
    assert expired["object"] not in files(root, "entries")
    assert not any(expired["key"] in name for name in files(root, "used"))
    assert data_blob in files(root, "blobs")

    # with no grace, the blob nothing references any more goes; the shared one stays
    text = memoize(cached, "prune", "--grace", "0", "--yes").stdout
    assert "removed 0 entries and 1 unreferenced blob" in text
    assert data_blob not in files(root, "blobs")
    assert shared_blob in files(root, "blobs")
    assert len(manifests(root)) == 2
    for r in roots(workdir):
        assert_consistent(r)
    assert snapshot(workdir)[str(workdir / "side-cache")] == before[str(workdir / "side-cache")]


def test_prune_older_than(cached):
    """`--older-than` selects by creation time against the moment prune runs.
    That moment is only known to lie between two clock readings around the
    command (a loaded machine takes seconds to start one), so the test checks
    what that window allows: entries older than its start always go, entries
    younger than its end always stay, and what goes is the oldest ones."""
    listed = memoize_json(cached, "list")
    created = sorted(e["created"] for e in listed)  # runs 1, 2, 3: start then side
    assert memoize_json(cached, "prune", "--older-than", "3650d", "--dry-run")["entries"] == 0
    # a bit older than run 2's last entry: runs 1 and 2 go, run 3 (GAP later) stays
    older_than = time.time() - created[3] - 0.3

    def prune(*extra):
        before = time.time()
        out = memoize_json(cached, "prune", "--older-than", "%.1fs" % older_than, *extra)
        chosen = sorted(e["created"] for r in out["roots"] for e in r["entries"])
        # older_than was printed with one decimal: allow for the rounding
        surely_gone = before - older_than - 0.05
        surely_kept = time.time() - older_than + 0.05
        assert set(c for c in created if c < surely_gone) <= set(chosen), (chosen, surely_gone)
        assert all(c < surely_kept for c in chosen), (chosen, surely_kept)
        assert chosen == created[: len(chosen)]  # the oldest ones
        assert all(
            e["reason"].startswith("older than ") for r in out["roots"] for e in r["entries"]
        )
        return chosen

    dry = prune("--dry-run", "--grace", "0")
    assert created[:4] == dry[:4]  # runs 1 and 2, whatever the machine's speed
    assert len(memoize_json(cached, "list")) == 6
    removed = prune("--grace", "0", "--yes")
    left = memoize_json(cached, "list")
    assert sorted(e["created"] for e in left) == created[len(removed) :]
    for r in roots(cached.workdir):
        assert_consistent(r)
        assert len(files(r, "used")) == len(manifests(r))  # markers went with their entries


def test_prune_max_size_evicts_least_recently_used(cached):
    listed = [e for e in memoize_json(cached, "list") if e["step"] == "start"]
    by_created = sorted(listed, key=lambda e: e["created"])  # runs 1, 2, 3
    run2 = by_created[1]
    assert run2["last_used"] > by_created[2]["last_used"]  # run 4 hit it
    budget = run2["manifest_bytes"] + run2["size"]  # exactly what run 2's entry needs
    result = memoize_json(
        cached, "prune", "--step", "start", "--max-size", str(budget), "--grace", "0", "--yes"
    )
    removed = [e["key"] for r in result["roots"] for e in r["entries"]]
    # run 1's entry is the least recently used, then run 3's (used at creation,
    # before run 4 used run 2's): creation order would have removed run 2's first
    assert removed == [by_created[0]["key"], by_created[2]["key"]]
    assert {e["reason"] for r in result["roots"] for e in r["entries"]} == {"least recently used"}
    stats = memoize_json(cached, "stats", "--step", "start")
    assert stats["entries"] == 1 and stats["bytes"] <= budget
    root = default_root(cached.workdir)
    assert set(manifests(root)) == {run2["key"]}
    # run 2's blobs (its data and the shared one) are all there; the others are gone
    assert set(files(root, "blobs")) == {blob_name(a["sha"]) for a in run2["artifacts"].values()}
    assert len(memoize_json(cached, "list", "--step", "side")) == 3  # other step untouched


def test_destructive_commands_refuse_without_yes_when_not_a_terminal(cached):
    before = snapshot(cached.workdir)
    for args in (["prune"], ["prune", "--max-size", "0"], ["invalidate", "--all"]):
        result = memoize(cached, *args, check=False)
        assert result.returncode != 0
        assert error_lines(result) == [
            "Error: refusing to delete without --yes: stdin is not a terminal, so nobody can confirm"
        ]
    assert snapshot(cached.workdir) == before


def answer_prompt(runner, args, answer):
    """Run a flow command on a terminal (a pty) and answer its question; (exit code, output)."""
    import pty

    argv = [sys.executable, FLOW, "--no-pylint", *args]
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes the command
        os.chdir(runner.workdir)
        os.execve(sys.executable, argv, runner.env())
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        if answer and b"[y/N]" in out:
            os.write(fd, answer.encode() + b"\n")
            answer = None
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_on_a_terminal_destructive_commands_ask_first(cached):
    side = cached.workdir / "side-cache"
    code, out = answer_prompt(cached, ["memoize", "invalidate", "--step", "side"], "n")
    # declining is an answer, not an error: said plainly, and status 1 for scripts
    assert code == 1 and "Remove 3 entries" in out and "Nothing removed." in out
    assert "Error" not in out
    assert len(manifests(side)) == 3
    code, out = answer_prompt(cached, ["memoize", "invalidate", "--step", "side"], "y")
    assert code == 0 and "removed 3 entries" in out
    assert manifests(side) == {}


def test_bad_durations_and_sizes_are_one_line_errors(cached):
    result = memoize(cached, "prune", "--older-than", "abc", "--yes", check=False)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("Error: --older-than: 'abc' is not a duration")
    result = memoize(cached, "prune", "--max-size", "12XB", "--dry-run", check=False)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("Error: --max-size: '12XB' is not a size")
    assert "Traceback" not in result.stderr


# -- invalidate ------------------------------------------------------------------
def test_invalidate_makes_the_next_run_recompute(cached):
    workdir = cached.workdir
    listed = memoize_json(cached, "list", "--step", "start")
    run3 = max(listed, key=lambda e: e["created"])
    text = memoize(cached, "invalidate", "--key", run3["key"][:8], "--yes").stdout
    assert "removed 1 entry" in text and run3["key"][:12] in text
    assert run3["key"] not in manifests(default_root(workdir))
    starts, sides = cached.count("start"), cached.count("side")
    cached.run(FLOW, "--n", "3")
    assert cached.count("start") == starts + 1  # recomputed
    assert cached.count("side") == sides  # still a hit

    memoize(cached, "invalidate", "--step", "side", "--yes")
    assert manifests(workdir / "side-cache") == {}
    assert len(manifests(default_root(workdir))) == 3

    memoize(cached, "invalidate", "--all", "--yes")
    assert memoize_json(cached, "list") == []
    assert all(files(r, "used") == {} for r in roots(workdir))


# -- the standalone command --------------------------------------------------------
def test_standalone_command_across_flows(cached):
    workdir = cached.workdir
    cached.add_flow("t4_other_flow.py")
    cached.run("t4_other_flow.py")
    root = str(default_root(workdir))
    env = cached.env()

    listed = json.loads(standalone("--root", root, "list", "--json", env=env).stdout)
    assert sorted({e["flow"] for e in listed}) == ["T4CacheFlow", "T4OtherFlow"]
    assert len(listed) == 4  # start x3 + other's start (side is in another root)
    text = standalone("--root", root, "list", env=env).stdout
    assert text.splitlines()[1].split()[0] == "FLOW"

    # METAFLOW_MEMOIZE_ROOT stands in for --root; --flow narrows
    stats = json.loads(
        standalone(
            "--flow", "T4OtherFlow", "stats", "--json", env=dict(env, METAFLOW_MEMOIZE_ROOT=root)
        ).stdout
    )
    assert (stats["flow"], stats["entries"], stats["blobs"]) == ("T4OtherFlow", 1, 2)

    # pruning one flow keeps the blob the other flow shares
    other = next(e for e in listed if e["flow"] == "T4OtherFlow")
    shared = blob_name(other["artifacts"]["shared"]["sha"])
    out = standalone(
        "--root",
        root,
        "--flow",
        "T4CacheFlow",
        "prune",
        "--max-size",
        "0",
        "--grace",
        "0",
        "--yes",
        env=env,
    ).stdout
    assert "removed 3 entries and 3 unreferenced blobs" in out
    assert set(manifests(Path(root))) == {other["key"]}
    assert shared in files(Path(root), "blobs")
    assert_consistent(Path(root))

    # shown by key prefix across flows
    shown = json.loads(
        standalone("--root", root, "show", other["key"][:10], "--json", env=env).stdout
    )
    assert shown["flow"] == "T4OtherFlow"

    result = standalone("list", env=env, check=False)
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        == "Error: no cache root: pass --root URL or set METAFLOW_MEMOIZE_ROOT"
    )


# -- S3 --------------------------------------------------------------------------
def s3_objects(s3_env, prefix):
    paginator = s3_env.client.get_paginator("list_objects_v2")
    out = set()
    for page in paginator.paginate(Bucket=s3_env.bucket, Prefix=prefix):
        out |= {o["Key"][len(prefix) :] for o in page.get("Contents", ())}
    return out


@pytest.mark.slow
def test_list_prune_invalidate_on_s3(s3_env, tmp_path):
    root = s3_env.url("memo")
    runner = FlowRunner(tmp_path / "work", extra_env=dict(s3_env.env, METAFLOW_MEMOIZE_ROOT=root))
    runner.add_flow(FLOW)
    runner.run(FLOW, "--n", "1", env={"T4_TTL": "1s"})
    runner.run(FLOW, "--n", "2")
    time.sleep(1)
    objects = s3_objects(s3_env, "memo/")
    assert len([o for o in objects if o.startswith("v1/entries/")]) == 4

    listed = memoize_json(runner, "list")
    assert {e["root"] for e in listed} == {root}
    assert {e["object"] for e in listed} == {o for o in objects if o.startswith("v1/entries/")}
    assert sum(e["expired"] for e in listed) == 1
    stats = memoize_json(runner, "stats")
    assert stats["blobs"] == len([o for o in objects if o.startswith("v1/blobs/")]) == 5

    expired = next(e for e in listed if e["expired"])
    before = s3_objects(s3_env, "memo/")
    dry = memoize_json(runner, "prune", "--max-size", "0", "--dry-run", "--grace", "0")
    assert dry["entries"] == 4 and dry["blobs"] == 5
    assert s3_objects(s3_env, "memo/") == before

    memoize(runner, "prune", "--expired", "--grace", "0", "--yes")
    after = s3_objects(s3_env, "memo/")
    assert expired["object"] not in after
    assert blob_name(expired["artifacts"]["data"]["sha"]) not in after
    assert blob_name(expired["artifacts"]["shared"]["sha"]) in after  # run 2 uses it
    assert len([o for o in after if o.startswith("v1/entries/")]) == 3

    memoize(runner, "invalidate", "--step", "side", "--yes")
    assert [e["step"] for e in memoize_json(runner, "list")] == ["start"]
    starts, sides = runner.count("start"), runner.count("side")
    runner.run(FLOW, "--n", "2")
    assert (runner.count("start"), runner.count("side")) == (starts, sides + 1)

    listed = json.loads(standalone("--root", root, "list", "--json", env=runner.env()).stdout)
    assert sorted(e["step"] for e in listed) == ["side", "start"]


def test_unreachable_store_is_one_line(cached, dead_s3_env):
    result = cached.cli(
        FLOW, "memoize", "list", "--store", dead_s3_env.url("x"), env=dead_s3_env.env, check=False
    )
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("Error: cache unavailable: S3 cache")
    assert "Traceback" not in result.stderr


# -- what an entry belongs to ----------------------------------------------------
@pytest.mark.slow
def test_list_and_show_name_the_foreach_item_and_parameters(runner):
    runner.add_flow("values_flow.py")
    run = runner.run("values_flow.py", "--alpha", "0.25")
    listed = json.loads(runner.cli("values_flow.py", "memoize", "list", "--json").stdout)
    assert len(listed) == 3
    by_item = {}
    for e in listed:
        (item,) = e["foreach"]
        assert (item["step"], item["var"]) == ("train", "configs")
        by_item[item["value"]] = e
    assert set(by_item) == {"3", "'small'", None}
    # the list's pickle is too big for a repr: shown by the key's own digest of it
    big = by_item[None]
    assert big["foreach"][0]["digest"] == big["components"]["foreach"][0]["item"]
    assert by_item["3"]["foreach"][0]["digest"] is None
    blob_sha = runner.client_json(
        "import json, sys\n"
        "from metaflow import Run, namespace\n"
        "namespace(None)\n"
        "print(json.dumps(Run('ValuesFlow/' + sys.argv[1])['start'].task['blob'].sha))",
        run.run_id,
    )
    for e in listed:
        params = e["parameters"]
        assert params["alpha"] == {"value": "0.25", "digest": None}  # the run's, not the default
        assert params["note"]["value"] == "'" + "n" * 36 + "..." and params["note"]["digest"]
        assert params["blob"] == {"value": None, "digest": blob_sha}  # Metaflow's content hash

    # the VALUES column: foreach item | parameters, cut at its width
    rows = {
        e["key"][:12]: line
        for line in runner.cli("values_flow.py", "memoize", "list").stdout.splitlines()
        for e in listed
        if e["key"][:12] in line
    }
    note = listed[0]["parameters"]["note"]["value"]
    for item, e in by_item.items():
        cell = "configs=%s | alpha=0.25, blob=#%s, note=%s" % (
            item or "#" + e["foreach"][0]["digest"][:12],
            blob_sha[:12],
            note,
        )
        assert rows[e["key"][:12]].endswith(cell[: VALUES_WIDTH - 3] + "...")
    small = by_item["'small'"]
    shown = runner.cli("values_flow.py", "memoize", "show", small["key"][:12]).stdout
    assert "foreach     configs='small'\n" in shown
    assert (
        "parameters  alpha=0.25, blob=#%s, note='%s... (#%s)"
        % (blob_sha[:12], "n" * 36, small["parameters"]["note"]["digest"][:12])
        in shown
    )

    # an entry written before the field existed: the item by its digest, no parameters
    path = default_root(runner.workdir) / small["object"]
    doc = json.loads(path.read_text())
    del doc["context"]
    path.write_text(json.dumps(doc))
    old = json.loads(
        runner.cli("values_flow.py", "memoize", "show", small["key"][:12], "--json").stdout
    )
    assert old["error"] is None and old["parameters"] is None
    assert old["foreach"] == [
        {
            "step": "train",
            "var": "configs",
            "value": None,
            "digest": small["components"]["foreach"][0]["item"],
        }
    ]
    shown = runner.cli("values_flow.py", "memoize", "show", small["key"][:12]).stdout
    assert "parameters  not recorded (stored by an older version)" in shown
    text = runner.cli("values_flow.py", "memoize", "list").stdout
    row = next(line for line in text.splitlines() if small["key"][:12] in line)
    assert row.endswith("configs=#%s" % old["foreach"][0]["digest"][:12])
