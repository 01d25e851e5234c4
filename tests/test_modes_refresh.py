"""Refresh (CLI options, environment, decorator argument, resume), the modes of
METAFLOW_MEMOIZE_MODE, and TTL expiry."""

import json

import pytest
from test_shapes import (
    assert_restored_from,
    cache_root,
    counts,
    edited,
    entry_files,
    of_step,
    statuses,
    step_status,
    tasks,
)

LINEAR = ("start", "middle", "end")
FLOW = "T2LinearFlow"


def ones(n=1):
    return {s: n for s in LINEAR}


def run_tasks(runner, *args, env=None, command="run"):
    result = runner.run("t2_linear_flow.py", *args, env=env, command=command)
    return result, tasks(runner, FLOW, result.run_id)


def manifest(path):
    return json.loads(path.read_text())


def all_entries(runner):
    return [p for s in LINEAR for p in entry_files(runner, FLOW, s)]


# -- refresh ------------------------------------------------------------------
def test_memoize_refresh_recomputes_every_step_and_the_next_run_hits_it(runner):
    runner.add_flow("t2_linear_flow.py")
    first, first_tasks = run_tasks(runner)
    keys = {t["step"]: t["metadata"]["memoize_key"] for t in first_tasks}

    refreshed, refreshed_tasks = run_tasks(runner, "--memoize-refresh")
    assert counts(runner, LINEAR) == ones(2)
    assert statuses(refreshed_tasks) == {s: ["refresh"] for s in LINEAR}
    assert {t["step"]: t["metadata"]["memoize_key"] for t in refreshed_tasks} == keys
    assert refreshed.output.count("[memoize] refresh") == 3
    # the entries were overwritten in place: same files, now from the refresh run
    entries = all_entries(runner)
    assert len(entries) == 3
    for path in entries:
        assert manifest(path)["origin"].split("/")[1] == refreshed.run_id, path

    again, again_tasks = run_tasks(runner)
    assert counts(runner, LINEAR) == ones(2)
    assert_restored_from(again_tasks, refreshed_tasks, refreshed.run_id)


def test_refresh_selected_steps_by_option_and_environment(runner):
    runner.add_flow("t2_linear_flow.py")
    run_tasks(runner)

    # --memoize-refresh-step is repeatable and touches only the named steps
    _, t = run_tasks(runner, "--memoize-refresh-step", "start", "--memoize-refresh-step", "end")
    assert counts(runner, LINEAR) == {"start": 2, "middle": 1, "end": 2}
    assert statuses(t) == {"start": ["refresh"], "middle": ["hit"], "end": ["refresh"]}

    # METAFLOW_MEMOIZE_REFRESH=stepA,stepB
    _, t = run_tasks(runner, env={"METAFLOW_MEMOIZE_REFRESH": "middle,end"})
    assert counts(runner, LINEAR) == {"start": 2, "middle": 2, "end": 3}
    assert statuses(t) == {"start": ["hit"], "middle": ["refresh"], "end": ["refresh"]}

    # METAFLOW_MEMOIZE_REFRESH=1: everything
    _, t = run_tasks(runner, env={"METAFLOW_MEMOIZE_REFRESH": "1"})
    assert counts(runner, LINEAR) == {"start": 3, "middle": 3, "end": 4}
    assert statuses(t) == {s: ["refresh"] for s in LINEAR}


def test_refresh_true_argument_always_recomputes_that_step(runner):
    source = edited("t2_linear_flow.py", ("@memoize  # MIDDLE-DECORATOR", "@memoize(refresh=True)"))
    runner.add_flow("t2_linear_flow.py", source=source)
    _, first_tasks = run_tasks(runner)
    assert step_status(first_tasks, "middle") == "refresh"
    assert len(entry_files(runner, FLOW, "middle")) == 1

    _, second_tasks = run_tasks(runner)
    assert counts(runner, LINEAR) == {"start": 1, "middle": 2, "end": 1}
    assert statuses(second_tasks) == {"start": ["hit"], "middle": ["refresh"], "end": ["hit"]}


def test_resume_uses_the_cache_and_accepts_memoize_refresh(runner):
    runner.add_flow("t2_linear_flow.py")
    first, first_tasks = run_tasks(runner)

    # resuming from middle re-executes middle and end: both hit the cache
    resumed, resumed_tasks = run_tasks(
        runner, "middle", "--origin-run-id", first.run_id, command="resume"
    )
    assert counts(runner, LINEAR) == ones(1)
    assert step_status(resumed_tasks, "middle") == "hit"
    assert step_status(resumed_tasks, "end") == "hit"
    (end,) = of_step(resumed_tasks, "end")
    assert end["artifacts"]["result"] == "21"

    # ... and with --memoize-refresh they are recomputed; start is still cloned
    refreshed, refreshed_tasks = run_tasks(
        runner,
        "middle",
        "--origin-run-id",
        first.run_id,
        "--memoize-refresh",
        command="resume",
    )
    assert counts(runner, LINEAR) == {"start": 1, "middle": 2, "end": 2}
    assert step_status(refreshed_tasks, "middle") == "refresh"
    assert step_status(refreshed_tasks, "end") == "refresh"
    assert of_step(refreshed_tasks, "end")[0]["artifacts"]["result"] == "21"
    for step in ("middle", "end"):
        (path,) = entry_files(runner, FLOW, step)
        assert manifest(path)["origin"].split("/")[1] == refreshed.run_id


# -- modes --------------------------------------------------------------------
def test_mode_off_neither_reads_nor_writes(runner):
    runner.add_flow("t2_linear_flow.py")
    off = {"METAFLOW_MEMOIZE_MODE": "off"}
    result, t = run_tasks(runner, env=off)
    assert counts(runner, LINEAR) == ones(1)
    assert statuses(t) == {s: ["disabled"] for s in LINEAR}
    assert all_entries(runner) == []
    assert not cache_root(runner).exists() or not any(cache_root(runner).rglob("*.json"))
    assert "[memoize] stored" not in result.output

    # nothing was stored: a normal run misses everywhere (and stores)
    _, t = run_tasks(runner)
    assert counts(runner, LINEAR) == ones(2)
    assert statuses(t) == {s: ["miss"] for s in LINEAR}
    before = {p: p.read_bytes() for p in all_entries(runner)}
    assert len(before) == 3

    # with entries present, off still does not look them up, nor touch them
    _, t = run_tasks(runner, env=off)
    assert counts(runner, LINEAR) == ones(3)
    assert statuses(t) == {s: ["disabled"] for s in LINEAR}
    assert {p: p.read_bytes() for p in all_entries(runner)} == before


def test_mode_read_uses_hits_and_never_writes(runner):
    runner.add_flow("t2_linear_flow.py")
    read = {"METAFLOW_MEMOIZE_MODE": "read"}
    result, t = run_tasks(runner, env=read)
    assert counts(runner, LINEAR) == ones(1)
    assert statuses(t) == {s: ["miss"] for s in LINEAR}
    assert all_entries(runner) == []
    assert "[memoize] stored" not in result.output

    first, first_tasks = run_tasks(runner, env={"METAFLOW_MEMOIZE_MODE": "on"})
    assert counts(runner, LINEAR) == ones(2)
    assert len(all_entries(runner)) == 3

    _, t = run_tasks(runner, env=read)
    assert counts(runner, LINEAR) == ones(2)
    assert_restored_from(t, first_tasks, first.run_id)


def test_mode_refresh_never_reads_and_always_writes(runner):
    runner.add_flow("t2_linear_flow.py")
    run_tasks(runner)
    refreshed, refreshed_tasks = run_tasks(runner, env={"METAFLOW_MEMOIZE_MODE": "refresh"})
    assert counts(runner, LINEAR) == ones(2)
    assert statuses(refreshed_tasks) == {s: ["refresh"] for s in LINEAR}
    _, t = run_tasks(runner)
    assert counts(runner, LINEAR) == ones(2)
    assert_restored_from(t, refreshed_tasks, refreshed.run_id)


def test_invalid_mode_fails_at_start_with_a_clear_message(runner):
    runner.add_flow("t2_linear_flow.py")
    result = runner.run(
        "t2_linear_flow.py", env={"METAFLOW_MEMOIZE_MODE": "sometimes"}, check=False
    )
    assert result.returncode != 0
    assert "METAFLOW_MEMOIZE_MODE" in result.output
    assert "sometimes" in result.output
    assert "on, off, read, refresh" in result.output
    assert counts(runner, LINEAR) == ones(0)


# -- ttl ----------------------------------------------------------------------
def ttl_flow(runner):
    source = edited("t2_linear_flow.py", ("@memoize  # MIDDLE-DECORATOR", '@memoize(ttl="1h")'))
    runner.add_flow("t2_linear_flow.py", source=source)


def expire(path):
    data = manifest(path)
    assert data["expires"] == pytest.approx(data["created"] + 3600)
    data["expires"] = data["created"] - 1
    path.write_text(json.dumps(data))


@pytest.mark.slow
def test_expired_entry_misses_with_reason_expired(runner):
    ttl_flow(runner)
    run_tasks(runner)
    (path,) = entry_files(runner, FLOW, "middle")
    assert manifest(path)["expires"] is not None
    assert manifest(entry_files(runner, FLOW, "start")[0])["expires"] is None  # no ttl
    expire(path)

    result, t = run_tasks(runner)
    assert counts(runner, LINEAR) == {"start": 1, "middle": 2, "end": 1}
    (middle,) = of_step(t, "middle")
    assert middle["metadata"]["memoize_status"] == "miss"
    assert middle["metadata"]["memoize_reason"] == "expired"
    assert "miss middle" in result.output and "(expired)" in result.output


@pytest.mark.slow
def test_expired_entry_is_replaced_by_a_fresh_one(runner):
    ttl_flow(runner)
    run_tasks(runner)
    (path,) = entry_files(runner, FLOW, "middle")
    expire(path)
    second, _ = run_tasks(runner)
    assert counts(runner, LINEAR) == {"start": 1, "middle": 2, "end": 1}
    (path,) = entry_files(runner, FLOW, "middle")
    data = manifest(path)
    assert data["origin"].split("/")[1] == second.run_id, data["origin"]
    assert data["expires"] > data["created"]

    _, t = run_tasks(runner)
    assert counts(runner, LINEAR) == {"start": 1, "middle": 2, "end": 1}
    assert step_status(t, "middle") == "hit"


@pytest.mark.slow
def test_an_ignored_unsigned_entry_is_replaced_by_a_signed_one(runner):
    runner.add_flow("t2_linear_flow.py")
    run_tasks(runner)
    signed = {"METAFLOW_MEMOIZE_SIGNING_KEY": "t2-secret"}
    _, t = run_tasks(runner, env=signed)
    assert counts(runner, LINEAR) == ones(2)
    assert statuses(t) == {s: ["miss"] for s in LINEAR}
    _, t = run_tasks(runner, env=signed)
    assert counts(runner, LINEAR) == ones(2), "the signed run's results were not stored"
    assert statuses(t) == {s: ["hit"] for s in LINEAR}
