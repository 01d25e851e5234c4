"""File access below the interpreter (issue 31): native readers and child processes.

Each case runs a flow whose memoized step reads a file through native code
(sqlite3, pyarrow, duckdb) or through a child process (a shell running
``python score.py``, a helper that script imports, a multiprocessing fork
worker, an existence check made by a child), changes that file, and runs it
again: the step must run again and compute from the changed file. A third,
unchanged run must hit. Every case here served a stale result before the
native file recorder (key/_fsrecord.c, key/native.py).

The fallback: with the recorder turned off, a step that starts a child process
never hits (its entry keeps an unobserved dependency), and says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from observed_cases import linear

#: the corpus's start -> end flow, the memoized start step watched
_flow = linear


def _python(workdir, code: str) -> None:
    """Run Python in the work directory (to write binary data files)."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=workdir, check=True)


def _replace(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, "case out of date: %r not in %s" % (old, path)
    path.write_text(text.replace(old, new, 1))


# -- the cases -----------------------------------------------------------------
# name -> (files, setup(workdir) or None, change(workdir), expected y before, after)

_SQLITE_DB = """
import sqlite3
con = sqlite3.connect("data.db")
con.execute("create table if not exists t (v integer)")
con.execute("delete from t")
con.executemany("insert into t values (?)", [(v,) for v in %s])
con.commit()
con.close()
"""

_PARQUET = """
import pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({"v": %s}), "data.parquet")
"""

CASES = {
    "sqlite3 database file": dict(
        files={
            "flow.py": _flow(
                """
                con = sqlite3.connect("data.db")
                self.y = con.execute("select sum(v) from t").fetchone()[0]
                con.close()
                """,
                prelude="import sqlite3\n",
            )
        },
        setup=lambda w: _python(w, _SQLITE_DB % "[1, 2, 3]"),
        change=lambda w: _python(w, _SQLITE_DB % "[1, 2, 30]"),
        before="6",
        after="33",
    ),
    "parquet file read with pyarrow.parquet.read_table": dict(
        files={
            "flow.py": _flow(
                """
                self.y = sum(pq.read_table("data.parquet").column("v").to_pylist())
                """,
                prelude="import pyarrow.parquet as pq\n",
            )
        },
        setup=lambda w: _python(w, _PARQUET % "[1, 2, 3]"),
        change=lambda w: _python(w, _PARQUET % "[1, 2, 40]"),
        before="6",
        after="43",
    ),
    "csv file read by duckdb": dict(
        files={
            "flow.py": _flow(
                """
                con = duckdb.connect()
                self.y = int(con.execute("select sum(v) from read_csv('data.csv')").fetchone()[0])
                con.close()
                """,
                prelude="import duckdb\n",
            ),
            "data.csv": "v\n1\n2\n3\n",
        },
        change=lambda w: _replace(w / "data.csv", "3\n", "50\n"),
        before="6",
        after="53",
    ),
    "script run by a shell: python score.py": dict(
        files={
            "flow.py": _flow(
                """
                out = subprocess.run(
                    "python score.py", shell=True, capture_output=True, text=True, check=True
                )
                self.y = int(out.stdout)
                """,
                prelude="import subprocess\n",
            ),
            "score.py": "print(2 * 10)\n",
        },
        change=lambda w: _replace(w / "score.py", "10", "11"),
        before="20",
        after="22",
    ),
    "helper module imported by the child script (compiled before)": dict(
        files={
            "flow.py": _flow(
                """
                out = subprocess.run(
                    "python score.py", shell=True, capture_output=True, text=True, check=True
                )
                self.y = int(out.stdout)
                """,
                prelude="import subprocess\n",
            ),
            "score.py": "import scoring\n\nprint(scoring.scale(2))\n",
            "scoring.py": "def scale(v):\n    return v * 10\n",
        },
        # the child finds a valid scoring.pyc and never opens scoring.py
        setup=lambda w: _python(w, "import scoring"),
        change=lambda w: _replace(w / "scoring.py", "v * 10", "v * 12"),
        before="20",
        after="24",
    ),
    "data file read in a multiprocessing fork worker": dict(
        files={
            "flow.py": _flow(
                """
                with multiprocessing.get_context("fork").Pool(2) as pool:
                    self.y = sum(pool.map(read_number, ["data.txt"]))
                """,
                prelude=(
                    "import multiprocessing\n\n\n"
                    "def read_number(path):\n"
                    "    with open(path) as f:\n"
                    "        return int(f.read())\n"
                ),
            ),
            "data.txt": "7\n",
        },
        change=lambda w: _replace(w / "data.txt", "7", "8"),
        before="7",
        after="8",
    ),
    "existence check by a child process: a file appears": dict(
        files={
            "flow.py": _flow(
                """
                found = subprocess.run("test -e flag.txt", shell=True).returncode == 0
                self.y = "present" if found else "absent"
                """,
                prelude="import subprocess\n",
            ),
        },
        change=lambda w: (w / "flag.txt").write_text("x\n"),
        before="'absent'",
        after="'present'",
    ),
    "existence check in the task (os.path.exists, a C stat): a file appears": dict(
        files={
            "flow.py": _flow(
                """
                self.y = "present" if os.path.exists("flag.txt") else "absent"
                """,
                prelude="import os\n",
            ),
        },
        change=lambda w: (w / "flag.txt").write_text("x\n"),
        before="'absent'",
        after="'present'",
    ),
}

#: in `make test`; the others in `make test-slow`
QUICK = {
    "parquet file read with pyarrow.parquet.read_table",
    "script run by a shell: python score.py",
}


def _env(extra=None):
    # `python` in the flow's shell is this interpreter (its bin folder first)
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.update(extra or {})
    return env


def _write(runner, case):
    for rel, source in case["files"].items():
        (runner.workdir / rel).write_text(source)
    if case.get("setup"):
        case["setup"](runner.workdir)


def _y(runner, result):
    return runner.artifacts("CaseFlow", result.run_id)["start"][0]["y"]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow) for n in sorted(CASES)],
)
def test_a_changed_file_read_below_the_interpreter_is_never_a_hit(runner, name):
    case = CASES[name]
    _write(runner, case)
    first = runner.run("flow.py", env=_env())
    assert runner.count("start") == 1
    assert _y(runner, first) == case["before"], first
    case["change"](runner.workdir)
    second = runner.run("flow.py", env=_env())
    assert _y(runner, second) == case["after"], (name, second)
    assert runner.count("start") == 2, (name, second)
    third = runner.run("flow.py", env=_env())
    assert _y(runner, third) == case["after"], (name, third)
    assert runner.count("start") == 2, ("an unchanged re-run must hit", name, third)


def test_without_the_recorder_a_child_process_never_hits_and_says_why(runner):
    case = CASES["script run by a shell: python score.py"]
    _write(runner, case)
    off = _env({"METAFLOW_MEMOIZE_NATIVE_RECORD": "0"})
    runner.run("flow.py", env=off)
    second = runner.run("flow.py", env=off)
    assert runner.count("start") == 2, second
    assert "child process" in second.output and "METAFLOW_MEMOIZE_NATIVE_RECORD=0" in (
        second.output
    ), second
    assert _y(runner, second) == case["before"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, says",
    [
        # `env -i` runs cat with an empty environment: no recorder in it
        ("env -i /bin/cat data.txt", "without the native file recorder"),
        # a statically linked program: the loader preloads nothing into it
        ("/sbin/ldconfig -p > /dev/null; cat data.txt", "could not be observed"),
    ],
    ids=["cleared environment", "static binary"],
)
def test_a_program_the_recorder_cannot_enter_never_hits(runner, command, says):
    if command.startswith("/sbin/ldconfig") and not os.path.exists("/sbin/ldconfig"):
        pytest.skip("no static binary here")
    runner.add_flow(
        "flow.py",
        source=_flow(
            """
            out = subprocess.run(%r, shell=True, capture_output=True, text=True, check=True)
            self.y = out.stdout.strip()
            """
            % command,
            prelude="import subprocess\n",
        ),
    )
    (runner.workdir / "data.txt").write_text("5\n")
    runner.run("flow.py", env=_env())
    second = runner.run("flow.py", env=_env())
    assert runner.count("start") == 2, second
    assert says in second.output, second
    assert _y(runner, second) == "'5'"


# -- the interposer itself ---------------------------------------------------------

_PROBE = """
import ctypes, errno, json, os, subprocess, sys
results = []
def attempt(fn):
    try:
        return ["ok", repr(fn())]
    except OSError as err:
        return [type(err).__name__, err.errno]
for _ in range(2):
    results.append(attempt(lambda: os.stat("missing-file")))
    results.append(attempt(lambda: open("missing-file").read()))
    results.append(attempt(lambda: os.listdir("missing-dir")))
    results.append(attempt(lambda: open("present.txt").read()))
    results.append(attempt(lambda: os.access("missing-file", os.F_OK)))
    results.append(attempt(lambda: subprocess.run(["true"]).returncode))
    if sys.argv[1] == "record" and len(results) == 6:
        lib = ctypes.CDLL(None)
        lib.memoize_fsrecord_start(os.fsencode(sys.argv[2]))
        os.environ["METAFLOW_MEMOIZE_FSRECORD"] = sys.argv[2]
print(json.dumps(results))
"""


def test_the_interposer_never_changes_results_or_errno(tmp_path):
    from metaflow_extensions.memoize.plugins.memoize.key import native

    library = native.library_path()
    if library is None or not sys.platform.startswith("linux"):
        pytest.skip("the native file recorder is not built here")
    (tmp_path / "present.txt").write_text("hello")
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    outputs = []
    for mode, preload in (("plain", None), ("record", library)):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        if preload:
            env["LD_PRELOAD"] = preload
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, mode, str(record_dir)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    # off for the first half, on for the second: only the second was recorded
    events = native.read_records(str(record_dir))
    paths = {e.path for evs in events.values() for e in evs}
    assert str(tmp_path / "missing-file") in paths
    kinds = {(e.kind, e.result) for evs in events.values() for e in evs}
    assert ("stat", "ENOENT") in kinds and ("opendir", "ENOENT") in kinds
    assert ("open", "ok") in kinds and ("access", "ENOENT") in kinds
    # the child (`true`) recorded its start from the environment
    assert any(e.kind == "init" and e.args == ["true"] for evs in events.values() for e in evs)


def test_a_program_without_the_recorder_is_unobserved():
    from metaflow_extensions.memoize.plugins.memoize.key import native, observe

    line = "exec\t%d\tok\tE\t-\t/usr/bin/env\tenv\t-i\tpython\tscore.py\n"
    lost = "exec\t%d\tok\t\t-\t/opt/static-tool\tstatic-tool\n"
    events = {}
    for text in (line % 11, lost % 12):
        event = native.parse_line(text)
        events.setdefault(event.pid, []).append(event)
    recording = observe.Recording()
    native.merge(events, recording, task_pid=10)
    assert len(recording.unobserved) == 2, recording.unobserved
    assert "env -i python score.py" in recording.unobserved[0]
    assert "static-tool" in recording.unobserved[1]


def test_record_lines_round_trip_escaped_paths():
    from metaflow_extensions.memoize.plugins.memoize.key import native, observe

    text = "open\t7\tok\tr\t5:123:9\t/data/a\\tb\\\\c.csv\n"
    event = native.parse_line(text)
    assert event.path == "/data/a\tb\\c.csv" and event.sig == "5:123:9"
    recording = observe.Recording()
    native.merge({7: [event]}, recording, task_pid=1)
    assert recording.child_files_read == {"/data/a\tb\\c.csv": (5, 123, 9)}


def test_task_processes_get_the_recorder_after_any_preload_unless_turned_off(monkeypatch):
    from metaflow_extensions.memoize.plugins.memoize.key import native

    if native.library_path() is None or not sys.platform.startswith("linux"):
        pytest.skip("the native file recorder is not built here")
    monkeypatch.setenv("LD_PRELOAD", "/opt/libother.so")
    monkeypatch.delenv("METAFLOW_MEMOIZE_NATIVE_RECORD", raising=False)
    path = native.preload_for_tasks()
    assert os.environ["LD_PRELOAD"] == "/opt/libother.so:" + path
    native.preload_for_tasks()  # once per memoized step: added once
    assert os.environ["LD_PRELOAD"] == "/opt/libother.so:" + path
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setenv("METAFLOW_MEMOIZE_NATIVE_RECORD", "0")
    assert native.preload_for_tasks() is None
    assert os.environ["LD_PRELOAD"] == ""
