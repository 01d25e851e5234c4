"""The false-hit corpus: ordinary Python that a key guessed from source missed.

Each case is one small flow and one change. The memoized step must run again
after the change (it would compute something else) and its artifacts must be
what the changed code computes. Every case here served a stale result before
dependencies were observed at run time (issue 13); tests/test_observed_deps.py
runs them, and docs/concepts.md lists them.

A case: name -> dict(files={path: source}, step=the memoized step to watch,
change=[(path, old, new)], expect={artifact: repr of its value after the change},
flow=path of the flow file, env/args for both runs, setup=callable(workdir)).
"""

HEADER = """\
from metaflow import FlowSpec, step, memoize
import _counter
"""


def linear(body, prelude="", members="", bases="FlowSpec"):
    """A start (memoized, watched) -> end flow."""
    return (
        HEADER
        + prelude
        + """
class CaseFlow(%s):
%s
    @memoize
    @step
    def start(self):
        _counter.record("start")
%s
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
"""
        % (bases, _indent(members, 4), _indent(body, 8))
    )


def _indent(text, n):
    lines = text.strip("\n").splitlines()
    if not lines:
        return ""
    import textwrap

    return textwrap.indent(textwrap.dedent("\n".join(lines)), " " * n)


CASES = {
    "method calls a method": dict(
        files={
            "flow.py": linear(
                "self.y = self._prep(5)",
                members="""
                def _prep(self, v):
                    return self._scale(v) + 1

                def _scale(self, v):
                    return v * 2
                """,
            )
        },
        change=[("flow.py", "return v * 2", "return v * 3")],
        expect={"y": "16"},
    ),
    "helper of a helper of a method (depth 3)": dict(
        files={
            "flow.py": linear(
                "self.y = self._prep(5)",
                members="""
                def _prep(self, v):
                    from lib import outer

                    return outer(v)
                """,
            ),
            "lib.py": "def outer(v):\n    return middle(v) + 1\n\n\ndef middle(v):\n    return inner(v)\n\n\ndef inner(v):\n    return v * 2\n",
        },
        change=[("lib.py", "return v * 2", "return v * 3")],
        expect={"y": "16"},
    ),
    "mixin method": dict(
        files={
            "flow.py": linear(
                "self.y = self.mixed(5)",
                prelude="from mixins import Mixin\n",
                bases="Mixin, FlowSpec",
            ),
            "mixins.py": "class Mixin:\n    def mixed(self, v):\n        return v + 1\n",
        },
        change=[("mixins.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "staticmethod": dict(
        files={
            "flow.py": linear(
                "self.y = self.helper(5)",
                members="""
                @staticmethod
                def helper(v):
                    return v + 1
                """,
            )
        },
        change=[("flow.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "property of the flow": dict(
        files={
            "flow.py": linear(
                "self.y = self.rate * 2",
                members="""
                @property
                def rate(self):
                    return 10
                """,
            )
        },
        change=[("flow.py", "return 10", "return 11")],
        expect={"y": "22"},
    ),
    "closure factory argument": dict(
        files={
            "flow.py": linear(
                "self.y = scale(5)",
                prelude="from lib import make_scaler\nscale = make_scaler(3)\n",
            ),
            "lib.py": "def make_scaler(k):\n    def scale(x):\n        return x * k\n    return scale\n",
        },
        change=[("flow.py", "make_scaler(3)", "make_scaler(4)")],
        expect={"y": "20"},
    ),
    "decorated helper without wraps": dict(
        files={
            "flow.py": linear(
                "self.y = helper(5)",
                prelude="""
def logged(fn):
    def wrapper(*a):
        return fn(*a)
    return wrapper


@logged
def helper(v):
    return v + 1
""",
            )
        },
        change=[("flow.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "decorator arguments": dict(
        files={
            "flow.py": linear(
                "self.y = helper(5)",
                prelude="""
import functools


def times(n):
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(v):
            return fn(v) * n
        return wrapper
    return deco


@times(2)
def helper(v):
    return v + 1
""",
            )
        },
        change=[("flow.py", "@times(2)", "@times(3)")],
        expect={"y": "18"},
    ),
    "functools.lru_cache helper": dict(
        files={
            "flow.py": linear(
                "self.y = helper(5)",
                prelude="""
import functools


@functools.lru_cache(maxsize=None)
def helper(v):
    return v + 1
""",
            )
        },
        change=[("flow.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "functools.partial arguments": dict(
        files={
            "flow.py": linear(
                "self.y = add_some(5)",
                prelude="""
import functools


def add(v, k):
    return v + k


add_some = functools.partial(add, k=1)
""",
            )
        },
        change=[("flow.py", "partial(add, k=1)", "partial(add, k=2)")],
        expect={"y": "7"},
    ),
    "functools.partial target": dict(
        files={
            "flow.py": linear(
                "self.y = add_some(5)",
                prelude="""
import functools


def add(v, k):
    return v + k


add_some = functools.partial(add, k=1)
""",
            )
        },
        change=[("flow.py", "return v + k", "return v + k + 10")],
        expect={"y": "16"},
    ),
    "functools.singledispatch overload": dict(
        files={
            "flow.py": linear(
                "self.y = describe(5)",
                prelude="""
import functools


@functools.singledispatch
def describe(v):
    return "thing"


@describe.register(int)
def _(v):
    return "int %d" % v
""",
            )
        },
        change=[("flow.py", '"int %d" % v', '"integer %d" % v')],
        expect={"y": "'integer 5'"},
    ),
    "getattr(module, name)": dict(
        files={
            "flow.py": linear(
                'self.y = getattr(lib, "helper")(5)',
                prelude="import lib\n",
            ),
            "lib.py": "def helper(v):\n    return v + 1\n",
        },
        change=[("lib.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "module-level instance of a user class": dict(
        files={
            "flow.py": linear(
                "self.y = scaler.apply(5)",
                prelude="from lib import Scaler\nscaler = Scaler(3)\n",
            ),
            "lib.py": "class Scaler:\n    def __init__(self, k):\n        self.k = k\n\n    def apply(self, v):\n        return v * self.k\n",
        },
        change=[("flow.py", "Scaler(3)", "Scaler(4)")],
        expect={"y": "20"},
    ),
    "import inside the step": dict(
        files={
            "flow.py": linear("import lib\nself.y = lib.helper(5)"),
            "lib.py": "def helper(v):\n    return v + 1\n",
        },
        change=[("lib.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "from-import inside the step": dict(
        files={
            "flow.py": linear("from lib import helper, OFFSET\nself.y = helper(5) + OFFSET"),
            "lib.py": "OFFSET = 0\n\n\ndef helper(v):\n    return v + 1\n",
        },
        change=[("lib.py", "OFFSET = 0", "OFFSET = 100")],
        expect={"y": "106"},
    ),
    "dotted submodule": dict(
        files={
            "flow.py": linear("self.y = pkg.sub.helper(5)", prelude="import pkg.sub\n"),
            "pkg/__init__.py": "",
            "pkg/sub.py": "def helper(v):\n    return v + 1\n",
        },
        change=[("pkg/sub.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "method of an artifact's class": dict(
        files={
            "flow.py": HEADER
            + """
from lib import Model


class CaseFlow(FlowSpec):
    @step
    def start(self):
        self.model = Model(2)
        self.next(self.predict)

    @memoize
    @step
    def predict(self):
        _counter.record("predict")
        self.y = self.model.predict(5)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
""",
            "lib.py": "class Model:\n    def __init__(self, k):\n        self.k = k\n\n    def predict(self, v):\n        return v * self.k\n",
        },
        step="predict",
        change=[("lib.py", "return v * self.k", "return v * self.k + 1")],
        expect={"y": "11"},
    ),
    "method of a foreach item": dict(
        files={
            "flow.py": HEADER
            + """
from lib import Item


class CaseFlow(FlowSpec):
    @step
    def start(self):
        self.items = [Item(1), Item(2)]
        self.next(self.each, foreach="items")

    @memoize
    @step
    def each(self):
        _counter.record("each")
        self.y = self.input.value()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.ys = sorted(i.y for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
""",
            # a dataclass: its repr is stable, so the item can be identified
            "lib.py": "import dataclasses\n\n\n@dataclasses.dataclass\nclass Item:\n    v: int\n\n"
            "    def value(self):\n        return self.v * 10\n",
        },
        step="each",
        runs_per_step=2,
        change=[("lib.py", "return self.v * 10", "return self.v * 100")],
        expect_step="join",
        expect={"ys": "[100, 200]"},
    ),
    "helper in a sibling folder of a monorepo": dict(
        files={
            "proj/flows/flow.py": "import os, sys\n"
            "sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))\n"
            + linear("import util\nself.y = util.helper(5)"),
            "proj/lib/util.py": "def helper(v):\n    return v + 1\n",
        },
        flow="proj/flows/flow.py",
        change=[("proj/lib/util.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "user step decorator code": dict(
        files={
            "flow.py": HEADER
            + """
from metaflow import user_step_decorator


@user_step_decorator
def tenfold(step_name, flow, inputs=None, attributes=None):
    yield
    flow.y = flow.y * 10


class CaseFlow(FlowSpec):
    @tenfold
    @memoize
    @step
    def start(self):
        _counter.record("start")
        self.y = 5
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
""",
        },
        change=[("flow.py", "flow.y * 10", "flow.y * 20")],
        expect={"y": "100"},
    ),
    "depends_on a package": dict(
        files={
            "flow.py": linear(
                "from mypkg import sub\nself.y = sub.helper(5)",
                prelude="import mypkg\n",
            ).replace("@memoize\n", "@memoize(depends_on=[mypkg])\n"),
            "mypkg/__init__.py": "",
            "mypkg/sub.py": "def helper(v):\n    return v + 1\n",
        },
        change=[("mypkg/sub.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "depends_on a function": dict(
        files={
            # the step reaches `entry` by a computed name, as plugin code does
            "flow.py": linear(
                'self.y = getattr(lib, "ent" + "ry")(5)',
                prelude="import lib\nfrom lib import entry\n",
            ).replace("@memoize\n", "@memoize(depends_on=[entry])\n"),
            "lib.py": "def entry(v):\n    return callee(v)\n\n\ndef callee(v):\n    return v + 1\n",
        },
        change=[("lib.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
        # the source-guessed key caught this one too (it read the names on the
        # decorator line): kept as a regression case
        held_before=True,
    ),
    "depends_on a folder with a symlinked subfolder": dict(
        files={
            "flow.py": linear(
                "with open('data/linked/v.txt') as f:\n    self.y = int(f.read())"
            ).replace("@memoize\n", '@memoize(depends_on=["data"])\n'),
            "real/v.txt": "1\n",
            "data/readme.txt": "x\n",
        },
        setup="symlink real data/linked",
        change=[("real/v.txt", "1", "2")],
        expect={"y": "2"},
    ),
    "Enum member as a constant": dict(
        files={
            "flow.py": linear(
                "self.y = DEFAULT.value",
                prelude="from modes import Mode\n\nDEFAULT = Mode.FAST\n",
            ),
            "modes.py": "import enum\n\n\nclass Mode(enum.Enum):\n    FAST = 1\n    SLOW = 2\n",
        },
        change=[("flow.py", "DEFAULT = Mode.FAST", "DEFAULT = Mode.SLOW")],
        expect={"y": "2"},
    ),
    "datetime.date constant": dict(
        files={
            "flow.py": linear(
                "self.y = str(CUTOFF)",
                prelude="import datetime\n\nCUTOFF = datetime.date(2024, 1, 1)\n",
            )
        },
        change=[("flow.py", "date(2024, 1, 1)", "date(2025, 1, 1)")],
        expect={"y": "'2025-01-01'"},
    ),
    "constant nested deeper than six levels": dict(
        files={
            "flow.py": linear(
                "self.y = DEEP['a']['b']['c']['d']['e']['f']['g']['h']",
                prelude="DEEP = {'a': {'b': {'c': {'d': {'e': {'f': {'g': {'h': 1}}}}}}}}\n",
            )
        },
        change=[("flow.py", "{'h': 1}", "{'h': 2}")],
        expect={"y": "2"},
    ),
    "class attribute computed from an environment variable": dict(
        files={
            "flow.py": linear(
                "self.y = Settings.THRESHOLD", prelude="from settings import Settings\n"
            ),
            "settings.py": "import os\n\n\nclass Settings:\n"
            '    THRESHOLD = int(os.environ.get("CASE_THRESHOLD", "1"))\n',
        },
        env_after={"CASE_THRESHOLD": "2"},
        change=[],
        expect={"y": "2"},
    ),
    "flow file reached through a symlink": dict(
        files={
            "real/flow.py": linear("self.y = lib.helper(5)", prelude="import lib\n"),
            "real/lib.py": "def helper(v):\n    return v + 1\n",
        },
        setup="symlink real linked",
        flow="linked/flow.py",
        change=[("real/lib.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "self.index after the list is reordered": dict(
        files={
            "flow.py": HEADER
            + """
class CaseFlow(FlowSpec):
    @step
    def start(self):
        self.items = ["a", "b"]
        self.next(self.each, foreach="items")

    @memoize
    @step
    def each(self):
        _counter.record("each")
        self.y = "%s%d" % (self.input, self.index)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.ys = sorted(i.y for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
""",
        },
        step="each",
        runs_per_step=2,
        change=[("flow.py", '["a", "b"]', '["b", "a"]')],
        expect_step="join",
        expect={"ys": "['a1', 'b0']"},
    ),
    "a method reads the foreach list": dict(
        files={
            "flow.py": HEADER
            + """
class CaseFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.each, foreach="items")

    @memoize
    @step
    def each(self):
        _counter.record("each")
        self.y = self._share()
        self.next(self.join)

    def _share(self):
        return round(self.input / sum(self.items), 3)

    @step
    def join(self, inputs):
        self.ys = sorted(i.y for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
""",
        },
        step="each",
        runs_per_step=2,
        change=[("flow.py", "[1, 2]", "[1, 2, 7]")],
        min_new_runs=2,
        expect_step="join",
        expect={"ys": "[0.1, 0.2, 0.7]"},
    ),
    "a file the step reads, without depends_on": dict(
        files={
            "flow.py": linear("with open('vocab.txt') as f:\n    self.y = f.read().split()"),
            "vocab.txt": "a b\n",
        },
        change=[("vocab.txt", "a b", "a b c")],
        expect={"y": "['a', 'b', 'c']"},
    ),
    "ignore= and a method that sets the ignored artifact": dict(
        files={
            "flow.py": HEADER
            + """
import os


class CaseFlow(FlowSpec):
    @step
    def start(self):
        self.note = os.environ.get("CASE_NOTE", "first")
        self.next(self.work)

    @memoize(ignore=["note"])
    @step
    def work(self):
        _counter.record("work")
        self._annotate()
        self.next(self.end)

    def _annotate(self):
        self.note = "set by work"

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaseFlow()
""",
        },
        step="work",
        env_before={"CASE_NOTE": "set by work"},
        env_after={"CASE_NOTE": "other"},
        change=[],
        hit_allowed=True,
        expect_step="end",
        expect={"note": "'set by work'"},
    ),
    "a helper run in a thread the step starts": dict(
        files={
            "flow.py": linear(
                "from concurrent.futures import ThreadPoolExecutor\n"
                "with ThreadPoolExecutor(2) as pool:\n"
                "    self.y = sorted(pool.map(lib.helper, [1, 2]))",
                prelude="import lib\n",
            ),
            "lib.py": "def helper(v):\n    return v + 1\n",
        },
        change=[("lib.py", "return v + 1", "return v + 2")],
        expect={"y": "[3, 4]"},
        held_before=True,  # the source-guessed key followed `lib.helper` too
    ),
    "a script the step runs in a subprocess": dict(
        files={
            "flow.py": linear(
                "import subprocess, sys\n"
                "out = subprocess.run([sys.executable, 'script.py'], capture_output=True, text=True)\n"
                "self.y = out.stdout.strip()"
            ),
            "script.py": "print('one')\n",
        },
        change=[("script.py", "'one'", "'two'")],
        expect={"y": "'two'"},
    ),
    "a file the step reads and then rewrites": dict(
        files={
            "flow.py": linear(
                "with open('state.txt') as f:\n"
                "    self.y = f.read().strip()\n"
                "with open('state.txt', 'w') as f:\n"
                "    f.write(str(int(self.y) + 1))"
            ),
            "state.txt": "1",
        },
        change=[],
        expect={"y": "'2'"},
    ),
}

# -- the same categories reached one level deeper: the step calls a flow method,
# which calls a helper module, which reaches the changed thing --------------------


def through_a_method(helper_module, expr="self._prep(5)"):
    """(flow.py, its files): start -> self._prep(v) -> deep.run(v) (``helper_module``)."""
    return {
        "flow.py": linear(
            "self.y = %s" % expr,
            members="""
            def _prep(self, v):
                import deep

                return deep.run(v)
            """,
        ),
        "deep.py": helper_module,
    }


DEEPER_CASES = {
    "deeper: closure factory argument": dict(
        files=dict(
            through_a_method(
                "from factory import make_scaler\n\nscale = make_scaler(3)\n\n\n"
                "def run(v):\n    return scale(v)\n"
            ),
            **{
                "factory.py": "def make_scaler(k):\n    def scale(x):\n"
                "        return x * k\n    return scale\n"
            },
        ),
        change=[("deep.py", "make_scaler(3)", "make_scaler(4)")],
        expect={"y": "20"},
    ),
    "deeper: decorator arguments": dict(
        files=through_a_method(
            "import functools\n\n\ndef times(n):\n    def deco(fn):\n"
            "        @functools.wraps(fn)\n        def wrapper(v):\n"
            "            return fn(v) * n\n        return wrapper\n    return deco\n\n\n"
            "@times(2)\ndef inner(v):\n    return v + 1\n\n\ndef run(v):\n    return inner(v)\n"
        ),
        change=[("deep.py", "@times(2)", "@times(3)")],
        expect={"y": "18"},
    ),
    "deeper: functools.lru_cache helper": dict(
        files=through_a_method(
            "import functools\n\n\n@functools.lru_cache(maxsize=None)\ndef inner(v):\n"
            "    return v + 1\n\n\ndef run(v):\n    return inner(v)\n"
        ),
        change=[("deep.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "deeper: functools.partial arguments": dict(
        files=through_a_method(
            "import functools\n\n\ndef add(v, k):\n    return v + k\n\n\n"
            "plus = functools.partial(add, k=1)\n\n\ndef run(v):\n    return plus(v)\n"
        ),
        change=[("deep.py", "k=1)", "k=2)")],
        expect={"y": "7"},
    ),
    "deeper: import inside a helper": dict(
        files=dict(
            through_a_method("def run(v):\n    import leaf\n\n    return leaf.f(v)\n"),
            **{"leaf.py": "def f(v):\n    return v + 1\n"},
        ),
        change=[("leaf.py", "return v + 1", "return v + 2")],
        expect={"y": "7"},
    ),
    "deeper: Enum member read by a helper": dict(
        files=dict(
            through_a_method(
                "from modes import Mode\n\nDEFAULT = Mode.FAST\n\n\n"
                "def run(v):\n    return v * DEFAULT.value\n"
            ),
            **{"modes.py": "import enum\n\n\nclass Mode(enum.Enum):\n    FAST = 1\n    SLOW = 2\n"},
        ),
        change=[("deep.py", "DEFAULT = Mode.FAST", "DEFAULT = Mode.SLOW")],
        expect={"y": "10"},
    ),
    "deeper: nested constant read by a helper": dict(
        files=through_a_method(
            "DEEP = {'a': {'b': {'c': {'d': {'e': {'f': {'g': {'h': 1}}}}}}}}\n\n\n"
            "def run(v):\n    return v + DEEP['a']['b']['c']['d']['e']['f']['g']['h']\n"
        ),
        change=[("deep.py", "{'h': 1}", "{'h': 2}")],
        expect={"y": "7"},
    ),
    "deeper: class attribute from an environment variable, read by a helper": dict(
        files=through_a_method(
            "import os\n\n\nclass Settings:\n"
            '    THRESHOLD = int(os.environ.get("CASE_THRESHOLD", "1"))\n\n\n'
            "def run(v):\n    return v * Settings.THRESHOLD\n"
        ),
        env_after={"CASE_THRESHOLD": "2"},
        change=[],
        expect={"y": "10"},
    ),
    "deeper: a file a helper reads": dict(
        files=dict(
            through_a_method(
                "def run(v):\n    with open('vocab.txt') as f:\n"
                "        return v + len(f.read().split())\n"
            ),
            **{"vocab.txt": "a b\n"},
        ),
        change=[("vocab.txt", "a b", "a b c")],
        expect={"y": "8"},
    ),
    "deeper: module-level instance used by a helper": dict(
        files=dict(
            through_a_method(
                "from scaler import Scaler\n\nSCALER = Scaler(3)\n\n\n"
                "def run(v):\n    return SCALER.apply(v)\n"
            ),
            **{
                "scaler.py": "class Scaler:\n    def __init__(self, k):\n        self.k = k\n\n"
                "    def apply(self, v):\n        return v * self.k\n"
            },
        ),
        change=[("deep.py", "Scaler(3)", "Scaler(4)")],
        expect={"y": "20"},
    ),
    "deeper: a method of a helper's class calls another method": dict(
        files=dict(
            through_a_method(
                "from model import Model\n\n\ndef run(v):\n    return Model().predict(v)\n"
            ),
            **{
                "model.py": "class Model:\n    def predict(self, v):\n"
                "        return self._score(v) + 1\n\n"
                "    def _score(self, v):\n        return v * 2\n"
            },
        ),
        change=[("model.py", "return v * 2", "return v * 3")],
        expect={"y": "16"},
    ),
}
CASES.update(DEEPER_CASES)

#: changes after which the watched step must still hit (no needless miss)
HIT_CASES = {
    "comment and formatting in a helper module": dict(
        files={
            "flow.py": linear("self.y = lib.helper(5)", prelude="import lib\n"),
            "lib.py": "def helper(v):\n    return v + 1\n",
        },
        change=[("lib.py", "return v + 1", "# add one\n    return (v\n            + 1)")],
        expect={"y": "6"},
    ),
    "a function the step does not execute": dict(
        files={
            "flow.py": linear(
                "self.y = lib.helper(5) if True else lib.unused(5)", prelude="import lib\n"
            ),
            "lib.py": "def helper(v):\n    return v + 1\n\n\ndef unused(v):\n    return v\n",
        },
        change=[("lib.py", "    return v\n", "    return v * 1000\n")],
        expect={"y": "6"},
    ),
    "a method of the flow the step does not call": dict(
        files={
            "flow.py": linear(
                "self.y = self._used(5)",
                members="""
                def _used(self, v):
                    return v + 1

                def _other(self, v):
                    return v
                """,
            )
        },
        change=[("flow.py", "        return v\n", "        return v * 2\n")],
        expect={"y": "6"},
    ),
}
