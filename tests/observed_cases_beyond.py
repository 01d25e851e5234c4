"""The false-hit corpus, part two (issue 31): steps that reach past the code the
interpreter runs in their body.

The filesystem's namespace (existence checks, globs, symlinks, the working
directory), state set at import by module-level code, classes reached through
objects, modules found by name at run time; and the needless misses that
observing module state after the body caused. tests/test_observed_beyond.py
runs them; native readers and child processes are in tests/test_native_record.py,
the Metaflow Client in tests/test_client_reads.py.

A case: files={path: text}, setup=callable(workdir) or None, change=callable(workdir),
expect={artifact: repr after the change}, step= the memoized step (default
start), cwd= a folder of the work directory the second run starts from.
STALE cases must run the step again after the change; HIT cases must not
(their change, if any, does not touch what the step used).
"""

import os
import shutil
import textwrap

from observed_cases import linear


def _write(workdir, rel, text):
    path = workdir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _relink(link, target):
    def change(workdir):
        os.remove(workdir / link)
        os.symlink(target, workdir / link)

    return change


def _replace(rel, old, new):
    def change(workdir):
        path = workdir / rel
        text = path.read_text()
        assert old in text, "case out of date: %r not in %s" % (old, rel)
        path.write_text(text.replace(old, new, 1))

    return change


def _sqlite(path, values):
    import sqlite3

    if path.exists():
        path.unlink()
    con = sqlite3.connect(str(path))
    con.execute("create table t (v integer)")
    con.executemany("insert into t values (?)", [(v,) for v in values])
    con.commit()
    con.close()


def _two_steps(first, second, prelude="", members="", memoize_first=False):
    """start -> work (memoized, watched) -> end; ``first`` sets the input."""
    return (
        "from metaflow import FlowSpec, step, memoize\nimport _counter\n"
        + prelude
        + "\n\nclass CaseFlow(FlowSpec):\n"
        + textwrap.indent(textwrap.dedent(members), "    ")
        + "\n    @step\n    def start(self):\n"
        + textwrap.indent(textwrap.dedent(first).strip("\n"), " " * 8)
        + "\n        self.next(self.work)\n\n    @memoize\n    @step\n    def work(self):\n"
        + '        _counter.record("work")\n'
        + textwrap.indent(textwrap.dedent(second).strip("\n"), " " * 8)
        + "\n        self.next(self.end)\n\n    @step\n    def end(self):\n        pass\n\n\n"
        + 'if __name__ == "__main__":\n    CaseFlow()\n'
    )


STALE = {
    # -- the filesystem's namespace ---------------------------------------------
    "a file checked with os.path.exists appears": dict(
        files={
            "flow.py": linear(
                'self.y = open("extra.txt").read() if os.path.exists("extra.txt") else "none"',
                prelude="import os\n",
            )
        },
        change=lambda w: _write(w, "extra.txt", "more"),
        expect={"y": "'more'"},
    ),
    "a file checked with pathlib's is_file appears in a folder": dict(
        files={
            "flow.py": linear(
                'p = pathlib.Path("conf") / "override.txt"\n'
                'self.y = p.read_text() if p.is_file() else "default"',
                prelude="import pathlib\n",
            ),
            "conf/base.txt": "base",
        },
        change=lambda w: _write(w, "conf/override.txt", "over"),
        expect={"y": "'over'"},
    ),
    "a glob's new match lands in a folder that existed": dict(
        files={
            "flow.py": linear(
                'self.y = sorted(p.name for p in pathlib.Path("data").glob("*/*.csv"))',
                prelude="import pathlib\n",
            ),
            "data/a/one.csv": "1",
            "data/b/two.csv": "2",
        },
        change=lambda w: _write(w, "data/b/three.csv", "3"),
        expect={"y": "['one.csv', 'three.csv', 'two.csv']"},
    ),
    "a recursive glob's new match in a nested folder": dict(
        files={
            "flow.py": linear(
                'self.y = len(glob.glob("data/**/*.csv", recursive=True))',
                prelude="import glob\n",
            ),
            "data/x/y/one.csv": "1",
        },
        change=lambda w: _write(w, "data/x/y/two.csv", "2"),
        expect={"y": "2"},
    ),
    "a symlink to a file is repointed": dict(
        files={
            "flow.py": linear('self.y = open("current.txt").read()'),
            "versions/v1.txt": "one",
            "versions/v2.txt": "two",
        },
        setup=lambda w: os.symlink("versions/v1.txt", w / "current.txt"),
        change=_relink("current.txt", "versions/v2.txt"),
        expect={"y": "'two'"},
    ),
    "a symlink to a folder is repointed": dict(
        files={
            "flow.py": linear('self.y = open("latest/model.txt").read()'),
            "runs/r1/model.txt": "m1",
            "runs/r2/model.txt": "m2",
        },
        setup=lambda w: os.symlink("runs/r1", w / "latest"),
        change=_relink("latest", "runs/r2"),
        expect={"y": "'m2'"},
    ),
    "a relative path opened from another working directory": dict(
        files={
            "flow.py": linear('self.y = open("params.txt").read()'),
            "params.txt": "top",
            "sub/params.txt": "sub",
        },
        change=lambda w: None,
        cwd="sub",
        flow_arg="../flow.py",
        expect={"y": "'sub'"},
    ),
    "the newest file of a folder, chosen by mtime": dict(
        files={
            "flow.py": linear(
                'newest = max(glob.glob("drops/*.txt"), key=os.path.getmtime)\n'
                "self.y = os.path.basename(newest)",
                prelude="import glob\nimport os\n",
            ),
            "drops/a.txt": "a",
            "drops/b.txt": "b",
        },
        setup=lambda w: (
            os.utime(w / "drops/a.txt", (1_000_000, 1_000_000)),
            os.utime(w / "drops/b.txt", (2_000_000, 2_000_000)),
        ),
        change=lambda w: os.utime(w / "drops/a.txt", (3_000_000, 3_000_000)),
        expect={"y": "'a.txt'"},
    ),
    # -- state set at import ------------------------------------------------------
    "a seed set at the top of the flow file": dict(
        files={
            "flow.py": linear(
                "self.y = round(random.random(), 6)",
                prelude="import random\n\nSEED = 1\nrandom.seed(SEED)\n",
            )
        },
        change=_replace("flow.py", "SEED = 1", "SEED = 2"),
        expect={"y": "0.956034"},
    ),
    "a seed set at import by a helper module the step never names": dict(
        files={
            "flow.py": linear(
                "self.y = round(random.random(), 6)", prelude="import random\nimport setup_env\n"
            ),
            "setup_env.py": "import random\n\nrandom.seed(1)\n",
        },
        change=_replace("setup_env.py", "random.seed(1)", "random.seed(2)"),
        expect={"y": "0.956034"},
    ),
    "an lru_cache loader already called at import": dict(
        files={
            "flow.py": linear("self.y = labels.load()", prelude="import labels\n"),
            "labels.py": (
                "import functools\n\n\n@functools.lru_cache(maxsize=None)\n"
                'def load():\n    with open("labels.txt") as f:\n        return f.read()\n\n\n'
                "LABELS = load()\n"
            ),
            "labels.txt": "cat,dog",
        },
        change=lambda w: _write(w, "labels.txt", "cat,dog,bird"),
        expect={"y": "'cat,dog,bird'"},
    ),
    "importlib.import_module of a module already imported": dict(
        files={
            "flow.py": linear(
                "self.y = importlib.import_module(MODULE).VALUE",
                prelude="import importlib\nimport helpers_cfg  # noqa\n\nMODULE = 'helpers_cfg'\n",
            ),
            "helpers_cfg.py": "VALUE = 3\n",
        },
        change=_replace("helpers_cfg.py", "VALUE = 3", "VALUE = 4"),
        expect={"y": "4"},
    ),
    "a dotted module found by name at run time": dict(
        files={
            "flow.py": linear(
                'self.y = importlib.import_module("pkg.settings").RATE',
                prelude="import importlib\nimport pkg.settings  # noqa\n",
            ),
            "pkg/__init__.py": "",
            "pkg/settings.py": "RATE = 0.5\n",
        },
        change=_replace("pkg/settings.py", "RATE = 0.5", "RATE = 0.25"),
        expect={"y": "0.25"},
    ),
    # -- classes reached through objects ----------------------------------------------
    "a class attribute read in a method of an artifact object": dict(
        files={
            "flow.py": _two_steps(
                "self.model = shapes.Model()",
                "self.y = self.model.predict(5)",
                prelude="import shapes\n",
            ),
            "shapes.py": (
                "class Model:\n    SCALE = 2\n\n    def predict(self, v):\n        return v * self.SCALE\n"
            ),
        },
        step="work",
        change=_replace("shapes.py", "SCALE = 2", "SCALE = 3"),
        expect={"y": "15"},
    ),
    "a ClassVar of the foreach items' class": dict(
        files={
            "flow.py": (
                "from metaflow import FlowSpec, step, memoize\nimport _counter\nfrom items import Item\n\n\n"
                "class CaseFlow(FlowSpec):\n    @step\n    def start(self):\n"
                "        self.items = [Item(1), Item(2)]\n        self.next(self.work, foreach='items')\n\n"
                "    @memoize\n    @step\n    def work(self):\n        _counter.record('work')\n"
                "        self.y = self.input.scaled()\n        self.next(self.join)\n\n"
                "    @step\n    def join(self, inputs):\n        self.ys = sorted(i.y for i in inputs)\n"
                "        self.next(self.end)\n\n    @step\n    def end(self):\n        pass\n\n\n"
                'if __name__ == "__main__":\n    CaseFlow()\n'
            ),
            "items.py": (
                "from dataclasses import dataclass\nfrom typing import ClassVar\n\n\n@dataclass\n"
                "class Item:\n    v: int\n    FACTOR: ClassVar[int] = 10\n\n"
                "    def scaled(self):\n        return self.v * self.FACTOR\n"
            ),
        },
        step="work",
        runs_per_step=2,
        change=_replace("items.py", "FACTOR: ClassVar[int] = 10", "FACTOR: ClassVar[int] = 100"),
        expect_step="join",
        expect={"ys": "[100, 200]"},
    ),
    "a dataclass field default of a class the step instantiates": dict(
        files={
            "flow.py": linear("self.y = cfg.Config().lr", prelude="import cfg\n"),
            "cfg.py": (
                "from dataclasses import dataclass, field\n\n\n@dataclass\nclass Config:\n"
                "    lr: float = 0.1\n    tags: list = field(default_factory=list)\n"
            ),
        },
        change=_replace("cfg.py", "lr: float = 0.1", "lr: float = 0.2"),
        expect={"y": "0.2"},
    ),
    "a pydantic model field default": dict(
        files={
            "flow.py": linear("self.y = settings.Settings().lr", prelude="import settings\n"),
            "settings.py": (
                "from pydantic import BaseModel\n\n\nclass Settings(BaseModel):\n"
                "    lr: float = 0.1\n"
            ),
        },
        change=_replace("settings.py", "lr: float = 0.1", "lr: float = 0.3"),
        expect={"y": "0.3"},
    ),
    "a sqlite3 database changed, without the native file recorder": dict(
        files={
            "flow.py": linear(
                'con = sqlite3.connect("rows.db")\n'
                'self.y = con.execute("select sum(v) from t").fetchone()[0]\n'
                "con.close()",
                prelude="import sqlite3\n",
            )
        },
        setup=lambda w: _sqlite(w / "rows.db", [1, 2]),
        change=lambda w: _sqlite(w / "rows.db", [1, 2, 3]),
        env={"METAFLOW_MEMOIZE_NATIVE_RECORD": "0"},
        expect={"y": "6"},
    ),
    "a CSV read by pyarrow, without the native file recorder": dict(
        files={
            "flow.py": linear(
                'self.y = sum(pacsv.read_csv("prices.csv").column("p").to_pylist())',
                prelude="import pyarrow.csv as pacsv\n",
            ),
            "prices.csv": "p\n1\n2\n",
        },
        change=lambda w: _write(w, "prices.csv", "p\n1\n5\n"),
        env={"METAFLOW_MEMOIZE_NATIVE_RECORD": "0"},
        expect={"y": "6"},
    ),
    # -- child processes running the user's code ---------------------------------------
    "a helper run in multiprocessing.Pool workers": dict(
        files={
            "flow.py": linear(
                'with multiprocessing.get_context("fork").Pool(2) as pool:\n'
                "    self.y = sum(pool.map(work.square, [1, 2, 3]))",
                prelude="import multiprocessing\nimport work\n",
            ),
            "work.py": "def square(v):\n    return v * v\n",
        },
        change=_replace("work.py", "return v * v", "return v * v * v"),
        expect={"y": "36"},
    ),
    "a helper run in ProcessPoolExecutor workers": dict(
        files={
            "flow.py": linear(
                "with concurrent.futures.ProcessPoolExecutor(\n"
                '    2, mp_context=multiprocessing.get_context("fork")\n'
                ") as ex:\n"
                "    self.y = sum(ex.map(work.square, [1, 2, 3]))",
                prelude="import concurrent.futures\nimport multiprocessing\nimport work\n",
            ),
            "work.py": "def square(v):\n    return v * v\n",
        },
        change=_replace("work.py", "return v * v", "return v + v"),
        expect={"y": "12"},
    ),
    # -- the same, one level deeper: inside a helper module ---------------------------
    "an existence check inside a helper module": dict(
        files={
            "flow.py": linear(
                'self.y = io_helpers.read_optional("extra.txt")', prelude="import io_helpers\n"
            ),
            "io_helpers.py": (
                "import os\n\n\ndef read_optional(path):\n"
                "    if not os.path.exists(path):\n        return 'none'\n"
                "    with open(path) as f:\n        return f.read()\n"
            ),
        },
        change=lambda w: _write(w, "extra.txt", "more"),
        expect={"y": "'more'"},
    ),
    "a glob inside a helper module": dict(
        files={
            "flow.py": linear('self.y = io_helpers.shards("data")', prelude="import io_helpers\n"),
            "io_helpers.py": (
                "import pathlib\n\n\ndef shards(folder):\n"
                "    return sorted(p.name for p in pathlib.Path(folder).rglob('*.parquet'))\n"
            ),
            "data/2024/a.parquet": "a",
        },
        change=lambda w: _write(w, "data/2024/b.parquet", "b"),
        expect={"y": "['a.parquet', 'b.parquet']"},
    ),
    "a symlink read inside a helper module": dict(
        files={
            "flow.py": linear(
                'self.y = io_helpers.load("model/current")', prelude="import io_helpers\n"
            ),
            "io_helpers.py": "def load(path):\n    with open(path) as f:\n        return f.read()\n",
            "model/v1": "one",
            "model/v2": "two",
        },
        setup=lambda w: os.symlink("v1", w / "model/current"),
        change=_relink("model/current", "v2"),
        expect={"y": "'two'"},
    ),
    "a class attribute of a helper module's class used through a factory": dict(
        files={
            "flow.py": linear("self.y = factory.make().threshold()", prelude="import factory\n"),
            "factory.py": "from rules import Rule\n\n\ndef make():\n    return Rule()\n",
            "rules.py": "class Rule:\n    LIMIT = 5\n\n    def threshold(self):\n        return self.LIMIT + 1\n",
        },
        change=_replace("rules.py", "LIMIT = 5", "LIMIT = 7"),
        expect={"y": "8"},
    ),
}


HIT = {
    "a lazy singleton set by the step": dict(
        files={
            "flow.py": linear("self.y = lib.get_model()['w']", prelude="import lib\n"),
            "lib.py": (
                "_MODEL = None\n\n\ndef get_model():\n    global _MODEL\n"
                "    if _MODEL is None:\n        _MODEL = {'w': 2}\n    return _MODEL\n"
            ),
        },
        expect={"y": "2"},
    ),
    "a module memo dict filled by the step": dict(
        files={
            "flow.py": linear("self.y = lib.double(21)", prelude="import lib\n"),
            "lib.py": (
                "_MEMO = {}\n\n\ndef double(v):\n    if v not in _MEMO:\n"
                "        _MEMO[v] = v * 2\n    return _MEMO[v]\n"
            ),
        },
        expect={"y": "42"},
    ),
    "a module-level random.Random(42)": dict(
        files={
            "flow.py": linear(
                "self.y = round(_RNG.random(), 6)",
                prelude="import random\n\n_RNG = random.Random(42)\n",
            )
        },
        expect={"y": "0.639427"},
    ),
    "a pydantic model class": dict(
        files={
            "flow.py": linear("self.y = settings.Settings().lr", prelude="import settings\n"),
            "settings.py": (
                "from pydantic import BaseModel\n\n\nclass Settings(BaseModel):\n"
                "    lr: float = 0.1\n    name: str = 'x'\n"
            ),
        },
        expect={"y": "0.1"},
    ),
    "a step that names __file__, in a moved checkout": dict(
        files={
            "flow.py": linear(
                'self.y = open(os.path.join(os.path.dirname(__file__), "data.txt")).read()',
                prelude="import os\n",
            ),
            "data.txt": "d",
        },
        move=True,
        expect={"y": "'d'"},
    ),
    "a write then a read inside a TemporaryDirectory": dict(
        files={
            "flow.py": linear(
                "with tempfile.TemporaryDirectory() as d:\n"
                '    path = os.path.join(d, "x.txt")\n'
                '    with open(path, "w") as f:\n        f.write("7")\n'
                "    with open(path) as f:\n        self.y = int(f.read())",
                prelude="import os\nimport tempfile\n",
            )
        },
        expect={"y": "7"},
    ),
    "sys.path.insert and an import inside the step": dict(
        files={
            "flow.py": linear(
                'sys.path.insert(0, os.path.join(os.path.dirname(__file__), "vendor"))\n'
                "import vlib\n\nself.y = vlib.f()",
                prelude="import os\nimport sys\n",
            ),
            "vendor/vlib.py": "def f():\n    return 11\n",
        },
        expect={"y": "11"},
    ),
    "a README added to a globbed folder": dict(
        files={
            "flow.py": linear(
                'self.y = sorted(os.path.basename(p) for p in glob.glob("data/*.csv"))',
                prelude="import glob\nimport os\n",
            ),
            "data/a.csv": "1",
        },
        change=lambda w: _write(w, "data/README.md", "about the data"),
        expect={"y": "['a.csv']"},
    ),
    "a module dict of more than 2,000 sets": dict(
        files={
            "flow.py": linear(
                "self.y = sorted(TABLE[5])",
                prelude="TABLE = {i: {'a%d' % i, 'b%d' % i} for i in range(2500)}\n",
            )
        },
        expect={"y": "['a5', 'b5']"},
    ),
}


def move_checkout(old, new):
    """The whole work directory (flows, data, datastore and cache) somewhere else."""
    shutil.copytree(old, new, symlinks=True)
