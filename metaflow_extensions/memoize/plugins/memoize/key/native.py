"""File access of native code and child processes, recorded below the interpreter.

The audit hook of observe.py sees what Python code opens, lists and starts in
the task process. Native readers (pyarrow, sqlite3, duckdb, h5py...) and child
processes (``subprocess.run("python score.py", shell=True)``, multiprocessing
workers) open files it never sees. ``_fsrecord`` (_fsrecord.c), an LD_PRELOAD
library, records them:

- the orchestrator puts it in ``LD_PRELOAD`` for the task processes it launches
  (``preload_for_tasks``, from the decorator's ``runtime_init``): a library
  loaded into a running process does not interpose, so it must be there at start;
- around a body, the collector (``NativeRecorder``) switches it on in the task
  process through ctypes and sets ``METAFLOW_MEMOIZE_FSRECORD`` so that children
  started meanwhile record from their start; each process writes its own
  ``<pid>.rec`` file, merged into the Recording when the body ends.

Where it is not loaded (another platform, not built, ``LD_PRELOAD`` stripped,
``METAFLOW_MEMOIZE_NATIVE_RECORD=0``) a body that starts a child process or
forks keeps an ``unobserved`` line: a dependency that never verifies (a miss,
never a stale hit). A program that runs without the recorder (a static binary,
a cleared environment) is an unobserved line too.

Linux only (glibc). On macOS, System Integrity Protection strips
``DYLD_INSERT_LIBRARIES`` from the system's shells and interpreters, so the
library is not built there and the fallback applies.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import importlib.machinery
import os
import re
import shutil
import sys
import tempfile

from . import observe
from .usercode import is_installed_file

#: the record folder of the body now running: children record into it
ENV_RECORD_DIR = "METAFLOW_MEMOIZE_FSRECORD"
ENV_SETTING = "METAFLOW_MEMOIZE_NATIVE_RECORD"
#: the line format this module reads (_fsrecord.c: memoize_fsrecord_version)
_FORMAT = 1
_HERE = os.path.dirname(os.path.abspath(__file__))
_PRELOAD = "LD_PRELOAD"

#: ``lib/pythonX.Y`` of any interpreter (a child may run another Python than
#: the task's): its standard library and packages are not the user's files
_PYTHON_LIB = re.compile(r"(^|/)lib(64)?/python\d+(\.\d+)*t?(/|$)")
_PACKAGE_DIRS = ("site-packages", "dist-packages")


def enabled() -> bool:
    """METAFLOW_MEMOIZE_NATIVE_RECORD (default on; 0 turns it off)."""
    from .. import config

    return config.native_record()


@functools.lru_cache(maxsize=1)
def library_path() -> str | None:
    """The built interposer for this interpreter, else any built one (the
    library does not depend on Python's version)."""
    found = sorted(glob.glob(os.path.join(_HERE, "_fsrecord*.so")))
    if not found:
        return None
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for path in found:
            if path.endswith("_fsrecord" + suffix):
                return path
    return found[0]


def _preload_entries(value: str) -> list[str]:
    return [p for p in re.split(r"[:\s]+", value or "") if p]


def preload_for_tasks() -> str | None:
    """Orchestrator side: put the interposer in ``LD_PRELOAD`` (after any
    existing entries) for the processes this process starts, so that each task
    process has it from its start. Returns the path added, None when turned off
    or not built. Inert in a process that does not record."""
    if not sys.platform.startswith("linux") or not enabled():
        return None
    path = library_path()
    if path is None or re.search(r"[:\s]", path):
        return None  # LD_PRELOAD cannot name a path with a space or a colon
    entries = _preload_entries(os.environ.get(_PRELOAD, ""))
    if not any(os.path.basename(e).startswith("_fsrecord") for e in entries):
        os.environ[_PRELOAD] = ":".join(entries + [path])
    return path


_LIB = None


def loaded_library():
    """The interposer's exported functions when it is loaded in this process
    (preloaded at its start), else None."""
    global _LIB
    if _LIB is not None:
        return _LIB
    try:
        process = ctypes.CDLL(None)
        version = process.memoize_fsrecord_version
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_int
    if version() != _FORMAT:
        return None
    process.memoize_fsrecord_start.argtypes = [ctypes.c_char_p]
    process.memoize_fsrecord_start.restype = ctypes.c_int
    process.memoize_fsrecord_stop.argtypes = []
    process.memoize_fsrecord_stop.restype = None
    _LIB = process
    return _LIB


# -- fork without the recorder ----------------------------------------------

_forks = 0


def _after_fork_in_parent() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_parent=_after_fork_in_parent)


# -- reading records ----------------------------------------------------------

_UNESCAPE = re.compile(r"\\(.)")


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    return _UNESCAPE.sub(lambda m: {"t": "\t", "n": "\n"}.get(m.group(1), m.group(1)), field)


class Event:
    """One line of a record file."""

    __slots__ = ("kind", "pid", "result", "flags", "sig", "path", "args")

    def __init__(self, kind, pid, result, flags, sig, path, args):
        self.kind, self.pid, self.result, self.flags = kind, pid, result, flags
        self.sig, self.path, self.args = sig, path, args

    def __repr__(self):
        return "Event(%s %d %s %s %s %s %s)" % (
            self.kind,
            self.pid,
            self.result,
            self.flags,
            self.sig,
            self.path,
            self.args,
        )


def parse_line(line: str) -> Event | None:
    fields = line.rstrip("\n").split("\t")
    if len(fields) < 6:
        return None
    try:
        pid = int(fields[1])
    except ValueError:
        return None
    kind, result, flags, sig = fields[0], fields[2], fields[3], fields[4]
    args = [_unescape(f) for f in fields[6:]]
    if args and args[-1] == "...":
        args = args[:-1]  # cut to fit a line
    return Event(kind, pid, result, flags, sig, _unescape(fields[5]), args)


def read_records(record_dir: str) -> dict[int, list[Event]]:
    """{pid: its events in order}, from every ``<pid>.rec`` file."""
    out: dict[int, list[Event]] = {}
    for name in sorted(os.listdir(record_dir)):
        if not name.endswith(".rec"):
            continue
        with open(os.path.join(record_dir, name), encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if not line.endswith("\n"):
                    continue  # a process killed while writing
                event = parse_line(line)
                if event is not None:
                    out.setdefault(event.pid, []).append(event)
    return out


def _signature(sig: str):
    parts = sig.split(":")
    if len(parts) != 3:
        return None
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        return None


def _command_text(argv) -> str:
    return " ".join(argv) if argv else "?"


def is_python_installation_file(path: str) -> bool:
    """A file of a Python installation or installed packages, of this
    interpreter or of another one a child ran."""
    if is_installed_file(path) or os.path.basename(path) == "pyvenv.cfg":
        return True
    parts = path.split(os.sep)
    return bool(_PYTHON_LIB.search(path)) or any(p in _PACKAGE_DIRS for p in parts)


def _source_of_cached(path: str) -> str | None:
    """``pkg/__pycache__/mod.cpython-311.pyc`` -> ``pkg/mod.py``: a child that
    imports a module with a valid cache reads only the .pyc (its source is
    checked by size and mtime): the source is what it ran."""
    folder, name = os.path.split(path)
    if os.path.basename(folder) != "__pycache__" or not name.endswith(".pyc"):
        return None
    source = os.path.join(os.path.dirname(folder), name.split(".", 1)[0] + ".py")
    return source if os.path.isfile(source) else None


#: the task's own calls made by the Python interpreter (flag P) that Python's
#: recorders see already: opens, listings and folders made (observe.py's audit
#: hook). Its stat and access calls are kept (``os.path.exists``, ``os.access``)
_SEEN_BY_PYTHON = ("open", "opendir", "mkdir")


def merge(events: dict[int, list[Event]], recording, task_pid: int) -> None:
    """Adds what the recorded processes did to ``recording``."""
    for pid in sorted(events):
        child = pid != task_pid
        pending_exec = None  # an exec whose new program has not reported yet
        written_here: set = set()  # what this process wrote: read back, its own output
        for ev in events[pid]:
            ok = ev.result == "ok"
            path = ev.path
            if not child and "P" in ev.flags:
                if ev.kind in _SEEN_BY_PYTHON or "l" in ev.flags:
                    continue  # (lstat: os.path.realpath's walk, not a question asked)
            if "R" in ev.flags and not (path.endswith("/.") or ev.kind == "exec"):
                recording.used_cwd = True
            if ev.kind == "open":
                if not ok:
                    if ev.result in ("ENOENT", "ENOTDIR") and "c" not in ev.flags:
                        recording.probes.setdefault(path, False)
                    continue
                # not a read: a file created or truncated by this open, one this
                # process wrote before, a folder, another interpreter's library
                reads = (
                    "r" in ev.flags
                    and "D" not in ev.flags
                    and "t" not in ev.flags
                    and not ("c" in ev.flags and ev.sig.startswith("0:"))
                    and path not in written_here
                    and not (child and is_python_installation_file(path))
                )
                if reads:
                    target = recording.child_files_read if child else recording.files_read
                    if path not in target:
                        target[path] = _signature(ev.sig)
                    if child:
                        source = _source_of_cached(path)
                        if source is not None and source not in target:
                            target[source] = observe.stat_signature(source)
                if "w" in ev.flags or "c" in ev.flags:
                    recording.files_written.add(path)
                    written_here.add(path)
            elif ev.kind in ("stat", "access"):
                if ok:
                    recording.probes.setdefault(path, True)
                elif ev.result in ("ENOENT", "ENOTDIR"):
                    recording.probes.setdefault(path, False)
            elif ev.kind == "opendir":
                if not ok:
                    if ev.result in ("ENOENT", "ENOTDIR"):
                        recording.probes.setdefault(path, False)
                    continue
                recording.dirs_listed.add(path)
            elif ev.kind == "mkdir":
                if ok:
                    recording.dirs_created.add(path)
            elif ev.kind == "exec":
                if not child:
                    continue  # the task's own: its audit hook saw the command
                pending_exec = ev
                if "E" in ev.flags:
                    recording.unobserved.append(
                        "program `%s` started with an environment without the native "
                        "file recorder (LD_PRELOAD or %s cleared)"
                        % (_command_text(ev.args), ENV_RECORD_DIR)
                    )
                    pending_exec = None
            elif ev.kind == "execfail":
                pending_exec = None
            elif ev.kind == "init":
                pending_exec = None
                if child and ev.args and ev.args not in recording.commands:
                    recording.commands.append(list(ev.args))
            elif ev.kind == "spawn":
                if not ok:
                    continue
                if "E" in ev.flags:
                    recording.unobserved.append(
                        "program `%s` started with an environment without the native "
                        "file recorder (LD_PRELOAD or %s cleared)"
                        % (_command_text(ev.args), ENV_RECORD_DIR)
                    )
                    continue
                try:
                    spawned = int(ev.sig)
                except ValueError:
                    continue
                if not any(e.kind == "init" for e in events.get(spawned, ())):
                    recording.unobserved.append(
                        "program `%s` could not be observed (a static binary, or a "
                        "program the native file recorder cannot enter)" % _command_text(ev.args)
                    )
        if pending_exec is not None:
            recording.unobserved.append(
                "program `%s` could not be observed (a static binary, or a program the "
                "native file recorder cannot enter)" % _command_text(pending_exec.args)
            )


# -- the collector --------------------------------------------------------------


@contextlib.contextmanager
def _own_io():
    """The collector's own folder and files are not the body's: unrecorded."""
    saved = observe._current
    observe._current = None
    try:
        yield
    finally:
        observe._current = saved


class NativeRecorder:
    """Watches a body with the interposer (observe.register_collector)."""

    def __init__(self):
        self._dir = None
        self._saved_env: dict[str, str | None] = {}
        self._why_not = None
        self._forks_at_start = 0

    def start(self, recording) -> None:
        self._dir = None
        self._saved_env = {}
        self._forks_at_start = _forks
        lib = loaded_library() if enabled() else None
        if lib is None:
            with _own_io():
                self._why_not = self._reason()
            return
        self._why_not = None
        with _own_io():
            self._dir = tempfile.mkdtemp(prefix="metaflow.tmp-memoize-fsrecord-")
        self._set_env(ENV_RECORD_DIR, self._dir)
        entries = _preload_entries(os.environ.get(_PRELOAD, ""))
        path = library_path()
        if path and not any(os.path.basename(e).startswith("_fsrecord") for e in entries):
            self._set_env(_PRELOAD, ":".join(entries + [path]))
        if lib.memoize_fsrecord_start(os.fsencode(self._dir)) != 0:
            raise RuntimeError("the native file recorder did not start")
        recording.native_files = True

    def stop(self, recording) -> None:
        if self._dir is None:
            self._fallback(recording)
            return
        record_dir, self._dir = self._dir, None
        try:
            lib = loaded_library()
            if lib is not None:
                lib.memoize_fsrecord_stop()
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._saved_env = {}
            with _own_io():
                merge(read_records(record_dir), recording, os.getpid())
        finally:
            with _own_io():
                shutil.rmtree(record_dir, ignore_errors=True)

    def _set_env(self, name: str, value: str) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    @staticmethod
    def _reason() -> str:
        if not enabled():
            return "native file recorder turned off: %s=0" % ENV_SETTING
        if not sys.platform.startswith("linux"):
            return "native file recorder not available on %s" % sys.platform
        if library_path() is None:
            return "native file recorder not built"
        return "native file recorder not loaded in the task process (LD_PRELOAD)"

    def _fallback(self, recording) -> None:
        """Without the recorder, what a child process read is unknown: each
        one is a dependency that never verifies."""
        why = self._why_not or "native file recorder not loaded"
        for argv in recording.commands:
            recording.unobserved.append("child process `%s` (%s)" % (_command_text(argv), why))
        if _forks != self._forks_at_start:
            recording.unobserved.append("forked child process (%s)" % why)


_RECORDER = NativeRecorder()
observe.register_collector(_RECORDER)
