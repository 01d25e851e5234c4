"""Why a step ran, in terms of the steps above it: the root cause of a miss.

A task records its own reason when it decides (``memoize_reason``) and which
input artifacts changed (``memoize_changed_inputs``). Those inputs were set by
a step upstream; this module names that step (the nearest ancestor whose code
assigns the artifact) and, from what that step did in the same run, says why
the value is new: ``input 'features' changed, because featurize re-ran``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping

from .. import metaflow_compat as mf
from ..key.code import step_attribute_usage

#: statuses of a task whose body ran in this run
RAN = frozenset(["miss", "refresh", "error", "audit", "disabled", "uncacheable"])


def in_funcs(graph, step: str) -> list[str]:
    return [s for s in mf.sorted_steps(graph) if step in mf.out_funcs(graph, s)]


def producer_of(graph, assigns: Callable[[str], set[str] | None], step: str, name: str):
    """The nearest step above ``step`` whose code sets ``self.<name>`` (or may set
    anything: a helper receives ``self``), or None when no step visibly does."""
    queue = deque(in_funcs(graph, step))
    seen = set(queue)
    while queue:
        parent = queue.popleft()
        assigned = assigns(parent)
        if assigned is None or name in assigned:
            return parent
        for above in in_funcs(graph, parent):
            if above not in seen:
                seen.add(above)
                queue.append(above)
    return None


def static_assignments(flow_class: type) -> Callable[[str], set[str] | None]:
    """step name -> names its code (and the flow methods it calls) assigns."""
    cache: dict[str, set[str] | None] = {}

    def assigns(step: str) -> set[str] | None:
        if step not in cache:
            usage = step_attribute_usage(getattr(flow_class, step), flow_class)
            cache[step] = None if usage is None else usage[0]
        return cache[step]

    return assigns


def what_happened(statuses: Iterable[str]) -> str:
    """How a step's tasks of this run produced a new value, as a clause."""
    statuses = set(statuses)
    if not statuses:
        return "ran"
    if statuses & {"refresh"}:
        return "was refreshed"
    if statuses & RAN:
        return "re-ran"
    if statuses == {"not memoized"}:
        return "ran (not memoized)"
    return "hit an entry with other outputs"


def cause(
    graph,
    assigns: Callable[[str], set[str] | None],
    step: str,
    changed_inputs: Iterable[str],
    statuses: Mapping[str, list[str]],
) -> str:
    """``because featurize re-ran`` for the inputs that made ``step`` miss, or ''.

    ``statuses``: step -> the memoize statuses of its tasks in the same run
    (``not memoized`` for a step without @memoize)."""
    producers: dict[str, list[str]] = {}
    for name in changed_inputs:
        producer = producer_of(graph, assigns, step, name)
        if producer is not None:
            producers.setdefault(producer, []).append(name)
    clauses = [
        "%s %s" % (producer, what_happened(statuses.get(producer, ())))
        for producer in mf.sorted_steps(graph)
        if producer in producers
    ]
    return "because " + " and ".join(clauses) if clauses else ""


def with_cause(reason: str, because: str) -> str:
    return "%s, %s" % (reason, because) if because else reason
