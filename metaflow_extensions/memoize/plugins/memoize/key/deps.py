"""Observed dependencies: what a step used while it ran, and whether it still holds.

An entry records ``{dependency id: fingerprint}`` for everything of the user's
that the body used (observe.py records; this module names and fingerprints).
Before every hit, each recorded dependency is fingerprinted again from the
current code, files and inputs; any difference is a miss that names it.

Dependency ids:

  code:<module>:<path>     a user function, method or callable object that ran
                           (code, defaults, closure values, wrapped functions)
  global:<module>:<name>   a module-level value that running code can read
  flowattr:<name>          a class attribute of the flow that running code reads
  file:<path>              a file the body opened for reading (by content)
  dir:<path>               a directory the body listed (by names)
  command:<digest>         a program the body started (by command line)
  task:index               the foreach position (the body reads ``self.index``)
  task:foreach_stack       every foreach position (``self.foreach_stack()``)
  artifact:<name>          an input artifact the body read (linear steps), or a
                           foreach list the static key leaves out, read anyway
  artifact:*               every input artifact (the body enumerated them)
  input:<step>/<i>:<name>  an artifact a join read from its input of that parent
                           step and foreach index (``-`` outside a foreach)
  input:<step>/<i>:*       every artifact of that input (``merge_artifacts``)
  source:<path>            a whole user source file (code that ran but cannot be
                           named: conservative)
  incomplete:<why>         the recording was cut short: never verifies (miss)
  unobserved:<what>        something the body did that could not be observed
                           (a child process without the file recorder):
                           never verifies (miss)

Kinds defined elsewhere register a current-value function (register_kind).

What is user code is usercode.py's decision; values and code are fingerprinted
by fingerprint.py, files by digests.py; describe.py puts changes in words.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import namespace, observe, state_deps
from .components import BOOKKEEPING_ARTIFACTS, canonical_json, digest_json
from .describe import changed_input_names, describe_change, describe_changes, diff_observed
from .digests import digest_memo_dir, file_digest, source_digest
from .fingerprint import CODE_TYPES, code_digest, fingerprint, wrapped_of
from .observe import stat_signature
from .usercode import (
    inside,
    is_flow_class,
    is_infra_file,
    is_installed_file,
    is_metaflow_object,
    is_user_object,
    module_info,
    named_display,
    user_modules,
)

__all__ = [
    "DepContext",
    "changed_input_names",
    "code_digest",
    "current_value",
    "current_values",
    "describe_change",
    "describe_changes",
    "diff_observed",
    "file_digest",
    "fingerprint",
    "is_installed_file",
    "observed_dependencies",
    "read_artifact_names",
    "source_digest",
    "variant_key",
    "verify",
]

#: bump when a fingerprint's meaning changes
DEPS_FORMAT = 1

_SKIPPED_DIRS = ("/proc", "/sys", "/dev")
#: folders Metaflow creates for its own transfers while a step runs
_METAFLOW_TEMP_PREFIXES = ("metaflow.s3.", "metaflow.tmp", ".metaflow")

# -- from a recording to dependencies ------------------------------------------


@dataclass
class DepContext:
    """What a dependency's current value is computed from."""

    flow_class: type
    flow_dir: str
    index: int | None = None
    foreach_indices: list = field(default_factory=list)
    artifact_hash: Callable[[str], str | None] = lambda name: None
    #: every artifact hash of the first input
    artifact_hashes: Callable[[], Mapping[str, str]] = lambda: {}
    #: a join's inputs by input id (components.input_id), and their hashes
    input_ids: tuple = ()
    input_hashes: Callable[[str], Mapping[str, str] | None] = lambda input_id: None
    #: foreach lists the static key leaves out (the step's source never names them)
    unkeyed_lists: tuple = ()
    #: where Metaflow and memoize keep their own files (never dependencies)
    private_roots: tuple = ()
    #: input artifacts are keyed by what the body reads (a join's per input);
    #: ``ignore=`` names never, and with ``inputs=`` the static key holds
    #: exactly those names instead
    reads_keyed: bool = False
    ignored: frozenset = frozenset()
    #: shared by the orchestrator across the tasks of a run: code, module
    #: values and class attributes do not change in a process that runs no
    #: step code, so each is fingerprinted once per run, not once per task
    memo: dict | None = None


def _absolute(display: str, flow_dir: str) -> str:
    return display if os.path.isabs(display) else os.path.join(flow_dir, display)


def _walk_roots(modules: Mapping[str, types.ModuleType]):
    """{code object: [dependency ids]}: where each user code object can be found
    again by name, directly (a function's own code) and as nested code."""
    direct: dict[types.CodeType, list[str]] = {}
    nested: dict[types.CodeType, list[str]] = {}

    def add(table, code, dep):
        ids = table.setdefault(code, [])
        if dep not in ids:
            ids.append(dep)

    def nested_codes(code, dep, seen):
        for const in code.co_consts:
            if isinstance(const, types.CodeType) and id(const) not in seen:
                seen.add(id(const))
                add(nested, const, dep)
                nested_codes(const, dep, seen)

    def visit(value, dep, seen, depth=0):
        if id(value) in seen or depth > 8:
            return
        seen.add(id(value))
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            for f in (value.fget, value.fset, value.fdel):
                if f is not None:
                    visit(f, dep, seen, depth + 1)
            return
        if isinstance(value, types.FunctionType):
            if not is_user_object(value):
                return
            add(direct, value.__code__, dep)
            nested_codes(value.__code__, dep, set())
            for cell in value.__closure__ or ():
                try:
                    visit(cell.cell_contents, dep, seen, depth + 1)
                except ValueError:
                    pass
            for default in value.__defaults__ or ():
                visit(default, dep, seen, depth + 1)
            wrapped = value.__dict__.get("__wrapped__")
            if wrapped is not None:
                visit(wrapped, dep, seen, depth + 1)
            return
        if isinstance(value, functools.partial):
            visit(value.func, dep, seen, depth + 1)
            return
        if isinstance(value, (dict, list, tuple)) and depth > 0 and len(value) < 64:
            items = value.values() if isinstance(value, dict) else value
            for item in items:  # e.g. a singledispatch registry in a closure
                visit(item, dep, seen, depth + 1)
            return
        wrapped = wrapped_of(value) if not isinstance(value, type) else None
        if wrapped is not None:
            visit(wrapped, dep, seen, depth + 1)

    for mod_name in sorted(modules):
        module = modules[mod_name]
        for name, value in sorted(vars(module).items(), key=lambda kv: kv[0]):
            if isinstance(value, type):
                if value.__module__ != mod_name or not is_user_object(value):
                    continue
                _visit_class(value, "code:%s:%s" % (mod_name, name), visit, 0)
            else:
                visit(value, "code:%s:%s" % (mod_name, name), set())
    return direct, nested


def _visit_class(cls, dep, visit, depth):
    for attr, member in sorted(vars(cls).items(), key=lambda kv: kv[0]):
        if (
            isinstance(member, type)
            and depth < 3
            and member.__qualname__.startswith(cls.__qualname__ + ".")
        ):
            _visit_class(member, "%s.%s" % (dep, attr), visit, depth + 1)
        elif isinstance(member, (types.FunctionType, staticmethod, classmethod, property)) or (
            callable(member) and wrapped_of(member) is not None
        ):
            visit(member, "%s.%s" % (dep, attr), set())


def _names_of(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, str) and const.isidentifier():
            names.add(const)  # getattr(self, "name")
    return names


def observed_dependencies(
    recording, ctx: DepContext, reads: Iterable[str] | Mapping[str, Iterable[str]] = ()
) -> tuple[dict[str, str], set[str]]:
    """({dependency id: fingerprint}, names the executed user code mentions).

    ``reads``: input artifact names the body read (metaflow_compat.ArtifactReads);
    for a join, {input id: names read from that input}.
    """
    if not recording.complete:
        return {"incomplete:recorder": "incomplete"}, set()
    modules = user_modules()
    by_file = {}
    for name, module in modules.items():
        by_file[module_info(name, module)[1]] = module
    direct, nested = _walk_roots(modules)
    deps: dict[str, str] = {}
    names: set[str] = set()
    globals_read: list[tuple[types.ModuleType, set[str]]] = []
    for code in recording.codes:
        filename = code.co_filename
        if not filename or filename.startswith("<"):
            # exec'd strings and generated code (dataclasses, namedtuple): built
            # from code and data that are themselves observed
            continue
        real = os.path.realpath(filename)
        module = by_file.get(real)
        if module is None:
            if is_installed_file(real) or is_infra_file(real):
                continue
            if not os.path.exists(real):
                continue
            deps["source:%s" % named_display(real, ctx.flow_dir)] = ""
            names |= _names_of(code)
            continue
        code_names = _names_of(code)
        names |= code_names
        globals_read.append((module, code_names))
        ids = direct.get(code) or nested.get(code)
        if ids:
            for dep in ids:
                deps[dep] = ""
        else:  # a class or function made at run time: the whole file stands for it
            deps["source:%s" % named_display(real, ctx.flow_dir)] = ""
    for module, code_names in globals_read:
        _global_deps(module, code_names, modules, deps, 0)
    for module_name in sorted(recording.modules_named):
        # found by name at run time (import_module), also when imported before
        if module_name in modules:
            _global_deps(modules[module_name], names, modules, deps, 0)
    _flow_attribute_deps(ctx.flow_class, names, deps)
    state_deps.class_attribute_deps(modules, names, deps)
    state_deps.toplevel_deps(modules, deps)
    for real in sorted(recording.forked_sources):
        # a fork child can run any user code loaded when it was made
        deps["source:%s" % named_display(real, ctx.flow_dir)] = ""
    state_deps.reachable_by_name(recording, modules, ctx.flow_dir, deps)
    if "index" in names:
        deps["task:index"] = ""
    if "foreach_stack" in names:
        deps["task:foreach_stack"] = ""
    for var in ctx.unkeyed_lists:
        if var in names:
            deps["artifact:%s" % var] = ""
    if ctx.reads_keyed:
        _read_deps(ctx, reads, names, deps)
    modified_during_run: set[str] = set()
    _file_deps(recording, ctx, deps, modified_during_run)
    for line in _native_readers_unobserved(recording, names):
        deps["unobserved:%s" % line] = ""
    for line in recording.unobserved:
        deps["unobserved:%s" % line] = ""
    # values taken when the body used them (Client queries) or as it found them
    # (module state); the rest as they are now
    taken = {**recording.values, **state_deps.values_at_start(recording, deps)}
    values = current_values([d for d in deps if d not in taken], ctx)
    values.update(taken)
    for dep in modified_during_run:
        values[dep] = "modified while the step ran %s" % os.urandom(8).hex()
    return values, names


#: installed packages that read files in native code, where neither the audit
#: hook nor a Python ``open`` sees them (sqlite3 names its file in an audit event)
NATIVE_READERS = (
    "pyarrow",
    "duckdb",
    "polars",
    "h5py",
    "tables",
    "netCDF4",
    "cv2",
    "lightgbm",
    "xgboost",
    "onnxruntime",
    "tensorflow",
    "fastavro",
    "lmdb",
)


def _native_readers_unobserved(recording, names: set[str]) -> list[str]:
    """Without the native file recorder, a body that used a native reader
    (its Python code ran, or the step's code names it: duckdb is all C) may
    have read files nothing saw: one line each, and the entry never verifies."""
    if recording.native_files:
        return []
    used = set(names) & set(NATIVE_READERS)
    for module in user_modules().values():  # `import duckdb as db` at the top
        space = vars(module)
        for name in names & space.keys():
            value = space[name]
            if isinstance(value, types.ModuleType):
                top = value.__name__.partition(".")[0]
                if top in NATIVE_READERS:
                    used.add(top)
    markers = {name: "%s%s%s" % (os.sep, name, os.sep) for name in NATIVE_READERS}
    for filename in {code.co_filename for code in recording.codes}:
        used.update(name for name, marker in markers.items() if marker in filename)
    return [
        "native reader `%s` ran without the native file recorder: the files it read "
        "could not be observed" % name
        for name in sorted(used)
    ]


def _read_deps(ctx: DepContext, reads, names: set[str], deps: dict[str, str]) -> None:
    """Input artifacts as dependencies: those read through an input datastore
    (also by computed names, and absent ones), or named by code that ran (an
    artifact loaded before the body started). ``*``: the body enumerated an
    input's artifacts (``merge_artifacts``): all of them."""

    def keyable(name):
        return not (
            name in ctx.ignored or name in BOOKKEEPING_ARTIFACTS or name in ("input", "index")
        )

    if not ctx.input_ids:
        read = set(reads if not isinstance(reads, Mapping) else ())
        if "*" in read:
            deps["artifact:*"] = ""
        for name in read | names:
            if name != "*" and keyable(name):
                if name in read or ctx.artifact_hash(name) is not None:
                    deps["artifact:%s" % name] = ""
        return
    by_input = reads if isinstance(reads, Mapping) else {}
    # an input's foreach item and position (inp.input, inp.index) are read by
    # Metaflow's own lookup, which is not recorded: the whole input stands for them
    positional = bool(names & {"input", "index", "foreach_stack"})
    for iid in ctx.input_ids:
        read = set(by_input.get(iid, ()))
        if "*" in read or positional:
            deps["input:%s:*" % iid] = ""
            continue
        present = ctx.input_hashes(iid) or {}
        for name in read | names:
            if keyable(name) and (name in read or name in present):
                deps["input:%s:%s" % (iid, name)] = ""


def read_artifact_names(dep_ids: Iterable[str]) -> set[str]:
    """The input artifact names among dependency ids (``*`` when all were read)."""
    out = set()
    for dep in dep_ids:
        if dep.startswith("artifact:"):
            out.add(dep[len("artifact:") :])
        elif dep.startswith("input:"):
            out.add(dep.rpartition(":")[2])
    return out


def _all_inputs_digest(hashes: Mapping[str, str], ctx: DepContext) -> str:
    # as the static key would: no bookkeeping, no ignored names, no foreach list
    # the step's code never names (a merge passes it through from the current inputs)
    skip = BOOKKEEPING_ARTIFACTS | ctx.ignored | set(ctx.unkeyed_lists)
    return digest_json({n: sha for n, sha in hashes.items() if n not in skip})


def _global_deps(module, code_names, modules, deps, depth):
    space = vars(module)
    for name in code_names:
        if name not in space:
            # `import mod` / `from mod import NAME` inside a function: the module
            # is named in the code, not bound in its globals
            imported = modules.get(name)
            if imported is not None and depth < 3 and imported is not module:
                _global_deps(imported, code_names, modules, deps, depth + 1)
            continue
        value = space[name]
        if isinstance(value, types.ModuleType):
            if depth < 3 and value.__name__ in modules:
                _global_deps(value, code_names, modules, deps, depth + 1)
            continue
        if isinstance(value, types.FunctionType) or is_flow_class(value):
            continue  # code: a dependency when (and as) it runs
        if is_metaflow_object(value):
            continue  # `current` and the like: the run's context, not the user's state
        if isinstance(value, type) and not is_user_object(value):
            continue
        if callable(value) and not isinstance(value, (type, functools.partial)):
            if not is_user_object(type(value)) and wrapped_of(value) is None:
                continue  # an installed callable (a builtin, a numpy ufunc)
        deps["global:%s:%s" % (module.__name__, name)] = ""


def _flow_class_attribute(flow_class, name):
    """(found, value) for a class attribute the user defined on the flow or a mixin."""
    for klass in flow_class.__mro__:
        if klass is object or not is_user_object(klass):
            continue
        if name in vars(klass):
            return True, vars(klass)[name]
    return False, None


def _flow_attribute_deps(flow_class, names, deps):
    for name in names:
        if name.startswith("__"):
            continue
        found, value = _flow_class_attribute(flow_class, name)
        if not found or isinstance(value, CODE_TYPES) or is_metaflow_object(value):
            continue
        deps["flowattr:%s" % name] = ""


def _file_deps(recording, ctx, deps, modified_during_run):
    # memoize's own file-digest memo is read by its checks, never by the body
    own = (*ctx.private_roots, *client_cache_roots(), digest_memo_dir())
    private = tuple(os.path.realpath(p) for p in own if p)
    # source files of loaded modules are code (observed as code, not as files)
    module_files = {
        f for m in list(sys.modules.values()) for f in [getattr(m, "__file__", None)] if f
    }
    created = tuple(os.path.realpath(d) for d in recording.dirs_created)

    def wanted(path):
        real = os.path.realpath(path)
        if any(inside(real, d) for d in _SKIPPED_DIRS):
            return None
        if path in module_files or real in module_files:
            return None
        if is_installed_file(real) or is_infra_file(real):
            return None
        if any(inside(real, p) for p in private):
            return None
        if any(inside(real, d) for d in created):
            return None  # a folder the body made (a TemporaryDirectory): its own
        parts = real.split(os.sep)
        if real.endswith((".pyc", ".pyo")) or "__pycache__" in parts:
            return None
        if any(part.startswith(_METAFLOW_TEMP_PREFIXES) for part in parts):
            return None  # Metaflow's own downloads (S3 client temp folders)
        return real

    at_import = observe.import_phase()
    written = {os.path.realpath(p) for p in recording.files_written | at_import.files_written}
    read = dict(at_import.files_read)
    read.update(recording.files_read)
    for path, signature in sorted(read.items()):
        real = wanted(path)
        if real is None or os.path.isdir(real):
            continue
        if real in written and signature is None:
            continue  # created by the step: an output, not an input
        # as named: a repointed symlink is a change of what the step reads
        dep = "file:%s" % named_display(path, ctx.flow_dir)
        deps[dep] = ""
        if signature is not None and signature != stat_signature(path):
            # rewritten after the step read it: what it read is gone, so the
            # entry can never be verified (a miss, never a stale hit)
            modified_during_run.add(dep)
    for path, signature in sorted(recording.child_files_read.items()):
        # read by a child process (native.py): by content, its .py files too
        # (code the child ran, even when this process loaded the same module)
        real = os.path.realpath(path)
        if not real.endswith(".py") or is_installed_file(real) or is_infra_file(real):
            real = wanted(path)
        elif any(inside(real, p) for p in private):
            real = None
        if real is None or os.path.isdir(real) or (real in written and signature is None):
            continue
        dep = "file:%s" % named_display(path, ctx.flow_dir)
        deps[dep] = ""
        if signature is not None and signature != stat_signature(path):
            modified_during_run.add(dep)
    for path in sorted(recording.dirs_listed):
        real = wanted(path)
        if real is not None and real not in written:
            deps["dir:%s" % named_display(path, ctx.flow_dir)] = ""
    # the flow's folder and those above it exist whenever the flow runs
    around_flow = {os.path.abspath(ctx.flow_dir), os.path.realpath(ctx.flow_dir)}
    for base in list(around_flow):
        while os.path.dirname(base) != base:
            base = os.path.dirname(base)
            around_flow.add(base)
    for path in sorted(recording.probes):
        if os.path.abspath(path) in around_flow:
            continue
        real = wanted(path)
        if real is not None and real not in written and path not in recording.stats:
            deps["exists:%s" % named_display(path, ctx.flow_dir)] = ""
    for path in sorted(recording.stats):
        real = wanted(path)
        if real is not None and real not in written:
            deps["stat:%s" % named_display(path, ctx.flow_dir)] = ""
    for folder, pattern, recursive, flavour in sorted(recording.globs):
        # an absolute pattern: the folder its fixed part names
        fixed = folder or _fixed_prefix(pattern)
        if fixed and wanted(fixed) is None:
            continue
        where = named_display(folder, ctx.flow_dir) if folder else ""
        deps["glob:%s" % canonical_json([where, pattern, recursive, flavour])] = ""
    if recording.used_cwd:
        deps["cwd:"] = ""
    for argv in recording.commands:
        deps["command:%s" % digest_json(argv)] = ""
        for arg in argv:
            if not isinstance(arg, str) or not arg or arg.startswith("-"):
                continue
            candidate = os.path.abspath(arg)
            if os.path.isfile(candidate):
                real = wanted(candidate)
                if real is not None and real not in written:
                    deps["file:%s" % named_display(candidate, ctx.flow_dir)] = ""


# -- current values --------------------------------------------------------------


_PROCESS_STABLE = ("code:", "global:", "flowattr:", "source:", "toplevel:", "classattr:")


def current_values(dep_ids: Iterable[str], ctx: DepContext) -> dict[str, str]:
    memo = getattr(ctx, "memo", None)
    if memo is None:
        return {dep: current_value(dep, ctx) for dep in dep_ids}
    out = {}
    for dep in dep_ids:
        if dep.startswith(_PROCESS_STABLE):
            if dep not in memo:
                memo[dep] = current_value(dep, ctx)
            out[dep] = memo[dep]
        else:
            out[dep] = current_value(dep, ctx)
    return out


def current_value(dep: str, ctx: DepContext) -> str:
    kind, _, rest = dep.partition(":")
    try:
        if kind == "code":
            module_name, _, attr_path = rest.partition(":")
            found, obj = _resolve(module_name, attr_path)
            return fingerprint(obj) if found else "absent"
        if kind == "global":
            module_name, _, name = rest.partition(":")
            found, obj = _resolve(module_name, name)
            if found and name == "__file__" and isinstance(obj, str):
                return "path %s" % named_display(obj, ctx.flow_dir)  # not the checkout's place
            return fingerprint(obj) if found else "absent"
        if kind == "flowattr":
            found, value = _flow_class_attribute(ctx.flow_class, rest)
            return fingerprint(value) if found else "absent"
        if kind == "file":
            return file_digest(_absolute(rest, ctx.flow_dir))
        if kind == "dir":
            path = _absolute(rest, ctx.flow_dir)
            return digest_json(sorted(os.listdir(path))) if os.path.isdir(path) else "missing"
        if kind == "source":
            return source_digest(_absolute(rest, ctx.flow_dir))
        if kind == "command":
            return rest
        if kind == "task":
            if rest == "index":
                return repr(ctx.index)
            return repr(list(ctx.foreach_indices))
        if kind == "artifact":
            if rest == "*":
                return _all_inputs_digest(ctx.artifact_hashes(), ctx)
            return ctx.artifact_hash(rest) or "absent"
        if kind == "input":
            iid, _, name = rest.rpartition(":")
            hashes = ctx.input_hashes(iid)
            if hashes is None:
                return "absent input"
            if name == "*":
                return _all_inputs_digest(hashes, ctx)
            return hashes.get(name) or "absent"
        if kind == "exists":
            return _path_kind(_absolute(rest, ctx.flow_dir))
        if kind == "stat":
            return _stat_value(_absolute(rest, ctx.flow_dir))
        if kind == "glob":
            where, pattern, recursive, flavour = json.loads(rest)
            folder = _absolute(where, ctx.flow_dir) if where else ""
            return digest_json(namespace.glob_matches(folder, pattern, recursive, flavour))
        if kind == "cwd":
            # relative to the flow's folder: a moved checkout is the same place
            return named_display(os.getcwd(), ctx.flow_dir)
        if kind in ("classattr", "toplevel"):
            return state_deps.current_value(kind, rest)
        if kind == "unobserved":
            return "unobservable"  # what could not be observed never verifies
        resolver = _KINDS.get(kind)
        if resolver is not None:
            return resolver(rest, ctx)
    except Exception as err:  # a dependency we cannot evaluate never matches
        return "unavailable: %s" % type(err).__name__
    return "unknown dependency"


def _fixed_prefix(pattern: str) -> str:
    """The folder a glob pattern names before its first wildcard."""
    parts = []
    for part in pattern.split(os.sep):
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return os.sep.join(parts[:-1] if len(parts) == len(pattern.split(os.sep)) else parts)


def _path_kind(path: str) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return "dangling link"
    if os.path.isdir(path):
        return "folder"
    if os.path.exists(path):
        return "file"
    return "absent"


def _stat_value(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "absent"
    return "%d %d" % (st.st_size, st.st_mtime_ns)


#: dependency kinds that live in modules of their own: kind -> function of
#: (the id after ``kind:``, DepContext) returning the current value
_KINDS: dict[str, Callable[[str, DepContext], str]] = {}


def register_kind(kind: str, current: Callable[[str, DepContext], str]) -> None:
    _KINDS[kind] = current


def _resolve(module_name: str, attr_path: str) -> tuple[bool, Any]:
    module = sys.modules.get(module_name)
    if module is None:
        # imported inside the step: import it the way the step did
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr_path.split("."):
        space = vars(obj) if isinstance(obj, (types.ModuleType, type)) else None
        if space is None or part not in space:
            return False, None
        obj = space[part]
    return True, obj


# -- verification and reasons ------------------------------------------------------


def verify(recorded: Mapping[str, str], ctx: DepContext) -> tuple[list[str], dict[str, str]]:
    """(reasons the recorded dependencies no longer hold, their current values)."""
    current = current_values(recorded, ctx)
    changed = [
        dep
        for dep in sorted(recorded)
        if dep.startswith(("incomplete:", "unobserved:")) or current[dep] != recorded[dep]
    ]
    joins = len(ctx.input_ids) if changed else 0
    return describe_changes(changed, recorded, current, joins), current


def variant_key(static_key: str, values: Mapping[str, str]) -> str:
    """Where the entry for this static key and these dependency values lives,
    when the first entry of the static key recorded other values."""
    return digest_json({"static": static_key, "deps": dict(values), "format": DEPS_FORMAT})


from .client_reads import client_cache_roots  # noqa: E402  (registers the Client kind)
