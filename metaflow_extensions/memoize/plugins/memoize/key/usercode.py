"""What is the user's code: the one decision every recorder and fingerprint asks.

User code is every module whose file is not inside the Python installation or
an installed-packages directory (decided on resolved paths, component by
component), other than Metaflow and its extensions. (coverage.py's
``inorout.py`` plays the same part there.)
"""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig
import types
from typing import Any

_INFRA_PACKAGES = ("metaflow", "metaflow_extensions")


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


def inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


@functools.lru_cache(maxsize=4096)
def is_installed_file(path: str) -> bool:
    """Whether a (resolved) path is part of the Python installation or installed packages."""
    real = os.path.realpath(path)
    return any(inside(real, root) for root in installed_roots())


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


def module_info(name: str, module) -> tuple[bool, str | None]:
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
        if module_info(name, module)[0]:
            seen[id(module)] = name
            out[name] = module
    return out


def is_user_object(value) -> bool:
    """Whether a class or function was defined in the user's code."""
    module = sys.modules.get(getattr(value, "__module__", None) or "")
    return module is not None and module_info(module.__name__, module)[0]


def is_metaflow_object(value) -> bool:
    module = getattr(type(value), "__module__", "") or ""
    return module.split(".")[0] in _INFRA_PACKAGES


def is_flow_instance(value) -> bool:
    flowspec = sys.modules.get("metaflow.flowspec")
    return flowspec is not None and isinstance(value, flowspec.FlowSpec)


def is_flow_class(value) -> bool:
    flowspec = sys.modules.get("metaflow.flowspec")
    return isinstance(value, type) and flowspec is not None and issubclass(value, flowspec.FlowSpec)


def is_infra_file(real: str) -> bool:
    for name in _INFRA_PACKAGES:
        module = sys.modules.get(name)
        for base in getattr(module, "__path__", None) or ():
            if inside(real, os.path.realpath(base)):
                return True
    return False


def named_display(path: str, flow_dir: str) -> str:
    """A path as the program named it, relative to the flow's folder when inside
    it (a moved checkout keeps its entries), symlinks not resolved."""
    absolute = os.path.abspath(path)
    for base in (os.path.abspath(flow_dir), os.path.realpath(flow_dir)):
        if inside(absolute, base):
            return os.path.relpath(absolute, base).replace(os.sep, "/")
    return absolute
