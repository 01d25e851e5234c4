"""Fingerprints: digests of values and code that equal values share across processes."""

from __future__ import annotations

import datetime
import decimal
import dis
import enum
import fractions
import functools
import os
import pathlib
import pickle
import re
import types
import uuid
from typing import Any

import xxhash

from .components import canonical_json, digest_json
from .usercode import is_flow_instance, is_metaflow_object, is_user_object

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
#: containers larger than this are fingerprinted through pickle (one C call)
LARGE = 2000
_MAX_DEPTH = 200

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
        if len(value) > LARGE and _pickles_stably(value):
            return [kind.__name__, _pickled(value)]
        return [kind.__name__, [_fp(v, path, depth) for v in value]]
    if isinstance(value, (set, frozenset)):
        return [kind.__name__, sorted(canonical_json(_fp(v, path, depth)) for v in value)]
    if isinstance(value, dict):
        if len(value) > LARGE and _pickles_stably(value.keys()) and _pickles_stably(value.values()):
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
    if is_flow_instance(value):
        return ["flow"]
    if isinstance(value, _VALUE_REPR_TYPES):
        return [_qualname(kind), repr(value)]
    if isinstance(value, re.Pattern):
        return ["re", _fp(value.pattern, path, depth), value.flags]
    wrapped = wrapped_of(value)
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


def wrapped_of(value):
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


#: element types whose pickle is the same in every process (a set of strings
#: is not: its order follows the per-process hash seed)
_STABLE_PICKLE = frozenset([type(None), bool, int, float, str, bytes, complex])


def _pickles_stably(values) -> bool:
    """Whether a large container may be fingerprinted through one pickle: only
    when every element is a plain scalar; else element by element."""
    return all(type(v) in _STABLE_PICKLE for v in values)


_CLASS_SKIP = frozenset(
    [
        # caches and data derived from the rest of the class, rebuilt in each
        # process with ids of their own (pydantic's schema, ABC registries)
        "__pydantic_core_schema__",
        "__pydantic_serializer__",
        "__pydantic_validator__",
        "__pydantic_setattr_handlers__",
        "_abc_impl",
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
CODE_TYPES = (types.FunctionType, staticmethod, classmethod, property)


def _fp_class(cls: type, path: tuple, depth: int) -> list:
    """A class's data (not its methods: they are code, keyed when they run)."""
    if not is_user_object(cls):
        return ["type", _qualname(cls)]
    if issubclass(cls, enum.Enum):
        return ["enum-class", _qualname(cls), [[m.name, _fp(m.value, path, depth)] for m in cls]]
    attrs = []
    for name, value in vars(cls).items():
        if name in _CLASS_SKIP or isinstance(value, CODE_TYPES):
            continue
        if is_metaflow_object(value):
            continue  # Parameters and Configs are inputs of the run: keyed as inputs
        attrs.append([name, _fp(value, path, depth)])
    bases = [_qualname(b) for b in cls.__bases__]
    return ["class", _qualname(cls), bases, sorted(attrs, key=canonical_json)]
