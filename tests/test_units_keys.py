"""Fast unit tests of the pure modules: keys, durations, code identity,
manifests, and decorator argument parsing."""

import json
import math
import os
import subprocess
import sys
import textwrap

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest

from metaflow_extensions.memoize.plugins.memoize import durations
from metaflow_extensions.memoize.plugins.memoize.cache.manifest import (
    REPR_MAX_PICKLED,
    SHORT_REPR,
    ArtifactRecord,
    Manifest,
    context_of,
    shown_value,
)
from metaflow_extensions.memoize.plugins.memoize.exceptions import (
    CorruptEntry,
    MemoizeArgumentError,
)
from metaflow_extensions.memoize.plugins.memoize.key import (
    code as code_identity,
)
from metaflow_extensions.memoize.plugins.memoize.key import (
    components as keys,
)
from metaflow_extensions.memoize.plugins.memoize.settings import parse_arguments


# -- keys ---------------------------------------------------------------------
def components(**overrides):
    base = dict(
        flow="F",
        step="s",
        code={"step": "c1", "helper:h": "c2"},
        args={"version": None, "inputs": None, "ignore": [], "outputs": None},
        inputs={"a": "sha-a", "b": "sha-b"},
        foreach=[{"step": "start", "var": "items", "item": "d1"}],
        env={"python": "3.11"},
    )
    base.update(overrides)
    return keys.build_components(**base)


def test_key_is_stable_and_independent_of_dict_order():
    one = components(inputs={"a": "sha-a", "b": "sha-b"}, code={"step": "c1", "helper:h": "c2"})
    two = components(inputs={"b": "sha-b", "a": "sha-a"}, code={"helper:h": "c2", "step": "c1"})
    assert keys.key_of(one) == keys.key_of(two)
    assert len(keys.key_of(one)) == 32 and int(keys.key_of(one), 16) >= 0


def test_key_is_the_same_in_another_process():
    # hash randomization must not leak into keys
    script = textwrap.dedent(
        """
        import metaflow
        from metaflow_extensions.memoize.plugins.memoize.key import components as keys
        print(keys.key_of(keys.build_components(flow="F", step="s", code={"step": "c"},
              args={}, inputs={"x": "1", "y": "2"}, foreach=[], env={})))
        """
    )
    expected = keys.key_of(
        keys.build_components(
            flow="F",
            step="s",
            code={"step": "c"},
            args={},
            inputs={"y": "2", "x": "1"},
            foreach=[],
            env={},
        )
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == expected


@pytest.mark.parametrize(
    "change",
    [
        dict(flow="G"),
        dict(step="t"),
        dict(code={"step": "c1-edited", "helper:h": "c2"}),
        dict(code={"step": "c1", "helper:h": "c2-edited"}),
        dict(args={"version": "2", "inputs": None, "ignore": [], "outputs": None}),
        dict(inputs={"a": "sha-a", "b": "sha-B"}),
        dict(inputs={"a": "sha-a"}),
        dict(foreach=[{"step": "start", "var": "items", "item": "d2"}]),
        dict(foreach=[]),
        dict(env={"python": "3.12"}),
    ],
)
def test_every_component_changes_the_key(change):
    assert keys.key_of(components(**change)) != keys.key_of(components())


def test_canonical_json_is_compact_sorted_and_ascii():
    assert keys.canonical_json({"b": 1, "a": ["é", 2]}) == '{"a":["\\u00e9",2],"b":1}'


def test_select_inputs_include_ignore_drop_and_bookkeeping():
    arts = {"a": "1", "b": "2", "c": "3", "_foreach_stack": "x", "_transition": "y"}
    assert keys.select_inputs(arts) == {"a": "1", "b": "2", "c": "3"}
    assert keys.select_inputs(arts, include=["a", "_transition"]) == {"a": "1"}
    assert keys.select_inputs(arts, ignore=["b"]) == {"a": "1", "c": "3"}
    assert keys.select_inputs(arts, drop=["c"]) == {"a": "1", "b": "2"}
    assert keys.select_inputs(arts, include=["a", "b"], ignore=["b"]) == {"a": "1"}
    assert keys.select_inputs(arts, include=[]) == {}
    assert keys.select_inputs(arts, include=["missing"]) == {}


def test_join_inputs_component_ignores_arrival_order_but_not_foreach_order():
    left = ("left", None, {"x": "1"})
    right = ("right", None, {"y": "2"})
    assert keys.join_inputs_component([left, right]) == keys.join_inputs_component([right, left])
    a0, a1 = ("body", 0, {"out": "10"}), ("body", 1, {"out": "20"})
    swapped = [("body", 0, {"out": "20"}), ("body", 1, {"out": "10"})]
    assert keys.join_inputs_component([a1, a0]) == keys.join_inputs_component([a0, a1])
    assert keys.join_inputs_component(swapped) != keys.join_inputs_component([a0, a1])
    (row,) = keys.join_inputs_component([left])
    assert row[0] == "left" and row[1] == -1 and row[3] == ["x"]


def test_diff_components_explains_each_change():
    old = components()
    assert keys.diff_components(old, components()) == []
    assert keys.diff_components(old, components(code={"step": "x", "helper:h": "c2"})) == [
        "code changed (step body)"
    ]
    assert keys.diff_components(old, components(code={"step": "c1", "helper:h": "x"})) == [
        "code changed (helper h)"
    ]
    reasons = keys.diff_components(old, components(inputs={"a": "new", "c": "3"}))
    assert reasons == ["input 'a' changed", "input 'c' added", "input 'b' removed"]
    args = {"version": "2", "inputs": None, "ignore": [], "outputs": None}
    assert keys.diff_components(old, components(args=args)) == ["argument 'version' changed"]
    assert keys.diff_components(old, components(env={"python": "3.12"})) == [
        "environment 'python' changed"
    ]
    assert keys.diff_components(
        old, components(foreach=[{"step": "start", "var": "items", "item": "d2"}])
    ) == ["foreach item changed"]
    newer = dict(old, format=keys.KEY_FORMAT + 1)
    assert keys.diff_components(old, newer) == ["key format changed (extension upgraded)"]
    join_old = components(inputs=keys.join_inputs_component([("a", 0, {"x": "1"})]))
    join_new = components(inputs=keys.join_inputs_component([("a", 0, {"x": "2"})]))
    assert keys.diff_components(join_old, join_new) == ["join input from a[0] changed"]


# -- durations ----------------------------------------------------------------
@pytest.mark.parametrize(
    "value,seconds",
    [
        (None, None),
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("3600", 3600.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        (" 1.5H ", 5400.0),
        ("2 d", 172800.0),
    ],
)
def test_parse_duration_accepts(value, seconds):
    assert durations.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "", "7 days", "1y", "-5s", "5x", True, -1, [1]])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError) as err:
        durations.parse_duration(value)
    assert "duration" in str(err.value)


@pytest.mark.parametrize(
    "value,size",
    [(0, 0), (1024, 1024), ("500MB", 500 * 10**6), ("20 gb", 20 * 10**9), ("1.5GiB", 1610612736)],
)
def test_parse_size(value, size):
    assert durations.parse_size(value) == size


@pytest.mark.parametrize("value", [-1, True, "lots", "5 XB", ""])
def test_parse_size_rejects(value):
    with pytest.raises(ValueError):
        durations.parse_size(value)


@pytest.mark.parametrize(
    "seconds,text",
    [
        (None, "-"),
        (0, "0s"),
        (0.02, "0s"),  # a zero reads "0s" everywhere, never "0.0s"
        (0.5, "0.5s"),
        (0.97, "1s"),
        (45, "45s"),
        (59.7, "1m00s"),
        (252, "4m12s"),
        (3 * 3600 + 5 * 60, "3h05m"),
        (3 * 86400, "3d"),
        # in the unit a ttl is written in: 30d stays 30d, weeks only when whole
        (15 * 86400, "15d"),
        (30 * 86400, "30d"),
        (30 * 86400 - 5, "30d"),  # a 30-day ttl 5 seconds after it was set
        (14 * 86400, "2w"),
        (28 * 86400, "4w"),
        (-45, "-45s"),
    ],
)
def test_format_duration(seconds, text):
    assert durations.format_duration(seconds) == text


@pytest.mark.parametrize(
    "count,word,text",
    [
        (1, "artifact", "1 artifact"),
        (2, "artifact", "2 artifacts"),
        (0, "entry", "0 entries"),
        (1, "entry", "1 entry"),
        (3, "key", "3 keys"),
        (2, "miss", "2 misses"),
        (2, "unreferenced blob", "2 unreferenced blobs"),
    ],
)
def test_format_count(count, word, text):
    assert durations.format_count(count, word) == text


def test_format_size():
    assert durations.format_size(None) == "-"
    assert durations.format_size(512) == "512 B"
    assert durations.format_size(1_400_000) == "1.4 MB"
    assert durations.format_size(20 * 10**9) == "20.0 GB"


# -- code identity ------------------------------------------------------------
def _function(source):
    namespace = {}
    path = "<t2-src-%d>" % abs(hash(source))
    code = compile(textwrap.dedent(source), path, "exec")
    # inspect.getsource needs the text: register it with linecache
    import linecache

    linecache.cache[path] = (len(source), None, textwrap.dedent(source).splitlines(True), path)
    exec(code, namespace)
    return namespace["f"]


BASE = """
def f(self):
    x = self.a * 2
    self.b = x
"""


@pytest.mark.parametrize(
    "variant",
    [
        # comments and blank lines
        """
def f(self):
    # compute
    x = self.a * 2   # double


    self.b = x
""",
        # a docstring
        '''
def f(self):
    """Doubles a.

    Long explanation.
    """
    x = self.a * 2
    self.b = x
''',
        # decorators (ttl, step) are not the body
        """
def ident(fn):
    return fn

def deco(*a, **k):
    return ident

@deco(ttl="7d")
@ident
def f(self):
    x = self.a * 2
    self.b = x
""",
        # indentation (a method in a class)
        """
class C:
    def f(self):
        x = self.a * 2
        self.b = x
f = C.f
""",
    ],
)
def test_normalized_source_ignores_cosmetics(variant):
    assert code_identity.normalized_source(_function(variant)) == code_identity.normalized_source(
        _function(BASE)
    )


@pytest.mark.parametrize(
    "variant",
    [
        BASE.replace("* 2", "* 3"),
        BASE.replace("self.b = x", "self.c = x"),
        BASE.replace("x = self.a * 2", "x = 2 * self.a"),
        BASE.replace("def f(self):", "def f(self, other=1):"),
        BASE + "    return None\n",
        BASE.replace("x = self.a * 2", "x = self.a * 2\n    'a string statement, not a docstring'"),
    ],
)
def test_normalized_source_sees_code_changes(variant):
    assert code_identity.normalized_source(_function(variant)) != code_identity.normalized_source(
        _function(BASE)
    )


def test_assigned_and_read_attributes():
    fn = _function(
        """
def f(self):
    self.a = 1
    self.b += self.c
    del self.d
    print(self.e)
"""
    )
    assert code_identity.assigned_attributes(fn) == {"a", "b", "d"}
    assert code_identity.reads_attribute(fn, "e")
    assert not code_identity.reads_attribute(fn, "items")
    passes_self = _function(
        """
def f(self):
    helper(self)
"""
    )
    assert code_identity.assigned_attributes(passes_self) is None
    assert code_identity.reads_attribute(passes_self, "items")


# -- manifest -----------------------------------------------------------------
def make_manifest(**overrides):
    fields = dict(
        key="k" * 32,
        flow="F",
        step="s",
        components=components(),
        artifacts={
            "x": ArtifactRecord(sha="a" * 40, info={"size": 3, "type": "<class 'int'>"}),
            "y": ArtifactRecord(sha="b" * 40, info={}, cas_raw=True, stored_size=10),
        },
        transition={"_transition": {"funcs": ["end"], "foreach": None, "extra": []}},
        created=1700000000.25,
        expires=1700003600.25,
        origin="F/1/s/2",
        body_seconds=1.5,
        versions={"metaflow": "2.19.39"},
        passthrough={"p": "c" * 40},
    )
    fields.update(overrides)
    return Manifest(**fields)


def test_manifest_round_trip():
    m = make_manifest()
    loaded = Manifest.loads(m.dumps(), expected_key=m.key)
    assert loaded == m
    assert loaded.dumps() == m.dumps()
    assert loaded.blob_shas == ["a" * 40, "b" * 40]
    assert loaded.artifact_bytes == 10
    no_ttl = Manifest.loads(make_manifest(expires=None).dumps())
    assert no_ttl.expires is None and not no_ttl.is_expired(1e12)


def test_manifest_expiry_boundary():
    m = make_manifest(created=100.0, expires=200.0)
    assert not m.is_expired(199.9)
    assert m.is_expired(200.0)
    assert m.is_expired(1e9)


def test_manifest_signature():
    m = make_manifest().sign("secret")
    assert m.signature and m.signature_valid("secret")
    assert not m.signature_valid("other")
    loaded = Manifest.loads(m.dumps())
    assert loaded.signature_valid("secret")
    # any change to the signed content breaks the signature
    for tamper in (
        lambda d: d.__setitem__("expires", None),
        lambda d: d.__setitem__("origin", "F/9/s/9"),
        lambda d: d["artifacts"]["x"].__setitem__("sha", "f" * 40),
        lambda d: d["components"]["inputs"].__setitem__("a", "other"),
    ):
        d = json.loads(m.dumps())
        tamper(d)
        assert not Manifest.loads(json.dumps(d).encode()).signature_valid("secret")
    unsigned = make_manifest().sign(None)
    assert unsigned.signature is None and not unsigned.signature_valid("secret")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"format": 1}',
        json.dumps(dict(json.loads(make_manifest().dumps()), format=99)).encode(),
        json.dumps(dict(json.loads(make_manifest().dumps()), created="yesterday")).encode(),
        json.dumps(dict(json.loads(make_manifest().dumps()), artifacts={"x": {}})).encode(),
    ],
)
def test_manifest_loads_rejects_garbage(data):
    with pytest.raises(CorruptEntry):
        Manifest.loads(data)


def test_manifest_context_round_trips_and_is_signed():
    context = {
        "foreach": [{"step": "start", "var": "items", "value": "'b'"}],
        "parameters": {"alpha": {"value": "0.5"}, "table": {"digest": "d" * 40}},
    }
    m = make_manifest(context=context).sign("secret")
    loaded = Manifest.loads(m.dumps())
    assert loaded.context == context and loaded.signature_valid("secret")
    d = json.loads(m.dumps())
    d["context"]["parameters"]["alpha"]["value"] = "0.9"
    assert not Manifest.loads(json.dumps(d).encode()).signature_valid("secret")
    items, params = context_of(loaded)
    assert [(v.step, v.name, v.text) for v in items] == [("start", "items", "'b'")]
    assert [(v.name, v.text) for v in params] == [("alpha", "0.5"), ("table", "#" + "d" * 12)]


def test_a_manifest_without_context_loads_and_keeps_its_signature():
    """Entries written before the field existed: same document, same signature."""
    old = make_manifest().sign("secret")
    document = json.loads(old.dumps())
    assert "context" not in document  # None is left out, not written as null
    loaded = Manifest.loads(json.dumps(document).encode())
    assert loaded.context is None and loaded.signature_valid("secret")
    assert loaded.dumps() == old.dumps()
    items, params = context_of(loaded)
    # the foreach item falls back to its digest from the key; parameters unknown
    assert [(v.name, v.value, v.digest, v.text) for v in items] == [("items", None, "d1", "#d1")]
    assert params is None


@pytest.mark.parametrize(
    "context",
    [
        {"foreach": "nonsense", "parameters": ["a"]},
        {"foreach": [{"value": 3}], "parameters": {"p": "raw"}},
        {"future": {"shape": 1}},
    ],
)
def test_a_context_of_another_shape_still_displays(context):
    """Display only: a context this version does not understand falls back to the key."""
    items, params = context_of(make_manifest(context=context))
    assert [(v.name, v.text) for v in items] == [("items", "#d1")]
    assert params is None or [(v.name, v.text) for v in params] == [("p", "?")]


def test_a_context_that_is_not_an_object_is_corrupt():
    d = json.loads(make_manifest().dumps())
    d["context"] = ["not", "an", "object"]
    with pytest.raises(CorruptEntry):
        Manifest.loads(json.dumps(d).encode())


@pytest.mark.parametrize(
    "value,size,expected",
    [
        (3, 10, {"value": "3"}),
        ("small", 10, {"value": "'small'"}),
        ({"lr": 0.1}, 30, {"value": "{'lr': 0.1}"}),
        # small, but a long repr: its first characters and the digest
        ("x" * 100, 120, {"value": "'" + "x" * (SHORT_REPR - 4) + "...", "digest": "D"}),
        # a large pickle: the digest alone (its repr is never computed)
        (list(range(5000)), REPR_MAX_PICKLED + 1, {"digest": "D"}),
        ("no size known", None, {"digest": "D"}),
        ("two\nlines  here", 20, {"value": "'two\\nlines here'"}),
    ],
)
def test_shown_value(value, size, expected):
    assert shown_value(value, size, "D") == expected


def test_shown_value_survives_a_failing_repr():
    class Broken:
        def __repr__(self):
            raise RuntimeError("no repr")

    assert shown_value(Broken(), 10, "D") == {"digest": "D"}


def test_manifest_loads_checks_the_key():
    m = make_manifest()
    with pytest.raises(CorruptEntry) as err:
        Manifest.loads(m.dumps(), expected_key="0" * 32)
    assert err.value.key == "0" * 32


# -- decorator arguments ------------------------------------------------------
def parse(tmp_path, **attributes):
    from metaflow_extensions.memoize.plugins.memoize.runtime.decorator import MemoizeDecorator

    full = dict(MemoizeDecorator.defaults, **attributes)
    return parse_arguments("train", full, str(tmp_path))


def test_parse_arguments_normalizes_string_forms(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    args = parse(
        tmp_path,
        ttl="7d",
        version=3,
        inputs="a, b",
        ignore={"z", "y"},
        outputs=["o"],
        refresh="true",
        lock="0",
        depends_on="data.csv",
        env="pytest",
    )
    assert args["ttl"] == 7 * 86400
    assert args["version"] == "3"
    assert args["inputs"] == ["a", "b"]
    assert args["ignore"] == ["y", "z"]
    assert args["outputs"] == ["o"]
    assert args["refresh"] is True and args["lock"] is False
    assert args["depends_on"] == ["data.csv"]
    assert args["env"] == ["pytest"]
    defaults = parse(tmp_path)
    assert defaults["ttl"] is None and defaults["ignore"] == [] and defaults["inputs"] is None


@pytest.mark.parametrize(
    "attributes,argument,text",
    [
        ({"ttl": "soon"}, "ttl", "soon"),
        ({"ttl": -1}, "ttl", "negative"),
        ({"ttl": 0}, "ttl", "positive"),
        ({"ttl": "0s"}, "ttl", "positive"),
        ({"ttl": True}, "ttl", "boolean"),
        ({"version": ["v"]}, "version", "['v']"),
        ({"inputs": ["a", 1]}, "inputs", "1"),
        ({"ignore": 5}, "ignore", "5"),
        ({"refresh": "maybe"}, "refresh", "maybe"),
        ({"lock": 2}, "lock", "2"),
        ({"store": ""}, "store", "''"),
        ({"store": "hdfs://bucket/x"}, "store", "hdfs://"),
        ({"depends_on": ["missing.txt"]}, "depends_on", "missing.txt"),
        ({"depends_on": [42]}, "depends_on", "42"),
        ({"env": ["surely-not-an-installed-package-t2"]}, "env", "surely-not"),
    ],
)
def test_parse_arguments_errors_name_step_and_argument(tmp_path, attributes, argument, text):
    with pytest.raises(MemoizeArgumentError) as err:
        parse(tmp_path, **attributes)
    assert err.value.step == "train"
    assert err.value.argument == argument
    message = str(err.value)
    assert "train" in message and "`%s`" % argument in message and text in message


def test_parse_arguments_rejects_nan_ttl(tmp_path):
    with pytest.raises(MemoizeArgumentError):
        parse(tmp_path, ttl=math.nan)
