"""Code identity: what of the user's code a step's result depends on.

The step body's source is normalized through the AST, so comments, blank lines,
docstrings and decorators do not count while any change to code does. Helpers
(functions and classes defined in the flow's own source files, not installed
packages) that the step uses are followed transitively, and module-level
constants it reads are included by value.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
import textwrap
import types
from typing import Any, NamedTuple

from .components import canonical_json, digest_bytes


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]


def normalized_source(obj: Any) -> str:
    """AST dump of obj's source without comments, docstrings, positions or decorators."""
    source = textwrap.dedent(inspect.getsource(obj))
    tree = ast.parse(source)
    _strip_docstrings(tree)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            # @memoize(ttl=...) and other decorators are not the step's code:
            # key-relevant decorator arguments enter the key separately.
            node.decorator_list = []
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _is_user_file(path: str | None, user_roots) -> bool:
    """Whether a file is the user's: inside one of ``user_roots`` (compared on
    resolved paths, component by component) and not installed code."""
    if not path:
        return False
    from .usercode import is_installed_file

    real = os.path.realpath(path)
    if is_installed_file(real):
        return False
    for root in user_roots:
        root = os.path.realpath(root)
        try:
            if os.path.commonpath([real, root]) == root:
                return True
        except ValueError:
            continue
    return False


def _parse(obj) -> ast.Module | None:
    """The AST of obj's source, None when the source cannot be read."""
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        return None


def _referenced_globals(fn_or_cls) -> set[str]:
    tree = _parse(fn_or_cls)
    if tree is None:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            # module.attr chains: record "module.attr" so we can follow user modules
            base = node
            parts = []
            while isinstance(base, ast.Attribute):
                parts.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                parts.append(base.id)
                names.add("%s.%s" % (parts[-1], parts[-2]))
    return names


class _SelfUsage(NamedTuple):
    attributes: frozenset  # every NAME used as self.NAME
    assigned: frozenset  # NAMEs assigned, augmented or deleted as self.NAME
    bare: bool  # `self` used other than as `self.NAME` (passed to a helper, getattr)


@functools.cache
def _self_usage(fn) -> _SelfUsage | None:
    """How a method uses ``self``; None when its source cannot be read."""
    tree = _parse(fn)
    if tree is None:
        return None
    func = tree.body[0]
    args = getattr(func, "args", None)
    self_name = args.args[0].arg if args and args.args else "self"
    attributes, assigned, bases = set(), set(), set()
    for node in ast.walk(func):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == self_name
        ):
            bases.add(id(node.value))
            attributes.add(node.attr)
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                assigned.add(node.attr)
    bare = any(
        isinstance(node, ast.Name) and node.id == self_name and id(node) not in bases
        for node in ast.walk(func)
    )
    return _SelfUsage(frozenset(attributes), frozenset(assigned), bare)


def _self_attributes(fn) -> set[str]:
    """Names used as ``self.NAME`` in a method (to follow non-step methods of the flow)."""
    usage = _self_usage(fn)
    return set(usage.attributes) if usage else set()


def code_components(
    step_func, flow_class, flow_file: str | None, follow: bool = False
) -> dict[str, str]:
    """{component name: digest} for the step (and, with ``follow``, what it uses).

    ``step`` is the step body. The static key stops there: what the step calls
    and reads is observed while it runs (deps.py) and verified before a hit,
    which sees through methods, closures, decorators and imports where reading
    the source cannot. ``follow`` (for ``depends_on=`` functions) adds
    ``helper:NAME`` for functions and classes from the user's files that the
    source names, transitively, and ``const:NAME`` for module constants.
    """
    user_roots = set()
    if flow_file:
        user_roots.add(os.path.dirname(os.path.realpath(flow_file)))
    components = {"step": digest_bytes(normalized_source(step_func).encode())}
    if not follow:
        return components
    fn = getattr(step_func, "__func__", step_func)
    module_globals = getattr(fn, "__globals__", {})
    seen: set[int] = {id(fn)}
    queue = [(fn, module_globals)]
    for attr in sorted(_self_attributes(fn)):
        method = flow_class.__dict__.get(attr) if flow_class is not None else None
        if isinstance(method, types.FunctionType) and not getattr(method, "is_step", False):
            _add_object(
                "%s.%s" % (flow_class.__name__, attr), method, components, queue, seen, user_roots
            )
    while queue:
        obj, globs = queue.pop()
        for ref in sorted(_referenced_globals(obj)):
            head, _, attr = ref.partition(".")
            if head not in globs:
                continue
            value = globs[head]
            if isinstance(value, types.ModuleType):
                if attr and _is_user_file(getattr(value, "__file__", None), user_roots):
                    target = getattr(value, attr, None)
                    name = "%s.%s" % (value.__name__, attr)
                    _add_object(name, target, components, queue, seen, user_roots)
                continue
            if attr:
                continue  # handled through the plain name
            _add_object(head, value, components, queue, seen, user_roots)
    return components


def _add_object(name, value, components, queue, seen, user_roots):
    if value is None or id(value) in seen:
        return
    if isinstance(value, type) and issubclass(value, _flowspec_class()):
        return  # the flow class itself: its steps have keys of their own
    if isinstance(value, (types.FunctionType, type)):
        module = sys.modules.get(getattr(value, "__module__", "") or "")
        path = getattr(module, "__file__", None)
        if not _is_user_file(path, user_roots):
            return  # installed code: covered by package versions, not by source
        seen.add(id(value))
        try:
            components["helper:%s" % name] = digest_bytes(normalized_source(value).encode())
        except (OSError, TypeError, SyntaxError):
            components["helper:%s" % name] = "unavailable"
            return
        globs = getattr(value, "__globals__", None) or getattr(module, "__dict__", {})
        queue.append((value, globs))
        return
    if isinstance(value, types.ModuleType):
        return
    from .fingerprint import fingerprint

    components["const:%s" % name] = fingerprint(value)


def _flowspec_class():
    from metaflow import FlowSpec

    return FlowSpec


def reads_attribute(step_func, attribute: str) -> bool:
    """Whether the step's code may read ``self.<attribute>``.

    Conservative: passing ``self`` anywhere (``helper(self)``, ``getattr(self, x)``)
    or unreadable source counts as reading everything.
    """
    usage = _self_usage(step_func)
    return usage is None or usage.bare or attribute in usage.attributes


def _hash_path(path: str) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    if os.path.isdir(path):
        visited = set()
        # symlinked folders are followed (their content is part of the dependency)
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in visited:
                dirnames[:] = []
                continue
            visited.add(real)
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                h.update(rel.encode() + b"\0")
                _hash_file_into(h, full)
                h.update(b"\0")
    else:
        _hash_file_into(h, path)
    return h.hexdigest()


def _hash_file_into(h, path: str) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)


def dependency_components(depends_on, flow_dir: str) -> dict[str, str]:
    """{"depends_on:NAME": digest} for the decorator's ``depends_on`` items."""
    out = {}
    for item in depends_on:
        if isinstance(item, str):
            path = item if os.path.isabs(item) else os.path.join(flow_dir, item)
            if not os.path.exists(path):
                out["depends_on:%s" % item] = "missing"
            else:
                out["depends_on:%s" % item] = _hash_path(path)
        elif isinstance(item, types.ModuleType):
            package_dirs = list(getattr(item, "__path__", None) or [])
            if package_dirs:  # a package: every file in it, submodules included
                digest = digest_bytes("\0".join(_hash_path(d) for d in package_dirs).encode())
            elif getattr(item, "__file__", None) and os.path.isfile(item.__file__):
                digest = _hash_path(item.__file__)
            else:
                digest = digest_bytes(repr(item.__name__).encode())
            out["depends_on:module %s" % item.__name__] = digest
        else:
            name = "%s.%s" % (item.__module__, item.__qualname__)
            module = sys.modules.get(item.__module__)
            source_file = getattr(module, "__file__", None) or flow_dir
            try:
                # the function and what it calls from the user's files
                followed = code_components(item, None, source_file, follow=True)
                out["depends_on:%s" % name] = digest_bytes(canonical_json(followed).encode())
            except (OSError, TypeError, SyntaxError):
                out["depends_on:%s" % name] = "unavailable"
    return out


def step_attribute_usage(step_func, flow_class) -> tuple[set[str], set[str]] | None:
    """(names assigned, names mentioned) as ``self.NAME`` by a step and by the
    methods of the user's flow classes it reaches through ``self.NAME``, transitively.

    None when it cannot be known (``self`` is passed somewhere, a source cannot
    be read): then any name may be set. Metaflow's own methods (``self.next``)
    set no artifacts of the user's and are not followed.
    """
    assigned: set[str] = set()
    mentioned: set[str] = set()
    queue, seen = [step_func], set()
    while queue:
        fn = queue.pop()
        fn = getattr(fn, "__func__", fn)
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        usage = _self_usage(fn)
        if usage is None or usage.bare:
            return None
        assigned |= usage.assigned
        mentioned |= usage.attributes
        for attr in usage.attributes:
            queue.extend(_user_methods(flow_class, attr))
    return assigned, mentioned


def _user_methods(flow_class, attr) -> list:
    """The functions behind ``self.attr`` when it is a method or property that the
    user's code defines (not a step, not Metaflow's own)."""
    for owner in getattr(flow_class, "__mro__", ()):
        if attr not in owner.__dict__:
            continue
        if owner.__module__.split(".")[0] == "metaflow":
            return []
        member = owner.__dict__[attr]
        if isinstance(member, property):
            return [f for f in (member.fget, member.fset, member.fdel) if f is not None]
        if isinstance(member, types.FunctionType) and not getattr(member, "is_step", False):
            return [member]
        return []
    return []


def assigned_attributes(step_func) -> set[str] | None:
    """Names the step assigns as ``self.NAME = ...`` (or augments, deletes).

    None when it cannot be known: ``self`` is passed somewhere (a helper may set
    anything) or the source is unavailable. In-place mutation (self.x.append(...))
    changes the content hash, so it is caught by comparing hashes; only
    same-value assignment needs this list.
    """
    usage = _self_usage(step_func)
    if usage is None or usage.bare:
        return None
    return set(usage.assigned)
