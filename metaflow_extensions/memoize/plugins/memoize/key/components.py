"""Cache keys: pure functions from a step's identity and inputs to a digest.

A key is the xxh3-128 digest of a canonical JSON document (its *components*).
The components are kept in each manifest so that a later miss can say which of
them changed (``diff_components``). Nothing here does I/O or loads artifacts:
inputs are identified by the content hashes Metaflow already computed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import xxhash

#: bump when the meaning of a component changes, so old entries stop matching
KEY_FORMAT = 2

#: Metaflow bookkeeping that is not user data: never part of a key
BOOKKEEPING_ARTIFACTS = frozenset(
    [
        "_graph_info",
        "_transition",
        "_task_ok",
        "_success",
        "_exception",
        "_current_step",
        "_foreach_stack",
        "_iteration_stack",
        "_foreach_var",
        "_foreach_num_splits",
        "_foreach_values",
        "_unbounded_foreach",
        "_parallel_ubf_iter",
        "_control_mapper_tasks",
        "_control_task_is_mapper_zero",
        "_configs_processed",
        "_catch_exception",
    ]
)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def digest_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def digest_json(value: Any) -> str:
    return digest_bytes(canonical_json(value).encode("utf-8"))


def select_inputs(
    artifacts: Mapping[str, str],
    include: Sequence[str] | None = None,
    ignore: Iterable[str] = (),
    drop: Iterable[str] = (),
) -> dict[str, str]:
    """The artifact hashes that enter a key.

    ``include`` (the decorator's ``inputs=``) keeps only those names; ``ignore``
    and ``drop`` (e.g. a foreach list the step never reads) remove names.
    Bookkeeping never enters.
    """
    excluded = set(ignore) | set(drop) | BOOKKEEPING_ARTIFACTS
    wanted = None if include is None else set(include)
    return {
        name: sha
        for name, sha in artifacts.items()
        if name not in excluded and (wanted is None or name in wanted)
    }


def input_id(step: str, index: int | None) -> str:
    """How a join names one of its inputs in dependency ids: parent step and
    foreach index, never the position it arrived in (which varies)."""
    return "%s/%s" % (step, "-" if index is None else index)


def join_inputs_component(
    inputs: Iterable[tuple[str, int | None, Mapping[str, str]]],
) -> list[list[Any]]:
    """A join's inputs, independent of the order they arrive in.

    Each input is (parent step, foreach index or None, selected artifacts). The
    result is sorted by (step, index): arrival order varies between runs for
    static joins, while a foreach join's inputs are meaningfully ordered by index.
    """
    rows = [
        [step, -1 if index is None else index, digest_json(dict(arts)), sorted(arts)]
        for step, index, arts in inputs
    ]
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def build_components(
    flow: str,
    step: str,
    code: Mapping[str, str],
    args: Mapping[str, Any],
    inputs: Any,
    foreach: Sequence[Mapping[str, Any]],
    env: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything that decides a step's result, as one JSON-able document.

    ``code``: name -> digest of normalized source (the step and helpers it uses).
    ``args``: the decorator's key-relevant arguments.
    ``inputs``: for a linear step {artifact: content hash}; for a join the rows
    from ``join_inputs_component``.
    ``foreach``: one entry per enclosing foreach frame: {step, var, item} where
    item is the digest of the item's value (never its position).
    ``env``: interpreter, environment decorators, requested package versions.
    """
    return {
        "format": KEY_FORMAT,
        "flow": flow,
        "step": step,
        "code": dict(code),
        "args": dict(args),
        "inputs": inputs,
        "foreach": [dict(f) for f in foreach],
        "env": dict(env),
    }


def key_of(components: Mapping[str, Any]) -> str:
    return digest_json(components)


def _diff_maps(label, old, new, noun):
    reasons = []
    old = old or {}
    new = new or {}
    changed = sorted(n for n in new if n in old and old[n] != new[n])
    added = sorted(n for n in new if n not in old)
    removed = sorted(n for n in old if n not in new)
    for n in changed:
        reasons.append("%s '%s' changed" % (noun, n) if label is None else label % n)
    for n in added:
        reasons.append("%s '%s' added" % (noun, n))
    for n in removed:
        reasons.append("%s '%s' removed" % (noun, n))
    return reasons


def diff_components(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human reasons why ``new`` differs from ``old`` (empty when they are equal)."""
    if old.get("format") != new.get("format"):
        return ["key format changed (extension upgraded)"]
    reasons: list[str] = []
    old_code, new_code = old.get("code", {}), new.get("code", {})
    if old_code.get("step") != new_code.get("step"):
        reasons.append("code changed (step body)")
    for name in sorted(set(old_code) | set(new_code)):
        if name == "step" or old_code.get(name) == new_code.get(name):
            continue
        if name.startswith("helper:"):
            reasons.append("code changed (helper %s)" % name[len("helper:") :])
        elif name.startswith("const:"):
            reasons.append("code changed (constant %s)" % name[len("const:") :])
        elif name.startswith("depends_on:"):
            reasons.append("dependency changed (%s)" % name[len("depends_on:") :])
        else:
            reasons.append("code changed (%s)" % name)
    reasons += _diff_maps(None, old.get("args"), new.get("args"), "argument")
    old_in, new_in = old.get("inputs"), new.get("inputs")
    if isinstance(old_in, dict) and isinstance(new_in, dict):
        reasons += _diff_maps(None, old_in, new_in, "input")
    elif old_in != new_in:
        if isinstance(old_in, list) and isinstance(new_in, list):
            old_rows = {(r[0], r[1]): r[2] for r in old_in}
            new_rows = {(r[0], r[1]): r[2] for r in new_in}
            for k in sorted(set(old_rows) | set(new_rows)):
                if old_rows.get(k) != new_rows.get(k):
                    where = k[0] if k[1] < 0 else "%s[%d]" % k
                    reasons.append("join input from %s changed" % where)
        else:
            reasons.append("inputs changed")
    if old.get("foreach") != new.get("foreach"):
        reasons.append("foreach item changed")
    reasons += _diff_maps(None, old.get("env"), new.get("env"), "environment")
    if not reasons and old != new:
        reasons.append("key components changed")
    return reasons


def diff_other_item(other: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Reasons from an entry of the same step for another foreach item: what
    differs besides the item (code, arguments, environment). The item itself
    is no reason: the entry of this item was not found, not changed."""
    return diff_components({**other, "foreach": new.get("foreach")}, new)


def changed_static_inputs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The input artifacts whose hashes differ between two keys' components
    (``inputs=`` steps key them statically; others observe what they read)."""
    old_in, new_in = old.get("inputs"), new.get("inputs")
    if not (isinstance(old_in, dict) and isinstance(new_in, dict)):
        return []
    return sorted(n for n in new_in if n in old_in and old_in[n] != new_in[n])
