"""Unit tests of the recorder (observe.py) and of fingerprints (deps.py)."""

import datetime
import enum
import os
import sys
import sysconfig
import textwrap
import threading

from metaflow_extensions.memoize.plugins.memoize.key import deps, observe


def _helper(x):
    return x + 1


def _in_thread():
    return _helper(2)


def test_records_code_run_in_the_body_and_in_threads_it_starts():
    observer = observe.Observer()
    observer.start()
    _helper(1)
    thread = threading.Thread(target=_in_thread)
    thread.start()
    thread.join()
    recording = observer.stop()
    names = {code.co_name for code in recording.codes}
    assert {"_helper", "_in_thread"} <= names
    assert recording.complete


def test_records_files_read_and_not_files_written(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("x")
    out = tmp_path / "out.txt"
    observer = observe.Observer()
    observer.start()
    data.read_text()
    out.write_text("y")
    recording = observer.stop()
    assert str(data) in recording.files_read
    assert str(out) not in recording.files_read
    assert str(out) in recording.files_written


def test_folders_listed_by_the_body_are_recorded_and_by_imports_not(tmp_path, monkeypatch):
    # the import system lists each sys.path folder to find a module; that
    # listing changes whenever any file appears there, and must not be an input
    (tmp_path / "listed_by_import_only.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "data"
    data.mkdir()
    observer = observe.Observer()
    observer.start()
    import listed_by_import_only  # noqa: F401

    os.listdir(data)
    recording = observer.stop()
    assert str(data) in recording.dirs_listed
    assert str(tmp_path) not in recording.dirs_listed
    sys.modules.pop("listed_by_import_only", None)


def test_a_replaced_profiler_makes_the_recording_incomplete():
    observer = observe.Observer()
    observer.start()
    sys.setprofile(lambda *args: None)  # what cProfile or a debugger does
    recording = observer.stop()
    sys.setprofile(None)
    assert not recording.complete
    values, _ = deps.observed_dependencies(recording, deps.DepContext(object, "."))
    assert list(values) == ["incomplete:recorder"]


def test_nothing_is_recorded_outside_a_body(tmp_path):
    path = tmp_path / "later.txt"
    observer = observe.Observer()
    observer.start()
    recording = observer.stop()
    path.write_text("x")
    path.read_text()
    assert str(path) not in recording.files_read


def _code_of(source, name="f"):
    namespace = {}
    exec(compile(textwrap.dedent(source), "<test>", "exec"), namespace)
    return namespace[name]


def test_code_digest_ignores_comments_formatting_and_docstrings():
    plain = _code_of('def f(x):\n    """Doc."""\n    return x + 1\n')
    noisy = _code_of('def f(x):\n    """Other doc."""\n\n    # a comment\n    return (x +\n  1)\n')
    changed = _code_of('def f(x):\n    """Doc."""\n    return x + 2\n')

    def digest(fn):
        return deps.code_digest(fn.__code__, fn.__doc__)

    assert digest(plain) == digest(noisy)
    assert digest(plain) != digest(changed)


def test_fingerprints_follow_values_to_any_depth():
    deep = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}
    deeper = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 2}}}}}}}}
    assert deps.fingerprint(deep) != deps.fingerprint(deeper)
    assert deps.fingerprint({"x": 1, "y": 2}) == deps.fingerprint({"y": 2, "x": 1})
    assert deps.fingerprint({"b", "a"}) == deps.fingerprint({"a", "b"})
    assert deps.fingerprint(datetime.date(2024, 1, 1)) != deps.fingerprint(
        datetime.date(2025, 1, 1)
    )


class _Mode(enum.Enum):
    FAST = 1
    SLOW = 2


def test_enum_members_and_closures_are_fingerprinted_by_value():
    assert deps.fingerprint(_Mode.FAST) != deps.fingerprint(_Mode.SLOW)

    def make(k):
        def scale(x):
            return x * k

        return scale

    assert deps.fingerprint(make(3)) == deps.fingerprint(make(3))
    assert deps.fingerprint(make(3)) != deps.fingerprint(make(4))


def test_a_folder_named_like_an_installation_folder_is_not_installed(tmp_path):
    purelib = os.path.realpath(sysconfig.get_paths()["purelib"])
    assert deps.is_installed_file(os.path.join(purelib, "pkg", "mod.py"))
    assert not deps.is_installed_file(os.path.realpath(sys.prefix) + "-flows/flow.py")
    assert not deps.is_installed_file(str(tmp_path / "flow.py"))


def test_file_digest_memo_follows_content(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "data.bin"
    path.write_bytes(b"one")
    old = os.stat(path).st_mtime_ns - 10**10
    os.utime(path, ns=(old, old))  # older than the freshness window: memoized
    first = deps.file_digest(str(path))
    assert deps.file_digest(str(path)) == first
    path.write_bytes(b"two")
    assert deps.file_digest(str(path)) != first
    assert deps.file_digest(str(tmp_path / "missing")) == "missing"
