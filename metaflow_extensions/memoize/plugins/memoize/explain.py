"""Why a step hit or missed: component by component, from task metadata and manifests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cache import Cache
from .exceptions import CacheFault, MemoizeCliError
from .keys import diff_components

COMPONENTS = ("code", "args", "inputs", "foreach", "env")


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


def _component_verdicts(old: dict, new: dict) -> dict[str, str]:
    return {part: ("same" if old.get(part) == new.get(part) else "changed") for part in COMPONENTS}


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
    try:
        own = cache.lookup(flow, step, key).manifest
        components = own.components if own is not None else None
        if components is None:
            return out
        previous = cache.latest_entry(
            flow,
            step,
            prefer=lambda m: (
                m.key != key
                and m.created < own.created
                and m.components.get("foreach") == components.get("foreach")
            ),
        )
        if previous is not None and previous.key != key:
            out.compared_with = previous.origin
            out.components = _component_verdicts(previous.components, components)
            out.changes = diff_components(previous.components, components)
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
        run = flow[run_id] if run_id else flow.latest_run
    except (MetaflowNotFound, KeyError) as err:
        raise MemoizeCliError("no run %s of %s: %s" % (run_id or "(latest)", flow_name, err))
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
