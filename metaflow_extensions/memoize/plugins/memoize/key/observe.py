"""Watching a step body run: which code it executed, which files it read.

This module only records; deps.py turns a recording into the dependencies an
entry keeps and checks before every hit.

- Code: every code object that starts running, in the body's thread and in the
  threads it starts. Python 3.12+: ``sys.monitoring`` (each code object reported
  once, then disabled: close to free). 3.9-3.11: a frame-evaluation hook
  (PEP 523, ``_tracer``), else a C profile function (``_tracer``: before 3.11.4,
  or when a JIT or debugger holds the hook); where ``_tracer`` could not be
  compiled, ``sys.setprofile``. If something replaces our recorder during the
  body (cProfile or a debugger replacing a profile function, another hook
  replacing ours), the recording is marked incomplete and deps.py falls back to
  whole-module hashing.
- Files and programs: a process-wide audit hook (``sys.addaudithook``; it cannot
  be removed, so it returns at once when no body is being recorded) sees every
  ``open``, directory listing and subprocess.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field

try:  # built by setup.py on 3.9-3.11; optional
    from . import _tracer  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _tracer = None

_MONITORING = getattr(sys, "monitoring", None)
_TOOL_NAME = "metaflow-memoize"


@dataclass
class Recording:
    """What one body run touched."""

    codes: list = field(default_factory=list)
    #: False when the code recording was interrupted (another profiler took over)
    complete: bool = True
    #: absolute path as the program named it (symlinks not resolved) ->
    #: (size, mtime, inode) when first opened for reading
    files_read: dict = field(default_factory=dict)
    #: files read by the body's child processes (native file recorder,
    #: native.py), as files_read: their .py files too (the child ran them)
    child_files_read: dict = field(default_factory=dict)
    #: the native file recorder watched this body (native.py): file access by
    #: native libraries and child processes is in the fields above
    native_files: bool = False
    files_written: set = field(default_factory=set)
    dirs_listed: set = field(default_factory=set)
    commands: list = field(default_factory=list)
    #: absolute path -> whether it existed, for existence and stat checks
    #: (``os.path.exists``, ``os.stat``, ``access``): an absent path is a
    #: dependency too
    probes: dict = field(default_factory=dict)
    #: folders the body created (``mkdtemp``, ``os.makedirs``): what it reads
    #: inside them it wrote itself
    dirs_created: set = field(default_factory=set)
    #: a relative path was resolved against the working directory
    used_cwd: bool = False
    #: absolute path -> (size, mtime) when the body read a file's metadata
    #: (``os.stat``, ``os.path.getmtime``), None when it did not exist
    stats: dict = field(default_factory=dict)
    #: (folder, pattern, recursive, flavour) of each glob the body ran
    globs: set = field(default_factory=set)
    #: modules the body looked up by name (``importlib.import_module``)
    modules_named: set = field(default_factory=set)
    #: the body forked (multiprocessing's fork workers): the user source files
    #: loaded at that moment, which the child can run
    forked_sources: set = field(default_factory=set)
    #: what the process was like when the body started (names of user modules
    #: loaded, ``sys.path``, module state) - see namespace.py
    at_start: dict = field(default_factory=dict)
    #: dependencies whose value was taken when the body used them (a Metaflow
    #: Client query, a glob), by dependency id (see deps.py)
    values: dict = field(default_factory=dict)
    #: what could not be observed, one line each (the entry then keeps a
    #: dependency that can only miss more)
    unobserved: list = field(default_factory=list)
    mechanism: str = ""


_current: Recording | None = None
_hook_installed = False
_O_ACCMODE = getattr(os, "O_ACCMODE", 3)


def _path_of(value, recording: Recording | None = None) -> str | None:
    """The absolute path as the program named it (symlinks kept: a repointed
    link is a change); a relative one makes the working directory a dependency."""
    if isinstance(value, int):
        return None  # an already-open descriptor: its open was seen
    try:
        path = os.fsdecode(os.fspath(value))
    except TypeError:
        return None
    if recording is not None and not os.path.isabs(path):
        recording.used_cwd = True
    return os.path.abspath(path)


#: per thread: what runs now is the recorder's own work (a collector starting,
#: a glob that records its pattern itself), not the body's: not recorded
suspended = threading.local()


class not_recorded:
    """``with not_recorded():`` what this thread does is not the body's."""

    def __enter__(self):
        suspended.depth = getattr(suspended, "depth", 0) + 1

    def __exit__(self, *exc):
        suspended.depth -= 1


def recording_now() -> Recording | None:
    """The recording this thread's file access goes to, None when not recording."""
    if getattr(suspended, "depth", 0):
        return None
    return _current


#: where the frame that lists a folder to find modules lives
_IMPORT_SYSTEM_FILES = frozenset(
    ["<frozen importlib._bootstrap_external>", "<frozen importlib._bootstrap>"]
)


def _audit(event: str, args: tuple) -> None:
    recording = _current
    if recording is None or getattr(suspended, "depth", 0):
        return
    suspended.depth = 1  # what the hook itself does (a stat) is not the body's
    try:
        _record_event(recording, event, args)
    finally:
        suspended.depth = 0


def _record_event(recording: Recording, event: str, args: tuple) -> None:
    try:
        if event == "open":
            path = _path_of(args[0], recording)
            if path is None:
                return
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            if mode is None:  # os.open: flags only
                access = (flags or 0) & _O_ACCMODE
                reads = access in (os.O_RDONLY, os.O_RDWR)
                writes = access != os.O_RDONLY or bool((flags or 0) & os.O_CREAT)
            else:
                mode = str(mode)
                reads = "r" in mode or "+" in mode
                writes = any(c in mode for c in "wax+")
            if reads and path not in recording.files_read and path not in recording.files_written:
                # (a file the body wrote before reading it is its own output)
                recording.files_read[path] = stat_signature(path)
            if writes:
                recording.files_written.add(path)
        elif event in ("os.listdir", "os.scandir"):
            # The import system lists each sys.path folder (the flow's own
            # among them) to find modules: what it then imports is recorded as
            # code, and the folder's other names are not the body's input
            # (frame 0: here, 1: _audit, 2: who listed the folder)
            if sys._getframe(2).f_code.co_filename in _IMPORT_SYSTEM_FILES:
                return
            path = _path_of(args[0] if args and args[0] is not None else ".", recording)
            if path is not None:
                recording.dirs_listed.add(path)
        elif event == "sqlite3.connect":
            # SQLite reads the database file natively: the connect names it
            database = args[0] if args else None
            if isinstance(database, (str, bytes, os.PathLike)):
                raw = os.fsdecode(os.fspath(database))
                if raw and raw != ":memory:" and not raw.startswith("file:"):
                    path = _path_of(raw, recording)
                    if path not in recording.files_read:
                        recording.files_read[path] = stat_signature(path)
        elif event == "os.mkdir":
            path = _path_of(args[0], recording)
            if path is not None:
                recording.dirs_created.add(path)
        elif event == "subprocess.Popen":
            recording.commands.append(_argv(args[0], args[1]))
        elif event == "os.system":
            recording.commands.append(_argv(None, args[0]))
        elif event in ("os.exec", "os.posix_spawn", "os.spawn"):
            path, argv = (args[1], args[2]) if event == "os.spawn" else (args[0], args[1])
            recording.commands.append(_argv(path, argv))
    except Exception:  # an audit hook must never break the code it watches
        pass


def stat_signature(path: str):
    """(size, mtime, inode) of a file, None when it cannot be read: what tells
    a file rewritten after the body read it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _argv(executable, args) -> list[str]:
    if isinstance(args, (str, bytes, os.PathLike)):
        parts = [os.fsdecode(os.fspath(args))]
    else:
        parts = [os.fsdecode(os.fspath(a)) if not isinstance(a, str) else a for a in args or ()]
    if executable is not None:
        parts = [os.fsdecode(os.fspath(executable))] + parts
    return parts


def _ensure_audit_hook() -> None:
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True


class _PythonProfiler:
    """Fallback recorder: sys.setprofile (about 7x slower on call-heavy bodies)."""

    name = "sys.setprofile"

    def __init__(self):
        self.codes: set = set()
        self._installed = None

    def _profile(self, frame, event, arg):
        if event == "call":
            self.codes.add(frame.f_code)

    def start(self):
        self._installed = self._profile
        sys.setprofile(self._profile)
        threading.setprofile(self._profile)

    def stop(self):
        intact = sys.getprofile() == self._installed
        sys.setprofile(None)
        threading.setprofile(None)
        return list(self.codes), intact


class _EvalHook:
    """Python 3.9, 3.10, 3.11.4+: a frame-evaluation hook (PEP 523, ``_tracer``)
    sees every frame evaluated in every thread (calls, generators and coroutines
    resumed, modules run) and records its code object: one table lookup per
    frame. Not a profiler: cProfile or a debugger set during the body changes
    nothing; another frame-evaluation hook replacing ours marks it incomplete."""

    name = "C frame-evaluation hook"

    def start(self):
        if not _tracer.hook_start():
            raise RuntimeError("another frame-evaluation hook is installed")

    def stop(self):
        return _tracer.hook_stop()


#: Before 3.11.4, one specialized instruction (BINARY_SUBSCR_GETITEM) ran a Python
#: ``__getitem__`` without calling the hook (CPython gh-104405)
_EVAL_HOOK_SOUND = sys.version_info < (3, 11) or (3, 11, 4) <= sys.version_info < (3, 12)


class _CProfiler:
    """3.9-3.11 where the frame-evaluation hook cannot be used: a C profile
    function (on 3.11 it puts the whole eval loop on its tracing path)."""

    name = "C profiler"

    def start(self):
        _tracer.start()
        threading.setprofile(self._thread_start)

    @staticmethod
    def _thread_start(frame, event, arg):
        # first event in a thread the body started: switch it to the C recorder
        _tracer.record(frame.f_code)
        _tracer.install_thread()

    def stop(self):
        threading.setprofile(None)
        codes, intact = _tracer.stop()
        return codes, intact


class _MonitoringRecorder:
    """Python 3.12+: each code object reported once, then disabled for it."""

    name = "sys.monitoring"

    def __init__(self):
        self.codes: set = set()
        self.tool = None

    def _on_start(self, code, offset):
        self.codes.add(code)
        return _MONITORING.DISABLE

    def start(self):
        for tool in (5, 4, 3, 2):
            try:
                _MONITORING.use_tool_id(tool, _TOOL_NAME)
            except ValueError:
                continue
            self.tool = tool
            break
        if self.tool is None:
            raise RuntimeError("no free sys.monitoring tool id")
        _MONITORING.restart_events()
        _MONITORING.register_callback(self.tool, _MONITORING.events.PY_START, self._on_start)
        _MONITORING.set_events(self.tool, _MONITORING.events.PY_START)

    def stop(self):
        # intact unless someone freed our tool id or changed its events meanwhile
        intact = (
            _MONITORING.get_tool(self.tool) == _TOOL_NAME
            and _MONITORING.get_events(self.tool) == _MONITORING.events.PY_START
        )
        if _MONITORING.get_tool(self.tool) == _TOOL_NAME:
            _MONITORING.set_events(self.tool, 0)
            _MONITORING.register_callback(self.tool, _MONITORING.events.PY_START, None)
            _MONITORING.free_tool_id(self.tool)
        return list(self.codes), intact


def _recorder():
    if _MONITORING is not None:
        return _MonitoringRecorder()
    if _tracer is not None:
        if _EVAL_HOOK_SOUND and hasattr(_tracer, "hook_start") and _tracer.hook_free():
            return _EvalHook()
        return _CProfiler()
    return _PythonProfiler()


#: other recorders that watch a body with the code recorder (Metaflow Client
#: reads, native file access, globs): each has ``start(recording)`` and
#: ``stop(recording)``, and fills its part of the recording
_collectors: list = []


def register_collector(collector) -> None:
    if collector not in _collectors:
        _collectors.append(collector)


def current_recording() -> Recording | None:
    """The recording of the body now running in this process, if any."""
    return _current


class Observer:
    """Records one body run: ``start()`` before it, ``stop()`` after it."""

    def __init__(self):
        self._recorder = None
        self._recording: Recording | None = None

    def start(self) -> None:
        global _current
        _ensure_audit_hook()
        end_import_phase()
        self._recording = Recording()
        self._recorder = _recorder()
        self._recording.mechanism = self._recorder.name
        try:
            self._recorder.start()
        except Exception:
            self._recorder = None
            self._recording.complete = False
        _current = self._recording
        for collector in _collectors:
            try:
                with not_recorded():
                    collector.start(self._recording)
            except Exception as err:  # a collector that cannot watch: miss, say why
                self._recording.unobserved.append(
                    "%s could not start (%s)" % (type(collector).__name__, err)
                )

    def stop(self) -> Recording:
        global _current
        recording = self._recording
        if recording is None:
            _current = None
            return Recording(complete=False)
        for collector in reversed(_collectors):
            try:
                with not_recorded():
                    collector.stop(recording)
            except Exception as err:
                recording.unobserved.append(
                    "%s could not finish (%s)" % (type(collector).__name__, err)
                )
        _current = None
        if self._recorder is not None:
            codes, intact = self._recorder.stop()
            recording.codes = codes
            recording.complete = recording.complete and bool(intact)
        self._recorder = None
        self._recording = None
        return recording


#: What the process read while the flow's modules were imported, before any
#: body ran (a loader called at import, a config file read at module level):
#: what every memoized step of the process may have been handed. Recorded from
#: the moment this module loads (with Metaflow's extensions, at the flow file's
#: ``from metaflow import ...``) until the flow starts (``end_import_phase``).
_import_phase = Recording(mechanism="import")


def _begin_import_phase() -> None:
    global _current
    _ensure_audit_hook()
    if _current is None:
        _current = _import_phase


def end_import_phase() -> None:
    global _current
    if _current is _import_phase:
        _current = None


def import_phase() -> Recording:
    """What the process read at import (see ``_import_phase``)."""
    return _import_phase


def mechanism() -> str:
    """Which recorder this interpreter uses (for docs, benchmarks and logs)."""
    return _recorder().name


_begin_import_phase()
