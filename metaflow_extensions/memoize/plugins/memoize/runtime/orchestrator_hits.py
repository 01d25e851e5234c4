"""Hits decided in the orchestrator, before a task is launched.

A hit inside a task costs a whole task process (Python, Metaflow, the flow's
imports: ~0.4 s here) to restore a few references. The orchestrator completes
the task itself instead, writing exactly what that task would have written,
and launches nothing:

* cloned: when the entry's origin task is in the run's datastore and equals
  the hit hash for hash (its inherited artifacts are what the task inherits
  now, its bookkeeping is the task's), the task is a copy of it, as `resume`
  makes: references and metadata only.
* composed: otherwise (the origin is elsewhere or gone, the foreach list grew,
  an inherited artifact outside the key changed), the task gets its input's
  artifacts, the entry's outputs (copied into the datastore first where they
  are not there) and its own bookkeeping, as task.py would have stored them
  around a replayed body (``LaunchingTask.compose``).

Anything that needs the task itself (a decorator acting in it, an audit, a
fault, a refresh) launches it, and the task decides for itself: a slower hit
or a miss, never a different result.
"""

from __future__ import annotations

import threading
from typing import Any

from .. import config
from .. import metaflow_compat as mf
from ..cache.entries import Cache
from ..cache.stores import open_store
from ..cache.transfer import import_blobs
from ..durations import format_duration
from ..exceptions import CacheFault
from ..key.code import code_components
from ..key.components import key_of
from ..key.identity import (
    UnidentifiableInput,
    dependency_context,
    join_input_sources,
    task_components,
)
from ..key.verified import verified_lookup
from .summary import TaskOutcome

#: Decorators whose task-side work cannot change what a hit produces (the body
#: they wrap does not run) and that leave the task in the orchestrator's own
#: Python environment. Any other decorator makes the orchestrator launch the
#: task: @card and @catch act in the task; @kubernetes, @batch, @pypi and @conda
#: run it elsewhere, and the key includes the Python and package versions that
#: only the task itself can read.
CLONE_SAFE_DECORATORS = frozenset(
    ["memoize", "resources", "retry", "timeout", "environment", "secrets"]
)

#: What a hit records as its reason (a clone must overwrite its origin's).
HIT_REASON = "same key, and everything the entry recorded using is unchanged"

#: Joins wider than this are left to the task: the orchestrator reads its
#: inputs one by one while every other task waits.
MAX_JOIN_INPUTS = 256

#: After this many tasks of a step in a row that could not be cloned, the step's
#: remaining tasks are launched unchecked: a step that misses (its first run, a
#: changed input) pays for the orchestrator's check a few times, not per task.
GIVE_UP_AFTER = 4


def clone_mismatch(
    *,
    is_join: bool,
    origin: dict[str, str],
    parent: dict[str, str],
    produced: dict[str, str],
    class_level: set[str],
) -> str | None:
    """Why a task completed by cloning ``origin`` (artifact -> hash) would differ
    from the task completed by a hit, or None when it would not.

    ``parent``: the hashes of the task's first input; ``produced``: the entry's
    outputs. Bookkeeping compared by value (``mf.VALUE_CHECKED_ARTIFACTS``) is
    left out of these maps by the caller. A non-join task inherits everything
    from its parent and overrides what it produced; a join starts empty and
    carries the class-level artifacts (parameters, constants) and the graph.
    """
    for name in mf.NEVER_CLONED_ARTIFACTS:
        if name in origin:
            return "the origin task has %s" % name
    for name, sha in produced.items():
        if origin.get(name) != sha:
            return "the origin's %s is not the entry's" % name
    for name, sha in origin.items():
        if name in produced:
            continue
        if parent.get(name) != sha:
            return "%s differs from what the task inherits" % name
    for name in parent:
        if name in produced or name in origin:
            continue
        if not is_join or name in class_level:
            return "the origin task lacks %s" % name
    return None


def _split(mapping: dict[str, str]) -> dict[str, str]:
    """Without the artifacts compared by value, and without those a clone takes
    from this run (the graph: a step added elsewhere must not prevent clones)."""
    skip = mf.VALUE_CHECKED_ARTIFACTS | mf.PASSED_DOWN_ARTIFACTS
    return {n: s for n, s in mapping.items() if n not in skip}


_ABSENT = object()


class _Memo:
    """A few values by content key, shared by the checking threads: the oldest is
    dropped past ``size``. Two threads may compute the same value; either is kept."""

    def __init__(self, size: int):
        self._size = size
        self._values: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key, compute):
        with self._lock:
            value = self._values.get(key, _ABSENT)
        if value is _ABSENT:
            value = compute()
            self.put(key, value)
        return value

    def known(self, key):
        with self._lock:
            return self._values.get(key, _ABSENT)

    def put(self, key, value) -> None:
        with self._lock:
            if key not in self._values and len(self._values) >= self._size:
                self._values.pop(next(iter(self._values)))
            self._values[key] = value


class _FirstInput:
    """The task's first input datastore, read without repeating reads: its foreach
    bookkeeping comes from the one read already made, and the foreach lists from
    ``lists`` (by hash), since every task of a foreach reads the same list and the
    orchestrator checks them one after the other. Only lists are kept there, the
    last few, so a per-task artifact never pushes a shared list out."""

    def __init__(self, datastore, loaded: dict[str, Any], lists: _Memo, names):
        self._ds = datastore
        self._loaded = loaded
        self._lists = lists
        self._list_names = set(names)

    def __getattr__(self, name):
        return getattr(self._ds, name)

    def __getitem__(self, name):
        if name in self._loaded:
            return self._loaded[name]
        sha = mf.artifact_hashes(self._ds).get(name)
        if name not in self._list_names or sha is None:
            return self._ds[name]
        return self._lists.get(sha, lambda: self._ds[name])


class OrchestratorHits:
    """Called for each task the runtime is about to launch (see mf.install_launch_hook),
    from several threads at once: what it shares between tasks is guarded by a lock
    or computed the same by whichever thread gets there first."""

    def __init__(self):
        self._lock = threading.Lock()
        self._caches: dict[str, Cache] = {}
        self._failed_roots: set[str] = set()
        self._lists = _Memo(4)  # foreach lists by hash
        self._bookkeeping = _Memo(4)  # a foreach parent's bookkeeping, by its hashes
        self._stored_values = _Memo(1024)  # (name, hash) -> JSON-like bookkeeping value
        self._not_cloned: dict[str, int] = {}  # step -> tasks in a row not cloned
        self._code: dict[str, dict[str, str]] = {}  # step -> code components, once per run
        self._class_level: set[str] | None = None  # the flow's class-level artifact names
        self._fingerprints: dict[str, str] = {}  # observed code and values, once per run
        self._parameters = None  # this run's _parameters task (False: not this run's)
        self._saved: dict[str, tuple] = {}  # bookkeeping objects written this run
        # for the end-of-run summary: what the cloned tasks were, which memoized
        # tasks were launched instead (their own metadata says what they did)
        self.cloned: list[TaskOutcome] = []
        self.launched: list[str] = []

    def __call__(self, task: mf.LaunchingTask) -> bool:
        deco = next((d for d in task.decorators if getattr(d, "name", None) == "memoize"), None)
        if deco is None or not getattr(deco, "args", None):
            return False
        cloned = False
        if self._eligible(deco, task) and self._not_cloned.get(task.step, 0) < GIVE_UP_AFTER:
            cloned = self._try_clone(deco, task)
            with self._lock:
                self._not_cloned[task.step] = (
                    0 if cloned else self._not_cloned.get(task.step, 0) + 1
                )
        if not cloned:
            self.launched.append(task.pathspec)
        return cloned

    def _try_clone(self, deco, task: mf.LaunchingTask) -> bool:
        root = deco.cache_root()
        if root in self._failed_roots:
            return False
        inputs = task.open_inputs()
        if not inputs:
            return False
        try:
            first = self._foreach_bookkeeping(inputs[0])
            frames = task.expected_foreach_stack(first)
            source = _FirstInput(inputs[0], first, self._lists, [f.var for f in frames])
            components = task_components(
                task.flow,
                task.graph,
                task.step,
                [source] + inputs[1:],
                deco.args,
                deco._env_component,
                frames=frames,
                code=self._code_of(task),
            )
        except (UnidentifiableInput, KeyError, ValueError, IndexError, TypeError):
            return False
        key = key_of(components)
        context = dependency_context(
            task.flow,
            task.step,
            frames,
            inputs[0],
            [deco._datastore_root, root],
            graph=task.graph,
            args=deco.args,
            join_inputs=join_input_sources(task.graph, task.step, inputs),
        )
        context.memo = self._fingerprints
        try:
            cache = self._cache(root)
            found = verified_lookup(cache, task.flow.name, task.step, key, context)
        except CacheFault:
            # the task will say what is wrong; don't pay for the fault twice per task
            self._failed_roots.add(root)
            return False
        if found.status != "found":
            return False
        manifest = found.manifest
        if mf.entry_misfit(task.graph, task.step, manifest):
            return False  # the task sets the entry aside and says why
        if mf.changed_passthrough(manifest, inputs[0]):
            return False  # the task says which input changed
        # what a join merged through comes from the current inputs (as in a task)
        merged = mf.merged_artifacts(inputs, manifest.merged)
        if merged is None:
            return False
        produced = {n: (a.sha, a.info) for n, a in manifest.artifacts.items()}
        produced.update(merged)
        parent_hashes = mf.artifact_hashes(inputs[0])
        # The client API shows a clone the metadata of its origin for every field
        # the clone lacks: the origin's own miss reason would read as this task's.
        # So every field `memoize explain` reads is written, with the task's own,
        # unless the origin's can only be the same. Each field is a file (an object
        # on S3): an unchanged wide foreach writes thousands of them.
        fields = {
            "memoize_status": "hit",
            "memoize_key": key,
            "memoize_origin": manifest.origin,
            "memoize_saved_seconds": "%.3f" % manifest.body_seconds,
            # "true" for every task completed without a process; how, apart
            "memoize_cloned": "true",
            "memoize_compared": manifest.key,
            "memoize_reason": HIT_REASON,
        }
        if manifest.key != key:
            # else explain's fallback (the key) is the entry; an origin that
            # recorded one recorded where it stored this entry
            fields["memoize_entry"] = manifest.key
        cloned_fields = dict(fields, memoize_changed_inputs="")  # a miss's, masked
        how = self._clone(task, inputs, frames, manifest, produced, parent_hashes, cloned_fields)
        if how is None:
            how = self._compose(task, inputs, frames, manifest, produced, cache, fields)
        if how is None:
            return False
        try:
            cache.record_use(task.flow.name, task.step, manifest.key)
        except CacheFault:
            pass  # recency is best effort
        task.log(
            "hit %s key=%s from %s (saved %s; %s)"
            % (task.step, key[:12], manifest.origin, format_duration(manifest.body_seconds), how)
        )
        self.cloned.append(TaskOutcome(task.step, "hit", manifest.body_seconds))
        return True

    def _clone(self, task, inputs, frames, manifest, produced, parent_hashes, fields):
        """Complete the task as a copy of the entry's origin task, as `resume` does,
        when that copy is exactly the hit (no object written), with the metadata
        ``fields``: how, for the log; else None."""
        origin = self._origin(task, manifest.origin)
        if origin is None:
            return None
        origin_run, origin_ds = origin
        is_join = mf.node_type(task.graph, task.step) == "join"
        origin_hashes = mf.artifact_hashes(origin_ds)
        if self._class_level is None:
            self._class_level = mf.class_level_names(task.flow)
        mismatch = clone_mismatch(
            is_join=is_join,
            origin=_split(origin_hashes),
            parent=_split(parent_hashes),
            produced={n: sha for n, (sha, _info) in produced.items()},
            class_level=self._class_level,
        )
        if mismatch:
            return None
        if not self._same_bookkeeping(task, frames, manifest, origin_ds, origin_hashes, inputs[0]):
            return None
        # a clone references blobs; Metaflow never deletes them, but people do
        wanted = {sha for sha, _info in produced.values()}
        if mf.DatastoreBlobs(origin_ds).existing(wanted) != wanted:
            return None
        task.clone_from(
            origin_run,
            origin_ds,
            passed_down=inputs[0],
            metadata=dict(fields, memoize_completed="cloned"),
        )
        return "cloned in the orchestrator, no task launched"

    def _compose(self, task, inputs, frames, manifest, produced, cache, fields) -> str | None:
        """Complete the task with exactly what a hit inside it would write: its
        input's artifacts, the entry's outputs (copied into the datastore first if
        they are not there) and this run's bookkeeping: how, for the log; else None.
        The origin need not exist, nor its surroundings be unchanged."""
        if self._parameters is None:
            self._parameters = task.parameters_task() or False
        if self._parameters is False:
            return None  # a resume: the class attributes this run stores are not at hand
        try:
            # a bad blob is left for the launched task to diagnose, set aside and
            # warn about, once
            moved = import_blobs(
                mf.DatastoreBlobs(inputs[0]), cache, manifest.artifacts, may_delete=False
            )
        except (CacheFault, OSError):
            return None
        task.compose(
            inputs[0],
            self._parameters,
            produced,
            manifest.transition,
            frames,
            self._saved,
            metadata=dict(fields, memoize_completed="composed"),
        )
        return "composed in the orchestrator, no task launched; %s" % moved.describe()

    def _foreach_bookkeeping(self, first_input) -> dict[str, Any]:
        """``mf.FOREACH_BOOKKEEPING`` of the task's first input, loaded once per
        distinct value: every item of a foreach has the same parent."""
        hashes = mf.artifact_hashes(first_input)
        ident = tuple(hashes.get(name) for name in mf.FOREACH_BOOKKEEPING)
        return self._bookkeeping.get(
            ident, lambda: mf.load_present(first_input, mf.FOREACH_BOOKKEEPING)
        )

    def _code_of(self, task) -> dict[str, str]:
        # the orchestrator's view of the flow's source is fixed when it imported it
        with self._lock:
            if task.step not in self._code:
                step_func = mf.step_function(task.flow, task.step)
                self._code[task.step] = code_components(
                    step_func, task.flow.__class__, mf.flow_file(task.flow)
                )
            return self._code[task.step]

    def _eligible(self, deco, task) -> bool:
        if not config.clone_hits() or config.mode() not in ("on", "read"):
            return False
        refresh_all, refresh_steps = config.refresh_request()
        if deco.args["refresh"] or refresh_all or task.step in refresh_steps:
            return False
        if deco.args["outputs"] is not None or task.is_recursive():
            return False
        audit = deco.args.get("audit")  # audit.py: a sampled hit runs its body in the task
        if (config.audit_fraction() if audit is None else audit) > 0:
            return False
        if len(task.input_paths) > MAX_JOIN_INPUTS:
            return False
        return all(getattr(d, "name", None) in CLONE_SAFE_DECORATORS for d in task.decorators)

    def _cache(self, root: str) -> Cache:
        # one store per root: creating boto3 clients from several threads at once
        # is not safe
        with self._lock:
            if root not in self._caches:
                self._caches[root] = Cache(open_store(root), signing_key=config.signing_key())
            return self._caches[root]

    def _origin(self, task, origin: str):
        parts = (origin or "").split("/")
        if len(parts) != 4:
            return None
        flow_name, run_id, step, task_id = parts
        if flow_name != task.flow.name or step != task.step or run_id == task.run_id:
            return None
        ds = task.open_task(run_id, step, task_id)
        return None if ds is None else (run_id, ds)

    def _same_bookkeeping(self, task, frames, manifest, origin_ds, origin_hashes, first) -> bool:
        expected = {
            name: mf.jsonable_bookkeeping(name, value)
            for name, value in mf.task_bookkeeping(task.step, frames, manifest.transition).items()
        }
        expected["_iteration_stack"] = []  # what Metaflow reads when a task lacks it
        parent_hashes = mf.artifact_hashes(first)
        is_join = mf.node_type(task.graph, task.step) == "join"
        for attr in mf.TRANSITION_ATTRIBUTES:
            if attr in expected:
                continue
            # not set by the step: a linear task inherits its input's (as long as the
            # item list, for _foreach_values), compared by hash rather than loaded; a
            # join inherits nothing of it
            inherited = None if is_join else parent_hashes.get(attr)
            if origin_hashes.get(attr) != inherited:
                return False
        if not ((manifest.transition or {}).get("_transition") or {}).get("foreach"):
            # Only a foreach sets _foreach_values; other steps of entries recorded
            # before passed their parent's on. When the origin carries the very one
            # the task would inherit, don't load it for every task of a wide foreach.
            origin_sha = origin_hashes.get("_foreach_values")
            if origin_sha is not None and origin_sha == parent_hashes.get("_foreach_values"):
                expected.pop("_foreach_values", None)
        return all(
            value == expected[name]
            for name, value in self._bookkeeping_of(origin_ds, origin_hashes, expected).items()
        )

    def _bookkeeping_of(self, origin_ds, origin_hashes, names) -> dict[str, Any]:
        """``mf.bookkeeping_values`` of an origin task, each distinct stored object
        loaded once per run: the tasks of a step share all their bookkeeping objects
        but the foreach stack, and an object's hash names its content."""
        values, to_load = {}, []
        for name in names:
            # an absent object (no hash) reads as Metaflow's default: not memoized
            known = (
                _ABSENT
                if name not in origin_hashes
                else self._stored_values.known((name, origin_hashes[name]))
            )
            if known is _ABSENT:
                to_load.append(name)
            else:
                values[name] = known
        loaded = mf.bookkeeping_values(origin_ds, to_load) if to_load else {}
        for name, value in loaded.items():
            if name in origin_hashes:
                self._stored_values.put((name, origin_hashes[name]), value)
        values.update(loaded)
        return values
