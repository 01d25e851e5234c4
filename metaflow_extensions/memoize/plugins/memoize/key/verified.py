"""Looking a key up and verifying the entry's observed dependencies.

The static key (code of the step, arguments, inputs, foreach item) finds an
entry; the entry's recorded dependencies decide whether it may be used. When
they no longer hold, a second entry may exist for the same static key with
other dependency values (a helper switched back and forth, a data file swapped
back): it lives at ``variant_key(static key, current values of the first entry's
dependency ids)``, so a reader finds it with one more read. Shared by the task
and the orchestrator, so both decide the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cache.entries import Cache
from ..cache.manifest import Manifest
from .deps import DepContext, changed_input_names, variant_key, verify


@dataclass
class Decision:
    #: "found" (usable), "absent", "expired", "unsigned" (as Cache.lookup) or
    #: "changed" (an entry exists but what it used changed)
    status: str
    manifest: Manifest | None = None
    detail: str = ""
    #: where a recomputed entry is published
    store_key: str = ""
    #: the entry at store_key exists and cannot be used: replace it
    replace: bool = False
    #: the static key's entry, also when it could not be used (for reasons)
    first: Manifest | None = None
    reasons: list[str] = field(default_factory=list)
    #: input artifacts whose change made the entry unusable (for the causes)
    changed_inputs: list[str] = field(default_factory=list)


def verified_lookup(cache: Cache, flow: str, step: str, key: str, ctx: DepContext) -> Decision:
    """Raises CorruptEntry / store faults like Cache.lookup."""
    found = cache.lookup(flow, step, key)
    if found.manifest is None:  # absent, or set aside by an audit
        return Decision(found.status, None, found.detail, store_key=key)
    first = found.manifest
    reasons, current = verify(first.observed, ctx)
    if not reasons:
        if found.status == "found":
            return Decision("found", first, store_key=key, first=first)
        # expired or not validly signed, and what it used is unchanged: replace it
        return Decision(found.status, None, found.detail, store_key=key, replace=True, first=first)
    # what the key's entry used has changed (whether or not it is still fresh):
    # an entry for the current values may sit at the variant key
    variant = variant_key(key, current)
    second = cache.lookup(flow, step, variant)
    if second.status == "found":
        second_reasons, _ = verify(second.manifest.observed, ctx)
        if not second_reasons:
            return Decision("found", second.manifest, store_key=variant, first=first)
        reasons = second_reasons
    elif second.status in ("expired", "unsigned"):
        return Decision(
            second.status, None, second.detail, store_key=variant, replace=True, first=first
        )
    return Decision(
        "changed",
        None,
        "; ".join(reasons),
        store_key=variant,
        replace=second.status != "absent" and second.manifest is not None,
        first=first,
        reasons=reasons,
        changed_inputs=changed_input_names(
            d for d, value in first.observed.items() if current.get(d) != value
        ),
    )
