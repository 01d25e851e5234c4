"""`memoize plan`: which steps a run would hit and which it would run, without running any.

Keys are computed the way a task computes them (identity.components_for):
`start` from the parameter values, each later step from the recorded outputs of
the entries its parents would hit. A chain of hits is followed through the graph,
foreach splits included (the foreach list is read from the cache to know each
item). Below a step that will run, the plan goes on with the outputs of that
step's last entry, as if they came out unchanged: a step that would hit then is
`maybe` ("hits if featurize's outputs come out unchanged"). Below a step with
no entry at all (or without @memoize) it is `unknown`: its inputs do not exist
yet.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import config
from .. import metaflow_compat as mf
from ..cache.entries import Cache, RecentEntries
from ..cache.stores import open_store
from ..exceptions import CacheFault
from ..key.components import diff_components, diff_other_item, input_id, key_of
from ..key.deps import DepContext
from ..key.identity import UnidentifiableInput, components_for, dependency_context, item_digest
from ..key.verified import verified_lookup
from .explain import NO_ENTRY_FOR_ITEM

HIT, RUN, UNKNOWN, NOT_MEMOIZED = "hit", "run", "unknown", "not memoized"
#: would hit if the steps above it that will run produce what they did last time
MAYBE = "maybe"


@dataclass(frozen=True)
class Frame:
    step: str
    var: str
    index: int
    item: str  # digest of the item's value


@dataclass
class Context:
    """What a task of the next step would see: None visible means unknown."""

    parent: str
    visible: dict[str, str] | None
    frames: tuple[Frame, ...] = ()
    #: steps that will run whose outputs ``visible`` assumes unchanged
    assumes: tuple[str, ...] = ()


@dataclass
class TaskVerdict:
    verdict: str
    reason: str = ""
    key: str | None = None
    origin: str | None = None
    saved_seconds: float = 0.0
    foreach_index: list[int] = field(default_factory=list)
    #: for `maybe`: the steps that will run whose outputs must come out unchanged
    assumes: list[str] = field(default_factory=list)


@dataclass
class StepPlan:
    step: str
    tasks: list[TaskVerdict] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        kinds = {t.verdict for t in self.tasks}
        if not kinds:
            return "not reached"
        if len(kinds) == 1:
            return kinds.pop()
        return "mixed"

    def summary(self) -> str:
        if not self.tasks:
            return "not reached"
        if len(self.tasks) == 1:
            return self.tasks[0].verdict
        hits = sum(t.verdict == HIT for t in self.tasks)
        if hits == len(self.tasks):
            return "%d/%d hit" % (hits, len(self.tasks))
        parts = ["%d/%d hit" % (hits, len(self.tasks))]
        for verdict in (MAYBE, RUN, UNKNOWN):
            count = sum(t.verdict == verdict for t in self.tasks)
            if count:
                parts.append("%d %s" % (count, verdict))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "verdict": self.verdict,
            "summary": self.summary(),
            "tasks": [t.__dict__ for t in self.tasks],
        }


@dataclass
class PlanResult:
    flow: str
    steps: list[StepPlan]

    def counts(self) -> dict[str, int]:
        out = {HIT: 0, MAYBE: 0, RUN: 0, UNKNOWN: 0, NOT_MEMOIZED: 0}
        for s in self.steps:
            for t in s.tasks:
                out[t.verdict] = out.get(t.verdict, 0) + 1
        return out

    @property
    def saved_seconds(self) -> float:
        return sum(t.saved_seconds for s in self.steps for t in s.tasks if t.verdict == HIT)

    def at_stake(self) -> list[tuple[str, int, float]]:
        """(memoized step that will run, tasks below it that hit only if its
        outputs come out unchanged, the time those would save), for each such
        step. Steps without @memoize always run: not flagged."""
        running = {s.step for s in self.steps if any(t.verdict == RUN for t in s.tasks)}
        below: dict[str, list[TaskVerdict]] = {}
        for s in self.steps:
            for t in s.tasks:
                # flagged once, under the topmost memoized step that will run
                top = next((step for step in t.assumes if step in running), None)
                if t.verdict == MAYBE and top is not None:
                    below.setdefault(top, []).append(t)
        return [
            (step, len(tasks), sum(t.saved_seconds for t in tasks)) for step, tasks in below.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "steps": [s.to_dict() for s in self.steps],
            "counts": self.counts(),
            "saved_seconds": round(self.saved_seconds, 3),
            "at_stake": [
                {"step": step, "tasks": n, "saved_seconds": round(saved, 3)}
                for step, n, saved in self.at_stake()
            ],
        }


class Planner:
    def __init__(self, flow, graph, flow_datastore, decorators: dict[str, Any]):
        self.flow = flow
        self.graph = graph
        self.flow_datastore = flow_datastore
        self.decorators = decorators  # step -> MemoizeDecorator
        self._caches: dict[str, Cache] = {}
        # per root: each step's newest entries, listed once for the whole plan
        self._recent: dict[str, RecentEntries] = {}
        # per root: lookups made ahead for a step's tasks (_prepare)
        self._lookups: dict[str, _PrefetchedLookups] = {}
        self._records: dict[str, Any] = {}  # sha -> ArtifactRecord seen in manifests
        self.mode = config.mode()
        self.refresh_all, self.refresh_steps = config.refresh_request()

    def cache_for(self, deco) -> Cache:
        root = deco.cache_root()
        if root not in self._caches:
            self._caches[root] = Cache(open_store(root), signing_key=config.signing_key())
            self._recent[root] = RecentEntries(self._caches[root])
            self._lookups[root] = _PrefetchedLookups(self._caches[root])
        return self._caches[root]

    def recent_for(self, deco) -> RecentEntries:
        self.cache_for(deco)
        return self._recent[deco.cache_root()]

    # -- the walk -----------------------------------------------------------
    def plan(self, parameter_hashes: dict[str, str]) -> PlanResult:
        incoming: dict[str, list[Context]] = {s: [] for s in mf.sorted_steps(self.graph)}
        incoming[mf.start_step(self.graph)].append(Context("_parameters", dict(parameter_hashes)))
        plans = []
        for step in mf.sorted_steps(self.graph):
            plan = StepPlan(step)
            plans.append(plan)
            tasks = self._tasks(step, incoming[step])
            for (inputs, frames), components in zip(tasks, self._prepare(step, tasks)):
                verdict, outputs = self._evaluate(step, inputs, frames, components)
                plan.tasks.append(verdict)
                for child, ctx in outputs:
                    incoming.setdefault(child, []).append(ctx)
        return PlanResult(self.flow.name, plans)

    def _tasks(self, step, contexts):
        """Group the contexts reaching a step into its tasks: (inputs, frames) each."""
        if not contexts:
            return []
        if any(c.visible is None for c in contexts):
            return [([Context(contexts[0].parent, None)], ())]
        kind = mf.join_type(self.graph, step)
        if kind is None:
            return [([c], c.frames) for c in contexts]
        groups: dict[tuple, list[Context]] = {}
        for c in contexts:
            group = c.frames[:-1] if kind == "foreach" else c.frames
            groups.setdefault(group, []).append(c)
        return [(members, frames) for frames, members in groups.items()]

    def _refreshing(self, step, deco) -> bool:
        return (
            self.mode == "refresh"
            or deco.args["refresh"]
            or self.refresh_all
            or step in self.refresh_steps
        )

    def _components(self, step, inputs: list[Context], frames, deco):
        """A task's key components, as the task would compute them (raises
        UnidentifiableInput)."""
        return components_for(
            self.flow,
            self.graph,
            step,
            [(c.parent, c.frames[-1].index if c.frames else None, c.visible) for c in inputs],
            [{"step": f.step, "var": f.var, "item": f.item} for f in frames],
            [f.var for f in frames],
            deco.args,
            deco._env_component,
        )

    def _prepare(self, step, tasks) -> list:
        """Each task's key components (or the UnidentifiableInput that stops them;
        None where no key is needed), with the lookups of their keys made ahead,
        in parallel: a foreach step of thousands of tasks would otherwise wait
        for two round trips to the store per task, one task after the other."""
        deco = self.decorators.get(step)
        if deco is None or self.mode == "off" or self._refreshing(step, deco):
            return [None] * len(tasks)
        prepared: list = []
        for inputs, frames in tasks:
            if any(c.visible is None for c in inputs):
                prepared.append(None)
                continue
            try:
                prepared.append(self._components(step, inputs, frames, deco))
            except UnidentifiableInput as err:
                prepared.append(err)
        keys = {key_of(c) for c in prepared if isinstance(c, dict)}
        if len(keys) > 1:
            self.cache_for(deco)
            self._lookups[deco.cache_root()].prefetch(self.flow.name, step, keys)
        return prepared

    def _unknown_children(self, step):
        return [(child, Context(step, None)) for child in mf.out_funcs(self.graph, step)]

    def _evaluate(self, step, inputs: list[Context], frames, prepared=None):
        """``prepared``: the task's components (or why it has none) from ``_prepare``."""
        deco = self.decorators.get(step)
        index = [f.index for f in frames]
        assumes = tuple(dict.fromkeys(s for c in inputs for s in c.assumes))
        if deco is None:
            verdict = TaskVerdict(NOT_MEMOIZED, foreach_index=index)
            return verdict, self._after_unmemoized(step, inputs, frames, assumes)
        if any(c.visible is None for c in inputs):
            verdict = TaskVerdict(
                UNKNOWN, "inputs come from a step that will run", foreach_index=index
            )
            return verdict, self._unknown_children(step)
        if self.mode == "off":
            return TaskVerdict(
                RUN, "METAFLOW_MEMOIZE_MODE=off", foreach_index=index
            ), self._unknown_children(step)
        try:
            if isinstance(prepared, UnidentifiableInput):
                raise prepared
            components = prepared or self._components(step, inputs, frames, deco)
        except UnidentifiableInput as err:
            return TaskVerdict(UNKNOWN, str(err), foreach_index=index), self._unknown_children(step)
        key = key_of(components)
        if self._refreshing(step, deco):
            verdict = TaskVerdict(RUN, "refresh requested", key, foreach_index=index)
            return verdict, self._unknown_children(step)
        cache = self.cache_for(deco)
        try:
            found = verified_lookup(
                self._lookups[deco.cache_root()],
                self.flow.name,
                step,
                key,
                self._dep_context(step, inputs, frames),
            )
        except CacheFault as err:
            verdict = TaskVerdict(RUN, "cache unreadable: %s" % err, key, foreach_index=index)
            return verdict, self._unknown_children(step)
        if found.status != "found":
            reason = found.detail or found.status
            last = found.first  # what the step produced last time, if it had an entry
            if found.status == "absent":
                try:
                    previous = self.recent_for(deco).latest(
                        self.flow.name,
                        step,
                        prefer=lambda m: m.components.get("foreach") == components.get("foreach"),
                    )
                except CacheFault:
                    previous = None
                if previous is not None and previous.components.get("foreach") != components.get(
                    "foreach"
                ):
                    # another item's entry: its outputs are not this one's to assume
                    reason = "; ".join(diff_other_item(previous.components, components))
                    reason = reason or NO_ENTRY_FOR_ITEM
                elif previous is not None:
                    reason = "; ".join(diff_components(previous.components, components)) or reason
                    last = previous
            verdict = TaskVerdict(RUN, reason, key, foreach_index=index)
            return verdict, self._children_assuming(step, inputs, frames, last, assumes, cache)
        manifest = found.manifest
        current = inputs[0].visible
        if any(current.get(n) != sha for n, sha in manifest.passthrough.items()):
            verdict = TaskVerdict(RUN, "an input outside the key changed", key, foreach_index=index)
            return verdict, self._children_assuming(step, inputs, frames, manifest, assumes, cache)
        for record in manifest.artifacts.values():
            self._records[record.sha] = (record, cache)
        if assumes:
            verdict = TaskVerdict(
                MAYBE,
                "hits if %s come out unchanged" % _outputs_of(assumes),
                key,
                manifest.origin,
                manifest.body_seconds,
                foreach_index=index,
                assumes=list(assumes),
            )
        else:
            verdict = TaskVerdict(
                HIT, "", key, manifest.origin, manifest.body_seconds, foreach_index=index
            )
        return verdict, self._children(step, inputs, frames, manifest, assumes)

    def _children_assuming(self, step, inputs, frames, last, assumes, cache):
        """Below a step that will run: the contexts its children would see if it
        produced what its last entry did (unknown without one)."""
        if last is None:
            return self._unknown_children(step)
        for record in last.artifacts.values():
            self._records.setdefault(record.sha, (record, cache))
        return self._children(step, inputs, frames, last, assumes + (step,))

    def _dep_context(self, step, inputs: list[Context], frames) -> DepContext:
        """The observed dependencies of a planned task, against the code as it is
        now and the inputs the plan expects."""
        joined = []
        if mf.node_type(self.graph, step) == "join":
            joined = [
                (input_id(c.parent, c.frames[-1].index if c.frames else None), c.visible)
                for c in inputs
            ]
        return dependency_context(
            self.flow, step, frames, dict(inputs[0].visible or {}), (), join_inputs=joined
        )

    def _after_unmemoized(self, step, inputs, frames, assumes):
        """Below a step without @memoize, which always runs: what its children
        would see if it produced what its task of the latest successful run did
        (outside a foreach only; unknown otherwise)."""
        if frames or any(c.visible is None for c in inputs):
            return self._unknown_children(step)
        last = mf.last_run_task(self.flow_datastore, self.flow.name, step)
        if last is None:
            return self._unknown_children(step)
        hashes, transition, _pathspec = last
        # parameters are this run's, whatever the last run had
        params = set(mf.parameter_names(self.flow))
        outputs = _LastOutputs(
            {n: _Sha(sha) for n, sha in hashes.items() if n not in params}, transition
        )
        return self._children(step, inputs, frames, outputs, assumes + (step,))

    def _children(self, step, inputs, frames, manifest, assumes=()):
        produced = {n: a.sha for n, a in manifest.artifacts.items()}
        for name in manifest.merged:  # a join's merge, as the expected inputs give it
            shas = {c.visible.get(name) for c in inputs if c.visible and name in c.visible}
            if len(shas) == 1:
                produced[name] = shas.pop()
        if mf.join_type(self.graph, step) is None:
            visible = dict(inputs[0].visible)
            visible.update(produced)
        else:
            # a join's output: the parameters Metaflow passes down, then the entry's
            params = set(mf.parameter_names(self.flow))
            visible = {n: sha for n, sha in inputs[0].visible.items() if n in params}
            visible.update(produced)
            visible.update(manifest.unrestored)
        transition = (manifest.transition or {}).get("_transition") or {}
        funcs = transition.get("funcs") or []
        var = transition.get("foreach")
        if not var:
            return [(child, Context(step, visible, frames, assumes)) for child in funcs]
        try:
            values = self._load(visible[var])
            children = []
            for i, item in enumerate(values):
                frame = Frame(funcs[0], var, i, item_digest(item))
                children.append(
                    (funcs[0], Context(step, visible, tuple(frames) + (frame,), assumes))
                )
            return children
        except (
            KeyError,
            UnidentifiableInput,
            CacheFault,
            ValueError,
            TypeError,
            pickle.UnpicklingError,
        ):
            return [(child, Context(step, None)) for child in funcs]

    def _load(self, sha: str):
        """A foreach list's value: from the cache (verified) or the flow's datastore."""
        if sha in self._records:
            record, cache = self._records[sha]
            data = cache.store.get(cache.blob_key(sha))
            if data is not None:
                raw = data if record.cas_raw else gzip.decompress(data)
                if hashlib.sha1(raw).hexdigest() == sha:
                    return pickle.loads(raw)
        return mf.load_from_datastore(self.flow_datastore, sha)


class _PrefetchedLookups:
    """What verified_lookup asks of a Cache (``lookup``), answered from lookups made
    ahead in parallel where there is one: each answers once, as the store did when
    asked (a fault included); anything else is asked of the store then."""

    #: parallel lookups (each a GET, and a HEAD when absent); the S3 store's pool size
    PARALLEL = 16

    def __init__(self, cache: Cache):
        self.cache = cache
        self._made: dict[tuple[str, str, str], Any] = {}

    def prefetch(self, flow: str, step: str, keys) -> None:
        def ask(key):
            try:
                return key, self.cache.lookup(flow, step, key)
            except CacheFault as err:
                return key, err

        keys = sorted(keys)
        with ThreadPoolExecutor(max_workers=min(self.PARALLEL, len(keys))) as pool:
            for key, answer in pool.map(ask, keys):
                self._made[(flow, step, key)] = answer

    def lookup(self, flow: str, step: str, key: str):
        answer = self._made.pop((flow, step, key), None)
        if answer is None:
            return self.cache.lookup(flow, step, key)
        if isinstance(answer, CacheFault):
            raise answer
        return answer


@dataclass(frozen=True)
class _Sha:
    sha: str


@dataclass(frozen=True)
class _LastOutputs:
    """A step's outputs in its latest run, shaped like the manifest fields the
    walk reads."""

    artifacts: dict
    transition: dict
    merged: tuple = ()
    unrestored: dict = field(default_factory=dict)


def _outputs_of(steps) -> str:
    """``featurize's outputs`` / ``the outputs of a and b``."""
    if len(steps) == 1:
        return "%s's outputs" % steps[0]
    return "the outputs of %s and %s" % (", ".join(steps[:-1]), steps[-1])
