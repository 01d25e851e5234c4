"""Unit tests of the recorder (observe.py) and of fingerprints (deps.py)."""

import asyncio
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


#: the recorders built on a profile function, which cProfile or a debugger replaces
_PROFILERS = ("C profiler", "sys.setprofile")


def _replace_the_recorder(mechanism):
    """What cProfile, a debugger or a JIT does to the recorder in use; returns the
    undo."""
    if mechanism in _PROFILERS:
        sys.setprofile(lambda *args: None)
        return lambda: sys.setprofile(None)
    if mechanism == "C frame-evaluation hook":
        observe._tracer._replace_hook_for_tests()
        return observe._tracer._reset_hook_for_tests
    assert mechanism == "sys.monitoring", mechanism
    tool = next(t for t in range(6) if sys.monitoring.get_tool(t) == "metaflow-memoize")
    sys.monitoring.set_events(tool, 0)  # another tool taking over our id's events
    return lambda: None


def test_a_replaced_recorder_makes_the_recording_incomplete():
    mechanism = observe.mechanism()
    observer = observe.Observer()
    observer.start()
    undo = _replace_the_recorder(mechanism)
    recording = observer.stop()
    undo()
    assert not recording.complete, recording.mechanism
    values, _ = deps.observed_dependencies(recording, deps.DepContext(object, "."))
    assert list(values) == ["incomplete:recorder"]
    # and the next recording is whole again
    observer = observe.Observer()
    observer.start()
    _helper(1)
    recording = observer.stop()
    assert recording.complete and "_helper" in {c.co_name for c in recording.codes}


def _twice():
    return 2


def test_code_seen_by_one_recording_is_seen_by_the_next():
    # sys.monitoring disables an event per code object once seen: each recording
    # must start from a clean slate (restart_events), or a process's second body
    # (the audit's rerun, a test) misses what the first one ran
    for _ in range(2):
        observer = observe.Observer()
        observer.start()
        _twice()
        recording = observer.stop()
        assert "_twice" in {code.co_name for code in recording.codes}, recording.mechanism


def _after_the_profiler():
    return 3


def test_a_profiler_set_during_the_body_leaves_a_hook_or_monitoring_recording_whole():
    if observe.mechanism() in _PROFILERS:
        return  # covered above: there the profiler replaces the recorder
    observer = observe.Observer()
    observer.start()
    sys.setprofile(lambda *args: None)
    _after_the_profiler()
    sys.setprofile(None)
    recording = observer.stop()
    assert recording.complete
    assert "_after_the_profiler" in {c.co_name for c in recording.codes}


def _numbers():
    yield 1
    yield 2


def _resumed_later():
    yield 1
    yield 2


async def _coroutine():
    await asyncio.sleep(0)
    return 1


def test_generators_and_coroutines_are_recorded_even_when_created_before_the_body():
    early = _resumed_later()  # created, not started, before the recording
    observer = observe.Observer()
    observer.start()
    assert sum(_numbers()) == 3
    assert list(early) == [1, 2]
    assert asyncio.run(_coroutine()) == 1
    recording = observer.stop()
    names = {code.co_name for code in recording.codes}
    assert {"_numbers", "_resumed_later", "_coroutine"} <= names, recording.mechanism


class _Indexed:
    def __getitem__(self, i):
        return i


def _warm(box, x):
    return box[x] + _helper(x)


def test_call_sites_warmed_before_the_body_still_record_their_callees():
    # CPython 3.11+ specializes a call site (CALL_PY_EXACT_ARGS, a Python
    # __getitem__ in BINARY_SUBSCR_GETITEM) after a few runs; the recorder must
    # see the callee even when the call site was specialized before the body
    box = _Indexed()
    for i in range(1000):
        _warm(box, i)
    observer = observe.Observer()
    observer.start()
    _warm(box, 1)
    recording = observer.stop()
    names = {code.co_name for code in recording.codes}
    assert {"_warm", "__getitem__", "_helper"} <= names, recording.mechanism


def test_each_python_uses_its_fastest_sound_recorder():
    if observe._tracer is None and sys.version_info < (3, 12):
        return  # _tracer not built (no compiler): make test-python checks the build
    expected = (
        "sys.monitoring"
        if sys.version_info >= (3, 12)
        else "C frame-evaluation hook"
        if observe._EVAL_HOOK_SOUND
        else "C profiler"
    )
    assert observe.mechanism() == expected


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
