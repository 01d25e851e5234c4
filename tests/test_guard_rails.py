"""Guard rails (issue 15, points 3 to 6 and `ignore=`): what was accepted silently
is refused with a message that names the step, the argument and the fix.

* a malformed store URL (`s3:/bad`) quietly became a local directory `s3:`;
* a cache command on a missing or unreadable root reported an empty cache, exit 0;
* `outputs=` naming an artifact the step never sets stored entries without it;
* misspelled step names in refresh requests and `invalidate --step` did nothing;
* `ignore=` names were not checked like `inputs=` names.

Most tests need no flow run: they fail at start, or act on a root built in process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import metaflow  # noqa: F401  (must load before its extension's modules)
import pytest
from test_reliability import no_dac  # noqa: F401  (fixture)

from metaflow_extensions.memoize.plugins.memoize.cache.entries import MARKER, Cache
from metaflow_extensions.memoize.plugins.memoize.cache.manifest import ArtifactRecord, Manifest
from metaflow_extensions.memoize.plugins.memoize.cache.stores.local import LocalStore
from metaflow_extensions.memoize.plugins.memoize.exceptions import (
    MemoizeArgumentError,
    MemoizeException,
)
from metaflow_extensions.memoize.plugins.memoize.runtime import decorator
from metaflow_extensions.memoize.plugins.memoize.settings import parse_arguments

STANDALONE = Path(sys.executable).with_name("metaflow-memoize")
FLOW = "guard_flow.py"
# {DECO} is replaced by each test; `train` sets `model` only when asked, so the
# AST pass sees the assignment and the run-time check is what catches its absence
SOURCE = """
import os
from metaflow import FlowSpec, Parameter, memoize, step


class GuardFlow(FlowSpec):
    set_model = Parameter("set_model", default=1)

    @step
    def start(self):
        self.data = [1, 2, 3]
        self.next(self.train)

    {DECO}
    @step
    def train(self):
        with open(os.path.join(os.environ["GUARD_COUNTER"], "train"), "a") as f:
            f.write("x")
        if self.set_model:
            self.model = sum(self.data)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    GuardFlow()
"""


def add_flow(runner, deco="@memoize"):
    runner.add_flow(FLOW, source=SOURCE.replace("{DECO}", deco))
    counter = runner.workdir / "guard-counter"
    counter.mkdir(exist_ok=True)
    runner.extra_env["GUARD_COUNTER"] = str(counter)


def train_runs(runner) -> int:
    path = runner.workdir / "guard-counter" / "train"
    return len(path.read_text()) if path.exists() else 0


def standalone(*args, env=None):
    return subprocess.run(
        [str(STANDALONE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        input="",
        env=dict(os.environ if env is None else env, USERNAME="tester"),
    )


def error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def make_root(root: Path, entries=(("F", "train", "e1"),)) -> Cache:
    """A root as a run leaves it: the marker, then one entry per (flow, step, name)."""
    cache = Cache(LocalStore(str(root)))
    cache.ensure_marker(recheck=True)
    for flow, step, name in entries:
        data = name.encode()
        sha = hashlib.sha1(data).hexdigest()
        cache.store.put(Cache.blob_key(sha), data)
        cache.publish(
            Manifest(
                key=hashlib.md5(name.encode()).hexdigest(),
                flow=flow,
                step=step,
                components={},
                artifacts={"x": ArtifactRecord(sha, {"size": len(data)}, True, len(data))},
                transition={},
                created=time.time(),
                expires=None,
                origin="%s/1/%s/1" % (flow, step),
            )
        )
    return cache


# -- 1. malformed store URLs (issue point 3) ---------------------------------------
@pytest.mark.parametrize(
    "store,detail",
    [
        ("s3:/bad", "is not an S3 URL"),
        ("s3:bucket/prefix", "is not an S3 URL"),
        ("S3://bucket/prefix", "is not an S3 URL"),
        ("s3://", "has no bucket"),
        ("s3:///prefix", "has no bucket"),
        ("hdfs://bucket/prefix", "unsupported scheme (hdfs://)"),
        ("gs:/bad", "is not a GCS URL"),
        ("GS://bucket/prefix", "is not a GCS URL"),
        ("gs://", "has no bucket"),
        ("azure:container/prefix", "is not an Azure URL"),
        ("azure://", "has no container"),
        ("azure://c/a/../b", "'..' path segment"),
        ("file://", "names no directory"),
    ],
)
def test_a_malformed_store_url_is_refused_with_the_fix(store, detail):
    with pytest.raises(MemoizeArgumentError) as raised:
        parse_arguments("train", {"store": store}, ".")
    message = str(raised.value)
    assert "*train*" in message and "`store`" in message and detail in message, message
    assert "s3://bucket/prefix" in message and "directory path" in message, message


@pytest.mark.parametrize(
    "store", ["/mnt/a:b/cache", "rel/dir", "file:///tmp/c", "s3://b/p", "gs://b/p", "azure://c/p"]
)
def test_well_formed_store_urls_and_paths_with_a_colon_are_accepted(store):
    assert parse_arguments("train", {"store": store}, ".")["store"] == store


def test_a_malformed_root_setting_stops_the_flow_at_start(monkeypatch):
    monkeypatch.setenv("METAFLOW_MEMOIZE_ROOT", "s3:/team-cache")
    with pytest.raises(MemoizeException, match="METAFLOW_MEMOIZE_ROOT='s3:/team-cache'"):
        decorator._check_root_setting()


def test_a_malformed_root_is_refused_by_cache_commands_and_creates_nothing(tmp_path):
    env = dict(os.environ)
    env.pop("METAFLOW_MEMOIZE_ROOT", None)
    proc = subprocess.run(
        [str(STANDALONE), "--root", "s3:/bad", "list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc
    assert "is not an S3 URL" in error_line(proc)
    assert not (tmp_path / "s3:").exists()


# -- 2. a missing, unreadable or empty root is an error (issue point 4) -----------
COMMANDS = [
    ["list"],
    ["stats"],
    ["show", "abc"],
    ["prune", "--yes"],
    ["invalidate", "--all", "--yes"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_command_on_a_missing_root_is_an_error(tmp_path, command):
    root = tmp_path / "typo"
    proc = standalone("--root", str(root), *command)
    assert proc.returncode == 1, proc
    assert error_line(proc) == (
        "Error: cache unavailable: %s does not exist: check the path (a run that stores "
        "an entry creates the root)" % root
    )
    assert not root.exists()  # only a run creates a root


@pytest.mark.parametrize("command", [["list"], ["prune", "--yes"]], ids=lambda c: c[0])
def test_a_command_on_a_folder_that_is_no_cache_is_an_error(tmp_path, command):
    proc = standalone("--root", str(tmp_path), *command)
    assert proc.returncode == 1, proc
    assert "holds no memoize cache (no v1/memoize-root.json" in error_line(proc)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_command_on_an_unreadable_root_is_an_error(tmp_path, no_dac, command):  # noqa: F811
    root = tmp_path / "cache"
    make_root(root)
    root.chmod(0)
    try:
        proc = subprocess.run(
            [*no_dac, str(STANDALONE), "--root", str(root), *command],
            capture_output=True,
            text=True,
            timeout=120,
            input="",
            env=dict(os.environ, USERNAME="tester"),
        )
    finally:
        root.chmod(0o755)
    assert proc.returncode == 1, proc
    line = error_line(proc)
    assert line.startswith("Error: cache unavailable: ") and "ermission denied" in line, line
    assert len(list((root / "v1" / "entries").rglob("*.json"))) == 1  # nothing deleted


def test_an_empty_root_made_by_a_run_is_a_cache(tmp_path):
    root = tmp_path / "cache"
    make_root(root, entries=())
    assert (root / MARKER).exists() and not (root / "v1" / "entries").exists()
    for command in (["list"], ["stats"], ["prune", "--yes"], ["invalidate", "--all", "--yes"]):
        proc = standalone("--root", str(root), *command)
        assert proc.returncode == 0, (command, proc)
    assert "0 entries" in standalone("--root", str(root), "list").stdout


def test_a_missing_root_named_by_the_environment_is_an_error(tmp_path):
    proc = standalone("list", env=dict(os.environ, METAFLOW_MEMOIZE_ROOT=str(tmp_path / "typo")))
    assert proc.returncode == 1 and "does not exist" in error_line(proc), proc


# -- 3. outputs= naming an artifact the step never sets (issue point 5) ----------
def test_outputs_the_step_never_sets_are_refused_at_start(runner):
    add_flow(runner, '@memoize(outputs=["modle"])')
    result = runner.run(FLOW, check=False)
    assert result.returncode != 0, result
    assert "Step train" in result.output and "`outputs`" in result.output, result
    assert "'modle', which the step never sets" in result.output, result
    assert "remove it from outputs=" in result.output, result
    assert train_runs(runner) == 0


def test_outputs_the_step_did_not_set_this_time_are_not_stored(runner):
    """The body can set it (so start accepts it) but this run did not: storing an
    entry without it would make every later run hit and fail downstream."""
    add_flow(runner, '@memoize(outputs=["model"])')
    for _ in range(2):
        result = runner.run(FLOW, "--set_model", "0")
        assert "train not cached: outputs= lists 'model', which the step did not set" in (
            result.output
        ), result
    assert train_runs(runner) == 2  # nothing stored: the second run ran train again
    root = runner.workdir / ".metaflow" / "memoize-cache" / "v1" / "entries" / "GuardFlow"
    assert not (root / "train").exists()


# -- 4. unknown step names (issue point 6) -------------------------------------------
@pytest.mark.parametrize(
    "args,env,detail",
    [
        (
            ["--memoize-refresh-step", "wrok"],
            {},
            "--memoize-refresh-step wrok: GuardFlow has no step 'wrok'",
        ),
        ([], {"METAFLOW_MEMOIZE_REFRESH": "wrok"}, "METAFLOW_MEMOIZE_REFRESH names 'wrok'"),
        (["--memoize-refresh-step", "start"], {}, "step 'start' of GuardFlow is not memoized"),
    ],
    ids=["option", "environment", "not-memoized"],
)
def test_a_refresh_request_for_no_memoized_step_stops_the_run(runner, args, env, detail):
    add_flow(runner)
    result = runner.run(FLOW, *args, env=env, check=False)
    assert result.returncode != 0, result
    assert detail in result.output, result
    assert "The @memoize steps of GuardFlow are: train." in result.output, result
    assert train_runs(runner) == 0


def test_invalidate_of_an_unknown_step_is_an_error(runner, tmp_path):
    add_flow(runner)
    root = tmp_path / "cache"
    make_root(root, entries=(("GuardFlow", "train", "e1"),))
    for step, detail in [
        ("trian", "GuardFlow has no step 'trian'; its @memoize steps are: train"),
        ("start", "step 'start' of GuardFlow is not memoized; its @memoize steps are: train"),
    ]:
        result = runner.cli(
            FLOW,
            "memoize",
            "invalidate",
            "--step",
            step,
            "--yes",
            "--store",
            str(root),
            check=False,
        )
        assert result.returncode == 1, result
        assert detail in result.output, result
    proc = standalone("--root", str(root), "invalidate", "--step", "trian", "--yes")
    assert proc.returncode == 1, proc
    assert "no entry of a step 'trian' in %s; steps with entries: train" % root in error_line(proc)
    assert len(list(root.rglob("*.json"))) == 2  # the entry and the marker are still there
    done = standalone("--root", str(root), "invalidate", "--step", "train", "--yes")
    assert done.returncode == 0 and "removed 1 entry" in done.stdout, done


# -- 5. ignore= names (issue point 10) ---------------------------------------------
def test_ignore_names_are_checked_like_inputs(runner):
    add_flow(runner, '@memoize(ignore=["dta"])')
    result = runner.run(FLOW, check=False)
    assert result.returncode != 0, result
    assert "Step train" in result.output and "`ignore`" in result.output, result
    assert "'dta', which no step of GuardFlow sets" in result.output, result
    assert train_runs(runner) == 0


# -- 6. env= naming a package that is not installed (issue 15, point 10) -----------
def test_env_naming_a_misspelled_package_suggests_the_installed_one(runner):
    add_flow(runner, '@memoize(env=["pytset"])')
    result = runner.run(FLOW, check=False)
    assert result.returncode != 0, result
    assert "Step train: @memoize argument `env` names 'pytset', which is not installed" in (
        result.output
    ), result
    assert "Did you mean 'pytest'? Use env=['pytest']." in result.output, result
    assert "Traceback" not in result.output, result
    assert train_runs(runner) == 0


def test_env_naming_a_package_nothing_resembles_says_how_to_install_or_drop_it():
    name = "surely-not-an-installed-package-t2"
    with pytest.raises(MemoizeArgumentError) as err:
        parse_arguments("train", {"env": [name]}, ".")
    assert (err.value.step, err.value.argument) == ("train", "env")
    message = str(err.value)
    assert "not installed in this Python environment (%s)" % sys.executable in message
    assert "%s -m pip install %s" % (sys.executable, name) in message
    assert "remove '%s' from env=" % name in message
    # the old message suggested a name as the fix, whatever failed
    assert "Did you mean" not in message and "e.g. env=" not in message


# -- 7. `--with memoize` memoizes steps run for their side effects (issue 15, point 10)
WITH_NOTE = "[memoize] note: --with memoize memoizes"


def test_run_with_memoize_notes_once_which_steps_it_memoized(runner):
    add_flow(runner)  # train has @memoize in the source: --with adds it to start and end
    result = runner.run(FLOW, "--with", "memoize")
    notes = [line for line in result.output.splitlines() if WITH_NOTE in line]
    assert len(notes) == 1, result  # once per run, not once per step or task
    assert "--with memoize memoizes start, end: on a hit" in notes[0], notes
    assert "put @memoize on the steps to cache instead" in notes[0], notes

    # memoized in the source only: nothing to note
    plain = runner.run(FLOW)
    assert WITH_NOTE not in plain.output, plain
    assert train_runs(runner) == 1  # the note changes nothing: train hit
