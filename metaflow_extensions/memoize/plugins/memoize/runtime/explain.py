"""Why a step hit or missed: component by component, from task metadata and manifests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..cache.entries import Cache
from ..exceptions import CacheFault, MemoizeCliError
from ..key.components import diff_components
from ..key.deps import diff_observed

COMPONENTS = ("code", "args", "inputs", "foreach", "env", "observed")


@dataclass
class TaskExplanation:
    pathspec: str
    status: str  # hit, miss, refresh, disabled, error, uncacheable, not memoized
    key: str | None
    origin: str | None = None
    reason: str | None = None
    compared_with: str | None = None  # origin of the entry this miss is compared with
    components: dict[str, str] = field(default_factory=dict)  # component -> same/changed/...
    changes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _component_verdicts(old, new) -> dict[str, str]:
    """same/changed per key component, and for what the step was observed using."""
    verdicts = {
        part: ("same" if old.components.get(part) == new.components.get(part) else "changed")
        for part in COMPONENTS
        if part != "observed"
    }
    verdicts["observed"] = "same" if not diff_observed(old.observed, new.observed) else "changed"
    return verdicts


def explain_task(
    cache: Cache, flow: str, step: str, pathspec: str, metadata: dict
) -> TaskExplanation:
    status = metadata.get("memoize_status") or "not memoized"
    key = metadata.get("memoize_key")
    out = TaskExplanation(
        pathspec=pathspec,
        status=status,
        key=key,
        origin=metadata.get("memoize_origin"),
        reason=metadata.get("memoize_reason") or metadata.get("memoize_error"),
    )
    if status == "hit" or not key:
        if status == "hit":
            out.components = {part: "same" for part in COMPONENTS}
        return out
    # a miss whose key had an entry that no longer verified stored its own at
    # a variant key (verified.py); the task recorded where
    entry_key = metadata.get("memoize_entry") or key
    try:
        own = cache.lookup(flow, step, entry_key).manifest
        components = own.components if own is not None else None
        if components is None:
            return out
        previous = cache.latest_entry(
            flow,
            step,
            prefer=lambda m: (
                m.key != entry_key
                and m.created < own.created
                and m.components.get("foreach") == components.get("foreach")
            ),
        )
        if previous is not None and previous.key != entry_key:
            out.compared_with = previous.origin
            out.components = _component_verdicts(previous, own)
            out.changes = diff_components(previous.components, components)
            if previous.components == components or not out.changes:
                out.changes += diff_observed(previous.observed, own.observed)
    except CacheFault as err:
        out.reason = "%s (cache unreadable: %s)" % (out.reason or "", err)
    return out


def explain_step(
    cache: Cache, flow_name: str, step: str, run_id: str | None
) -> tuple[str, list[TaskExplanation]]:
    """(run pathspec, one explanation per task of ``step`` in the run; default: latest run)."""
    from metaflow import Flow, namespace
    from metaflow.exception import MetaflowNotFound

    namespace(None)
    try:
        flow = Flow(flow_name)
    except MetaflowNotFound:
        raise MemoizeCliError("%s has no runs yet" % flow_name)
    try:
        run = flow[run_id] if run_id else flow.latest_run
    except (MetaflowNotFound, KeyError):
        # the Client API says KeyError('123'): say which flow, and what exists
        raise MemoizeCliError("%s has no run %s%s" % (flow_name, run_id, _latest_hint(flow)))
    if run is None:
        raise MemoizeCliError("%s has no runs yet" % flow_name)
    try:
        tasks = list(run[step])
    except (MetaflowNotFound, KeyError):
        raise MemoizeCliError("run %s has no step %r" % (run.pathspec, step))
    explanations = [
        explain_task(cache, flow_name, step, task.pathspec, task.metadata_dict) for task in tasks
    ]
    explanations.sort(key=lambda e: e.pathspec)
    return run.pathspec, explanations


def _latest_hint(flow) -> str:
    """' (its latest run is 1795...)', or nothing when that cannot be told."""
    try:
        latest = flow.latest_run
    except Exception:  # only a hint: the error stands without it
        return ""
    return " (its latest run is %s)" % latest.id if latest is not None else ""
