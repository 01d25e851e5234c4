"""Watching what a body asks of the filesystem's namespace and of the process,
beside the code it runs (a collector of observe.py).

- Existence and metadata checks: ``os.stat``/``os.lstat`` (behind
  ``os.path.exists``, ``isfile``, ``getmtime``, ``pathlib.Path.is_file``...) are
  recorded with their answer; an absent path is a dependency too.
- Globs (``glob.glob``/``iglob``, ``pathlib.Path.glob``/``rglob``) are recorded
  as the pattern, not as the folders they list: a new match changes the
  dependency, a new file that does not match does not.
- Modules looked up by name (``importlib.import_module``), also when they were
  imported before the body.
- Forks (multiprocessing's fork workers): the child can run any user code
  loaded at that moment.
- The process at the start of the body: which user modules are loaded, the
  ``sys.path`` they were found on, and module state as it was before the body
  changed it (a lazy singleton, a memo dict, a seeded generator).

Each wrapper records only while a body is being recorded in this process and
never changes what the wrapped function returns or raises.
"""

from __future__ import annotations

import functools
import glob
import importlib
import os
import pathlib
import random
import stat as stat_module
import sys
import types

from . import observe
from .fingerprint import LARGE, fingerprint
from .usercode import is_user_object, module_info, user_modules

#: callers of os.stat that only ask whether a path exists (and what it is)
_EXISTENCE_CALLERS = frozenset(
    ["exists", "lexists", "isfile", "isdir", "islink", "is_file", "is_dir", "is_symlink"]
)


def _probe(stat_function):
    @functools.wraps(stat_function)
    def probed(path, *args, **kwargs):
        recording = observe.recording_now()
        try:
            result = stat_function(path, *args, **kwargs)
        except OSError:
            if recording is not None:
                with observe.not_recorded():
                    _record_probe(recording, path, None)
            raise
        if recording is not None:
            with observe.not_recorded():
                _record_probe(recording, path, result)
        return result

    probed.__memoize_wrapped__ = stat_function
    return probed


def _record_probe(recording, path, result) -> None:
    try:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        absolute = observe._path_of(path, recording)
        if absolute is None:
            return
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_name in ("stat", "lstat", "_stat"):
            frame = frame.f_back  # pathlib's Path.stat behind Path.is_file
        caller = frame.f_code.co_name if frame is not None else ""
        # a folder's size and time change with every name added to it: what a
        # step can learn from them is that it exists (its names are a listing)
        folder = result is not None and stat_module.S_ISDIR(result.st_mode)
        if caller in _EXISTENCE_CALLERS or folder:
            recording.probes.setdefault(absolute, result is not None)
        elif absolute not in recording.stats:
            recording.stats[absolute] = (
                None if result is None else (result.st_size, result.st_mtime_ns)
            )
    except Exception:
        pass


def _globbing(kind):
    def wrap(function):
        @functools.wraps(function)
        def globbed(*args, **kwargs):
            recording = observe.recording_now()
            if recording is None:
                return function(*args, **kwargs)
            with observe.not_recorded():
                _record_glob(recording, kind, args, kwargs)
                result = list(function(*args, **kwargs))  # listed while not recorded
            # listed now, handed back as the caller expects it: glob.glob a
            # list, iglob and pathlib's globs an iterator
            return result if kind == "glob" else iter(result)

        globbed.__memoize_wrapped__ = function
        return globbed

    return wrap


def _record_glob(recording, kind, args, kwargs) -> None:
    try:
        if kind in ("glob", "iglob"):
            pattern = os.fsdecode(args[0] if args else kwargs.get("pathname"))
            root = kwargs.get("root_dir")
            recursive = bool(kwargs.get("recursive", args[1] if len(args) > 1 else False))
            hidden = bool(kwargs.get("include_hidden", False))
            if kwargs.get("dir_fd") is not None:
                recording.unobserved.append("a glob relative to a folder descriptor")
                return
            base = os.fsdecode(root) if root is not None else ""
            if os.path.isabs(pattern):
                folder = ""
            else:
                folder = observe._path_of(base or ".", recording)
            recording.globs.add(
                (folder, pattern, recursive, "glob" + ("+hidden" if hidden else ""))
            )
        else:
            path, pattern = args[0], args[1] if len(args) > 1 else kwargs.get("pattern")
            folder = observe._path_of(os.fspath(path), recording)
            recording.globs.add((folder, str(pattern), kind == "rglob", "pathlib"))
    except Exception:
        recording.unobserved.append("a glob whose pattern could not be read")


def glob_matches(folder: str, pattern: str, recursive: bool, flavour: str) -> list[str]:
    """What a recorded glob matches now: names relative to ``folder``, sorted."""
    if flavour == "pathlib":
        root = pathlib.Path(folder)
        found = root.rglob(pattern) if recursive else root.glob(pattern)
        return sorted(str(p.relative_to(root)) for p in found)
    hidden = {"include_hidden": True} if flavour.endswith("+hidden") else {}
    if not folder:
        return sorted(_unwrapped(glob.glob)(pattern, recursive=recursive, **hidden))
    joined = os.path.join(glob.escape(folder), pattern)
    prefix = len(os.path.join(folder, ""))
    return sorted(m[prefix:] for m in _unwrapped(glob.glob)(joined, recursive=recursive, **hidden))


def _unwrapped(function):
    return getattr(function, "__memoize_wrapped__", function)


def _named_import(import_module):
    @functools.wraps(import_module)
    def named(name, package=None):
        module = import_module(name, package)
        recording = observe.recording_now()
        if recording is not None:
            recording.modules_named.add(module.__name__)
        return module

    named.__memoize_wrapped__ = import_module
    return named


def _on_fork() -> None:
    recording = observe.recording_now()
    if recording is None or recording is observe.import_phase():
        return
    try:
        for name, module in user_modules().items():
            real = module_info(name, module)[1]
            if real:
                recording.forked_sources.add(real)
    except Exception:
        recording.unobserved.append("a fork whose loaded modules could not be listed")


#: module state worth fingerprinting when the body starts: small mutable
#: values the body may change in place (larger ones are fingerprinted after)
_MUTABLE = (dict, list, set, bytearray, random.Random)


def module_state_at_start() -> dict:
    """{(module, name): ("fingerprint", digest) | ("object", value)}: each global
    of user code as it is before the body runs. A global the body rebinds (a
    lazy singleton) keeps its first object; a small mutable one (a memo dict, a
    seeded generator) its first fingerprint."""
    state = {}
    for module_name, module in user_modules().items():
        for name, value in list(vars(module).items()):
            if isinstance(value, (types.ModuleType, types.FunctionType, type)):
                continue
            key = (module_name, name)
            mutable = isinstance(value, _MUTABLE) or (
                is_user_object(type(value)) and hasattr(value, "__dict__")
            )
            small = not hasattr(value, "__len__") or _safe_len(value) <= LARGE
            if mutable and small:
                try:
                    state[key] = ("fingerprint", fingerprint(value))
                    continue
                except Exception:
                    pass
            state[key] = ("object", value)
    return state


def _safe_len(value) -> int:
    try:
        return len(value)
    except Exception:
        return 0


class NamespaceCollector:
    """Installs the wrappers once (they are inert outside a body) and notes the
    process's state at the start of each body."""

    installed = False

    def _install(self) -> None:
        os.stat = _probe(os.stat)
        os.lstat = _probe(os.lstat)
        glob.glob = _globbing("glob")(glob.glob)
        glob.iglob = _globbing("iglob")(glob.iglob)
        pathlib.Path.glob = _globbing("glob-path")(pathlib.Path.glob)
        pathlib.Path.rglob = _globbing("rglob")(pathlib.Path.rglob)
        importlib.import_module = _named_import(importlib.import_module)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=_on_fork)
        NamespaceCollector.installed = True

    def start(self, recording) -> None:
        if not NamespaceCollector.installed:
            self._install()
        recording.at_start = {
            "modules": set(sys.modules),
            "sys_path": [os.path.abspath(p or ".") for p in sys.path],
            "state": module_state_at_start(),
        }

    def stop(self, recording) -> None:
        pass


observe.register_collector(NamespaceCollector())
