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

User code is every module whose file is not inside the Python installation or
an installed-packages directory (decided on resolved paths, component by
component), other than Metaflow and its extensions.
"""

from __future__ import annotations

import ast
import datetime
import decimal
import dis
import enum
import fractions
import functools
import importlib
import os
import pathlib
import pickle
import re
import site
import sys
import sysconfig
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash

from .components import BOOKKEEPING_ARTIFACTS, canonical_json, digest_json
from .observe import stat_signature

#: bump when a fingerprint's meaning changes
DEPS_FORMAT = 1

_SCALARS = (type(None), bool, int, float, str, bytes, complex)
_VALUE_REPR_TYPES = (
    datetime.date,
    datetime.time,
    datetime.timedelta,
    datetime.timezone,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
    pathlib.PurePath,
    range,
    slice,
)
_INFRA_PACKAGES = ("metaflow", "metaflow_extensions")
_SKIPPED_DIRS = ("/proc", "/sys", "/dev")
#: folders Metaflow creates for its own transfers while a step runs
_METAFLOW_TEMP_PREFIXES = ("metaflow.s3.", "metaflow.tmp", ".metaflow")
#: containers larger than this are fingerprinted through pickle (one C call)
_LARGE = 2000
_MAX_DEPTH = 200


# -- what is user code ----------------------------------------------------------


@functools.lru_cache(maxsize=1)
def installed_roots() -> tuple[str, ...]:
    roots = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(name)
        if path:
            roots.add(os.path.realpath(path))
    try:
        roots.update(os.path.realpath(p) for p in site.getsitepackages())
    except AttributeError:  # some virtualenvs' site module
        pass
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if user_site:
        roots.add(os.path.realpath(user_site))
    return tuple(sorted(roots))


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


@functools.lru_cache(maxsize=4096)
def is_installed_file(path: str) -> bool:
    """Whether a (resolved) path is part of the Python installation or installed packages."""
    real = os.path.realpath(path)
    return any(_inside(real, root) for root in installed_roots())


@functools.cache
def _resolved_dir(directory: str) -> str:
    return os.path.realpath(directory)


def _resolved(path: str) -> str:
    """realpath, resolving each folder once per process (hundreds of modules
    share a few dozen folders)."""
    path = os.path.abspath(path)
    if os.path.islink(path):
        return os.path.realpath(path)
    return os.path.join(_resolved_dir(os.path.dirname(path)), os.path.basename(path))


_module_class_cache: dict[str, tuple[Any, bool, str | None]] = {}


def _module_info(name: str, module) -> tuple[bool, str | None]:
    """(is user code, resolved file) for a loaded module; cached per module object."""
    cached = _module_class_cache.get(name)
    if cached is not None and cached[0] is module:
        return cached[1], cached[2]
    path = getattr(module, "__file__", None)
    real = _resolved(path) if isinstance(path, str) else None
    user = (
        real is not None
        and name.split(".")[0] not in _INFRA_PACKAGES
        and not is_installed_file(real)
        and real.endswith(".py")
    )
    _module_class_cache[name] = (module, user, real)
    return user, real


def user_modules() -> dict[str, types.ModuleType]:
    """Loaded modules that are the user's code, by name."""
    out: dict[str, types.ModuleType] = {}
    seen: dict[int, str] = {}
    # a module can be registered under two names (multiprocessing aliases the
    # script as __mp_main__): keep one, the same in every process
    for name, module in sorted(sys.modules.items(), key=lambda kv: (kv[0] == "__mp_main__", kv[0])):
        if not isinstance(module, types.ModuleType) or id(module) in seen:
            continue
        if _module_info(name, module)[0]:
            seen[id(module)] = name
            out[name] = module
    return out


def is_user_object(value) -> bool:
    """Whether a class or function was defined in the user's code."""
    module = sys.modules.get(getattr(value, "__module__", None) or "")
    return module is not None and _module_info(module.__name__, module)[0]


# -- fingerprints ----------------------------------------------------------------


_code_digests: dict[int, tuple[types.CodeType, str]] = {}


def code_digest(code: types.CodeType, doc: str | None = None) -> str:
    """Digest of what a code object does: its instructions, with constants by
    value (nested code by its own digest) and names by name. Line numbers,
    positions, file names and constants no instruction uses (the docstring:
    ``doc`` is accepted for callers but not needed) are left out, so comments,
    formatting and docstrings do not count."""
    cached = _code_digests.get(id(code))
    if cached is not None and cached[0] is code:
        return cached[1]
    instructions = []
    for ins in dis.get_instructions(code):
        if ins.opcode in dis.hasconst:
            value = ins.argval
            arg = (
                ["code", code_digest(value)]
                if isinstance(value, types.CodeType)
                else _fp(value, (), 0)
            )
            instructions.append([ins.opname, arg])
        elif ins.argrepr:
            instructions.append([ins.opname, ins.argrepr])
        else:
            instructions.append([ins.opname, ins.arg])
    document = [
        code.co_name,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        instructions,
        list(code.co_varnames),
        list(code.co_freevars),
        list(code.co_cellvars),
        getattr(code, "co_exceptiontable", b"").hex(),
    ]
    digest = digest_json(document)
    _code_digests[id(code)] = (code, digest)
    return digest


def fingerprint(value: Any) -> str:
    """A digest of a value that equal values share across processes.

    Never drops part of a value silently: containers are followed to any depth
    (past a bound, or when large, through pickle), and what cannot be
    fingerprinted at all is "opaque" (installed types: their state is covered by
    the package version) or "unknown" (user types: never equal, so a miss).
    """
    return digest_json(_fp(value, (), 0))


def _qualname(obj) -> str:
    return "%s.%s" % (getattr(obj, "__module__", "?"), getattr(obj, "__qualname__", "?"))


def _pickled(value) -> list:
    try:
        return ["pickle", xxhash.xxh3_128_hexdigest(pickle.dumps(value, protocol=4))]
    except Exception:
        if is_user_object(type(value)):
            return ["unknown", _qualname(type(value)), os.urandom(8).hex()]
        return ["opaque", _qualname(type(value))]


def _fp(value: Any, path: tuple, depth: int) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return [kind.__name__, repr(value)]
    if value is Ellipsis or value is NotImplemented:
        return [repr(value)]
    if id(value) in path:
        return ["cycle", path.index(id(value))]
    if depth > _MAX_DEPTH:
        return _pickled(value)
    path = path + (id(value),)
    depth += 1
    if isinstance(value, enum.Enum):
        return ["enum", _qualname(kind), value.name, _fp(value.value, path, depth)]
    if isinstance(value, (list, tuple)):
        if len(value) > _LARGE:
            return [kind.__name__, _pickled(value)]
        return [kind.__name__, [_fp(v, path, depth) for v in value]]
    if isinstance(value, (set, frozenset)):
        return [kind.__name__, sorted(canonical_json(_fp(v, path, depth)) for v in value)]
    if isinstance(value, dict):
        if len(value) > _LARGE:
            return [kind.__name__, _pickled(value)]
        items = [[_fp(k, path, depth), _fp(v, path, depth)] for k, v in value.items()]
        return [kind.__name__, sorted(items, key=canonical_json)]
    if isinstance(value, types.FunctionType):
        return _fp_function(value, path, depth)
    if isinstance(value, (staticmethod, classmethod)):
        return [kind.__name__, _fp(value.__func__, path, depth)]
    if isinstance(value, property):
        return ["property"] + [_fp(f, path, depth) for f in (value.fget, value.fset, value.fdel)]
    if isinstance(value, functools.partial):
        return [
            "partial",
            _fp(value.func, path, depth),
            _fp(value.args, path, depth),
            _fp(value.keywords, path, depth),
        ]
    if isinstance(value, types.MethodType):
        return ["method", _fp(value.__func__, path, depth), _fp(value.__self__, path, depth)]
    if isinstance(value, types.ModuleType):
        return ["module", value.__name__]
    if isinstance(value, types.CodeType):
        return ["code", code_digest(value)]
    if isinstance(value, type):
        return _fp_class(value, path, depth)
    if _is_flow(value):
        return ["flow"]
    if isinstance(value, _VALUE_REPR_TYPES):
        return [_qualname(kind), repr(value)]
    if isinstance(value, re.Pattern):
        return ["re", _fp(value.pattern, path, depth), value.flags]
    wrapped = _wrapped_of(value)
    if wrapped is not None:  # functools.lru_cache / cache wrappers and the like
        return ["wrapped", _qualname(kind), _fp(wrapped, path, depth), _cache_parameters(value)]
    if is_user_object(kind):
        state = getattr(value, "__dict__", None)
        slots = [
            [name, _fp(getattr(value, name), path, depth)]
            for cls in kind.__mro__
            for name in getattr(cls, "__slots__", ())
            if isinstance(name, str) and hasattr(value, name)
        ]
        return [
            "object",
            _fp_class(kind, path, depth),
            None if state is None else _fp(dict(state), path, depth),
            slots,
        ]
    return _pickled(value)


def _wrapped_of(value):
    try:
        wrapped = value.__dict__.get("__wrapped__") if hasattr(value, "__dict__") else None
        if wrapped is None:
            wrapped = getattr(type(value), "__wrapped__", None) and value.__wrapped__
        return wrapped
    except Exception:
        return None


def _cache_parameters(value):
    params = getattr(value, "cache_parameters", None)
    try:
        return canonical_json(params()) if callable(params) else None
    except Exception:
        return None


def _is_flow(value) -> bool:
    flowspec = sys.modules.get("metaflow.flowspec")
    return flowspec is not None and isinstance(value, flowspec.FlowSpec)


def _fp_function(fn: types.FunctionType, path: tuple, depth: int) -> list:
    if not is_user_object(fn):
        return ["function", _qualname(fn)]
    closure = []
    for cell in fn.__closure__ or ():
        try:
            closure.append(_fp(cell.cell_contents, path, depth))
        except ValueError:  # empty cell
            closure.append(["empty"])
    doc = [
        "function",
        code_digest(fn.__code__, fn.__doc__ if isinstance(fn.__doc__, str) else None),
        _fp(fn.__defaults__, path, depth),
        _fp(fn.__kwdefaults__, path, depth),
        closure,
    ]
    wrapped = fn.__dict__.get("__wrapped__")
    if wrapped is not None:
        doc.append(_fp(wrapped, path, depth))
    return doc


_CLASS_SKIP = frozenset(
    [
        "__dict__",
        "__weakref__",
        "__module__",
        "__doc__",
        "__qualname__",
        "__annotations__",
        "__dataclass_fields__",
        "__dataclass_params__",
        "__match_args__",
        "__firstlineno__",
        "__static_attributes__",
        "__orig_bases__",
        "__parameters__",
    ]
)
_CODE_TYPES = (types.FunctionType, staticmethod, classmethod, property)


def _fp_class(cls: type, path: tuple, depth: int) -> list:
    """A class's data (not its methods: they are code, keyed when they run)."""
    if not is_user_object(cls):
        return ["type", _qualname(cls)]
    if issubclass(cls, enum.Enum):
        return ["enum-class", _qualname(cls), [[m.name, _fp(m.value, path, depth)] for m in cls]]
    attrs = []
    for name, value in vars(cls).items():
        if name in _CLASS_SKIP or isinstance(value, _CODE_TYPES):
            continue
        if _is_metaflow_object(value):
            continue  # Parameters and Configs are inputs of the run: keyed as inputs
        attrs.append([name, _fp(value, path, depth)])
    bases = [_qualname(b) for b in cls.__bases__]
    return ["class", _qualname(cls), bases, sorted(attrs, key=canonical_json)]


def _is_metaflow_object(value) -> bool:
    module = getattr(type(value), "__module__", "") or ""
    return module.split(".")[0] in _INFRA_PACKAGES


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


def _display_path(path: str, flow_dir: str) -> str:
    real = os.path.realpath(path)
    base = os.path.realpath(flow_dir)
    if _inside(real, base):
        return os.path.relpath(real, base).replace(os.sep, "/")
    return real


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
        wrapped = _wrapped_of(value) if not isinstance(value, type) else None
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
            callable(member) and _wrapped_of(member) is not None
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
        by_file[_module_info(name, module)[1]] = module
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
            if is_installed_file(real) or _is_infra_file(real):
                continue
            if not os.path.exists(real):
                continue
            deps["source:%s" % _display_path(real, ctx.flow_dir)] = ""
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
            deps["source:%s" % _display_path(real, ctx.flow_dir)] = ""
    for module, code_names in globals_read:
        _global_deps(module, code_names, modules, deps, 0)
    _flow_attribute_deps(ctx.flow_class, names, deps)
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
    values = current_values(deps, ctx)
    for dep in modified_during_run:
        values[dep] = "modified while the step ran %s" % os.urandom(8).hex()
    return values, names


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


def _is_infra_file(real: str) -> bool:
    for name in _INFRA_PACKAGES:
        module = sys.modules.get(name)
        for base in getattr(module, "__path__", None) or ():
            if _inside(real, os.path.realpath(base)):
                return True
    return False


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
        if isinstance(value, types.FunctionType) or _is_flow_class(value):
            continue  # code: a dependency when (and as) it runs
        if _is_metaflow_object(value):
            continue  # `current` and the like: the run's context, not the user's state
        if isinstance(value, type) and not is_user_object(value):
            continue
        if callable(value) and not isinstance(value, (type, functools.partial)):
            if not is_user_object(type(value)) and _wrapped_of(value) is None:
                continue  # an installed callable (a builtin, a numpy ufunc)
        deps["global:%s:%s" % (module.__name__, name)] = ""


def _is_flow_class(value) -> bool:
    flowspec = sys.modules.get("metaflow.flowspec")
    return isinstance(value, type) and flowspec is not None and issubclass(value, flowspec.FlowSpec)


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
        if not found or isinstance(value, _CODE_TYPES) or _is_metaflow_object(value):
            continue
        deps["flowattr:%s" % name] = ""


def _file_deps(recording, ctx, deps, modified_during_run):
    if not (recording.files_read or recording.dirs_listed or recording.commands):
        return
    private = tuple(os.path.realpath(p) for p in ctx.private_roots if p)
    # source files of loaded modules are code (observed as code, not as files)
    module_files = {
        f for m in list(sys.modules.values()) for f in [getattr(m, "__file__", None)] if f
    }

    def wanted(path):
        real = os.path.realpath(path)
        if any(_inside(real, d) for d in _SKIPPED_DIRS):
            return None
        if path in module_files or real in module_files:
            return None
        if is_installed_file(real) or _is_infra_file(real):
            return None
        if any(_inside(real, p) for p in private):
            return None
        parts = real.split(os.sep)
        if real.endswith((".pyc", ".pyo")) or "__pycache__" in parts:
            return None
        if any(part.startswith(_METAFLOW_TEMP_PREFIXES) for part in parts):
            return None  # Metaflow's own downloads (S3 client temp folders)
        return real

    written = {os.path.realpath(p) for p in recording.files_written}
    for path, signature in sorted(recording.files_read.items()):
        real = wanted(path)
        if real is None or os.path.isdir(real):
            continue
        if real in written and signature is None:
            continue  # created by the step: an output, not an input
        dep = "file:%s" % _display_path(real, ctx.flow_dir)
        deps[dep] = ""
        if signature is not None and signature != stat_signature(real):
            # rewritten after the step read it: what it read is gone, so the
            # entry can never be verified (a miss, never a stale hit)
            modified_during_run.add(dep)
    for path in sorted(recording.dirs_listed):
        real = wanted(path)
        if real is not None and real not in written:
            deps["dir:%s" % _display_path(real, ctx.flow_dir)] = ""
    for argv in recording.commands:
        deps["command:%s" % digest_json(argv)] = ""
        for arg in argv:
            if not isinstance(arg, str) or not arg or arg.startswith("-"):
                continue
            candidate = os.path.abspath(arg)
            if os.path.isfile(candidate):
                real = wanted(candidate)
                if real is not None and real not in written:
                    deps["file:%s" % _display_path(real, ctx.flow_dir)] = ""


# -- current values --------------------------------------------------------------


_PROCESS_STABLE = ("code:", "global:", "flowattr:", "source:")


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
    except Exception as err:  # a dependency we cannot evaluate never matches
        return "unavailable: %s" % type(err).__name__
    return "unknown dependency"


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


def source_digest(path: str) -> str:
    """A whole source file, without comments or formatting."""
    if not os.path.isfile(path):
        return "missing"
    with open(path, "rb") as f:
        data = f.read()
    try:
        return digest_json(ast.dump(ast.parse(data), include_attributes=False))
    except SyntaxError:
        return xxhash.xxh3_128_hexdigest(data)


_STAT_CACHE_VERSION = 1


def _stat_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "metaflow-memoize", "file-digests")


def file_digest(path: str) -> str:
    """Content digest of a file, with a stat-keyed memo on disk so that an
    unchanged large file is hashed once, not at every lookup."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    real = os.path.realpath(path)
    stamp = "%d %d %d %d %d" % (
        _STAT_CACHE_VERSION,
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
        st.st_ctime_ns,
    )
    memo = os.path.join(_stat_cache_dir(), xxhash.xxh3_64_hexdigest(real.encode()))
    # a file modified within the last 2 s may change again within the same
    # mtime tick: never trust a memo for it
    fresh = (st.st_mtime_ns / 1e9) > (time.time() - 2.0)
    if not fresh:
        try:
            with open(memo, encoding="utf-8") as f:
                saved_stamp, saved_path, digest = f.read().split("\n")[:3]
            if saved_stamp == stamp and saved_path == real:
                return digest
        except (OSError, ValueError):
            pass
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if not fresh:
        try:
            os.makedirs(os.path.dirname(memo), exist_ok=True)
            # per thread too: the orchestrator checks tasks side by side
            tmp = "%s.%d.%d.tmp" % (memo, os.getpid(), threading.get_ident())
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("%s\n%s\n%s\n" % (stamp, real, digest))
            os.replace(tmp, memo)
        except OSError:
            pass  # the memo is an optimisation only
    return digest


# -- verification and reasons ------------------------------------------------------


def verify(recorded: Mapping[str, str], ctx: DepContext) -> tuple[list[str], dict[str, str]]:
    """(reasons the recorded dependencies no longer hold, their current values)."""
    current = current_values(recorded, ctx)
    changed = [
        dep
        for dep in sorted(recorded)
        if dep.startswith("incomplete:") or current[dep] != recorded[dep]
    ]
    joins = len(ctx.input_ids) if changed else 0
    return describe_changes(changed, recorded, current, joins), current


def describe_changes(
    changed: Iterable[str], old: Mapping[str, str], new: Mapping[str, str], join_inputs: int = 0
) -> list[str]:
    """One reason per changed dependency, except a join's inputs: one reason per
    artifact name, with how many of its ``join_inputs`` inputs changed it
    (``input 'model' changed in 4 of 5 inputs``), not one line per input."""
    reasons: list[str] = []
    per_name: dict[str, list[str]] = {}
    for dep in changed:
        kind, _, rest = dep.partition(":")
        if kind == "input" and join_inputs > 1 and new.get(dep) != "absent input":
            per_name.setdefault(rest.rpartition(":")[2], []).append(dep)
            continue
        reasons.append(describe_change(dep, old.get(dep, "absent"), new.get(dep, "absent")))
    for name, deps in sorted(per_name.items()):
        if len(deps) == 1:
            dep = deps[0]
            reasons.append(describe_change(dep, old.get(dep, "absent"), new.get(dep, "absent")))
        elif name == "*":
            reasons.append(
                "an artifact changed in %d of %d inputs (merged by the step)"
                % (len(deps), join_inputs)
            )
        else:
            gone = all(new.get(d) in ("absent", "missing") for d in deps)
            reasons.append(
                "input '%s' %s in %d of %d inputs (read by the step)"
                % (name, "removed" if gone else "changed", len(deps), join_inputs)
            )
    return reasons


def changed_input_names(changed: Iterable[str]) -> list[str]:
    """The input artifacts among changed dependency ids (for the causes of a miss)."""
    names = set()
    for dep in changed:
        kind, _, rest = dep.partition(":")
        if kind == "artifact" and rest != "*":
            names.add(rest)
        elif kind == "input":
            name = rest.rpartition(":")[2]
            if name != "*":
                names.add(name)
    return sorted(names)


def variant_key(static_key: str, values: Mapping[str, str]) -> str:
    """Where the entry for this static key and these dependency values lives,
    when the first entry of the static key recorded other values."""
    return digest_json({"static": static_key, "deps": dict(values), "format": DEPS_FORMAT})


def describe_change(dep: str, old: str, new: str) -> str:
    kind, _, rest = dep.partition(":")
    gone = new in ("absent", "missing")
    if kind == "incomplete":
        return "the code the step ran could not be recorded (%s)" % rest
    if kind == "code":
        module, _, name = rest.partition(":")
        where = name if module == "__main__" else "%s.%s" % (module, name)
        return "helper `%s` %s (observed)" % (where, "removed" if gone else "changed")
    if kind == "global":
        module, _, name = rest.partition(":")
        where = name if module == "__main__" else "%s.%s" % (module, name)
        return "global `%s` %s (observed)" % (where, "removed" if gone else "changed")
    if kind == "flowattr":
        return "class attribute `%s` changed (observed)" % rest
    if kind == "file":
        return "file %s %s" % (rest, "is missing" if gone else "changed")
    if kind == "dir":
        return "directory listing %s changed" % rest
    if kind == "source":
        return "source file %s changed" % rest
    if kind == "task":
        return "foreach position changed (the step reads self.%s)" % rest
    if kind == "input":
        iid, _, name = rest.rpartition(":")
        source = iid.replace("/-", "").replace("/", "[") + ("]" if not iid.endswith("/-") else "")
        if name == "*":
            return "an artifact of input %s changed (merged by the step)" % source
        if new == "absent input":
            return "input %s is gone" % source
        return "input '%s' of %s %s (read by the step)" % (
            name,
            source,
            "removed" if gone else "changed",
        )
    if kind == "artifact" and rest == "*":
        return "an input artifact changed (the step enumerated them)"
    if kind == "artifact":
        if gone:
            return "input '%s' removed (read by the step)" % rest
        return "input '%s' changed (read by the step)" % rest
    return "dependency %s changed" % dep


def diff_observed(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """Reasons between two entries' recorded dependencies (for explain)."""
    # a dependency not used any more is not a reason by itself
    changed = [dep for dep in sorted(new) if old.get(dep) != new[dep]]
    joins = {dep.partition(":")[2].rpartition(":")[0] for dep in new if dep.startswith("input:")}
    return describe_changes(changed, old, new, len(joins))
