"""Assembles a task's key components from Metaflow objects (inputs, foreach
frames, decorators); keys.py turns them into a digest."""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Sequence
from typing import Any

from .. import metaflow_compat as mf
from ..cache.manifest import REPR_MAX_PICKLED, shown_value
from ..settings import package_version
from .code import code_components, dependency_components, reads_attribute
from .components import (
    build_components,
    digest_bytes,
    input_id,
    join_inputs_component,
    select_inputs,
)
from .deps import DepContext

# Decorators whose arguments change what a step computes. Everything else
# (resources, retry, timeout, catch, card, ...) stays out of the key.
_ENV_DECORATOR_ARGS = {
    "environment": ("vars",),
    "pypi": ("packages", "python"),
    "conda": ("packages", "libraries", "python"),
    "pypi_base": ("packages", "python"),
    "conda_base": ("packages", "libraries", "python"),
    "kubernetes": ("image",),
    "batch": ("image",),
}


class UnidentifiableInput(Exception):
    """An input whose identity cannot be established: the task must not use the cache."""


def environment_component(decorators: Sequence[Any], env_packages: Sequence[str]) -> dict[str, Any]:
    env: dict[str, Any] = {"python": "%d.%d" % sys.version_info[:2]}
    for deco in decorators:
        wanted = _ENV_DECORATOR_ARGS.get(getattr(deco, "name", None))
        if not wanted:
            continue
        attrs = getattr(deco, "attributes", {}) or {}
        for arg in wanted:
            value = attrs.get(arg)
            if value not in (None, {}, [], ""):
                env["%s.%s" % (deco.name, arg)] = _jsonable(value)
    for name in env_packages:
        env["package:%s" % name] = package_version(name)
    return env


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def args_component(args: dict[str, Any]) -> dict[str, Any]:
    """The decorator arguments that decide the result (not ttl/refresh/store/lock)."""
    return {
        "version": args["version"],
        "inputs": args["inputs"],
        "ignore": sorted(args["ignore"]),
        "outputs": args["outputs"],
    }


def item_digest(item: Any) -> str:
    return _pickled_digest(item)[0]


def _pickled_digest(item: Any) -> tuple[str, int]:
    """(digest of the item's pickle, the pickle's size)."""
    try:
        data = pickle.dumps(item, protocol=4)
    except Exception as err:
        raise UnidentifiableInput("foreach item cannot be pickled: %s" % err)
    return digest_bytes(data), len(data)


def foreach_component(
    flow, source_datastore, frames, shown: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """One entry per enclosing foreach frame, and the frames' list artifact names.

    The item is identified by the digest of its value, read from the list
    artifact visible in ``source_datastore``. When the list cannot be found or
    does not match what Metaflow recorded for the frame, the task's identity is
    unknown: raise rather than guess.

    ``shown``: when given, one dict per frame is appended to it, the item as
    people see it in `memoize list`/`show` (manifest.shown_value); not keyed.
    """
    out, list_names = [], []
    for frame in frames:
        if frame.var is None:
            raise UnidentifiableInput("foreach frame of %s has no variable" % frame.step)
        list_names.append(frame.var)
        try:
            values = source_datastore[frame.var]
        except Exception:
            # An outer foreach seen from behind an inner join: the join's inputs
            # no longer carry the list. The task cannot read the item either;
            # what it can see of the frame is its position and the value
            # Metaflow recorded for it, and that is what is keyed.
            out.append(
                {
                    "step": frame.step,
                    "var": frame.var,
                    "position": [frame.index, frame.num_splits],
                    "value": None if frame.value is None else str(frame.value),
                }
            )
            if shown is not None:  # shown from the key component (manifest.context_of)
                shown.append({"step": frame.step, "var": frame.var})
            continue
        try:
            item = values[frame.index]
        except TypeError:
            item = list(values)[frame.index]
        except Exception as err:
            raise UnidentifiableInput("foreach item %s[%s]: %s" % (frame.var, frame.index, err))
        if frame.num_splits is not None:
            try:
                if len(values) != frame.num_splits:
                    raise UnidentifiableInput(
                        "foreach list '%s' was replaced after the split" % frame.var
                    )
            except TypeError:
                pass
        if frame.value is not None and mf.foreach_item_repr(flow, item) != frame.value:
            raise UnidentifiableInput("foreach list '%s' was replaced after the split" % frame.var)
        digest, size = _pickled_digest(item)
        out.append({"step": frame.step, "var": frame.var, "item": digest})
        if shown is not None:
            shown.append({"step": frame.step, "var": frame.var, **shown_value(item, size, digest)})
    return out, list_names


def shown_parameters(flow, task_datastore) -> dict[str, dict[str, str]]:
    """{parameter: manifest.shown_value} of the flow's parameters in a task's datastore.

    Not keyed (a parameter the step never reads is not in its key): for people,
    in `memoize list`/`show`. Only parameters whose pickle is small are loaded;
    the others are recorded by Metaflow's content hash, which costs nothing.
    """
    hashes = mf.artifact_hashes(task_datastore)
    infos = mf.artifact_infos(task_datastore)
    out = {}
    for name in mf.parameter_names(flow):
        sha = hashes.get(name)
        if sha is None:
            continue
        size = (infos.get(name) or {}).get("size")
        if not isinstance(size, int) or size > REPR_MAX_PICKLED:
            out[name] = {"digest": sha}
            continue
        try:
            value = getattr(flow, name)
        except Exception:  # a parameter that fails to load is still identified
            out[name] = {"digest": sha}
            continue
        out[name] = shown_value(value, size, sha)
    return out


def task_components(
    flow,
    graph,
    step_name: str,
    inputs: Sequence[Any],
    args: dict[str, Any],
    env: dict[str, Any],
    frames: Sequence[Any] | None = None,
    code: dict[str, str] | None = None,
    shown: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The key components of a task, from its input datastores.

    ``frames``: the task's foreach stack; by default the running task's own
    (the orchestrator passes the stack the task would have). ``code``: the
    step's ``code_components``, when the caller already has them. ``shown``:
    receives the foreach items as people see them (``foreach_component``).
    """
    if frames is None:
        frames = mf.foreach_frames(flow)
    source = inputs[0] if inputs else None
    foreach, list_names = (
        foreach_component(flow, source, frames, shown) if source is not None else ([], [])
    )
    input_maps = [mf.input_identity(ds) + (mf.artifact_hashes(ds),) for ds in inputs]
    return components_for(
        flow, graph, step_name, input_maps, foreach, list_names, args, env, code=code
    )


def components_for(
    flow,
    graph,
    step_name: str,
    input_maps: Sequence[tuple[str, int | None, dict[str, str]]],
    foreach: list[dict[str, Any]],
    list_names: Sequence[str],
    args: dict[str, Any],
    env: dict[str, Any],
    code: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Key components from already-gathered facts: shared by tasks and `memoize plan`.

    ``input_maps``: (parent step, foreach index or None, {artifact: hash}) per input.
    """
    step_func = mf.step_function(flow, step_name)
    flow_file = mf.flow_file(flow)
    flow_dir = os.path.dirname(os.path.abspath(flow_file)) if flow_file else os.getcwd()
    code = dict(code) if code is not None else code_components(step_func, flow.__class__, flow_file)
    # files and modules named in depends_on are read every time: they may change mid-run
    code.update(dependency_components(args["depends_on"], flow_dir))
    # A foreach list stays out of an item's key (re-ordering the list must still
    # hit) only when the step's code cannot read it.
    drop = [name for name in list_names if not reads_attribute(step_func, name)]

    def selected(artifacts):
        return select_inputs(artifacts, args["inputs"], args["ignore"], drop)

    by_reads = reads_keyed(graph, step_name, args)
    if mf.node_type(graph, step_name) == "join":
        # which inputs the join has stays in the static key; what it read from
        # them is observed (deps.py: input:<step>/<index>:<name>)
        rows = [
            (parent, index, {} if by_reads else selected(arts))
            for parent, index, arts in input_maps
        ]
        key_inputs: Any = join_inputs_component(rows)
    elif by_reads:
        # what the body reads is observed (deps.py: artifact:<name>)
        key_inputs = {}
    else:
        key_inputs = selected(input_maps[0][2]) if input_maps else {}
    return build_components(
        flow=flow.name,
        step=step_name,
        code=code,
        args=args_component(args),
        inputs=key_inputs,
        foreach=foreach,
        env=env,
    )


def dependency_context(
    flow,
    step_name: str,
    frames: Sequence[Any],
    first_input,
    private_roots: Sequence[str],
    graph=None,
    args: dict[str, Any] | None = None,
    join_inputs: Sequence[tuple[str, Any]] = (),
) -> DepContext:
    """What the observed dependencies of a task are evaluated against: the
    flow's current code, its directory, the task's foreach position and its
    first input's artifact hashes (the orchestrator passes the parent's;
    `memoize plan` a {name: hash} map of what the task would see).

    ``join_inputs``: a join's inputs as (input id, datastore or {name: hash})."""
    flow_file = mf.flow_file(flow)
    flow_dir = os.path.dirname(os.path.realpath(flow_file)) if flow_file else os.getcwd()
    step_func = mf.step_function(flow, step_name)
    hashes: dict[str, str] | None = first_input if isinstance(first_input, dict) else None

    def artifact_hashes():
        nonlocal hashes
        if hashes is None:
            hashes = mf.artifact_hashes(first_input) if first_input is not None else {}
        return hashes

    sources = dict(join_inputs)
    loaded: dict[str, Any] = {}

    def input_hashes(iid):
        if iid not in loaded:
            source = sources.get(iid)
            if source is None or isinstance(source, dict):
                loaded[iid] = source
            else:
                loaded[iid] = mf.artifact_hashes(source)
        return loaded[iid]

    return DepContext(
        flow_class=flow.__class__,
        flow_dir=flow_dir,
        index=frames[-1].index if frames else None,
        foreach_indices=[f.index for f in frames],
        artifact_hash=lambda name: artifact_hashes().get(name),
        artifact_hashes=artifact_hashes,
        input_ids=tuple(sources),
        input_hashes=input_hashes,
        unkeyed_lists=tuple(
            f.var for f in frames if f.var and not reads_attribute(step_func, f.var)
        ),
        private_roots=tuple(p for p in private_roots if p and "://" not in p),
        reads_keyed=reads_keyed(graph, step_name, args),
        ignored=frozenset((args or {}).get("ignore") or ()),
    )


def join_input_sources(graph, step_name: str, inputs: Sequence[Any]) -> list[tuple[str, Any]]:
    """A join's input datastores by input id (for ``dependency_context``); [] if
    the step is not a join."""
    if graph is None or mf.node_type(graph, step_name) != "join":
        return []
    return [(input_id(*mf.input_identity(ds)), ds) for ds in inputs]


def reads_keyed(graph, step_name: str, args: dict[str, Any] | None) -> bool:
    """Whether a step's input artifacts are keyed by what its body reads.

    Every step without ``inputs=``: a parameter or an upstream artifact the
    step never reads does not invalidate it. A join reads per input (the
    inputs it has are in the static key)."""
    return graph is not None and args is not None and args.get("inputs") is None


_UNSTABLE_TYPES = ("set", "frozenset")


def unstable_inputs(infos: dict[str, dict[str, Any]], keyed: Sequence[str]) -> list[str]:
    """Keyed input artifacts whose pickled bytes may differ in every process.

    A set or frozenset of strings pickles in hash-seed order, which changes per
    process: its content hash, hence the key, never repeats. Metaflow records
    each artifact's type, so this costs no load.
    """
    out = []
    for name in keyed:
        type_name = str((infos.get(name) or {}).get("type", ""))
        if type_name.split(".")[-1].strip("<>' ").replace("class '", "") in _UNSTABLE_TYPES:
            out.append(name)
    return sorted(out)
