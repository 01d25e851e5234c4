"""What an entry relied on, grouped by kind and put in words (`memoize show`, `explain`).

Pure: takes an entry's observed dependencies ``{dependency id: value}`` (deps.py
lists the kinds) and, optionally, its key components, and returns groups of
dependencies in a fixed order, each dependency with a line a data scientist
can read. No I/O; the CLI only prints what this returns.

A kind this module does not know (one added since) lands in the group
``other``, shown by its id; a module that defines a kind can give it a group
and words with ``register_kind``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: (group id, title, what the group holds), in display order
GROUPS: tuple[tuple[str, str, str], ...] = (
    (
        "code",
        "Code",
        "the step body, and functions and methods of your code that ran",
    ),
    (
        "module_state",
        "Module state",
        "module-level values the code read, and state set at import by module-level code",
    ),
    (
        "class_attributes",
        "Class attributes",
        "class attributes of the flow and of your classes, read directly or through instances",
    ),
    ("inputs", "Input artifacts", "parameters and artifacts of earlier steps the step read"),
    ("foreach", "Foreach position", "where the task sits in its foreach"),
    ("files", "Files", "files read (by content), and file metadata read"),
    (
        "listings",
        "Folder listings and globs",
        "the names a folder listing or a glob returned",
    ),
    (
        "existence",
        "Existence checks and absent paths",
        "paths checked for existence; an absent path counts too",
    ),
    ("programs", "Programs run", "programs the step started, by command line"),
    (
        "client",
        "Metaflow Client reads",
        "runs and artifacts read through the Metaflow Client, and the query that chose them",
    ),
    (
        "environment",
        "Environment",
        "Python version, declared packages and variables, the working directory",
    ),
    (
        "unobservable",
        "Not observable",
        "what could not be observed: the entry never verifies (every lookup misses)",
    ),
    ("other", "Other", "dependencies of a kind this version does not describe"),
)
GROUP_TITLES = {gid: title for gid, title, _ in GROUPS}

#: values that say something about the dependency when it was recorded
_ABSENT = ("absent", "missing")
_MODIFIED = "modified while the step ran"
_DIGEST = re.compile(r"^[0-9a-f]{16,}$")


@dataclass(frozen=True)
class Dependency:
    """One recorded dependency, in words."""

    id: str  # as recorded (``key:`` ids stand for key components)
    kind: str
    text: str
    value: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "text": self.text, "value": self.value}


@dataclass
class DependencyGroup:
    id: str
    title: str
    about: str
    items: list[Dependency] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "about": self.about,
            "items": [d.to_dict() for d in self.items],
        }


# -- words per kind ---------------------------------------------------------------
def _where(module: str, name: str) -> str:
    """`helpers.clean`, or `clean` for the flow file itself (``__main__``)."""
    return name if module == "__main__" else "%s.%s" % (module, name)


def _input_source(iid: str) -> str:
    """'a' (a static branch), 'body[3]' (a foreach input), from ``step/index``."""
    step, _, index = iid.rpartition("/")
    return step if index == "-" else "%s[%s]" % (step, index)


def _code(rest: str, value: str) -> str:
    module, _, name = rest.partition(":")
    return "`%s`" % _where(module, name)


def _source(rest: str, value: str) -> str:
    return "all of %s (code made while the step ran)" % rest


def _global(rest: str, value: str) -> str:
    module, _, name = rest.partition(":")
    return "`%s`" % _where(module, name)


def _toplevel(rest: str, value: str) -> str:
    where = "the flow file" if rest == "__main__" else "`%s`" % rest
    return "what %s sets at import (its top-level statements)" % where


def _flowattr(rest: str, value: str) -> str:
    return "`self.%s` (of the flow class)" % rest


def _classattr(rest: str, value: str) -> str:
    module, _, name = rest.partition(":")
    return "`%s`" % _where(module, name)


def _artifact(rest: str, value: str) -> str:
    if rest == "*":
        return "every input artifact (the step enumerated them)"
    return "`%s`" % rest


def _input(rest: str, value: str) -> str:
    iid, _, name = rest.rpartition(":")
    if name == "*":
        return "every artifact of input %s (merged, or its item read)" % _input_source(iid)
    return "`%s` of input %s" % (name, _input_source(iid))


def _task(rest: str, value: str) -> str:
    if rest == "index":
        return "self.index" + (" = %s" % value if value else "")
    if rest == "foreach_stack":
        return "self.foreach_stack()" + (" = %s" % value if value else "")
    return "task %s" % rest


def _file(rest: str, value: str) -> str:
    return rest


def _stat(rest: str, value: str) -> str:
    return "%s (metadata: size, modification time)" % rest


def _dir(rest: str, value: str) -> str:
    return "%s/ (the names in it)" % rest.rstrip("/")


def _glob(rest: str, value: str) -> str:
    """``[folder, pattern, recursive]``, and how it was asked (``glob+hidden``...)."""
    try:
        folder, pattern, recursive, *how = json.loads(rest)
    except (ValueError, TypeError):
        return "glob %s" % rest
    where = str(folder).rstrip("/")
    notes = ["recursive"] if recursive else []
    if how and "hidden" in str(how[0]):
        notes.append("hidden files included")
    # a pattern relative to the working directory reads best as written
    text = pattern if where in ("", ".") else "%s in %s/" % (pattern, where)
    return "glob %s%s" % (text, " (%s)" % ", ".join(notes) if notes else "")


#: what an existence check found (deps.py), as words
_EXISTENCE = {
    "absent": "absent",
    "missing": "absent",
    "file": "a file",
    "folder": "a folder",
    "dangling link": "a link to nothing",
}


def _exists(rest: str, value: str) -> str:
    state = _EXISTENCE.get(value.strip())
    return rest + (" (%s when recorded)" % state if state else "")


def _command(rest: str, value: str) -> str:
    return "a program, by its command line (#%s)" % rest[:12]


def _client_query(query: Any) -> str:
    """A Client query (client_reads.py) as the code that asks it would read."""
    if not isinstance(query, dict):
        return str(query)
    q, flow = query.get("q"), query.get("flow")
    if q in ("latest_successful_run", "latest_run"):
        text = "Flow(%r).%s" % (flow, q)
    elif q == "runs":
        text = "Flow(%r).runs(%s)" % (flow, ", ".join(repr(t) for t in query.get("tags") or ()))
    elif q == "object":
        text = "%s(%r)" % (query.get("kind") or "object", query.get("path"))
    elif q == "run_state":
        text = "whether run %s has finished and succeeded" % query.get("run")
    elif q == "artifacts":
        text = "artifacts %s of %s" % (", ".join(query.get("names") or ()), query.get("task"))
    elif q == "namespace":
        return "the namespace the step started in"
    elif q == "trigger":
        return "current.trigger (what triggered the run)"
    else:
        return json.dumps(query, sort_keys=True, separators=(", ", ": "))
    if "ns" in query and q != "artifacts":
        ns = query.get("ns")
        text += " in namespace %s" % ns if ns is not None else " in the global namespace"
    return text


def _client(rest: str, value: str) -> str:
    try:
        query = json.loads(rest)
    except ValueError:
        query = rest
    # a listing's or the artifacts' value is a digest or a map: not worth a line
    listing = isinstance(query, dict) and query.get("q") in ("runs", "artifacts")
    resolved = "" if listing else _shown(value)
    return _client_query(query) + (" -> %s" % resolved if resolved else "")


def _cwd(rest: str, value: str) -> str:
    where = value.strip()
    if where == ".":
        where = "the flow's folder"
    elif where and not where.startswith("/"):
        where = "%s (in the flow's folder)" % where
    else:
        where = _shown(where)
    return "the working directory%s (relative paths were used)" % (": %s" % where if where else "")


def _unobserved(rest: str, value: str) -> str:
    return "could not be observed: %s" % rest


def _incomplete(rest: str, value: str) -> str:
    return "the recording was cut short (%s)" % rest


#: kind -> (group id, words for the id after ``kind:`` and the recorded value)
KINDS: dict[str, tuple[str, Callable[[str, str], str]]] = {
    "code": ("code", _code),
    "source": ("code", _source),
    "global": ("module_state", _global),
    "toplevel": ("module_state", _toplevel),
    "flowattr": ("class_attributes", _flowattr),
    "classattr": ("class_attributes", _classattr),
    "artifact": ("inputs", _artifact),
    "input": ("inputs", _input),
    "task": ("foreach", _task),
    "file": ("files", _file),
    "stat": ("files", _stat),
    "dir": ("listings", _dir),
    "glob": ("listings", _glob),
    "exists": ("existence", _exists),
    "command": ("programs", _command),
    "client": ("client", _client),
    "cwd": ("environment", _cwd),
    "unobserved": ("unobservable", _unobserved),
    "incomplete": ("unobservable", _incomplete),
}
#: kinds whose words already say what their value means
_VALUE_SHOWN = frozenset(["task", "exists", "client", "cwd"])


def register_kind(kind: str, group: str, words: Callable[[str, str], str]) -> None:
    """Give a dependency kind defined elsewhere a group (one of GROUPS) and words."""
    if group not in GROUP_TITLES:
        raise ValueError("no dependency group %r (groups: %s)" % (group, ", ".join(GROUP_TITLES)))
    KINDS[kind] = (group, words)


def _shown(value: str) -> str:
    """A recorded value worth showing: short, and not a digest."""
    value = value.strip()
    if not value or _DIGEST.match(value) or len(value) > 60:
        return ""
    if value in ("unobservable", "incomplete", "unknown dependency"):
        return ""
    return value


def _note(value: str) -> str:
    """What a recorded value says about the dependency, for kinds whose words do not."""
    if value in _ABSENT:
        return "absent when recorded"
    if value.startswith(_MODIFIED):
        return "changed while the step ran: never verifies"
    if value.startswith("unavailable"):
        return value
    return ""


def describe(dep: str, value: str = "") -> tuple[str, str]:
    """(group id, words) of one dependency id and its recorded value."""
    kind, sep, rest = dep.partition(":")
    known = KINDS.get(kind) if sep else None
    if known is None:
        shown = _shown(value)
        return "other", dep + (" = %s" % shown if shown else "")
    group, words = known
    try:
        text = words(rest, value)
    except Exception:  # a malformed id is still listed, as recorded
        text = dep
    if kind not in _VALUE_SHOWN:
        note = _note(value)
        if note:
            text = "%s (%s)" % (text, note)
    return group, text


# -- what the key itself holds ------------------------------------------------------
def _key_dependencies(components: Mapping[str, Any]) -> list[tuple[str, Dependency]]:
    """(group, dependency) for the parts of the key a person would look for beside
    the observed ones: the step body, ``depends_on``, ``version``, ``inputs=``
    and the environment. Their ids start with ``key:``."""
    out: list[tuple[str, Dependency]] = []

    def add(group, dep_id, text, value=""):
        out.append((group, Dependency(dep_id, "key", text + " (in the key)", value)))

    code = components.get("code")
    if isinstance(code, Mapping):
        for name, digest in sorted(code.items()):
            value = digest if isinstance(digest, str) else json.dumps(digest, sort_keys=True)
            if name == "step":
                add("code", "key:code.step", "the step body", value)
            elif name.startswith("depends_on:"):
                add("code", "key:code.%s" % name, "%s (depends_on)" % name[11:], value)
            else:
                add("code", "key:code.%s" % name, name, value)
    args = components.get("args")
    if isinstance(args, Mapping) and args.get("version") is not None:
        add("code", "key:args.version", "version=%r" % (args["version"],))
    inputs = components.get("inputs")
    if isinstance(inputs, Mapping):
        for name, sha in sorted(inputs.items()):
            add("inputs", "key:inputs.%s" % name, "`%s` (declared)" % name, str(sha))
    elif isinstance(inputs, list) and inputs:
        add("inputs", "key:inputs", "which inputs the join has (%d)" % len(inputs))
    env = components.get("env")
    if isinstance(env, Mapping):
        for name, value in sorted(env.items()):
            text_value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            if name == "python":
                text = "Python %s" % value
            elif name.startswith("package:"):
                text = "package %s %s (env=)" % (name[8:], value)
            else:
                deco, _, arg = name.partition(".")
                text = "@%s %s %s" % (deco, arg, text_value)
            add("environment", "key:env.%s" % name, text, text_value)
    return out


def group_dependencies(
    observed: Mapping[str, str], components: Mapping[str, Any] | None = None
) -> list[DependencyGroup]:
    """The non-empty groups, in GROUPS order; within a group, by words then id.

    ``components`` (the entry's key components) adds what the key itself holds
    (ids ``key:...``) to the groups where a person would look for it."""
    found: dict[str, list[Dependency]] = {}
    if components:
        for group, dep in _key_dependencies(components):
            found.setdefault(group, []).append(dep)
    for dep_id, value in observed.items():
        value = value if isinstance(value, str) else str(value)
        group, text = describe(dep_id, value)
        kind = dep_id.partition(":")[0]
        found.setdefault(group, []).append(Dependency(dep_id, kind, text, value))
    groups = []
    for gid, title, about in GROUPS:
        items = found.get(gid)
        if items:
            keyed = [d for d in items if d.kind == "key"]
            seen = sorted((d for d in items if d.kind != "key"), key=lambda d: (d.text, d.id))
            groups.append(DependencyGroup(gid, title, about, keyed + seen))
    return groups


def groups_json(groups: list[DependencyGroup]) -> dict[str, Any]:
    """``{group id: {title, about, items: [{id, kind, text, value}]}}``."""
    return {g.id: g.to_dict() for g in groups}


def groups_from_json(doc: Mapping[str, Any]) -> list[DependencyGroup]:
    """The groups back from ``groups_json`` (what `explain --json` carries)."""
    titles = {gid: (title, about) for gid, title, about in GROUPS}
    out = []
    for gid, group in doc.items():
        title, about = titles.get(gid, (group.get("title", gid), group.get("about", "")))
        items = [
            Dependency(d["id"], d.get("kind", ""), d.get("text", d["id"]), d.get("value", ""))
            for d in group.get("items", ())
        ]
        out.append(DependencyGroup(gid, title, about, items))
    return out


def observed_count(groups: list[DependencyGroup]) -> int:
    """How many of the dependencies were observed (not part of the key)."""
    return sum(1 for g in groups for d in g.items if d.kind != "key")


def groups_text(groups: list[DependencyGroup], indent: str = "  ") -> str:
    """A heading per group, one dependency a line under it."""
    lines = []
    for g in groups:
        lines.append("%s%s (%d)" % (indent, g.title, len(g.items)))
        lines += ["%s  %s" % (indent, d.text) for d in g.items]
    return "\n".join(lines)
