"""Settings. Each has one name, METAFLOW_MEMOIZE_*, read through Metaflow's
configuration mechanism (environment, then Metaflow config files).

Values are read when asked for, not at import: `--memoize-refresh` sets an
environment variable in the orchestrator after this module is imported.
"""

from __future__ import annotations

import os
import re

from metaflow.metaflow_config_funcs import from_conf

MODES = ("on", "off", "read", "refresh")
DEFAULT_ROOT_NAME = "memoize-cache"  # not a valid Python class name: no flow can collide

ENV_ROOT = "METAFLOW_MEMOIZE_ROOT"
ENV_MODE = "METAFLOW_MEMOIZE_MODE"
ENV_REFRESH = "METAFLOW_MEMOIZE_REFRESH"
ENV_STRICT = "METAFLOW_MEMOIZE_STRICT"
ENV_SIGNING_KEY = "METAFLOW_MEMOIZE_SIGNING_KEY"
ENV_LOCK_LEASE = "METAFLOW_MEMOIZE_LOCK_LEASE"
ENV_LINK = "METAFLOW_MEMOIZE_LINK"
ENV_CLONE = "METAFLOW_MEMOIZE_CLONE"
ENV_AUDIT = "METAFLOW_MEMOIZE_AUDIT"
ENV_CARD = "METAFLOW_MEMOIZE_CARD"

_TRUE = ("1", "true", "yes", "on", "all", "*")
_FALSE = ("", "0", "false", "no", "off", "none")


def _conf(name: str) -> str | None:
    value = from_conf(name)
    return None if value is None else str(value)


def cache_root_setting() -> str | None:
    return _conf("MEMOIZE_ROOT") or None


def mode() -> str:
    value = (_conf("MEMOIZE_MODE") or "on").strip().lower()
    if value not in MODES:
        from .exceptions import MemoizeException

        raise MemoizeException(
            "%s=%r is not a mode: use one of %s" % (ENV_MODE, value, ", ".join(MODES))
        )
    return value


def refresh_request() -> tuple[bool, frozenset[str]]:
    """(refresh every memoized step, the set of step names to refresh)."""
    value = (_conf("MEMOIZE_REFRESH") or "").strip()
    if value.lower() in _FALSE:
        return False, frozenset()
    if value.lower() in _TRUE:
        return True, frozenset()
    return False, frozenset(s.strip() for s in value.split(",") if s.strip())


def strict() -> bool:
    return (_conf("MEMOIZE_STRICT") or "").strip().lower() in _TRUE


def signing_key() -> str | None:
    return _conf("MEMOIZE_SIGNING_KEY") or None


def lock_lease_seconds() -> float:
    """Seconds, or a duration such as "10m"."""
    from .durations import parse_duration

    value = _conf("MEMOIZE_LOCK_LEASE")
    try:
        seconds = parse_duration(value) if value else 600.0
    except ValueError as err:
        from .exceptions import MemoizeException

        raise MemoizeException("%s: %s" % (ENV_LOCK_LEASE, err))
    return max(seconds, 1.0)


def default_root(datastore_type: str, datastore_root: str | None) -> str:
    """The cache root when none is configured: a prefix under the datastore root.

    ``datastore_root`` is Metaflow's: ``METAFLOW_DATASTORE_SYSROOT_S3`` (s3://...),
    ``_GS`` (gs://...), ``_AZURE`` (``container/prefix``, with no scheme: the
    cache root gets azure://) or a local directory."""
    if datastore_root:
        root = datastore_root.rstrip("/")
        if datastore_type == "azure" and "://" not in root:
            root = "azure://" + root
        if datastore_type in ("s3", "gs", "azure") or re.match(r"^(s3|gs|azure)://", root):
            return root + "/" + DEFAULT_ROOT_NAME
        return os.path.join(datastore_root, DEFAULT_ROOT_NAME)
    return os.path.join(os.getcwd(), ".metaflow", DEFAULT_ROOT_NAME)


def _on_unless_turned_off(name: str) -> bool:
    value = (_conf(name) or "").strip().lower()
    return not value or value not in _FALSE


def native_record() -> bool:
    """METAFLOW_MEMOIZE_NATIVE_RECORD: record native and child-process file access
    (key/native.py; default: yes)."""
    return _on_unless_turned_off("MEMOIZE_NATIVE_RECORD")


def link_blobs() -> bool:
    """Whether a local cache may hard-link blobs into a local datastore (default: yes)."""
    return _on_unless_turned_off("MEMOIZE_LINK")


def clone_hits() -> bool:
    """Whether the orchestrator may complete a hit by cloning the entry's origin task
    (default: yes)."""
    return _on_unless_turned_off("MEMOIZE_CLONE")


def audit_fraction() -> float:
    """METAFLOW_MEMOIZE_AUDIT: the fraction of hits audited (audit.py); 0 when unset."""
    from .cache.audit import env_fraction

    return env_fraction(_conf("MEMOIZE_AUDIT"))


def card_requested() -> bool:
    """METAFLOW_MEMOIZE_CARD (or `run --memoize-card`): add the memoize card to the
    run's end step (card/attach.py); off when unset."""
    return (_conf("MEMOIZE_CARD") or "").strip().lower() in _TRUE
