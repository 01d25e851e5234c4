"""The corpus: flows (files + mutation sites) the oracle runs mutated.

A corpus flow is a set of files written into a fresh directory (the flow file is
``flow.py``) plus ``_counter.py``, through which every step body records that it
ran. Add a flow: write its files under tests/oracle/flows/<name>/ (or generate
them) and list its mutation sites in ``_SITES`` below; add a mutation: append a
``Mutation`` to a flow's sites (its kind must be one of mutations.KINDS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import core_graphs
from .mutations import Mutation

HERE = Path(__file__).parent
REPO = HERE.parent.parent
TESTS_FLOWS = REPO / "tests" / "flows"
EXAMPLES = REPO / "examples"


@dataclass
class CorpusFlow:
    name: str
    cls: str
    files: dict  # file name -> text; the flow file is flow.py
    sites: list = field(default_factory=list)
    args: list = field(default_factory=list)
    #: symlink (relative to the flow's folder) -> its target
    links: dict = field(default_factory=dict)
    #: flow files run (uncached) before the warm run: flows it reads through the Client
    before: list = field(default_factory=list)

    def site(self, mutation_id: str) -> Mutation:
        for m in self.sites:
            if m.id == mutation_id:
                return m
        raise KeyError("%s has no mutation %s" % (self.name, mutation_id))


_STEP_DEF = re.compile(r"(    @step\n(?:    @.*\n)*    def (\w+)\(self(?:, inputs)?\):\n)")


def with_records(source: str) -> str:
    """Adds `record(step)` as the first line of every step body (for flows that lack it)."""
    source = _STEP_DEF.sub(lambda m: m.group(1) + '        record("%s")\n' % m.group(2), source)
    return "from _counter import record\n" + source


def _read_dir(path: Path) -> dict:
    return {p.name: p.read_text() for p in sorted(path.iterdir()) if p.is_file()}


def _edit(kind, mid, filename, old, new, needs):
    return Mutation(mid, kind, [(filename, old, new)], needs=list(needs))


def _kitchen() -> CorpusFlow:
    f = "flow.py"
    relay = """    @memoize
    @step
    def relay(self):
        record("relay")
        self.next(self.fan)

"""
    extra = """        self.next(self.extra)

    @memoize
    @step
    def extra(self):
        record("extra")
        self.next(self.fan)
"""
    extra_art = extra.replace('record("extra")', 'record("extra")\n        self.extra_mark = 1')
    sites = [
        _edit("step_body", "step_body:prep", f, "self.FACTOR * 2", "self.FACTOR * 3", ["prep"]),
        _edit(
            "step_body",
            "step_body:body",
            f,
            "square(self.input) + self.limit",
            "square(self.input) + self.limit + 1",
            ["body"],
        ),
        _edit(
            "step_body",
            "step_body:collect",
            f,
            "(i.input, i.sq, i.mode)",
            "(i.sq, i.input, i.mode)",
            ["collect"],
        ),
        _edit(
            "step_body",
            "step_body:end",
            f,
            "(self.verdict, self.base,",
            "(self.verdict, -self.base,",
            ["end"],
        ),
        _edit(
            "helper_d1",
            "helper_d1",
            "kitchen_helpers.py",
            "[normalize(w) for w in words if w]",
            "[normalize(w)[::-1] for w in words if w]",
            ["prep"],
        ),
        _edit(
            "helper_d2",
            "helper_d2",
            "kitchen_deep.py",
            "fold(word.strip())",
            'fold(word.strip()) + "!"',
            ["prep"],
        ),
        _edit(
            "helper_d3", "helper_d3", "kitchen_deeper.py", "word.lower()", "word.upper()", ["prep"]
        ),
        _edit(
            "helper_import_in_step",
            "helper_import_in_step",
            "kitchen_helpers.py",
            "return x * x",
            "return x * x * x",
            ["body"],
        ),
        _edit(
            "method",
            "method",
            f,
            "return x * 7 + kh.offset()",
            "return x * 8 + kh.offset()",
            ["prep"],
        ),
        _edit(
            "method_helper",
            "method_helper",
            "kitchen_helpers.py",
            "return 11",
            "return 12",
            ["prep"],
        ),
        _edit(
            "closure_arg",
            "closure_arg",
            f,
            "SCALE = make_scaler(2)",
            "SCALE = make_scaler(3)",
            ["prep"],
        ),
        _edit("decorator", "decorator", f, "@repeat(2)", "@repeat(3)", ["prep"]),
        _edit(
            "decorated_helper", "decorated_helper", f, "return x + 100", "return x + 200", ["prep"]
        ),
        _edit("constant", "constant", f, "THRESHOLD = 3", "THRESHOLD = 300", ["prep"]),
        _edit("enum_constant", "enum_constant", f, "RED = 1", "RED = 7", ["prep"]),
        _edit("class_attr", "class_attr", f, "FACTOR = 5", "FACTOR = 6", ["prep"]),
        Mutation("param_value", "param_value", [], ["start"], args=["--alpha", "4"]),
        _edit(
            "param_default",
            "param_default",
            f,
            'Parameter("alpha", default=3)',
            'Parameter("alpha", default=5)',
            ["start"],
        ),
        _edit("config_value", "config_value", "cfg.json", '"limit": 4', '"limit": 5', ["start"]),
        _edit("config_value", "config_value:words", "cfg.json", "Gamma", "Delta", ["start"]),
        _edit("read_file", "read_file", "table.txt", "table-v1", "table-v2", ["files_a"]),
        _edit(
            "depends_on_file", "depends_on_file", "vocab.txt", "cherry", "cherry date", ["files_b"]
        ),
        _edit(
            "switch_flip",
            "switch_flip",
            f,
            "len(self.vocab) > 2",
            "len(self.vocab) > 5",
            ["choose"],
        ),
        _edit("env_var", "env_var", f, '"MODE": "fast"', '"MODE": "slow"', ["body"]),
        _edit(
            "memoize_args",
            "memoize_version",
            f,
            '@memoize(version="1")',
            '@memoize(version="2")',
            ["choose"],
        ),
        _edit(
            "memoize_args",
            "memoize_ttl",
            f,
            '@memoize(version="1")',
            '@memoize(version="1", ttl="7d")',
            [],
        ),
        _edit(
            "memoize_args",
            "memoize_ignore",
            f,
            '@memoize(version="1")',
            '@memoize(version="1", ignore=["alpha"])',
            [],
        ),
        Mutation(
            "step_remove_upstream",
            "step_remove_upstream",
            [(f, relay, ""), (f, "self.next(self.relay)", "self.next(self.fan)")],
            ["prep"],  # its transition changed
        ),
        _edit(
            "step_add_upstream",
            "step_add_upstream",
            f,
            "        self.next(self.fan)\n\n    @memoize\n    @step\n    def fan",
            extra + "\n    @memoize\n    @step\n    def fan",
            ["relay", "extra"],  # relay's transition changed
        ),
        _edit(
            "step_add_upstream",
            "step_add_upstream_artifact",
            f,
            "        self.next(self.fan)\n\n    @memoize\n    @step\n    def fan",
            extra_art + "\n    @memoize\n    @step\n    def fan",
            ["relay", "extra"],
        ),
    ]
    items = "self.items = [1, 2, 3]"
    for kind, new in (
        ("foreach_reorder", "[3, 1, 2]"),
        ("foreach_extend", "[1, 2, 3, 4]"),
        ("foreach_shrink", "[1, 2]"),
        ("foreach_duplicate", "[1, 2, 2, 3]"),
    ):
        sites.append(_edit(kind, kind, f, items, "self.items = " + new, ["fan"]))
    return CorpusFlow("kitchen", "KitchenFlow", _read_dir(HERE / "flows" / "kitchen"), sites)


_INCLUDE_FLOW = '''"""Oracle corpus: an IncludeFile read by a memoized step."""

from _counter import record
from metaflow import FlowSpec, IncludeFile, memoize, step


class IncludeFlow(FlowSpec):
    notes = IncludeFile("notes", default="notes.txt")

    @memoize
    @step
    def start(self):
        record("start")
        self.words = self.notes.split()
        self.next(self.count)

    @memoize
    @step
    def count(self):
        record("count")
        self.n = len(self.words)
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")
        self.summary = "%d words" % self.n


if __name__ == "__main__":
    IncludeFlow()
'''


def _include() -> CorpusFlow:
    sites = [
        _edit("include_file", "include_file", "notes.txt", "Gamma", "Delta", ["start"]),
        _edit("include_file", "include_file:more", "notes.txt", "Gamma", "Gamma Delta", ["start"]),
        _edit(
            "step_body",
            "step_body:count",
            "flow.py",
            "len(self.words)",
            "len(self.words) + 1",
            ["count"],
        ),
    ]
    files = {"flow.py": _INCLUDE_FLOW, "notes.txt": "Alpha Beta Gamma\n"}
    return CorpusFlow("include", "IncludeFlow", files, sites)


def _shapes() -> CorpusFlow:
    f = "flow.py"
    groups = "self.groups = [[1, 2], [3], [4, 5, 6]]"
    sites = [
        Mutation("param_value:scale", "param_value", [], ["start"], args=["--scale", "3"]),
        Mutation("param_value:items", "param_value", [], ["start"], args=["--items", "a,b,c,d"]),
        _edit("step_body", "step_body:start", f, "10 * self.scale", "11 * self.scale", ["start"]),
        _edit("step_body", "step_body:left", f, "self.base + 1", "self.base + 3", ["left"]),
        _edit(
            "step_body",
            "step_body:inner",
            f,
            "self.input * self.input * self.scale",
            "self.input * self.input * self.scale + 1",
            ["inner"],
        ),
        _edit(
            "step_body",
            "step_body:inner_join",
            f,
            "sum(i.squared for i in inputs)",
            "sum(i.squared for i in inputs) + 1",
            ["inner_join"],
        ),
        _edit(
            "switch_flip",
            "switch_flip",
            f,
            "sum(self.sums) > 100",
            "sum(self.sums) > 100000",
            ["choose"],
        ),
    ]
    for kind, new in (
        ("foreach_reorder", "[[3], [1, 2], [4, 5, 6]]"),
        ("foreach_extend", "[[1, 2], [3], [4, 5, 6], [7]]"),
        ("foreach_shrink", "[[1, 2], [3]]"),
        ("foreach_duplicate", "[[1, 2], [3], [3], [4, 5, 6]]"),
    ):
        sites.append(_edit(kind, kind + ":outer", f, groups, "self.groups = " + new, ["fan_out"]))
    sites.append(
        _edit(
            "foreach_reorder",
            "foreach_reorder:inner",
            f,
            groups,
            "self.groups = [[2, 1], [3], [6, 5, 4]]",
            ["fan_out"],
        )
    )
    return CorpusFlow(
        "shapes", "ShapesFlow", {"flow.py": (TESTS_FLOWS / "shapes_flow.py").read_text()}, sites
    )


def _invalidation() -> CorpusFlow:
    f = "flow.py"
    files = _read_dir(TESTS_FLOWS / "t5_invalidation")
    files["flow.py"] = files.pop("invalidation_flow.py")
    sites = [
        _edit(
            "step_body",
            "step_body:featurize",
            f,
            "len(w) > THRESHOLD",
            "len(w) >= THRESHOLD",
            ["featurize"],
        ),
        _edit(
            "helper_d1",
            "helper_d1",
            "helpers.py",
            "normalize(word).upper()",
            "normalize(word).title()",
            ["featurize"],
        ),
        _edit(
            "helper_d2",
            "helper_d2",
            "helpers.py",
            "word.strip().lower()",
            "word.strip().lower()[::-1]",
            ["featurize"],
        ),
        _edit("constant", "constant", f, "THRESHOLD = 3", "THRESHOLD = 4", ["featurize"]),
        _edit("depends_on_file", "depends_on_file", "vocab.txt", "alpha", "omega", ["featurize"]),
        Mutation("param_value", "param_value", [], ["start"], args=["--words", "alpha,beta,delta"]),
        _edit(
            "step_body",
            "step_body:start",
            f,
            'self.upstream = "v1"',
            'self.upstream = "v2"',
            ["start"],
        ),
        _edit("env_var", "env_var", f, '"MODE": "fast"', '"MODE": "slow"', ["featurize"]),
        _edit("memoize_args", "memoize_version", f, 'version="1"', 'version="2"', ["featurize"]),
        _edit("memoize_args", "memoize_ttl", f, 'ttl="1d"', 'ttl="2d"', []),
    ]
    return CorpusFlow("invalidation", "InvalidationFlow", files, sites)


def _quickstart() -> CorpusFlow:
    source = (EXAMPLES / "quickstart" / "quickstart_flow.py").read_text()
    source = with_records(source.replace("time.sleep(3)", "time.sleep(0)"))
    f = "flow.py"
    sites = [
        Mutation("param_value", "param_value", [], ["start"], args=["--rows", "5"]),
        _edit(
            "step_body",
            "step_body:featurize",
            f,
            "[x * x for x in self.raw]",
            "[x * x + 1 for x in self.raw]",
            ["featurize"],
        ),
        _edit("param_default", "param_default", f, "default=1000", "default=999", ["start"]),
    ]
    return CorpusFlow("quickstart", "QuickstartFlow", {"flow.py": source}, sites)


def _foreach_training() -> CorpusFlow:
    source = (EXAMPLES / "foreach_training" / "foreach_training_flow.py").read_text()
    source = with_records(source.replace("default=400", "default=30"))
    f = "flow.py"
    linear = '    {"name": "linear", "degree": 1, "lr": 0.2},\n'
    cubic = '    {"name": "cubic", "degree": 3, "lr": 0.2},\n'
    sites = [
        Mutation("param_value", "param_value", [], ["start"], args=["--epochs", "31"]),
        Mutation(
            "foreach_reorder",
            "foreach_reorder",
            [(f, linear, ""), (f, cubic, cubic + linear)],
            ["start"],
        ),
        _edit("foreach_shrink", "foreach_shrink", f, cubic, "", ["start"]),
        _edit(
            "foreach_extend",
            "foreach_extend",
            f,
            cubic,
            cubic + '    {"name": "quartic", "degree": 4, "lr": 0.1},\n',
            ["start"],
        ),
        _edit(
            "helper_d1",
            "helper_d1",
            f,
            "[x**d for d in range(degree + 1)]",
            "[x**d for d in range(degree + 1)][::-1]",
            ["train"],
        ),
        _edit("constant", "constant", f, '"lr": 0.02', '"lr": 0.03', ["start"]),
    ]
    return CorpusFlow("foreach_training", "ForeachTrainingFlow", {"flow.py": source}, sites)


def _core(graph: str) -> CorpusFlow:
    cls, files, sites = core_graphs.generate(graph)
    return CorpusFlow("core_" + graph, cls, files, sites)


_BEYOND_FLOW = '''"""Oracle corpus: steps that reach past the interpreter (issue 31): a data file
read by a native library, a glob, a symlink, a script run in a child process."""

import glob
import os
import subprocess
import sys

from _counter import record
from metaflow import FlowSpec, memoize, step


class BeyondFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        record("start")
        import pyarrow.csv

        table = pyarrow.csv.read_csv("prices.csv")
        self.total = sum(table.column("price").to_pylist())
        self.next(self.scan)

    @memoize
    @step
    def scan(self):
        record("scan")
        self.shards = sorted(os.path.basename(p) for p in glob.glob("shards/*.txt"))
        self.next(self.linked)

    @memoize
    @step
    def linked(self):
        record("linked")
        with open("model/current") as f:
            self.model = f.read().strip()
        self.next(self.child)

    @memoize
    @step
    def child(self):
        record("child")
        out = subprocess.run(
            [sys.executable, "score.py"], capture_output=True, text=True, check=True
        )
        self.score = out.stdout.strip()
        self.next(self.downstream)

    @memoize
    @step
    def downstream(self):
        record("downstream")
        from metaflow import Flow

        self.upstream = Flow("BeyondUpstreamFlow").latest_successful_run.data.value
        self.next(self.end)

    @step
    def end(self):
        record("end")
        self.summary = (self.total, self.shards, self.model, self.score, self.upstream)


if __name__ == "__main__":
    BeyondFlow()
'''


def _beyond() -> CorpusFlow:
    files = {
        "flow.py": _BEYOND_FLOW,
        "prices.csv": "price\n1\n2\n",
        "shards/a.txt": "a",
        "model/v1": "one",
        "model/v2": "two",
        "score.py": "import scoring\n\nprint(scoring.score())\n",
        "scoring.py": "def score():\n    return 6 * 7\n",
        "upstream.py": _BEYOND_UPSTREAM,
        "upstream.txt": "1",
    }
    sites = [
        _edit("native_read", "native_read", "prices.csv", "2\n", "5\n", ["start"]),
        _edit("glob_match", "glob_match", "shards/b.txt", "", "b", ["scan"]),
        _edit("glob_nonmatch", "glob_nonmatch", "shards/README.md", "", "notes", []),
        Mutation("symlink", "symlink", [], ["linked"], links=[("model/current", "v2")]),
        _edit(
            "child_process", "child_process:script", "score.py", "print(", "print(1 + ", ["child"]
        ),
        _edit("child_process", "child_process:module", "scoring.py", "6 * 7", "6 * 8", ["child"]),
        Mutation(
            "upstream_rerun",
            "upstream_rerun",
            [("upstream.txt", "1", "2")],
            ["downstream"],
            before=["upstream.py"],
        ),
    ]
    return CorpusFlow(
        "beyond",
        "BeyondFlow",
        files,
        sites,
        links={"model/current": "v1"},
        before=["upstream.py"],
    )


_BEYOND_UPSTREAM = '''"""The flow BeyondFlow reads through the Metaflow Client."""

from metaflow import FlowSpec, step


class BeyondUpstreamFlow(FlowSpec):
    @step
    def start(self):
        with open("upstream.txt") as f:
            self.value = int(f.read())
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BeyondUpstreamFlow()
'''


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def corpus() -> list[CorpusFlow]:
    flows = [_kitchen(), _include(), _shapes(), _invalidation(), _quickstart(), _foreach_training()]
    if _has("pyarrow"):  # the native reader of the beyond flow (the test extra has it)
        flows.append(_beyond())
    flows += [_core(g) for g in core_graphs.GRAPHS]
    return flows


def by_name() -> dict:
    return {f.name: f for f in corpus()}
