"""Mutations: one change to a corpus flow, and what it makes necessary to re-run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: every kind the catalogue knows, with what it changes (docs/verification.md lists them)
KINDS = {
    "step_body": "edit a step body",
    "helper_d1": "edit a helper the step calls",
    "helper_d2": "edit a helper of a helper",
    "helper_d3": "edit a helper at depth 3",
    "helper_import_in_step": "edit a helper imported inside the step body",
    "method": "edit a flow method the step calls",
    "method_helper": "edit a helper called from a flow method",
    "closure_arg": "change the argument of a closure factory",
    "decorator": "change the argument of a decorator on a helper",
    "decorated_helper": "edit the body of a decorated helper",
    "constant": "change a module constant",
    "enum_constant": "change the value of an Enum member",
    "class_attr": "change a flow class attribute",
    "param_value": "pass another parameter value",
    "param_default": "change a parameter default",
    "config_value": "change a value in a Config file",
    "include_file": "change the content of an IncludeFile",
    "read_file": "change a file the step opens (not in depends_on)",
    "depends_on_file": "change a file listed in depends_on",
    "foreach_reorder": "reorder a foreach list",
    "foreach_extend": "add an item to a foreach list",
    "foreach_shrink": "remove an item of a foreach list",
    "foreach_duplicate": "duplicate an item of a foreach list",
    "switch_flip": "make a switch take its other branch",
    "step_add_upstream": "add a step upstream",
    "step_remove_upstream": "remove a step upstream",
    "env_var": "change an @environment variable",
    "memoize_args": "change @memoize arguments",
    "native_read": "change a data file a native library reads (pyarrow)",
    "glob_match": "add a file a step's glob matches, in a folder that existed",
    "glob_nonmatch": "add a file a step's glob does not match (nothing to re-run)",
    "symlink": "repoint a symlink a step reads through",
    "child_process": "edit a script, or a module it imports, that a step runs in a child process",
    "upstream_rerun": "run the flow a step reads through the Metaflow Client again, on new data",
}


@dataclass
class Mutation:
    """``edits``: (file, old text, new text), applied once each; ``args``: extra
    run arguments; ``needs``: the steps whose code or non-artifact inputs change
    (they must run; what runs because its input artifacts changed is derived)."""

    id: str
    kind: str
    edits: list = field(default_factory=list)
    needs: list = field(default_factory=list)
    args: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    #: (link, new target): symlinks to repoint, relative to the flow's folder
    links: list = field(default_factory=list)
    #: flow files run (uncached) after the edits, before the case's runs: an
    #: upstream flow the corpus flow reads through the Metaflow Client
    before: list = field(default_factory=list)

    def __post_init__(self):
        assert self.kind in KINDS, self.kind

    def conflicts(self, other: Mutation) -> bool:
        mine = {(f, old) for f, old, _ in self.edits} | {a for a in self.args if a.startswith("--")}
        theirs = {(f, old) for f, old, _ in other.edits} | {
            a for a in other.args if a.startswith("--")
        }
        texts = [old for _, old, _ in self.edits] + [new for _, _, new in self.edits]
        overlapping = any(old in t or t in old for _, old, _ in other.edits for t in texts)
        links = {link for link, _ in self.links} & {link for link, _ in other.links}
        return (
            bool(mine & theirs)
            or overlapping
            or bool(set(self.env) & set(other.env))
            or bool(links)
        )


class MutationDoesNotApply(Exception):
    pass


def apply(directory: Path, mutations: list[Mutation]) -> None:
    for m in mutations:
        for link, target in m.links:
            path = directory / link
            if not path.is_symlink():
                raise MutationDoesNotApply("%s: %s is not a symlink" % (m.id, link))
            path.unlink()
            path.symlink_to(target)
        for filename, old, new in m.edits:
            path = directory / filename
            text = path.read_text() if path.exists() else ""
            if old == "" and not text:
                path.write_text(new)
                continue
            if text.count(old) != 1:
                raise MutationDoesNotApply(
                    "%s: %r occurs %d times in %s" % (m.id, old, text.count(old), filename)
                )
            path.write_text(text.replace(old, new, 1))
