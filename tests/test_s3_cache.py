"""The S3 cache store end to end: real flows against moto's S3 server over HTTP."""

import concurrent.futures
import re

import pytest
from flowrunner import FlowRunner


def _manifests(s3_env, prefix="cache/v1/entries/"):
    paginator = s3_env.client.get_paginator("list_objects_v2")
    keys = []
    for page in paginator.paginate(Bucket=s3_env.bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _cache_env(s3_env, **extra):
    env = dict(s3_env.env)
    env["METAFLOW_MEMOIZE_ROOT"] = s3_env.url("cache")
    env.update(extra)
    return env


@pytest.mark.compat  # the S3 store on every supported Metaflow (make test-compat)
def test_local_datastore_with_s3_cache(runner, s3_env):
    runner.add_flow("s3_flow.py")
    env = _cache_env(s3_env)
    first = runner.run("s3_flow.py", env=env)
    # hits inside launched tasks (no clone by the orchestrator)
    second = runner.run("s3_flow.py", env=dict(env, METAFLOW_MEMOIZE_CLONE="0"))
    assert runner.count("start") == 1 and runner.count("summarize") == 1
    assert len(_manifests(s3_env)) == 2
    hits = [line for line in second.memoize_lines() if " hit " in line]
    assert len(hits) == 2
    assert all("already present" in line for line in hits)
    assert runner.artifacts("S3CacheFlow", first.run_id) == runner.artifacts(
        "S3CacheFlow", second.run_id
    )
    md = runner.metadata("S3CacheFlow", second.run_id)
    assert md["start"][0]["memoize_status"] == "hit"
    # the orchestrator reads the S3 cache too, and completes both hits itself
    third = runner.run("s3_flow.py", env=env)
    hits = [line for line in third.memoize_lines() if " hit " in line]
    assert len(hits) == 2 and all("cloned in the orchestrator" in line for line in hits)
    assert third.launched_steps() == {"end"}  # end is not memoized
    assert runner.count("start") == 1 and runner.count("summarize") == 1
    assert runner.artifacts("S3CacheFlow", third.run_id) == runner.artifacts(
        "S3CacheFlow", first.run_id
    )


@pytest.mark.slow
def test_s3_datastore_and_s3_cache_copy_server_side(runner, s3_env):
    runner.add_flow("s3_flow.py")
    env = _cache_env(s3_env, METAFLOW_DEFAULT_DATASTORE="s3")
    first = runner.run("s3_flow.py", env=env)
    stored = [line for line in first.memoize_lines() if " stored " in line]
    assert len(stored) == 2
    # the datastore and the cache are both on S3: no byte passes through the task
    assert all("server-side" in line and not re.search(r"blobs? copied", line) for line in stored)
    second = runner.run("s3_flow.py", env=dict(env, METAFLOW_MEMOIZE_CLONE="0"))
    hits = [line for line in second.memoize_lines() if " hit " in line]
    assert len(hits) == 2
    # blobs are already in the run's datastore: a hit moves nothing
    assert all("already present" in line and "copied" not in line for line in hits)
    assert runner.count("start") == 1
    assert runner.artifacts("S3CacheFlow", first.run_id, env=env) == runner.artifacts(
        "S3CacheFlow", second.run_id, env=env
    )
    # the orchestrator reads the S3 datastore and the S3 cache, and clones both tasks
    third = runner.run("s3_flow.py", env=env)
    hits = [line for line in third.memoize_lines() if " hit " in line]
    assert len(hits) == 2 and all("cloned in the orchestrator" in line for line in hits)
    assert third.launched_steps() == {"end"}  # end is not memoized
    assert runner.artifacts("S3CacheFlow", third.run_id, env=env) == runner.artifacts(
        "S3CacheFlow", first.run_id, env=env
    )


@pytest.mark.slow
def test_s3_datastore_default_root_is_under_the_sysroot(runner, s3_env):
    runner.add_flow("s3_flow.py")
    env = dict(s3_env.env, METAFLOW_DEFAULT_DATASTORE="s3")
    runner.run("s3_flow.py", env=env)
    runner.run("s3_flow.py", env=env)
    assert runner.count("start") == 1
    assert len(_manifests(s3_env, "metaflow/memoize-cache/v1/entries/S3CacheFlow/")) == 2


@pytest.mark.slow
def test_two_datastore_roots_share_one_s3_cache(tmp_path, s3_env):
    env = _cache_env(s3_env)
    laptop = FlowRunner(tmp_path / "laptop")
    ci = FlowRunner(tmp_path / "ci")
    laptop.add_flow("s3_flow.py")
    ci.add_flow("s3_flow.py")
    produced = laptop.run("s3_flow.py", env=env)
    reused = ci.run("s3_flow.py", env=env)
    assert ci.count("start") == 0 and ci.count("summarize") == 0
    hits = [line for line in reused.memoize_lines() if " hit " in line]
    assert len(hits) == 2
    # a fresh datastore: the blobs are copied in from the cache
    assert any(re.search(r"\d+ blobs? copied", line) for line in hits)
    assert laptop.artifacts("S3CacheFlow", produced.run_id) == ci.artifacts(
        "S3CacheFlow", reused.run_id
    )


@pytest.mark.slow
def test_concurrent_writers_of_one_key_publish_exactly_one_entry(runner, s3_env):
    runner.add_flow("s3_flow.py")
    env = _cache_env(s3_env)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: runner.run("s3_flow.py", env=env), range(4)))
    assert all(r.returncode == 0 for r in results)
    manifests = _manifests(s3_env)
    assert len(manifests) == 2, manifests  # one per memoized step, whoever won
    reports = {repr(runner.artifacts("S3CacheFlow", r.run_id)["end"]) for r in results}
    assert len(reports) == 1
    # every later run hits the winner's entries
    before = runner.executions()
    runner.run("s3_flow.py", env=env)
    assert runner.executions() == before


def test_unreachable_store_runs_uncached_with_one_warning(runner, dead_s3_env):
    runner.add_flow("s3_flow.py")
    env = dict(dead_s3_env.env, METAFLOW_MEMOIZE_ROOT=dead_s3_env.url("cache"))
    result = runner.run("s3_flow.py", env=env)
    assert runner.count("start") == 1 and runner.count("summarize") == 1
    warnings = [line for line in result.memoize_lines() if "WARNING" in line]
    assert len(warnings) == 2  # one per memoized task
    assert all("unreachable" in line and dead_s3_env.url("cache") in line for line in warnings)
    md = runner.metadata("S3CacheFlow", result.run_id)
    assert md["start"][0]["memoize_status"] == "error"
    assert "unreachable" in md["start"][0]["memoize_error"]


def test_unreachable_store_fails_the_task_in_strict_mode(runner, dead_s3_env):
    runner.add_flow("s3_flow.py")
    env = dict(
        dead_s3_env.env,
        METAFLOW_MEMOIZE_ROOT=dead_s3_env.url("cache"),
        METAFLOW_MEMOIZE_STRICT="1",
    )
    result = runner.run("s3_flow.py", env=env, check=False)
    assert result.returncode != 0
    assert "METAFLOW_MEMOIZE_STRICT" in result.output
    assert runner.count("start") == 0
