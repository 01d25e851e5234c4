"""Audit: run the body of a sample of hits anyway and check it reproduces the entry.

A hit is trusted because its key says nothing that matters changed. An audit
tests that claim in production: for a fraction of hits (``audit=`` on the
decorator, else ``METAFLOW_MEMOIZE_AUDIT``), the task runs the step body
instead of restoring, and compares the artifact hashes it produced with the
entry's. A mismatch (a nondeterministic step, or a key that misses something
the step depends on, or a forged entry) sets the entry aside as *suspect*:
later lookups miss it. The audited task keeps what it computed.

With a fraction of 0 (the default) nothing here runs on the hit path but one
comparison.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping

from ..exceptions import CacheFault, MemoizeException


class AuditSettingError(MemoizeException):
    headline = "Invalid METAFLOW_MEMOIZE_AUDIT"


def parse_fraction(value: Any) -> float | None:
    """A fraction in [0, 1] from a float, an int or a string; None if it is not one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        return None
    if not 0.0 <= fraction <= 1.0:  # also rejects NaN
        return None
    return fraction


def env_fraction(raw: str | None) -> float:
    """METAFLOW_MEMOIZE_AUDIT as a fraction (unset or empty: 0). Raises on a bad value."""
    if raw is None or not str(raw).strip():
        return 0.0
    fraction = parse_fraction(str(raw).strip())
    if fraction is None:
        raise AuditSettingError(
            "METAFLOW_MEMOIZE_AUDIT=%r is not a fraction: use a number from 0 to 1, "
            "e.g. 0.01 to audit one hit in a hundred." % raw
        )
    return fraction


def sampled(fraction: float, draw: Callable[[], float] = random.random) -> bool:
    """Whether to audit this hit: always at 1, never at 0 (without drawing)."""
    if fraction <= 0.0:
        return False
    return fraction >= 1.0 or draw() < fraction


def compare(
    entry: Mapping[str, str],
    produced: Mapping[str, str],
    entry_transition: Any = None,
    produced_transition: Any = None,
) -> list[str]:
    """Names of the artifacts whose hashes differ (added, missing or changed), sorted;
    ``_transition`` when the step went elsewhere."""
    names = sorted(n for n in set(entry) | set(produced) if entry.get(n) != produced.get(n))
    if entry_transition is not None and _plain(entry_transition) != _plain(produced_transition):
        names.append("_transition")
    return names


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def describe(differing: list[str], entry: Mapping[str, str], produced: Mapping[str, str]) -> str:
    """`a (entry 1a2b3c, computed 4d5e6f), b (missing from the entry)`: for logs and metadata."""
    parts = []
    for name in differing:
        if name == "_transition":
            parts.append("the transition (the step went to other steps)")
        elif name not in entry:
            parts.append("%s (not in the entry)" % name)
        elif name not in produced:
            parts.append("%s (not produced)" % name)
        else:
            parts.append("%s (entry %s, computed %s)" % (name, entry[name][:8], produced[name][:8]))
    return ", ".join(parts)


def conclude(cache, manifest, produced, transition, task: str, log) -> dict[str, str]:
    """After an audited task's body succeeded: compare, log, record the audit, set a
    mismatching entry aside. Returns the task metadata to register."""
    computed = {n: a.sha for n, a in produced.items()}
    recorded = {n: a.sha for n, a in manifest.artifacts.items()}
    differing = compare(recorded, computed, manifest.transition, transition)
    detail = {"task": task, "origin": manifest.origin, "differing": differing}
    meta = {"memoize_audit": "mismatch" if differing else "match"}
    step, key = manifest.step, manifest.key
    try:
        if differing:
            described = describe(differing, recorded, computed)
            meta["memoize_audit_artifacts"] = described
            log(
                "AUDIT MISMATCH %s key=%s: the body did not reproduce the entry from %s: %s. "
                "The entry is set aside as suspect; this task keeps what it computed."
                % (step, key[:12], manifest.origin, described)
            )
            cache.set_aside(manifest, detail)
        else:
            log("audit %s key=%s: the body reproduced the entry" % (step, key[:12]))
        cache.record_audit(manifest.flow, step, key, not differing, detail)
    except CacheFault as err:
        log("WARNING: %s: could not record the audit: %s" % (step, err))
    return meta
