"""Decorator arguments: parsing and validation (pure, no Metaflow objects).

`--with memoize:ttl=7d` passes strings, so every argument accepts its string form.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
import sys
import types
from typing import Any

from .cache.audit import parse_fraction
from .cache.stores import ROOT_URL_FORMS, missing_library, root_url_problem
from .durations import parse_duration
from .exceptions import MemoizeArgumentError

ARGUMENTS = {
    "ttl": "None, seconds, or a duration such as '90s', '30m', '12h', '7d', '2w'",
    "version": "a string mixed into the key",
    "inputs": "a list of artifact names",
    "ignore": "a list of artifact names",
    "outputs": "a list of artifact names",
    "refresh": "True or False",
    "store": "a local directory or s3://bucket/prefix",
    "depends_on": "a list of functions, modules, or file/directory paths",
    "env": "a list of installed package names",
    "lock": "True or False",
    "audit": "a fraction of hits, from 0 to 1, whose body runs anyway to check the entry",
}


def _as_list(step, name, value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(";", " ").replace(",", " ").split() if p]
        return parts
    if isinstance(value, (list, tuple, set, frozenset)):
        out = []
        for v in value:
            if not isinstance(v, str):
                raise MemoizeArgumentError(
                    step, name, "contains %r, which is not a name" % (v,), "Use a list of strings."
                )
            out.append(v)
        return sorted(out) if isinstance(value, (set, frozenset)) else out
    raise MemoizeArgumentError(
        step, name, "is %r" % (value,), "Use a list of names, e.g. %s=['a', 'b']." % name
    )


def _as_bool(step, name, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    if value is None:
        return False
    raise MemoizeArgumentError(step, name, "is %r" % (value,), "Use True or False.")


def _as_fraction(step, name, value) -> float | None:
    if value is None:
        return None
    fraction = parse_fraction(value)
    if fraction is None:
        raise MemoizeArgumentError(
            step, name, "is %r" % (value,), "Use a number from 0 to 1, e.g. %s=0.05." % name
        )
    return fraction


def parse_arguments(step: str, attributes: dict[str, Any], flow_dir: str) -> dict[str, Any]:
    """Validated, normalized decorator arguments. Raises MemoizeArgumentError."""
    a = attributes
    try:
        ttl = parse_duration(a.get("ttl"))
    except ValueError as err:
        raise MemoizeArgumentError(
            step, "ttl", "is invalid (%s)" % err, "Example: @memoize(ttl='7d')."
        )
    if ttl is not None and (not math.isfinite(ttl) or ttl <= 0):
        raise MemoizeArgumentError(step, "ttl", "must be positive", "Example: ttl='12h'.")
    version = a.get("version")
    if version is not None and not isinstance(version, (str, int)):
        raise MemoizeArgumentError(step, "version", "is %r" % (version,), "Use a string.")
    store = a.get("store")
    if store is not None and (not isinstance(store, str) or not store.strip()):
        raise MemoizeArgumentError(step, "store", "is %r" % (store,), "Use %s." % ROOT_URL_FORMS)
    problem = None if store is None else root_url_problem(store)
    if problem is not None:
        install = missing_library(store)
        raise MemoizeArgumentError(
            step,
            "store",
            "%r %s" % (store, problem),
            "Install it, or use another root."
            if install
            else "Use s3://bucket/prefix for S3 (e.g. store='s3://team-cache/memoize'), "
            "gs://bucket/prefix for GCS, azure://container/prefix for Azure, "
            "or a directory path.",
        )
    parsed = {
        "ttl": ttl,
        "version": None if version is None else str(version),
        "inputs": _as_list(step, "inputs", a.get("inputs")),
        "ignore": _as_list(step, "ignore", a.get("ignore")) or [],
        "outputs": _as_list(step, "outputs", a.get("outputs")),
        "refresh": _as_bool(step, "refresh", a.get("refresh")),
        "store": store,
        "env": _as_list(step, "env", a.get("env")) or [],
        "lock": _as_bool(step, "lock", a.get("lock")),
        "audit": _as_fraction(step, "audit", a.get("audit")),
        "depends_on": _parse_depends_on(step, a.get("depends_on"), flow_dir),
    }
    for name in parsed["env"]:
        if package_version(name) is None:
            raise MemoizeArgumentError(
                step,
                "env",
                "names %r, which is not installed in this Python environment (%s)"
                % (name, sys.executable),
                _missing_package_fix(name),
            )
    return parsed


def _missing_package_fix(name: str) -> str:
    """The fix for ``env=[name]`` when ``name`` is not installed: the installed
    distribution it most likely misspells, else installing it or dropping it."""
    close = _closest_installed(name)
    if close is not None:
        return "Did you mean %r? Use env=[%r]." % (close, close)
    return (
        "Install it there (%s -m pip install %s), or remove %r from env=: the packages "
        "of @pypi and @conda steps are in the key already." % (sys.executable, name, name)
    )


def _normalized_distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closest_installed(name: str) -> str | None:
    try:
        from importlib import metadata

        installed = {
            _normalized_distribution(d.metadata["Name"]): d.metadata["Name"]
            for d in metadata.distributions()
            if d.metadata["Name"]
        }
    except Exception:
        return None
    match = difflib.get_close_matches(
        _normalized_distribution(name), sorted(installed), n=1, cutoff=0.8
    )
    return installed[match[0]] if match else None


def _parse_depends_on(step, value, flow_dir) -> list[Any]:
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, str):
        items = [p for p in value.replace(";", " ").replace(",", " ").split() if p]
    out = []
    for item in items:
        if isinstance(item, (types.FunctionType, type, types.ModuleType)):
            out.append(item)
        elif isinstance(item, str):
            path = item if os.path.isabs(item) else os.path.join(flow_dir, item)
            if not os.path.exists(path):
                raise MemoizeArgumentError(
                    step,
                    "depends_on",
                    "names %r, which does not exist" % item,
                    "Give a path relative to the flow file (%s) or an absolute path." % flow_dir,
                )
            out.append(item)
        else:
            raise MemoizeArgumentError(
                step,
                "depends_on",
                "contains %r" % (item,),
                "Use functions, modules, or file/directory paths.",
            )
    return out


def package_version(name: str) -> str | None:
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:
        try:
            return getattr(importlib.import_module(name), "__version__", None)
        except Exception:
            return None
