"""key/dep_groups.py: recorded dependencies grouped by kind and put in words."""

import json

import pytest

from metaflow_extensions.memoize.plugins.memoize.key import dep_groups
from metaflow_extensions.memoize.plugins.memoize.key.dep_groups import (
    GROUPS,
    describe,
    group_dependencies,
    groups_from_json,
    groups_json,
    groups_text,
    observed_count,
)

DIGEST = "0123456789abcdef0123456789abcdef"

#: one dependency of every kind: (id, value) -> (group, words)
EVERY_KIND = {
    ("code:__main__:TrainFlow._scale", DIGEST): ("code", "`TrainFlow._scale`"),
    ("code:helpers.text:clean", DIGEST): ("code", "`helpers.text.clean`"),
    ("source:gen/make.py", ""): ("code", "all of gen/make.py (code made while the step ran)"),
    ("global:helpers:FACTOR", DIGEST): ("module_state", "`helpers.FACTOR`"),
    ("global:__main__:SEED", DIGEST): ("module_state", "`SEED`"),
    ("toplevel:helpers", DIGEST): (
        "module_state",
        "what `helpers` sets at import (its top-level statements)",
    ),
    ("toplevel:__main__", DIGEST): (
        "module_state",
        "what the flow file sets at import (its top-level statements)",
    ),
    ("flowattr:THRESHOLD", DIGEST): ("class_attributes", "`self.THRESHOLD` (of the flow class)"),
    ("classattr:shapes:Box.ratio", DIGEST): ("class_attributes", "`shapes.Box.ratio`"),
    ("artifact:features", DIGEST): ("inputs", "`features`"),
    ("artifact:*", DIGEST): ("inputs", "every input artifact (the step enumerated them)"),
    ("input:a/-:x", DIGEST): ("inputs", "`x` of input a"),
    ("input:body/3:score", DIGEST): ("inputs", "`score` of input body[3]"),
    ("input:body/3:*", DIGEST): (
        "inputs",
        "every artifact of input body[3] (merged, or its item read)",
    ),
    ("task:index", "3"): ("foreach", "self.index = 3"),
    ("task:foreach_stack", "[0, 2]"): ("foreach", "self.foreach_stack() = [0, 2]"),
    ("file:data/train.csv", DIGEST): ("files", "data/train.csv"),
    ("file:/srv/ref.parquet", "missing"): ("files", "/srv/ref.parquet (absent when recorded)"),
    ("stat:data/train.csv", DIGEST): (
        "files",
        "data/train.csv (metadata: size, modification time)",
    ),
    ("dir:data", DIGEST): ("listings", "data/ (the names in it)"),
    ('glob:["data","*.csv",false,"glob"]', DIGEST): ("listings", "glob *.csv in data/"),
    ('glob:["data","**/*.csv",true,"glob+hidden"]', DIGEST): (
        "listings",
        "glob **/*.csv in data/ (recursive, hidden files included)",
    ),
    ('glob:["","*.txt",false]', DIGEST): ("listings", "glob *.txt"),
    ('glob:[".","data/*.csv",false,"glob"]', DIGEST): ("listings", "glob data/*.csv"),
    ("exists:data/override.csv", "absent"): (
        "existence",
        "data/override.csv (absent when recorded)",
    ),
    ("exists:data/train.csv", "file"): ("existence", "data/train.csv (a file when recorded)"),
    ("exists:data", "folder"): ("existence", "data (a folder when recorded)"),
    ("exists:current", "dangling link"): (
        "existence",
        "current (a link to nothing when recorded)",
    ),
    ("command:" + DIGEST, DIGEST): ("programs", "a program, by its command line (#0123456789ab)"),
    (
        'client:{"flow":"MovieStatsFlow","md":"local","ns":null,"q":"latest_successful_run"}',
        "MovieStatsFlow/1795",
    ): (
        "client",
        "Flow('MovieStatsFlow').latest_successful_run in the global namespace"
        " -> MovieStatsFlow/1795",
    ),
    ('client:{"flow":"F","md":"local","ns":"user:me","q":"runs","tags":["x"]}', DIGEST): (
        "client",
        "Flow('F').runs('x') in namespace user:me",
    ),
    ('client:{"names":["model"],"q":"artifacts","task":"F/1/train/2"}', '{"model":"ab12"}'): (
        "client",
        "artifacts model of F/1/train/2",
    ),
    ('client:{"q":"trigger"}', DIGEST): ("client", "current.trigger (what triggered the run)"),
    ('client:{"q":"someday"}', DIGEST): ("client", '{"q": "someday"}'),
    ("cwd:", "."): (
        "environment",
        "the working directory: the flow's folder (relative paths were used)",
    ),
    ("cwd:", "sub/dir"): (
        "environment",
        "the working directory: sub/dir (in the flow's folder) (relative paths were used)",
    ),
    ("unobserved:a child process without the file recorder", "unobservable"): (
        "unobservable",
        "could not be observed: a child process without the file recorder",
    ),
    ("incomplete:recorder", "incomplete"): (
        "unobservable",
        "the recording was cut short (recorder)",
    ),
}


@pytest.mark.parametrize("dep, expected", list(EVERY_KIND.items()), ids=lambda v: str(v)[:40])
def test_each_kind_has_its_group_and_words(dep, expected):
    assert describe(*dep) == expected


def test_groups_come_in_a_fixed_order_and_skip_empty_ones():
    observed = {dep: value for dep, value in EVERY_KIND}
    groups = group_dependencies(observed)
    order = [gid for gid, _, _ in GROUPS]
    ids = [g.id for g in groups]
    assert ids == sorted(ids, key=order.index)
    assert "other" not in ids  # every kind above is known
    assert set(ids) == {group for group, _ in EVERY_KIND.values()}
    assert sum(len(g.items) for g in groups) == len(observed) == observed_count(groups)
    only_files = group_dependencies({"file:b.csv": DIGEST, "file:a.csv": DIGEST})
    assert [g.id for g in only_files] == ["files"]
    # sorted by their words within a group
    assert [d.text for d in only_files[0].items] == ["a.csv", "b.csv"]


def test_an_unknown_kind_goes_to_other_by_its_id():
    groups = group_dependencies({"gpu:driver": "535.104", "weird:x": DIGEST, "noColon": ""})
    assert [g.id for g in groups] == ["other"]
    assert [d.text for d in groups[0].items] == ["gpu:driver = 535.104", "noColon", "weird:x"]
    assert groups[0].title == "Other"


def test_a_malformed_id_of_a_known_kind_is_listed_as_recorded():
    group, text = describe("glob:not json", DIGEST)
    assert (group, text) == ("listings", "glob not json")


def test_a_registered_kind_gets_its_group_and_words(monkeypatch):
    monkeypatch.setitem(dep_groups.KINDS, "placeholder", ("other", None))  # restored after
    dep_groups.register_kind("placeholder", "files", lambda rest, value: "held %s" % rest)
    assert describe("placeholder:x.bin", DIGEST) == ("files", "held x.bin")
    with pytest.raises(ValueError, match="no dependency group 'nowhere'"):
        dep_groups.register_kind("placeholder", "nowhere", lambda rest, value: rest)


def test_digests_are_not_shown_and_special_values_are():
    assert describe("global:m:X", DIGEST)[1] == "`m.X`"
    assert describe("global:m:X", "absent")[1] == "`m.X` (absent when recorded)"
    modified = "modified while the step ran 1a2b3c4d5e6f7a8b"
    assert describe("file:log.txt", modified)[1] == (
        "log.txt (changed while the step ran: never verifies)"
    )
    assert describe("file:x", "unavailable: OSError")[1] == "x (unavailable: OSError)"


def test_the_key_components_join_the_groups_a_person_looks_in():
    components = {
        "code": {"step": DIGEST, "depends_on:data/vocab.txt": DIGEST},
        "args": {"version": "2", "inputs": None, "ignore": [], "outputs": None},
        "inputs": {"raw": "sha-raw"},
        "env": {
            "python": "3.11",
            "package:pandas": "2.2.1",
            "environment.vars": {"MODE": "fast"},
        },
    }
    groups = {g.id: g for g in group_dependencies({"code:helpers:clean": DIGEST}, components)}
    code = [d.text for d in groups["code"].items]
    # what the key holds comes first, then what was observed
    assert code == [
        "data/vocab.txt (depends_on) (in the key)",
        "the step body (in the key)",
        "version='2' (in the key)",
        "`helpers.clean`",
    ]
    assert [d.text for d in groups["inputs"].items] == ["`raw` (declared) (in the key)"]
    assert [d.text for d in groups["environment"].items] == [
        '@environment vars {"MODE": "fast"} (in the key)',
        "package pandas 2.2.1 (env=) (in the key)",
        "Python 3.11 (in the key)",
    ]
    assert observed_count(list(groups.values())) == 1
    join = group_dependencies({}, {"inputs": [["a", -1, DIGEST, ["x"]], ["b", -1, DIGEST, []]]})
    assert [d.text for d in join[0].items] == ["which inputs the join has (2) (in the key)"]


def test_json_and_text_hold_the_same_grouping():
    observed = {"file:data/a.csv": DIGEST, "code:__main__:F.helper": DIGEST, "dir:data": DIGEST}
    groups = group_dependencies(observed)
    doc = json.loads(json.dumps(groups_json(groups)))
    assert list(doc) == ["code", "files", "listings"]
    assert doc["files"] == {
        "title": "Files",
        "about": "files read (by content), and file metadata read",
        "items": [{"id": "file:data/a.csv", "kind": "file", "text": "data/a.csv", "value": DIGEST}],
    }
    assert groups_text(groups).splitlines() == [
        "  Code (1)",
        "    `F.helper`",
        "  Files (1)",
        "    data/a.csv",
        "  Folder listings and globs (1)",
        "    data/ (the names in it)",
    ]


def test_groups_read_back_from_json_print_the_same():
    observed = {dep: value for dep, value in EVERY_KIND}
    observed["future:x"] = "1"
    groups = group_dependencies(observed, {"env": {"python": "3.12"}})
    back = groups_from_json(json.loads(json.dumps(groups_json(groups))))
    assert back == groups
    assert groups_text(back) == groups_text(groups)
    assert observed_count(back) == len(observed)


def test_nothing_recorded_is_no_group():
    assert group_dependencies({}) == []
    assert groups_text([]) == ""


def _explained(pathspec, observed):
    from metaflow_extensions.memoize.plugins.memoize.runtime.explain import TaskExplanation

    e = TaskExplanation(pathspec=pathspec, status="hit", key="k" * 32)
    if observed is not None:
        e.entry = "e%s" % pathspec[-1] * 32
        e.dependencies = groups_json(group_dependencies(observed))
    return e


def test_explain_prints_one_block_per_distinct_entry_and_cuts_long_lists():
    from metaflow_extensions.memoize.plugins.memoize.cli import report

    same = {"code:__main__:F.body": DIGEST, "file:data/a.csv": DIGEST}
    tasks = [_explained("F/1/body/%d" % i, same) for i in range(3)]
    tasks.append(_explained("F/1/body/9", None))
    text = report.explain_dependencies_text(tasks)
    assert text.count("relies on") == 1
    assert "F/1/body/0 (entry e0e0e0e0e0e0) and 2 other tasks with the same relies on" in text
    assert "(2 observed while the step ran" in text
    assert "    data/a.csv" in text.splitlines()
    assert text.splitlines()[-1] == (
        "no entry to show for F/1/body/9 (not stored, or removed since)"
    )

    many = [
        _explained("F/1/body/%d" % i, {"task:index": str(i)})
        for i in range(report.DEPENDENCY_BLOCKS + 2)
    ]
    text = report.explain_dependencies_text(many)
    assert text.count("relies on") == report.DEPENDENCY_BLOCKS
    assert "2 more tasks with other dependencies not shown: --json lists every task's" in text
    assert report.explain_dependencies_text([_explained("F/1/body/1", None)]) == ""
