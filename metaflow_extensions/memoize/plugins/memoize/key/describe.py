"""Reasons, in words: why recorded dependencies no longer hold."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

#: dependency kinds that live in modules of their own: kind -> function of
#: (the id after ``kind:``, old value, new value) returning the reason
DESCRIBERS: dict[str, Callable[[str, str, str], str]] = {}


def describe_changes(
    changed: Iterable[str], old: Mapping[str, str], new: Mapping[str, str], join_inputs: int = 0
) -> list[str]:
    """One reason per changed dependency, except a join's inputs: one reason per
    artifact name, with how many of its ``join_inputs`` inputs changed it
    (``input 'model' changed in 4 of 5 inputs``), not one line per input."""
    reasons: list[str] = []
    per_name: dict[str, list[str]] = {}
    for dep in changed:
        kind, _, rest = dep.partition(":")
        if kind == "input" and join_inputs > 1 and new.get(dep) != "absent input":
            per_name.setdefault(rest.rpartition(":")[2], []).append(dep)
            continue
        reasons.append(describe_change(dep, old.get(dep, "absent"), new.get(dep, "absent")))
    for name, deps in sorted(per_name.items()):
        if len(deps) == 1:
            dep = deps[0]
            reasons.append(describe_change(dep, old.get(dep, "absent"), new.get(dep, "absent")))
        elif name == "*":
            reasons.append(
                "an artifact changed in %d of %d inputs (merged by the step)"
                % (len(deps), join_inputs)
            )
        else:
            gone = all(new.get(d) in ("absent", "missing") for d in deps)
            reasons.append(
                "input '%s' %s in %d of %d inputs (read by the step)"
                % (name, "removed" if gone else "changed", len(deps), join_inputs)
            )
    return reasons


def changed_input_names(changed: Iterable[str]) -> list[str]:
    """The input artifacts among changed dependency ids (for the causes of a miss)."""
    names = set()
    for dep in changed:
        kind, _, rest = dep.partition(":")
        if kind == "artifact" and rest != "*":
            names.add(rest)
        elif kind == "input":
            name = rest.rpartition(":")[2]
            if name != "*":
                names.add(name)
    return sorted(names)


def describe_change(dep: str, old: str, new: str) -> str:
    kind, _, rest = dep.partition(":")
    gone = new in ("absent", "missing")
    describer = DESCRIBERS.get(kind)
    if describer is not None:
        return describer(rest, old, new)
    if kind == "unobserved":
        return "could not be observed: %s" % rest
    if kind == "exists":
        if new == "absent":
            return "%s no longer exists" % rest
        return "%s %s" % (rest, "appeared" if old == "absent" else "changed kind (%s)" % new)
    if kind == "stat":
        return "size or modification time of %s changed" % rest
    if kind == "glob":
        where, pattern = _glob_words(rest)
        return "the files matching %s%s changed" % (pattern, where)
    if kind == "cwd":
        return "the working directory changed (the step opens relative paths)"
    if kind == "classattr":
        module, _, name = rest.partition(":")
        where = name if module == "__main__" else "%s.%s" % (module, name)
        return "class attribute `%s` %s (observed)" % (where, "removed" if gone else "changed")
    if kind == "toplevel":
        where = "the flow file" if rest == "__main__" else "module `%s`" % rest
        return "module-level code of %s changed (it runs at import)" % where
    if kind == "incomplete":
        return "the code the step ran could not be recorded (%s)" % rest
    if kind == "code":
        module, _, name = rest.partition(":")
        where = name if module == "__main__" else "%s.%s" % (module, name)
        return "helper `%s` %s (observed)" % (where, "removed" if gone else "changed")
    if kind == "global":
        module, _, name = rest.partition(":")
        where = name if module == "__main__" else "%s.%s" % (module, name)
        return "global `%s` %s (observed)" % (where, "removed" if gone else "changed")
    if kind == "flowattr":
        return "class attribute `%s` changed (observed)" % rest
    if kind == "file":
        return "file %s %s" % (rest, "is missing" if gone else "changed")
    if kind == "dir":
        return "directory listing %s changed" % rest
    if kind == "source":
        return "source file %s changed" % rest
    if kind == "task":
        return "foreach position changed (the step reads self.%s)" % rest
    if kind == "input":
        iid, _, name = rest.rpartition(":")
        source = iid.replace("/-", "").replace("/", "[") + ("]" if not iid.endswith("/-") else "")
        if name == "*":
            return "an artifact of input %s changed (merged by the step)" % source
        if new == "absent input":
            return "input %s is gone" % source
        return "input '%s' of %s %s (read by the step)" % (
            name,
            source,
            "removed" if gone else "changed",
        )
    if kind == "artifact" and rest == "*":
        return "an input artifact changed (the step enumerated them)"
    if kind == "artifact":
        if gone:
            return "input '%s' removed (read by the step)" % rest
        return "input '%s' changed (read by the step)" % rest
    return "dependency %s changed" % dep


def diff_observed(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """Reasons between two entries' recorded dependencies (for explain)."""
    # a dependency not used any more is not a reason by itself
    changed = [dep for dep in sorted(new) if old.get(dep) != new[dep]]
    joins = {dep.partition(":")[2].rpartition(":")[0] for dep in new if dep.startswith("input:")}
    return describe_changes(changed, old, new, len(joins))


def _glob_words(rest: str) -> tuple[str, str]:
    import json

    try:
        where, pattern, _recursive, _flavour = json.loads(rest)
    except (ValueError, TypeError):
        return "", rest
    return (" in %s" % where if where and where != "." else ""), "`%s`" % pattern
