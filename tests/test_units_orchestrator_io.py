"""The orchestrator's I/O helpers in metaflow_compat: the small-blob cache the runtime
reads completed tasks through, and how many threads check tasks."""

import json

import pytest

from metaflow_extensions.memoize.plugins.memoize import metaflow_compat as mf


def test_the_blob_cache_returns_what_was_stored():
    cache = mf._SmallBlobCache()
    cache.store_key("a1", b"pickled")
    assert cache.load_key("a1") == b"pickled"
    assert cache.load_key("b2") is None


def test_the_blob_cache_keeps_no_large_blob():
    cache = mf._SmallBlobCache()
    cache.store_key("big", b"x" * (mf._SmallBlobCache.MAX_BLOB + 1))
    assert cache.load_key("big") is None


def test_the_blob_cache_drops_the_least_recently_used_first(monkeypatch):
    monkeypatch.setattr(mf._SmallBlobCache, "MAX_TOTAL", 30)
    cache = mf._SmallBlobCache()
    for key in ("k1", "k2", "k3"):
        cache.store_key(key, b"0123456789")
    assert cache.load_key("k1") == b"0123456789"  # k1 is now the most recent
    cache.store_key("k4", b"0123456789")
    assert cache.load_key("k2") is None
    assert [cache.load_key(k) is not None for k in ("k1", "k3", "k4")] == [True] * 3


def test_a_cache_is_attached_only_where_none_is():
    class Store:
        _blob_cache = None

        def set_blob_cache(self, cache):
            self._blob_cache = cache

    class Datastore:
        ca_store = Store()

    datastore = Datastore()
    mf._SmallBlobCache.attach(datastore)
    first = datastore.ca_store._blob_cache
    assert isinstance(first, mf._SmallBlobCache)
    mf._SmallBlobCache.attach(datastore)
    assert datastore.ca_store._blob_cache is first


def test_checks_use_the_cores_on_the_local_datastore_and_more_threads_elsewhere(monkeypatch):
    class Local:
        TYPE = "local"

    class S3:
        TYPE = "s3"

    monkeypatch.setattr(mf.os, "cpu_count", lambda: 2)
    assert mf.completion_threads(Local()) == 2
    monkeypatch.setattr(mf.os, "cpu_count", lambda: 1)
    assert mf.completion_threads(Local()) == 2  # the runtime's thread waits meanwhile
    monkeypatch.setattr(mf.os, "cpu_count", lambda: 64)
    assert mf.completion_threads(Local()) == mf.COMPLETION_THREADS
    assert mf.completion_threads(S3()) == mf.COMPLETION_THREADS


# -- metadata files written in the check threads -----------------------------------
def _metaflows_file(tmp_path, name, data, allow_overwrite=False):
    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    assert not getattr(mf._quick_metadata, "on", False)  # Metaflow's own writer
    path = tmp_path / "metaflow" / name
    path.parent.mkdir(exist_ok=True)
    LocalMetadataProvider._dump_json_to_file(str(path), data, allow_overwrite=allow_overwrite)
    return path


def _quick_file(tmp_path, name, data, allow_overwrite=False):
    path = tmp_path / "quick" / name
    path.parent.mkdir(exist_ok=True)
    mf._write_json_file(str(path), data, allow_overwrite)
    return path


DATUM = {
    "field_name": "memoize_status",
    "value": "hit",
    "type": "memoize_status",
    "user": "me",
    "ts_epoch": 1796316786033,
    "tags": ["attempt_id:0", "é"],
}


def test_a_quick_metadata_file_is_the_file_metaflow_writes(tmp_path):
    mf._install_quick_metadata_files()
    theirs = _metaflows_file(tmp_path, "sysmeta_memoize_status_1.json", DATUM)
    ours = _quick_file(tmp_path, "sysmeta_memoize_status_1.json", DATUM)
    assert ours.read_bytes() == theirs.read_bytes()
    assert oct(ours.stat().st_mode & 0o777) == oct(theirs.stat().st_mode & 0o777)
    # nothing else is left in the directory (the temporary file was renamed)
    assert [p.name for p in ours.parent.iterdir()] == [ours.name]


def test_a_quick_metadata_file_is_kept_unless_overwriting_is_allowed(tmp_path):
    for write in (_metaflows_file, _quick_file):
        path = write(tmp_path, "_self.json", {"v": 1})
        write(tmp_path, "_self.json", {"v": 2})
        assert json.loads(path.read_text()) == {"v": 1}, write
        write(tmp_path, "_self.json", {"v": 3}, allow_overwrite=True)
        assert json.loads(path.read_text()) == {"v": 3}, write


def test_a_failed_quick_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(TypeError):
        _quick_file(tmp_path, "bad.json", {"not json": object()})
    (tmp_path / "quick" / "a_directory.json").mkdir()
    with pytest.raises(OSError):  # the rename fails: a directory is in the way
        _quick_file(tmp_path, "a_directory.json", {"a": 1}, allow_overwrite=True)
    assert [p.name for p in (tmp_path / "quick").iterdir()] == ["a_directory.json"]


def test_quick_writes_are_used_only_while_the_flag_is_set(tmp_path, monkeypatch):
    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    mf._install_quick_metadata_files()
    installed = LocalMetadataProvider.__dict__["_dump_json_to_file"]
    mf._install_quick_metadata_files()  # a second run in this process: not wrapped twice
    assert LocalMetadataProvider.__dict__["_dump_json_to_file"] is installed
    calls = []
    monkeypatch.setattr(mf, "_write_json_file", lambda *a: calls.append(a[0]))
    outside = tmp_path / "outside.json"
    LocalMetadataProvider._dump_json_to_file(str(outside), {"a": 1})
    assert outside.exists() and calls == []
    mf._quick_metadata.on = True
    try:
        LocalMetadataProvider._dump_json_to_file(str(tmp_path / "inside.json"), {"a": 1})
    finally:
        mf._quick_metadata.on = False
    assert calls == [str(tmp_path / "inside.json")]


class _Registrations:
    def complete(self, task):
        self.flag_on = mf._quick_metadata.on


@pytest.mark.parametrize("outcome", [True, False, RuntimeError("store down")])
def test_a_check_writes_quickly_while_it_runs_and_never_after(outcome):
    """_try_complete (a pool thread's whole check) turns the quick writer on for the
    task's deferred registration and the check, and off when it returns, fails or
    raises: a pool thread goes on to other work with Metaflow's writer."""
    from types import SimpleNamespace

    registrations = _Registrations()
    runtime = SimpleNamespace(
        _memoize_registrations=registrations,
        _flow=SimpleNamespace(name="F"),
        _graph=None,
        _flow_datastore=None,
        _metadata=None,
    )
    task = SimpleNamespace(
        step="s", run_id="1", task_id="2", split_index=None, input_paths=[], decos=[]
    )
    during = []

    def check(launching):
        during.append(mf._quick_metadata.on)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    completed, _logged = mf._try_complete(runtime, task, check)

    assert completed is (outcome is True)
    assert registrations.flag_on is True and during == [True]
    assert mf._quick_metadata.on is False
