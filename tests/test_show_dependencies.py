"""`memoize show KEY` and `memoize explain STEP` list what an entry relies on,
grouped by kind (key/dep_groups.py), in text and in JSON, from a real flow whose
memoized step calls a helper of another module, reads module constants, reads a
data file, lists a folder, globs one and checks for a file that is absent."""

import json

FLOW = "flow.py"

FLOW_SOURCE = """
    import glob
    import os

    from metaflow import FlowSpec, memoize, step

    import helpers
    from _counter import record

    SCALE = 3


    class ShowDepsFlow(FlowSpec):
        @memoize
        @step
        def start(self):
            record("start")
            with open(os.path.join("data", "values.txt")) as f:
                values = [int(line) for line in f]
            self.extra = sorted(os.listdir(os.path.join("data", "extra")))
            self.csvs = sorted(glob.glob(os.path.join("data", "*.csv")))
            self.override = os.path.exists(os.path.join("data", "override.csv"))
            self.total = helpers.scaled(sum(values)) * SCALE
            self.next(self.end)

        @step
        def end(self):
            pass


    if __name__ == "__main__":
        ShowDepsFlow()
"""

HELPERS = """
FACTOR = 2


def scaled(x):
    return x * FACTOR
"""

#: what the step used, by group: (dependency id, its words)
EXPECTED = {
    "code": [("code:helpers:scaled", "`helpers.scaled`")],
    "module_state": [
        ("global:__main__:SCALE", "`SCALE`"),
        ("global:helpers:FACTOR", "`helpers.FACTOR`"),
    ],
    "files": [("file:data/values.txt", "data/values.txt")],
    "listings": [("dir:data/extra", "data/extra/ (the names in it)")],
}
#: kinds whose ids carry more than a path: (group, kind, words)
EXPECTED_BY_WORDS = [
    ("listings", "glob", "glob data/*.csv"),
    ("existence", "exists", "data/override.csv (absent when recorded)"),
]
TITLES = {
    "code": "Code",
    "module_state": "Module state",
    "files": "Files",
    "listings": "Folder listings and globs",
    "existence": "Existence checks and absent paths",
    "environment": "Environment",
}


def _flow_world(runner):
    runner.add_flow(FLOW, FLOW_SOURCE)
    (runner.workdir / "helpers.py").write_text(HELPERS)
    data = runner.workdir / "data"
    (data / "extra").mkdir(parents=True)
    (data / "values.txt").write_text("1\n2\n3\n")
    (data / "extra" / "a.txt").write_text("a")
    (data / "a.csv").write_text("x\n1\n")


def _memoize(runner, *args):
    return runner.cli(FLOW, "memoize", *args).stdout


def _block(text, title):
    """The lines under a group's heading (`  Title (n)`), up to the next heading."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  %s (" % title))
    out = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        out.append(line.strip())
    return out


def test_show_and_explain_list_every_recorded_dependency_by_group(runner):
    _flow_world(runner)
    first = runner.run(FLOW)
    second = runner.run(FLOW)
    assert runner.count("start") == 1  # the second run hit
    (entry,) = json.loads(_memoize(runner, "list", "--step", "start", "--json"))
    key = entry["key"]

    # -- show --json: the groups, each dependency by id and in words
    shown = json.loads(_memoize(runner, "show", key[:12], "--json"))
    groups = shown["dependencies"]
    for gid, deps in EXPECTED.items():
        assert groups[gid]["title"] == TITLES[gid]
        items = {d["id"]: d["text"] for d in groups[gid]["items"]}
        for dep_id, words in deps:
            assert items.get(dep_id) == words, (gid, dep_id, items)
    for gid, kind, words in EXPECTED_BY_WORDS:
        assert groups[gid]["title"] == TITLES[gid]
        assert (kind, words) in [(d["kind"], d["text"]) for d in groups[gid]["items"]], groups[gid]
    # the key's own parts sit beside them, marked as such
    code_texts = [d["text"] for d in groups["code"]["items"]]
    assert "the step body (in the key)" in code_texts
    assert any(d["text"].startswith("Python 3.") for d in groups["environment"]["items"])
    # every recorded dependency is listed, exactly once, whatever its group
    manifest_path = runner.workdir / ".metaflow" / "memoize-cache" / shown["object"]
    observed = json.loads(manifest_path.read_text())["observed"]
    listed = [d["id"] for g in groups.values() for d in g["items"] if d["kind"] != "key"]
    assert sorted(listed) == sorted(observed)
    assert {d["id"]: d["value"] for g in groups.values() for d in g["items"]}.items() >= (
        observed.items()
    )

    # -- show (text): the same groups under their headings
    text = _memoize(runner, "show", key[:12])
    assert "what a hit relies on (%d observed while the step ran" % len(observed) in text
    _assert_blocks(text)
    assert "the step body (in the key)" in _block(text, "Code")

    # -- explain: the hit relies on the entry it used; the first run's miss stored it
    hit = json.loads(_memoize(runner, "explain", "start", "--json"))["tasks"][0]
    assert hit["status"] == "hit" and hit["entry"] == key
    assert hit["dependencies"] == groups
    miss = json.loads(_memoize(runner, "explain", "start", "--run", first.run_id, "--json"))
    (miss,) = miss["tasks"]
    assert miss["status"] == "miss" and miss["entry"] == key
    assert miss["dependencies"] == groups

    text = _memoize(runner, "explain", "start", "--run", second.run_id)
    pathspec = "ShowDepsFlow/%s/start/" % second.run_id
    assert "%s" % pathspec in text and "hit" in text
    assert "(entry %s) relies on (%d observed" % (key[:12], len(observed)) in text
    _assert_blocks(text)


def _assert_blocks(text):
    """Each expected dependency in words, under its group's heading."""
    expected = [(gid, words) for gid, deps in EXPECTED.items() for _, words in deps]
    expected += [(gid, words) for gid, _, words in EXPECTED_BY_WORDS]
    for gid, words in expected:
        block = _block(text, TITLES[gid])
        assert words in block, (TITLES[gid], block)
