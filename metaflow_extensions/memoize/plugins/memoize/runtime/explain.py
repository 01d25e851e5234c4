"""Why a step hit or missed: component by component, from task metadata and manifests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..cache.entries import Cache, RecentEntries
from ..exceptions import CacheFault, MemoizeCliError
from ..key.components import diff_components
from ..key.dep_groups import group_dependencies, groups_json
from ..key.deps import diff_observed
from . import causes

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
    cause: str = ""  # "because featurize re-ran": the root cause upstream
    # the entry the task used (a hit) or stored (a miss), and what it relies on
    # by group (key/dep_groups.py); None when there is none (gone, never stored)
    entry: str | None = None
    dependencies: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def relies_on(self, manifest) -> None:
        """Record the task's entry and what it relies on (None: no entry)."""
        if manifest is not None:
            self.entry = manifest.key
            self.dependencies = groups_json(
                group_dependencies(manifest.observed, manifest.components)
            )


def _component_verdicts(old, new) -> dict[str, str]:
    """same/changed per key component, and for what the step was observed using."""
    verdicts = {
        part: ("same" if old.components.get(part) == new.components.get(part) else "changed")
        for part in COMPONENTS
        if part != "observed"
    }
    verdicts["observed"] = "same" if not diff_observed(old.observed, new.observed) else "changed"
    return verdicts


def _entry(cache: Cache, flow: str, step: str, key: str | None):
    """An entry's manifest by key, expired or unsigned included; None when gone."""
    return cache.lookup(flow, step, key).manifest if key else None


def explain_task(
    cache: Cache,
    flow: str,
    step: str,
    pathspec: str,
    metadata: dict,
    recent: RecentEntries | None = None,
) -> TaskExplanation:
    """The decision a task recorded when it made it (``memoize_compared``: the
    entry it compared with), diffed component by component when both entries
    still exist. Tasks of versions that did not record it are explained by
    reconstruction (``_reconstructed``), from ``recent`` (shared by the tasks of
    a step, so that the step is listed once, not once per task)."""
    status = metadata.get("memoize_status") or "not memoized"
    key = metadata.get("memoize_key")
    recorded = metadata.get("memoize_compared")
    reason = metadata.get("memoize_reason") or metadata.get("memoize_error")
    if status == "hit" and recorded is None:
        # an older clone: what it shows as its reason is its origin's
        reason = None
    out = TaskExplanation(
        pathspec=pathspec,
        status=status,
        key=key,
        origin=metadata.get("memoize_origin"),
        reason=reason,
    )
    if status == "hit" or not key:
        if status == "hit":
            out.compared_with = out.origin
            out.components = {part: "same" for part in COMPONENTS}
            # the entry a hit used is the one it compared with (a variant key
            # included); a clone of an older version recorded only its key
            used = recorded if recorded not in (None, NOTHING_COMPARED) else None
            out.relies_on(
                _readable(cache, flow, step, used or metadata.get("memoize_entry") or key)
            )
        return out
    if recorded is None:
        return _reconstructed(cache, recent or RecentEntries(cache), flow, step, metadata, out)
    try:
        own = _entry(cache, flow, step, metadata.get("memoize_entry") or key)
    except CacheFault as err:
        out.reason = "%s (cache unreadable: %s)" % (out.reason or "", err)
        return out
    out.relies_on(own)
    if recorded == NOTHING_COMPARED:
        return out
    try:
        previous = _entry(cache, flow, step, recorded)
    except CacheFault as err:
        out.reason = "%s (cache unreadable: %s)" % (out.reason or "", err)
        return out
    if previous is None:
        out.compared_with = "entry %s, removed since" % recorded[:12]
        return out
    out.compared_with = previous.origin
    if own is not None and own.key != previous.key:
        out.components = _component_verdicts(previous, own)
        out.changes = diff_components(previous.components, own.components)
        if previous.components == own.components or not out.changes:
            out.changes += diff_observed(previous.observed, own.observed)
    return out


def _readable(cache: Cache, flow: str, step: str, key: str | None):
    """An entry's manifest, or None when it is gone or cannot be read (explain
    then says nothing of what the task relied on, and the rest stands)."""
    try:
        return _entry(cache, flow, step, key)
    except CacheFault:
        return None


#: ``memoize_compared`` of a miss that had no earlier entry to compare with
NOTHING_COMPARED = "none"
#: the reason of a foreach task whose item has no entry (its step has others)
NO_ENTRY_FOR_ITEM = "no entry for this foreach item"


def _reconstructed(
    cache, recent: RecentEntries, flow, step, metadata, out: TaskExplanation
) -> TaskExplanation:
    """For tasks that did not record what they compared with: the newest entry
    of the same foreach item created before the task's own."""
    key = out.key
    # a miss whose key had an entry that no longer verified stored its own at
    # a variant key (verified.py); the task recorded where
    entry_key = metadata.get("memoize_entry") or key
    try:
        own = cache.lookup(flow, step, entry_key).manifest
        out.relies_on(own)
        components = own.components if own is not None else None
        if components is None:
            return out
        previous = recent.latest(
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
    cache: Cache, flow_name: str, step: str, run_id: str | None, flow_spec=None, graph=None
) -> tuple[str, list[TaskExplanation]]:
    """(run pathspec, one explanation per task of ``step`` in the run; default: latest run).

    With the flow and its graph, a miss also names its root cause upstream
    (causes.py), from what the steps above did in the same run."""
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
    recent = RecentEntries(cache)
    explanations = [
        explain_task(cache, flow_name, step, task.pathspec, task.metadata_dict, recent)
        for task in tasks
    ]
    explanations.sort(key=lambda e: e.pathspec)
    if flow_spec is not None and graph is not None:
        _add_causes(run, flow_spec, graph, step, tasks, explanations)
    return run.pathspec, explanations


def _add_causes(run, flow, graph, step, tasks, explanations) -> None:
    from .summary import NOT_MEMOIZED, outcome_of

    outcomes = {t.pathspec: outcome_of(t) for t in tasks}
    assigns = causes.static_assignments(flow.__class__)
    statuses: dict[str, list[str]] = {}

    def statuses_of(producer):
        if producer not in statuses:
            found = [outcome_of(t) for t in run[producer]]
            statuses[producer] = [o.status if o else NOT_MEMOIZED for o in found]
        return statuses[producer]

    for e in explanations:
        outcome = outcomes.get(e.pathspec)
        if outcome is None or not outcome.changed_inputs or e.status == "hit":
            continue
        producers = {
            causes.producer_of(graph, assigns, step, name) for name in outcome.changed_inputs
        } - {None}
        e.cause = causes.cause(
            graph, assigns, step, outcome.changed_inputs, {p: statuses_of(p) for p in producers}
        )


def _latest_hint(flow) -> str:
    """' (its latest run is 1795...)', or nothing when that cannot be told."""
    try:
        latest = flow.latest_run
    except Exception:  # only a hint: the error stands without it
        return ""
    return " (its latest run is %s)" % latest.id if latest is not None else ""
