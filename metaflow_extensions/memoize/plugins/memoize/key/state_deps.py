"""Dependencies on state the body finds rather than makes: module state as it was
when the body started, state set at import by module-level code, attributes of
user classes reached through objects, and modules that can only be found where
the body put them on ``sys.path``.

Dependency ids (see deps.py for the others):

  classattr:<module>:<Class>.<name>  a class attribute, ClassVar or dataclass /
                                     pydantic field default of a user class,
                                     named by code that ran
  toplevel:<module>                  a user module's top-level statements that
                                     act at import (seeds, registrations, warmed
                                     caches) and the assignments they use
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Mapping

from .components import digest_json
from .fingerprint import CODE_TYPES, fingerprint
from .usercode import (
    is_flow_class,
    is_metaflow_object,
    is_user_object,
    module_info,
    named_display,
)

# -- class attributes reached through objects ----------------------------------


def _classes_of(module, module_name: str, depth: int = 0, owner=None, prefix=""):
    space = vars(owner if owner is not None else module)
    for name, value in list(space.items()):
        if not isinstance(value, type) or value.__module__ != module_name:
            continue
        if owner is None and value.__qualname__ != name:
            continue  # an alias or an imported class: found under its own name
        if owner is not None and value.__qualname__ != "%s.%s" % (owner.__qualname__, name):
            continue
        qual = prefix + name
        yield value, qual
        if depth < 3:
            yield from _classes_of(module, module_name, depth + 1, value, qual + ".")


def _members(cls) -> dict:
    """The data a class holds for its instances: its own attributes that are not
    code, and its dataclass and pydantic fields (whose defaults may live
    elsewhere than in its namespace)."""
    space = vars(cls)
    members = {
        name
        for name, value in space.items()
        if not name.startswith("__")
        and not isinstance(value, CODE_TYPES)
        and not isinstance(value, type)
        and not is_metaflow_object(value)
    }
    for table in ("__dataclass_fields__", "__pydantic_fields__"):
        fields = space.get(table)
        if isinstance(fields, Mapping):
            members.update(n for n in fields if isinstance(n, str))
    return members


def class_attribute_deps(modules: Mapping[str, types.ModuleType], names: set, deps: dict) -> None:
    """Every attribute of a user class that code which ran names: an instance
    method reading ``self.SCALE``, an artifact's or a foreach item's class."""
    for module_name, module in sorted(modules.items()):
        for cls, qual in _classes_of(module, module_name):
            if is_flow_class(cls) or not is_user_object(cls):
                continue  # the flow's own attributes are flowattr: dependencies
            for name in sorted(_members(cls) & names):
                deps["classattr:%s:%s.%s" % (module_name, qual, name)] = ""


def _class_member_value(cls, name: str) -> str:
    space = vars(cls)
    if name in space and not name.startswith("__"):
        return fingerprint(space[name])
    fields = space.get("__dataclass_fields__") or {}
    if name in fields:
        f = fields[name]
        default = None if f.default is dataclasses.MISSING else f.default
        factory = None if f.default_factory is dataclasses.MISSING else f.default_factory
        return fingerprint(["field", default, factory, repr(f.type)])
    fields = space.get("__pydantic_fields__") or {}
    if name in fields:
        return fingerprint(["pydantic field", repr(fields[name])])
    return "absent"


# -- state set at import ----------------------------------------------------------


def _has_call(node) -> bool:
    return any(isinstance(n, (ast.Call, ast.Await, ast.Yield)) for n in ast.walk(node))


def _loaded_names(node) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _assigned_names(stmt) -> list:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
_toplevel_memo: dict = {}


def toplevel_digest(path: str) -> str:
    """The top-level statements of a source file that act when it is imported
    (calls: ``random.seed(SEED)``, ``DATA = load()``, ``register(...)``) and the
    plain assignments they use (``SEED = 1``); definitions, imports, docstrings
    and assignments nothing at import uses are left out, so editing a function
    or a constant only a function reads does not count here."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
    cached = _toplevel_memo.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    with open(path, "rb") as f:
        source = f.read()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return "unparsable"
    acting, plain = [], {}
    for stmt in tree.body:
        if isinstance(stmt, _DEFINITIONS):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and not _has_call(stmt):
            for name in _assigned_names(stmt):
                plain.setdefault(name, []).append(stmt)
            continue
        acting.append(stmt)
    needed, queue = set(), [n for s in acting for n in _loaded_names(s)]
    while queue:
        name = queue.pop()
        if name in plain and name not in needed:
            needed.add(name)
            queue.extend(n for s in plain[name] for n in _loaded_names(s))
    document = [ast.dump(s, include_attributes=False) for s in acting] + [
        [name, [ast.dump(s, include_attributes=False) for s in plain[name]]]
        for name in sorted(needed)
    ]
    digest = digest_json(document)
    _toplevel_memo[path] = (stamp, digest)
    return digest


def toplevel_deps(modules: Mapping[str, types.ModuleType], deps: dict) -> None:
    """Module-level code of every loaded user module: what it did at import
    (a seed, a warmed cache) is state any step may use without naming it.
    By module name, like code: the flow file is ``__main__`` whatever its file
    is called (NBRunner writes a new one for every run)."""
    for module_name, module in sorted(modules.items()):
        real = module_info(module_name, module)[1]
        if real and isinstance(getattr(module, "__file__", None), str):
            deps["toplevel:%s" % module_name] = ""


def _module_file(module_name: str) -> str | None:
    """The source file of a module, without running it when it is not loaded."""
    module = sys.modules.get(module_name)
    if module is not None:
        path = getattr(module, "__file__", None)
        return path if isinstance(path, str) else None
    spec = importlib.util.find_spec(module_name)
    return spec.origin if spec is not None and spec.has_location else None


# -- module state as the body found it -----------------------------------------------


def values_at_start(recording, deps: Mapping[str, str]) -> dict:
    """Values of ``global:`` dependencies as the body found them (noted by
    namespace.py when it started), not as it left them: a lazy singleton it set,
    a memo dict it filled or a generator it advanced is what a fresh process
    has again before the next hit."""
    state = (recording.at_start or {}).get("state") or {}
    out = {}
    for dep in deps:
        if not dep.startswith("global:"):
            continue
        module_name, _, name = dep[len("global:") :].partition(":")
        entry = state.get((module_name, name))
        if entry is None or name == "__file__":
            continue
        how, value = entry
        try:
            out[dep] = value if how == "fingerprint" else fingerprint(value)
        except Exception:
            continue
    return out


# -- modules only the body could find ------------------------------------------------


def _found_on(module_name: str, real: str, search_path) -> bool:
    parts = module_name.split(".")
    for entry in search_path:
        base = os.path.join(entry, *parts)
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.realpath(candidate) == real:
                return True
    return False


def reachable_by_name(recording, modules, flow_dir: str, deps: dict) -> None:
    """Code and globals of a module the body imported from a folder it put on
    ``sys.path`` cannot be found by name before the next hit: the whole source
    file stands for them."""
    at_start = recording.at_start or {}
    if not at_start:
        return
    loaded, search_path = at_start["modules"], at_start["sys_path"]
    for dep in sorted(deps):
        kind, _, rest = dep.partition(":")
        if kind not in ("code", "global", "classattr", "toplevel"):
            continue
        module_name = rest.partition(":")[0]
        module = modules.get(module_name)
        if module_name in loaded or module is None:
            continue
        real = module_info(module_name, module)[1]
        if real is None or _found_on(module_name, real, search_path):
            continue
        del deps[dep]
        deps["source:%s" % named_display(module.__file__, flow_dir)] = ""


# -- current values ---------------------------------------------------------------


def current_value(kind: str, rest: str) -> str:
    if kind == "toplevel":
        path = _module_file(rest)
        return toplevel_digest(path) if path else "absent"
    module_name, _, qualified = rest.partition(":")
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    owner = module
    *classes, name = qualified.split(".")
    for part in classes:
        owner = vars(owner).get(part)
        if not isinstance(owner, type):
            return "absent"
    return _class_member_value(owner, name)
