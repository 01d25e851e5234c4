"""Security: object names that could escape the cache root, lying manifests, signed entries.

Cache entries are unpickled by the tasks that use them, so whoever can write
the cache can run code in those tasks (test_tampered_entry_runs_code_without_a_key
shows it). METAFLOW_MEMOIZE_SIGNING_KEY makes readers accept only entries
signed with the key; docs/security.md explains what that does and does not
protect.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
from flowrunner import FlowRunner
from reliability_report import fault_notes
from test_reliability import (
    ROOT_ENV,
    TINY,
    TINY_FILE,
    Golden,
    blob_path,
    inspect_run,
    make_golden,
    share,
    short,
    warning_lines,
)

from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
from metaflow_extensions.memoize.plugins.memoize.cache.manifest import ArtifactRecord, Manifest
from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.cache.stores.s3 import S3Store, parse_s3_url
from metaflow_extensions.memoize.plugins.memoize.exceptions import CorruptEntry, UnsafePath

PATHS = "5. Bad input: unsafe names and lying manifests"
SIGNING = "6. Security: signed entries"
KEY = "k1-" + "s" * 29
OTHER_KEY = "k2-" + "t" * 29


@pytest.fixture
def fault(record_property):
    """Notes for docs/reliability.md (see tests/reliability_report.py)."""
    return fault_notes(record_property)


UNSAFE_KEYS = [
    "../x",
    "a/../../b",
    "x/../../../etc/passwd",
    "/etc/passwd",
    "/abs",
    "..",
    ".",
    "a/./b",
    "",
    "a//b",
    "a/",
    "~/x",
    "a\\..\\..\\b",
    "a/b\x00c",
    "C:/x",
]


# =============================================================================
# Names: no key reaches outside the cache root
# =============================================================================
def _store_calls(store: LocalStore, key: str, tmp_path: Path):
    src = tmp_path / "src"
    src.write_bytes(b"data")
    return {
        "get": lambda: store.get(key),
        "put": lambda: store.put(key, b"x"),
        "put_if_absent": lambda: store.put_if_absent(key, b"x"),
        "head": lambda: store.head(key),
        "exists": lambda: store.exists(key),
        "delete": lambda: store.delete([key]),
        "put_file": lambda: store.put_file(key, str(src)),
        "get_file": lambda: store.get_file(key, str(tmp_path / "dst")),
        "url_for": lambda: store.url_for(key),
    }


def test_local_store_refuses_unsafe_keys(tmp_path, fault):
    fault(
        area=PATHS,
        fault="LocalStore given %d unsafe keys (`../x`, `a/../../b`, absolute paths, "
        "empty segments, backslashes, NUL) on every method" % len(UNSAFE_KEYS),
        store="local",
        expected="UnsafePath; nothing read or written outside the root",
    )
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "x"
    store = LocalStore(str(root))
    refused = 0
    for key in UNSAFE_KEYS:
        for method, call in _store_calls(store, key, tmp_path).items():
            with pytest.raises(UnsafePath):
                call()
                pytest.fail("%s(%r) was accepted" % (method, key))
            refused += 1
        if key and not key.endswith("/"):
            with pytest.raises(UnsafePath):
                list(store.list(key + "/"))
            refused += 1
    assert not outside.exists() and list(root.iterdir()) == []
    fault(observed="%d calls refused with UnsafePath; nothing written" % refused)


def test_s3_store_refuses_unsafe_keys(fault):
    fault(
        area=PATHS,
        fault="S3Store object names and root URLs with `..`",
        store="S3",
        expected="UnsafePath for names; ValueError for URLs",
    )
    store = S3Store("s3://bucket/prefix")
    for key in UNSAFE_KEYS:
        with pytest.raises(UnsafePath):
            store.url_for(key)
    for url in ("s3://bucket/a/../b", "s3://bucket/./a", "s3://bucket/a//b"):
        with pytest.raises(ValueError):
            parse_s3_url(url)
    assert store.url_for("v1/blobs/ab/abc") == "s3://bucket/prefix/v1/blobs/ab/abc"
    fault(observed="all refused before any request")


NAME_CASES = [
    ("manifest_key", ("..", "start", "k")),
    ("manifest_key", ("Flow", "../x", "k")),
    ("manifest_key", ("Flow", "start", "../../x")),
    ("manifest_key", ("Flow", "start", "a/../../b")),
    ("manifest_key", ("/etc", "start", "k")),
    ("manifest_key", ("Flow", "..", "k")),
    ("used_key", ("Flow", "..", "..")),
    ("lock_key", ("..", "..", "k")),
    ("lock_key", ("Flow", "start", "/abs")),
    ("blob_key", ("../../../../etc/passwd",)),
    ("blob_key", ("/etc/passwd",)),
    ("entry_prefix", ("..",)),
    ("entry_prefix", ("Flow", "../..")),
    ("used_prefix", ("..",)),
]


def test_cache_names_refuse_dot_dot(fault):
    fault(
        area=PATHS,
        fault="Cache name functions given flow/step/key/sha with `..` or absolute paths "
        "(%d cases)" % len(NAME_CASES),
        store="-",
        expected="UnsafePath",
    )
    for function, args in NAME_CASES:
        with pytest.raises(UnsafePath):
            getattr(Cache, function)(*args)
            pytest.fail("Cache.%s%r was accepted" % (function, args))
    fault(observed="all refused")


def _manifest(key="k" * 32, flow="F", step="s", sha="a" * 40) -> Manifest:
    return Manifest(
        key=key,
        flow=flow,
        step=step,
        components={"code": {"step": "x"}},
        artifacts={"out": ArtifactRecord(sha=sha, info={"type": "int"}, stored_size=10)},
        transition={},
        created=1.0,
        expires=None,
        origin="F/1/s/1",
    )


@pytest.mark.parametrize("field", ["flow", "step", "key"])
def test_a_manifest_that_lies_about_where_it_belongs_is_rejected(tmp_path, fault, field):
    fault(
        area=PATHS,
        fault="manifest stored for F/s/<key> whose `%s` field says otherwise" % field,
        store="local",
        expected="CorruptEntry (never a hit)",
    )
    cache = Cache(LocalStore(str(tmp_path)))
    liar = _manifest(**{field: {"flow": "Other", "step": "other", "key": "e" * 32}[field]})
    cache.store.put(Cache.manifest_key("F", "s", "k" * 32), liar.dumps())
    with pytest.raises(CorruptEntry) as err:
        cache.lookup("F", "s", "k" * 32)
    fault(observed="CorruptEntry: %s" % err.value)


def test_local_store_files_follow_the_umask(tmp_path, fault):
    fault(
        area=PATHS,
        fault="shared local cache: modes of objects LocalStore writes (umask 007)",
        store="local",
        expected="files 0660 and directories 0770, as the umask says (group can read)",
    )
    store = LocalStore(str(tmp_path / "shared"))
    src = tmp_path / "src"
    src.write_bytes(b"blob")
    old = os.umask(0o007)
    try:
        store.put("v1/entries/F/s/k.json", b"{}")
        store.put_if_absent("v1/locks/F/s/k", b"{}")
        store.put_file("v1/blobs/ab/abc", str(src))
    finally:
        os.umask(old)
    modes = {
        key: oct(os.stat(store.url_for(key)).st_mode & 0o777)
        for key in ("v1/entries/F/s/k.json", "v1/locks/F/s/k", "v1/blobs/ab/abc", "v1/blobs/ab")
    }
    fault(observed=", ".join("%s %s" % (k, m) for k, m in modes.items()))
    assert modes["v1/blobs/ab"] == "0o770"
    assert {modes[k] for k in modes if k != "v1/blobs/ab"} == {"0o660"}


# =============================================================================
# Signing (in process)
# =============================================================================
def _signed_cache(tmp_path, key=KEY) -> Cache:
    return Cache(LocalStore(str(tmp_path / "cache")), signing_key=key)


def _tamper(cache: Cache, name: str, change) -> None:
    data = json.loads(cache.store.get(name))
    change(data)
    cache.store.put(name, json.dumps(data).encode())


TAMPERING = [
    ("artifact sha changed", lambda d: d["artifacts"]["out"].update(sha="b" * 40)),
    ("stored_size changed", lambda d: d["artifacts"]["out"].update(stored_size=11)),
    ("expiry extended", lambda d: d.update(expires=9e12)),
    ("artifact added", lambda d: d["artifacts"].update(extra={"sha": "c" * 40, "info": {}})),
    ("transition changed", lambda d: d.update(transition={"next": "evil"})),
    ("signature removed", lambda d: d.update(signature=None)),
]


def test_signature_checks_in_process(tmp_path, fault):
    fault(
        area=SIGNING,
        fault="Cache.lookup with signed, unsigned, other-key and tampered manifests "
        "(%s)" % ", ".join(t[0] for t in TAMPERING),
        store="local",
        expected="same key: found; other key / unsigned / any tampering: not used; "
        "no key configured: signed entries still found",
    )
    writer = _signed_cache(tmp_path)
    writer.publish(_manifest())
    name = Cache.manifest_key("F", "s", "k" * 32)
    assert writer.lookup("F", "s", "k" * 32).status == "found"
    other = _signed_cache(tmp_path, OTHER_KEY).lookup("F", "s", "k" * 32)
    assert other.status == "unsigned" and "bad signature" in other.detail, other
    assert _signed_cache(tmp_path, None).lookup("F", "s", "k" * 32).status == "found"
    original = writer.store.get(name)
    verdicts = []
    for what, change in TAMPERING:
        writer.store.put(name, original)
        _tamper(writer, name, change)
        found = writer.lookup("F", "s", "k" * 32)
        assert found.status == "unsigned", what
        verdicts.append("unsigned" if "unsigned" in found.detail else "bad signature")
    unsigned = Cache(LocalStore(str(tmp_path / "plain")))
    unsigned.publish(_manifest())
    keyed = Cache(LocalStore(str(tmp_path / "plain")), signing_key=KEY)
    assert "unsigned" in keyed.lookup("F", "s", "k" * 32).detail
    fault(observed="every tampered copy rejected (%s)" % ", ".join(sorted(set(verdicts))))


def test_replay_of_an_older_signed_entry_is_accepted(tmp_path, fault):
    fault(
        area=SIGNING,
        fault="replay: an older, validly signed entry for the same key put back after a refresh",
        store="local",
        expected="accepted (a documented limit of signing: see docs/security.md)",
    )
    cache = _signed_cache(tmp_path)
    old = _manifest(sha="a" * 40)
    cache.publish(old)
    name = Cache.manifest_key("F", "s", "k" * 32)
    old_bytes = cache.store.get(name)
    new = _manifest(sha="b" * 40)
    new.created = 2.0
    cache.publish(new, overwrite=True)
    assert cache.lookup("F", "s", "k" * 32).manifest.artifacts["out"].sha == "b" * 40
    cache.store.put(name, old_bytes)  # the attacker kept a copy
    replayed = cache.lookup("F", "s", "k" * 32)
    assert replayed.status == "found" and replayed.manifest.artifacts["out"].sha == "a" * 40
    # ...but not under another key: the key is inside the signed document
    cache.store.put(Cache.manifest_key("F", "s", "f" * 32), old_bytes)
    with pytest.raises(CorruptEntry):
        cache.lookup("F", "s", "f" * 32)
    fault(observed="old entry served again for its own key; refused under another key")


# =============================================================================
# Signing end to end
# =============================================================================
@pytest.fixture(scope="session")
def signed_golden(tmp_path_factory) -> Golden:
    return make_golden(tmp_path_factory, "signed", {"METAFLOW_MEMOIZE_SIGNING_KEY": KEY})


@pytest.fixture(scope="session")
def unsigned_golden(tmp_path_factory) -> Golden:
    return make_golden(tmp_path_factory, "golden")  # the same one test_reliability uses


READERS = [
    ("the same key", KEY, "hit"),
    ("no key", None, "hit"),
    ("another key", OTHER_KEY, "miss"),
]


@pytest.mark.parametrize("who,key,expected", READERS, ids=["same-key", "no-key", "other-key"])
def test_signed_entry_read_with(signed_golden, tmp_path, fault, who, key, expected):
    fault(
        area=SIGNING,
        fault="signed entry read by a run with %s" % who,
        store="local",
        expected=expected + (" with a warning; the step runs" if expected == "miss" else ""),
    )
    assert signed_golden.manifest["signature"]
    s = share(signed_golden, tmp_path)
    env = {"METAFLOW_MEMOIZE_SIGNING_KEY": key} if key else {}
    result = s.run(env=env)
    view = inspect_run(s.runner, TINY, result.run_id)
    assert view.meta()["memoize_status"] == expected, view.meta()
    assert view.artifacts == signed_golden.artifacts
    warnings = warning_lines(result)
    if expected == "miss":
        assert len(warnings) == 1 and "bad signature" in warnings[0], warnings
        after = Manifest.loads(s.manifest_file.read_bytes())
        if after.signature == signed_golden.manifest["signature"]:
            what = "entry kept"
        else:  # replaced by this run's result, which must then carry this run's key
            assert after.signature_valid(OTHER_KEY)
            what = "entry replaced by one signed with the reader's key"
        fault(observed="miss, warning %s; %s" % (short(warnings[0]), what))
    else:
        assert warnings == []
        fault(observed="hit, no warning")


def test_unsigned_entry_is_not_used_when_a_key_is_set(unsigned_golden, tmp_path, fault):
    fault(
        area=SIGNING,
        fault="unsigned entry read by a run with a signing key",
        store="local",
        expected="miss with a warning; the step runs and replaces the entry with a signed one "
        "(replacement fixed in bb7c2c4: it used to stay unsigned, so every keyed run missed)",
    )
    s = share(unsigned_golden, tmp_path)
    result = s.run(env={"METAFLOW_MEMOIZE_SIGNING_KEY": KEY})
    assert s.runner.count("start") == 1
    warnings = warning_lines(result)
    assert len(warnings) == 1 and "unsigned" in warnings[0], warnings
    assert inspect_run(s.runner, TINY, result.run_id).meta()["memoize_status"] == "miss"
    fault(observed="miss, warning %s" % short(warnings[0]))
    now = Manifest.loads(s.manifest_file.read_bytes())
    assert now.signature_valid(KEY), "the entry is still unsigned"
    fault(observed="entry replaced by one signed with the key")


class _RunsCode:
    """Unpickles by calling eval: writes a marker file, then yields some bytes."""

    def __init__(self, marker: Path):
        self.code = (
            "__import__('pathlib').Path(%r).write_text(' '.join(__import__('sys').argv)) "
            "and b'replaced by the cache writer'" % str(marker)
        )

    def __reduce__(self):
        return (eval, (self.code,))


def _evil_blob(marker: Path):
    pickled = pickle.dumps(_RunsCode(marker), protocol=4)
    return hashlib.sha1(pickled).hexdigest(), gzip.compress(pickled, compresslevel=3)


def _point_payload_at_evil_blob(s, marker: Path) -> None:
    sha, packed = _evil_blob(marker)
    path = blob_path(s.root, sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(packed)
    doc = json.loads(s.manifest_file.read_text())
    doc["artifacts"]["payload"].update(sha=sha, stored_size=len(packed))
    s.manifest_file.write_text(json.dumps(doc))


def test_tampered_entry_runs_code_without_a_key(signed_golden, tmp_path, fault):
    fault(
        area=SIGNING,
        fault="threat model: a cache writer points an artifact at its own pickle; the reader "
        "has no signing key",
        store="local",
        expected="the entry is used and the pickle runs code in the task (why signing exists)",
    )
    s = share(signed_golden, tmp_path)
    marker = tmp_path / "code-ran"
    _point_payload_at_evil_blob(s, marker)
    result = s.run()
    assert s.runner.count("start") == 0  # a hit
    assert marker.exists(), result
    assert "step end" in marker.read_text()
    fault(observed="hit; the planted pickle ran inside the `end` task (it wrote a file)")


def test_tampered_signed_entry_is_a_miss(signed_golden, tmp_path, fault):
    fault(
        area=SIGNING,
        fault="a signed manifest's artifact sha changed to a planted pickle; reader has the key",
        store="local",
        expected="miss with a warning; the planted pickle is never loaded",
    )
    s = share(signed_golden, tmp_path)
    marker = tmp_path / "code-ran"
    _point_payload_at_evil_blob(s, marker)
    result = s.run(env={"METAFLOW_MEMOIZE_SIGNING_KEY": KEY})
    assert s.runner.count("start") == 1
    warnings = warning_lines(result)
    assert len(warnings) == 1 and "bad signature" in warnings[0], warnings
    assert not marker.exists()
    assert s.runner.artifacts(TINY, result.run_id) == signed_golden.artifacts
    fault(observed="miss, warning %s; pickle never loaded" % short(warnings[0]))


# =============================================================================
# S3 datastore + S3 cache: blobs copied server side
# =============================================================================
def _s3_object(s3_env, key: str) -> bytes:
    return s3_env.client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()


@pytest.mark.slow
def test_s3_to_s3_hit_verifies_the_blob(tmp_path, s3_env, fault):
    fault(
        area=SIGNING,
        fault="S3 datastore + S3 cache, signing on: a cache writer replaces a blob with a "
        "pickle of its own, padded to the same size; read in a fresh datastore",
        store="S3",
        expected="the blob fails its hash check: step re-runs, correct artifacts, code never runs",
    )
    env = dict(
        s3_env.env,
        METAFLOW_DEFAULT_DATASTORE="s3",
        METAFLOW_MEMOIZE_SIGNING_KEY=KEY,
        **{ROOT_ENV: s3_env.url("cache")},
    )
    a = FlowRunner(tmp_path / "a", extra_env=env)
    a.add_flow(TINY_FILE)
    first = a.run(TINY_FILE)
    listing = s3_env.client.list_objects_v2(
        Bucket=s3_env.bucket, Prefix="cache/v1/entries/%s/start/" % TINY
    )
    (entry,) = [o["Key"] for o in listing["Contents"]]
    manifest = json.loads(_s3_object(s3_env, entry))
    sha = manifest["artifacts"]["payload"]["sha"]
    blob_key = "cache/v1/blobs/%s/%s" % (sha[:2], sha)
    size = len(_s3_object(s3_env, blob_key))
    marker = tmp_path / "code-ran"
    _, packed = _evil_blob(marker)
    assert len(packed) < size
    s3_env.client.put_object(
        Bucket=s3_env.bucket, Key=blob_key, Body=packed + b"\0" * (size - len(packed))
    )
    # workdir B: its own datastore root, so the blob must come from the cache
    b = FlowRunner(
        tmp_path / "b",
        extra_env=dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/metaflow-b" % s3_env.bucket),
    )
    b.add_flow(TINY_FILE)
    second = b.run(TINY_FILE, check=False)
    status = "hit" if " hit start" in second.output else "miss"
    fault(
        observed="B: %s, run rc=%d, planted pickle %s"
        % (status, second.returncode, "RAN in the task" if marker.exists() else "never loaded")
    )
    assert not marker.exists()
    assert second.returncode == 0 and b.count("start") == 1
    assert b.artifacts(TINY, second.run_id) == a.artifacts(TINY, first.run_id)
