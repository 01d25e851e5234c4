"""The cache commands on many entries (issue 15, point 9): `list` cuts, sorts and
filters; `prune` and `invalidate` sum a long removal up per step; progress goes
to stderr when it is a terminal, and nowhere otherwise. Issue 17: on S3, `list`
and `stats` work from listings and index objects (a manifest is read only for a
row shown, or where its index is missing, stale or not believed), and `plan` and
`explain` list each step once, not once per task.

Thousands of entries are written through the cache API (as test_maintenance.py
does) rather than by running thousands of tasks; the commands run as
`metaflow-memoize` in a subprocess. Entries made by real runs are in test_cli.py.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest
from test_cli import standalone
from test_maintenance import key_of, manifest, sha_of

from metaflow_extensions.memoize.plugins.memoize.cache import entries
from metaflow_extensions.memoize.plugins.memoize.cache import maintenance as mt
from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
from metaflow_extensions.memoize.plugins.memoize.cache.stores import ObjectInfo
from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.cache.stores.s3 import S3Store
from metaflow_extensions.memoize.plugins.memoize.cli import report
from metaflow_extensions.memoize.plugins.memoize.runtime.explain import explain_task

FLOW = "BigFlow"
STEPS = ("a", "b", "c")
SPACING = 600.0  # seconds between the creation times of consecutive entries


def populate(root, n, expired_every=None):
    """``n`` entries of FLOW, entry i created i * SPACING (+ 300) seconds ago, in
    step STEPS[i % 3], with one blob of its own and parameter i; every
    ``expired_every``-th one has a ttl of 0 (expired as soon as it is written)."""
    cache = Cache(LocalStore(str(root)))
    cache.ensure_marker()
    now = time.time()

    def one(i):
        created = now - SPACING * i - 300
        expired = expired_every and i % expired_every == 0
        data = b"blob %d" % i
        m = manifest(FLOW, STEPS[i % 3], key_of("e%d" % i), {"x": data}, created)
        m.expires = created if expired else None
        m.context = {"foreach": [], "parameters": {"i": {"value": str(i)}}}
        cache.store.put(Cache.blob_key(sha_of(data)), data)
        cache.store.put(Cache.manifest_key(FLOW, m.step, m.key), m.dumps())
        cache.store.put(Cache.used_key(FLOW, m.step, m.key), b"{}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    return str(root)


def cache_command(root, *args, check=True):
    """`metaflow-memoize --root ROOT --flow BigFlow ARGS` in a subprocess."""
    return standalone("--root", root, "--flow", FLOW, *args, check=check)


def short(i):
    return key_of("e%d" % i)[: report.SHORT_KEY]


def table_keys(text):
    """The KEY cell of each entry row of a `list` table."""
    return [
        line.split()[1]
        for line in text.splitlines()
        if line.split() and line.split()[0] in STEPS and len(line.split()) > 2
    ]


# -- list ----------------------------------------------------------------------
def test_list_cuts_sorts_filters_and_says_how_to_see_the_rest(tmp_path):
    root = populate(tmp_path / "cache", 120)

    text = cache_command(root, "list").stdout
    lines = text.splitlines()
    assert lines[0] == "Cache %s: 120 entries, 50 shown" % root
    assert lines[1].split()[:2] == ["STEP", "KEY"]
    assert table_keys(text) == [short(i) for i in range(50)]  # the 50 newest, newest first
    assert lines[-1] == (
        "70 more entries not shown (sorted newest first): --limit 0 shows all; "
        "--step, --since and --sort choose"
    )
    assert len(lines) == 2 + 50 + 1
    assert "i=7" in lines[2 + 7]  # the VALUES column: the entry's parameter

    everything = cache_command(root, "list", "--limit", "0").stdout
    assert table_keys(everything) == [short(i) for i in range(120)]
    assert "not shown" not in everything

    # JSON lists everything that matches unless --limit is given
    listed = json.loads(cache_command(root, "list", "--json").stdout)
    assert [e["key"] for e in listed] == [key_of("e%d" % i) for i in range(120)]
    assert listed[3]["parameters"] == {"i": {"value": "3", "digest": None}}
    assert listed[3]["foreach"] == []
    five = json.loads(cache_command(root, "list", "--json", "--limit", "5").stdout)
    assert [e["key"] for e in five] == [e["key"] for e in listed[:5]]

    # --sort step: by step, newest first within each; --sort created ... is the default
    by_step = json.loads(cache_command(root, "list", "--json", "--sort", "step").stdout)
    assert [e["key"] for e in by_step] == [
        key_of("e%d" % i) for step in range(3) for i in range(120) if i % 3 == step
    ]
    # oldest last-used first is not an order; the choices are named
    bad = cache_command(root, "list", "--sort", "colour", check=False)
    assert bad.returncode == 2 and "created" in bad.stderr and "last-used" in bad.stderr

    # --since: created within the last hour: entries 0..5 (5 * 600 + 300 s old)
    recent = cache_command(root, "list", "--since", "1h").stdout
    assert table_keys(recent) == [short(i) for i in range(6)]
    assert recent.splitlines()[0] == "Cache %s: 6 entries" % root
    # --step keeps its typo check; combined with the rest
    only_b = json.loads(
        cache_command(root, "list", "--step", "b", "--since", "1h", "--json").stdout
    )
    assert [e["key"] for e in only_b] == [key_of("e1"), key_of("e4")]
    typo = cache_command(root, "list", "--step", "bb", check=False)
    assert typo.returncode == 1
    assert typo.stderr.strip() == (
        "Error: no entry of a step 'bb' of %s in %s; steps with entries: a, b, c" % (FLOW, root)
    )
    assert cache_command(root, "list", "--limit", "-1", check=False).returncode == 2


# -- prune / invalidate ----------------------------------------------------------
def test_long_removals_are_summed_up_per_step_unless_verbose(tmp_path):
    root = populate(tmp_path / "cache", 120, expired_every=2)  # 60 expired, 20 per step
    verbose_root = str(tmp_path / "verbose")
    shutil.copytree(root, verbose_root)

    dry = json.loads(cache_command(root, "prune", "--expired", "--dry-run", "--json").stdout)
    assert dry["entries"] == 60 and len(dry["roots"][0]["entries"]) == 60  # JSON: complete

    text = cache_command(root, "prune", "--expired", "--grace", "0", "--yes").stdout
    lines = text.splitlines()
    assert lines[0].startswith("Cache %s: removed 60 entries and 60 unreferenced blobs: " % root)
    # one row per step: its 20 entries and the bytes of their blobs
    sizes = [
        sum(len(b"blob %d" % i) for i in range(0, 120, 2) if i % 3 == step) for step in range(3)
    ]
    assert [line.split() for line in lines[1:5]] == [["STEP", "REASON", "ENTRIES", "SIZE"]] + [
        [name, "expired", "20", str(size), "B"] for name, size in zip(STEPS, sizes)
    ]
    assert lines[5] == "  (one row per step and reason; --verbose lists every entry)"
    assert len(lines) == 6
    left = json.loads(cache_command(root, "list", "--json").stdout)
    assert len(left) == 60 and not any(e["expired"] for e in left)

    verbose = cache_command(
        verbose_root,
        "prune",
        "--expired",
        "--grace",
        "0",
        "--yes",
        "--verbose",
    ).stdout
    rows = [line.split() for line in verbose.splitlines()[2:]]
    assert len(rows) == 60 and {r[2] for r in rows} == {"expired"}
    assert sorted(r[1] for r in rows) == sorted(short(i) for i in range(0, 120, 2))

    # invalidate sums up the same way: 60 entries, 20 per step
    text = cache_command(root, "invalidate", "--all", "--yes").stdout
    lines = text.splitlines()
    assert lines[0].startswith("Cache %s: removed 60 entries: " % root)
    assert [line.split()[:3] for line in lines[2:5]] == [
        ["a", "invalidated", "20"],
        ["b", "invalidated", "20"],
        ["c", "invalidated", "20"],
    ]
    assert len(lines) == 6


def test_a_short_removal_still_lists_each_entry():
    now = time.time()
    plan = mt.Plan("ROOT")
    for i in range(report.TABLE_ROWS):
        m = manifest(FLOW, "a", key_of("e%d" % i), {"x": b"%d" % i}, now - 60)
        info = ObjectInfo(Cache.manifest_key(FLOW, "a", m.key), 100, now - 60)
        plan.entries.append((mt.EntryInfo(FLOW, "a", m.key, info, m), "expired"))
    text = report.removal_text(plan, None, now, False, None)
    assert len(text.splitlines()) == 2 + report.TABLE_ROWS
    plan.entries.append(plan.entries[0])
    assert len(report.removal_text(plan, None, now, False, None).splitlines()) == 4
    assert len(report.removal_text(plan, None, now, False, None, verbose=True).splitlines()) == (
        2 + report.TABLE_ROWS + 1
    )


def test_expiry_reads_in_the_unit_the_ttl_was_written_in():
    """Issue 15, point 10: a 30-day ttl showed as 'in 4w'."""
    now = time.time()
    m = manifest(FLOW, "a", key_of("ttl"), {"x": b"x"}, now - 5, now - 5 + 30 * 86400)
    entry = mt.EntryInfo(FLOW, "a", m.key, ObjectInfo("k", 100, now - 5), m)
    assert report.expiry(entry, now) == "in 30d"
    assert "(in 30d)" in report.entry_text(entry, "ROOT", now)
    assert report.age(now - 14 * 86400, now) == "2w ago"


# -- progress --------------------------------------------------------------------
# click draws a progress bar only for what lasts more than half a second; a
# local read takes well under a millisecond, so the store is slowed down (in the
# command's own process) to make the scan of a few hundred entries last that long
SLOW_STANDALONE = """
import sys, time
import metaflow
from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.cli.standalone import main

read = LocalStore.get

def slow_read(self, key):
    time.sleep(0.05)
    return read(self, key)

LocalStore.get = slow_read
main(sys.argv[1:])
"""


def run_with_terminal_stderr(args, env):
    """Run the (slowed) standalone command with stderr on a pseudo-terminal and
    stdout on a pipe: (exit status, stdout, what the terminal received)."""
    master, slave = os.openpty()
    received = []

    def drain():  # a full terminal buffer would block the command
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the command closed its end
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_STANDALONE, *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    out, _ = proc.communicate(timeout=120)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(received).decode(errors="replace")


def test_progress_on_a_terminal_and_nothing_on_a_pipe(tmp_path):
    root = populate(tmp_path / "cache", 300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env["USERNAME"] = "tester"

    code, out, terminal = run_with_terminal_stderr(["--root", root, "stats"], env)
    assert code == 0, out + terminal
    assert "Reading manifests" in terminal and "300/300" in terminal
    assert out.startswith("Cache %s: 300 entries, 300 blobs" % root)
    assert "Reading manifests" not in out  # the report alone on stdout

    # the same command with stderr on a pipe: nothing at all on stderr
    piped = subprocess.run(
        [sys.executable, "-c", SLOW_STANDALONE, "--root", root, "stats"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert piped.returncode == 0 and piped.stderr == ""
    assert piped.stdout == out


# -- at the scale users reported (make test-stress: about a minute and a half) ------
@pytest.mark.stress
def test_twenty_thousand_entries(tmp_path):
    """Issue 15: with 20,000 entries `prune --expired --yes` printed a 20,002-line
    table. The output now stays short whatever the number of entries."""
    started = time.perf_counter()
    root = populate(tmp_path / "cache", 20_000, expired_every=2)
    timings = {"populate": time.perf_counter() - started}

    def timed(name, *args):
        began = time.perf_counter()
        result = cache_command(root, *args)
        timings[name] = time.perf_counter() - began
        return result.stdout

    stats = timed("stats", "stats")
    assert stats.startswith("Cache %s: 20000 entries, 20000 blobs" % root)
    listed = timed("list", "list").splitlines()
    assert len(listed) == 53 and listed[-1].startswith("19950 more entries not shown")
    pruned = timed("prune", "prune", "--expired", "--grace", "0", "--yes").splitlines()
    assert pruned[0].startswith("Cache %s: removed 10000 entries and 10000 unreferenced" % root)
    assert len(pruned) == 6
    assert len(json.loads(timed("list --json", "list", "--json"))) == 10_000
    print("\n20,000 entries: " + ", ".join("%s %.1fs" % kv for kv in timings.items()))


# -- issue 17: what a command asks the store for --------------------------------------
# The command runs in a subprocess with the store classes' reads and listings
# counted (in that process only): what each command asked the store for.
COUNTING_COMMAND = """
import atexit, json, runpy, sys
import metaflow
from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.cache.stores.s3 import S3Store

calls = []

def count(cls, name):
    original = getattr(cls, name)

    def counted(self, key="", *args, **kwargs):
        calls.append((name, key))
        return original(self, key, *args, **kwargs)

    setattr(cls, name, counted)

for cls in (LocalStore, S3Store):
    for name in ("get", "get_dated", "list"):
        count(cls, name)
atexit.register(lambda: sys.stderr.write("\\nSTORE CALLS " + json.dumps(calls) + "\\n"))
if sys.argv[1] == "metaflow-memoize":
    from metaflow_extensions.memoize.plugins.memoize.cli.standalone import main
    main(sys.argv[2:])
else:  # a flow file and its arguments
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


class Counted:
    """A command's output and the store calls it made: ``calls`` is [(op, key)]."""

    def __init__(self, proc):
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.stdout = proc.stdout
        head, _, tail = proc.stderr.rpartition("STORE CALLS ")
        self.calls = [tuple(c) for c in json.loads(tail.splitlines()[0])]

    def manifest_reads(self):
        return [
            key
            for op, key in self.calls
            if op in ("get", "get_dated") and Cache.parse_manifest_key(key)
        ]

    def listings(self, prefix):
        return [key for op, key in self.calls if op == "list" and key == prefix]


def counted(args, cwd=None, env=None):
    proc = subprocess.run(
        [sys.executable, "-c", COUNTING_COMMAND, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    return Counted(proc)


def counted_command(root, *args, env=None):
    return counted(["metaflow-memoize", "--root", root, "--flow", FLOW, *args], env=env)


# -- issue 17: list and stats on S3 from listings and index objects ----------------
def publish_many(cache, n, expired_every=4):
    """``n`` entries of FLOW published as a run does (manifest, index object on S3,
    last-use marker): entry i created i * SPACING seconds ago in step STEPS[i % 3],
    with a blob of its own of 8 + (i % 7) * 8 bytes; every fifth shares a blob
    with the others; every ``expired_every``-th one is expired."""
    now = time.time()
    shared = b"shared by every fifth entry"

    def one(i):
        created = now - SPACING * i - 300
        blobs = {"x": (b"blob%4d" % i) * (1 + i % 7)}
        if i % 5 == 0:
            blobs["s"] = shared
        m = manifest(FLOW, STEPS[i % 3], key_of("e%d" % i), blobs, created)
        m.expires = created if expired_every and i % expired_every == 0 else None
        m.context = {"foreach": [], "parameters": {"i": {"value": str(i)}}}
        for data in blobs.values():
            cache.store.put(Cache.blob_key(sha_of(data)), data)
        assert cache.publish(m)
        return m

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def stats_from(doc):
    """The figures of a `stats --json` document (without what only the command adds)."""
    return {
        part: doc[part]
        for part in ("entries", "expired", "corrupt", "blobs", "bytes", "blob_bytes", "steps")
    }


@pytest.fixture
def no_signing_key(monkeypatch):
    monkeypatch.delenv("METAFLOW_MEMOIZE_SIGNING_KEY", raising=False)


@pytest.mark.slow  # about 90 s: thousands of entries through moto
def test_list_and_stats_on_s3_read_only_the_manifests_they_show(s3_env, no_signing_key):
    """Before: one GET per manifest for both (64-75 s at 5,000 entries on S3).
    Now `stats` reads none and `list` only those of the rows it shows, and both
    say exactly what reading every manifest says."""
    root = s3_env.url("cache")
    n = 400
    publish_many(Cache(S3Store(root)), n)
    target = mt.open_target(root, FLOW)
    every_manifest = mt.scan(target)  # the manifest-reading path: one GET per entry
    assert len(every_manifest.entries) == n
    assert all(e.manifest is not None for e in every_manifest.entries)
    rows = [(root, e) for e in every_manifest.entries]

    stats = counted_command(root, "stats", "--json")
    assert stats.manifest_reads() == []
    expected = report.stats_json(FLOW, None, [(root, *mt.summarize(every_manifest, time.time()))])
    assert stats_from(json.loads(stats.stdout)) == stats_from(expected)
    assert expected["expired"] == n // 4 and expected["blobs"] == n + 1

    for order in mt.LIST_ORDERS:
        listed = counted_command(root, "list", "--json", "--limit", "30", "--sort", order)
        shown = json.loads(listed.stdout)
        now = time.time()
        expected = [
            report.entry_dict(e, root, now)
            for _, e in mt.select_listing(rows, now, order, None, 30)[0]
        ]
        assert shown == expected, order
        # the rows shown, and nothing else
        assert sorted(listed.manifest_reads()) == sorted(e["object"] for e in shown), order

    table = counted_command(root, "list")
    assert table_keys(table.stdout) == [short(i) for i in range(report.TABLE_ROWS)]
    assert len(table.manifest_reads()) == report.TABLE_ROWS
    assert "i=7" in table.stdout.splitlines()[2 + 7]  # VALUES: from the manifest read

    # --since and --step select from the index too
    recent = counted_command(root, "list", "--json", "--since", "1h", "--step", "b")
    assert [e["key"] for e in json.loads(recent.stdout)] == [key_of("e1"), key_of("e4")]
    assert len(recent.manifest_reads()) == 2


def test_a_missing_stale_or_unbelieved_index_means_the_manifest_is_read(s3_env, monkeypatch):
    """The index is only a shortcut: an entry without one, or whose manifest was
    rewritten since (another MD5), or whose index is not signed with the reader's
    key, is read, and the figures are those of its manifest."""
    root = s3_env.url("cache")
    monkeypatch.setenv("METAFLOW_MEMOIZE_SIGNING_KEY", "the key")
    cache = Cache(S3Store(root), signing_key="the key")
    published = publish_many(cache, 12, expired_every=0)
    rewritten, unindexed, corrupt = published[0], published[1], published[2]
    # a manifest rewritten in place (say by hand): now expired, index stale
    rewritten.expires = rewritten.created
    rewritten.sign("the key")
    cache.store.put(Cache.manifest_key(FLOW, rewritten.step, rewritten.key), rewritten.dumps())
    # an entry written without an index object (an older version, or a failed write)
    for name in cache.store.list(Cache.index_prefix(FLOW, unindexed.step, unindexed.key)):
        cache.store.delete([name.key])
    # a manifest that no longer parses
    cache.store.put(Cache.manifest_key(FLOW, corrupt.step, corrupt.key), b"{not json")
    odd = {Cache.manifest_key(FLOW, m.step, m.key) for m in (rewritten, unindexed, corrupt)}

    stats = counted_command(root, "stats", "--json")
    assert sorted(stats.manifest_reads()) == sorted(odd)
    doc = json.loads(stats.stdout)
    assert (doc["entries"], doc["expired"], doc["corrupt"]) == (12, 1, 1)
    every_manifest = mt.scan(mt.open_target(root, FLOW))
    expected = report.stats_json(FLOW, None, [(root, *mt.summarize(every_manifest, time.time()))])
    assert stats_from(doc) == stats_from(expected)

    # a reader with another key believes no index object: it reads every manifest
    other = counted_command(
        root, "stats", "--json", env={**os.environ, "METAFLOW_MEMOIZE_SIGNING_KEY": "another"}
    )
    assert len(other.manifest_reads()) == 12
    assert stats_from(json.loads(other.stdout)) == stats_from(doc)


def test_stats_and_list_on_a_local_root_still_read_every_manifest(tmp_path, no_signing_key):
    """A local store's listing has no MD5 to check an index against: no index is
    written there, and the commands read the manifests, as before."""
    root = populate(tmp_path / "cache", 30)
    stats = counted_command(root, "stats", "--json")
    assert len(stats.manifest_reads()) == 30
    assert json.loads(stats.stdout)["entries"] == 30


# -- issue 17: plan and explain list each step once ----------------------------------
WIDE_FLOW = """
from metaflow import FlowSpec, memoize, step


class WideFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        self.items = list(range(%d))
        self.next(self.body, foreach="items")

    @memoize
    @step
    def body(self):
        self.out = self.input * 2
        self.next(self.join)

    @memoize
    @step
    def join(self, inputs):
        self.total = sum(i.out for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    WideFlow()
"""


def test_plan_after_a_body_edit_lists_each_step_once(runner):
    """Before: every task that would miss listed its step's entries again and read
    up to 8 of them (tasks x entries: 1,713 s for 5,000 items on S3)."""
    width = 6
    flow = runner.add_flow("wide_flow.py", WIDE_FLOW % width)
    runner.run("wide_flow.py")
    flow.write_text(flow.read_text().replace("self.input * 2", "self.input * 3"))

    plan = counted(
        ["wide_flow.py", "--no-pylint", "memoize", "plan", "--json"],
        cwd=runner.workdir,
        env=runner.env(),
    )
    doc = json.loads(plan.stdout[plan.stdout.index("{") :])
    by_step = {s["step"]: s for s in doc["steps"]}
    assert by_step["start"]["verdict"] == "hit"
    assert [t["verdict"] for t in by_step["body"]["tasks"]] == ["run"] * width
    assert all("code changed" in t["reason"] for t in by_step["body"]["tasks"])
    assert by_step["join"]["verdict"] == "maybe"

    assert len(plan.listings(Cache.entry_prefix("WideFlow", "body"))) == 1
    body_reads = [k for k in plan.manifest_reads() if Cache.parse_manifest_key(k)[1] == "body"]
    # one lookup per task, and the step's newest entries read once
    assert len(body_reads) <= width + entries.LATEST_READS


def test_explaining_many_tasks_lists_their_step_once(tmp_path):
    """`explain` of tasks that did not record what they were compared with (older
    versions) finds the step's latest entry: one listing for all of them."""
    store = CountingLocalStore(str(tmp_path / "cache"))
    cache = Cache(store)
    stored = []
    for i in range(40):
        m = manifest(FLOW, "a", key_of("x%d" % i), {"x": b"%d" % i}, time.time() - 1000 + i)
        m.components = {"code": {"step": "version %d" % i}}
        cache.publish(m)
        stored.append(m)
    recent = entries.RecentEntries(cache)
    store.calls.clear()
    explained = [
        explain_task(
            cache,
            FLOW,
            "a",
            "%s/1/a/%d" % (FLOW, i),
            {"memoize_status": "miss", "memoize_key": m.key},
            recent,
        )
        for i, m in enumerate(stored)
    ]
    assert [op for op, key in store.calls if op == "list"] == ["list"]
    # one lookup of each task's own entry, and the step's newest entries once
    assert len([1 for op, _ in store.calls if op == "get"]) <= len(stored) + entries.LATEST_READS
    # each compared with the newest entry created before its own
    assert explained[-1].compared_with == stored[-2].origin
    assert explained[-1].components["code"] == "changed"


class CountingLocalStore(LocalStore):
    """A local store that records its reads and listings."""

    def __init__(self, root):
        super().__init__(root)
        self.calls = []

    def get(self, key):
        self.calls.append(("get", key))
        return super().get(key)

    def get_dated(self, key):
        self.calls.append(("get", key))
        return super().get_dated(key)

    def list(self, prefix=""):
        self.calls.append(("list", prefix))
        return super().list(prefix)


def s3_list_requests(store):
    """Count the ListObjectsV2 requests an S3 store's client sends (a botocore event hook)."""
    sent = []
    store.client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **kw: sent.append(kw["params"].get("Prefix"))
    )
    return sent


@pytest.mark.parametrize("page_size", [1000, 3])
def test_a_split_listing_finds_what_one_listing_finds(s3_env, tmp_path, page_size):
    """Store.list_split (on S3: a first page, then one listing per first character
    still to come, side by side) lists exactly the objects of one listing whose
    names start with those characters; Store.list_folders (one request on S3) names
    the folders one listing shows. ``page_size`` 3: the first page ends inside the
    "0" names, and the rest is listed in parts."""
    names = ["v1/blobs/%s%s/%s" % (c, c, (c * 40)) for c in "0123456789abcdef"]
    names += ["v1/blobs/zz/not-a-blob", "v1/blobs/0a/" + "0a" * 20, "v1/blobs-other/00/x"]
    names += ["v1/blobs/00/%s" % ("0" * 39 + c) for c in "12"]  # more "0" names
    s3 = S3Store(s3_env.url("split-%d" % page_size))
    s3.list_page_size = page_size
    for store in (s3, LocalStore(str(tmp_path / "split"))):
        for name in names:
            store.put(name, b"x")
        whole = [i for i in store.list("v1/blobs/") if i.key[len("v1/blobs/")] != "z"]
        split = store.list_split("v1/blobs/", entries.HEX_DIGITS)
        assert sorted(split) == sorted(whole) and len(split) == 19
        assert len(set(split)) == len(split)  # the first page and the parts do not overlap
        zeros = store.list_split("v1/blobs", "0")
        assert sorted(zeros) == sorted(i for i in whole if i.key.startswith("v1/blobs/0"))
        # the folders directly under a prefix: every name's first part (not "other")
        assert store.list_folders("v1/blobs/") == sorted({n.split("/")[2] for n in names[:-1]})
        assert store.list_folders("v1/") == ["blobs", "blobs-other"]
    # a prefix of one page costs one request, not one per character
    sent = s3_list_requests(s3)
    assert len(s3.list_split("v1/blobs-other/", entries.HEX_DIGITS)) == 1
    assert len(sent) == 1


def test_stats_and_list_of_an_s3_root_without_entries(s3_env, no_signing_key):
    """A marked root with no entry has no flow folder to list in parts."""
    root = s3_env.url("empty")
    Cache(S3Store(root)).ensure_marker(recheck=True)
    target = mt.open_target(root)
    ((listed_root, total, steps),) = mt.summarize_targets([target], None, time.time())
    assert (listed_root, total.entries, steps) == (root, 0, [])
    assert mt.list_entries([target], None, time.time()) == ([], [])
    assert mt.plan_prune(target, mt.PruneCriteria(expired=True), time.time(), 0).empty
