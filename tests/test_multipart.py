"""Incomplete multipart uploads (a writer killed while uploading a big blob) are
reported by `stats` and aborted by `prune` once older than the grace period.

The first test makes the uploads the way a killed writer leaves them (a multipart
upload of a blob name started, one part uploaded, never completed nor aborted);
the others kill real runs' tasks with SIGKILL while they upload (2 in ``make
test-slow``, 20 in the stress variant, make test-stress).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flowrunner import FlowRunner
from reliability_report import fault_notes

AREA = "12. Leftovers"
STANDALONE = Path(sys.executable).with_name("metaflow-memoize")
KILLED = 20


@pytest.fixture
def fault(record_property):
    return fault_notes(record_property)


def _cli(s3_env, root, *args):
    return subprocess.run(
        [str(STANDALONE), "--root", root, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, USERNAME="tester", **s3_env.env),
    )


def _start_upload(client, bucket, key):
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    client.upload_part(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
    )


def _uploads(client, bucket):
    return sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", ()))


def test_prune_aborts_incomplete_uploads_of_killed_writers(s3_env, fault):
    fault(
        area=AREA,
        fault="%d incomplete multipart uploads of blobs under the cache root (as writers "
        "killed mid-upload leave them), plus one of a foreign name under v1/ and one "
        "outside the root; `stats --json`, then `prune --yes --grace 0s`" % KILLED,
        store="S3",
        expected="stats reports %d; prune aborts all %d; the foreign and outside uploads "
        "stay" % (KILLED, KILLED),
    )
    client, bucket = s3_env.client, s3_env.bucket
    root = s3_env.url("cache")
    # a cache root with one entry (so it has memoize's marker)
    from metaflow_extensions.memoize.plugins.memoize.cache.entries import Cache
    from metaflow_extensions.memoize.plugins.memoize.cache.stores import open_store

    Cache(open_store(root)).ensure_marker(recheck=True)
    ours = []
    for i in range(KILLED):
        sha = hashlib.sha1(b"big blob %d" % i).hexdigest()
        ours.append("cache/v1/blobs/%s/%s" % (sha[:2], sha))
        _start_upload(client, bucket, ours[-1])
    foreign = ["cache/v1/blobs/ab/abc-photo.jpg", "elsewhere/v1/blobs/ab/" + "ab" * 20]
    for key in foreign:
        _start_upload(client, bucket, key)

    stats = _cli(s3_env, root, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["incomplete_uploads"] == KILLED
    pruned = _cli(s3_env, root, "prune", "--yes", "--grace", "0s")
    assert pruned.returncode == 0, pruned.stderr
    left = _uploads(client, bucket)
    assert left == sorted(foreign)
    fault(
        observed="stats: %d incomplete uploads; after prune: %d of ours left, %d foreign kept; "
        "prune said: %s"
        % (
            KILLED,
            len(set(left) & set(ours)),
            len(left),
            [ln.strip() for ln in pruned.stdout.splitlines() if "multipart" in ln][:1],
        )
    )


# -- real writers, killed mid-upload -------------------------------------------
BIG_FLOW = """
import hashlib
import random

from _counter import record
from metaflow import FlowSpec, memoize, step


class BigUploadFlow(FlowSpec):
    @memoize
    @step
    def start(self):
        record("start")
        # random bytes do not compress: the blob stays above the multipart threshold
        self.big = random.Random(7).randbytes(17 * 1024 * 1024)
        self.next(self.end)

    @step
    def end(self):
        self.digest = hashlib.sha1(self.big).hexdigest()


if __name__ == "__main__":
    BigUploadFlow()
"""
BIG_DIGEST = hashlib.sha1(random.Random(7).randbytes(17 * 1024 * 1024)).hexdigest()
DIGEST_SCRIPT = """
import json, sys
from metaflow import Flow, namespace
namespace(None)
print(json.dumps(Flow("BigUploadFlow")[sys.argv[1]]["end"].task["digest"].data))
"""


def _task_pids(parent: int) -> list[int]:
    """Metaflow's task processes under a run's process (``... step <name> ...``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"step" in argv:
            pids.append(int(entry))
    return pids


def _kill_while_uploading(runner, env, client, bucket, timeout=120.0) -> bool:
    """Start a run; once its task has started a multipart upload into the cache,
    SIGKILL the task. True if the kill landed mid-upload."""
    before = {
        u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", ())
    }
    proc = subprocess.Popen(
        [sys.executable, "big_flow.py", "--no-pylint", "run"],
        cwd=runner.workdir,
        env=runner.env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = False
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", ())
            if any(u["UploadId"] not in before for u in uploads):
                tasks = _task_pids(proc.pid)
                for pid in tasks:
                    os.kill(pid, signal.SIGKILL)
                killed = bool(tasks)
                break
            time.sleep(0.05)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return killed and proc.returncode != 0


def check_killed_uploads(runner, s3_env, fault, kills: int) -> None:
    from fault_proxy import FaultProxy

    fault(
        area=AREA,
        fault="%d runs, each SIGKILLed (the task process) while its memoized step uploads a "
        "17 MB blob to the S3 cache in parts (the parts' replies held back 5 s by a proxy, "
        "so the kill lands mid-upload); then one `prune --yes --grace 0s`; then clean "
        "runs" % kills,
        store="S3",
        expected="every kill leaves an incomplete upload; after the prune 0 are left; a clean "
        "re-run stores the entry, a run in a fresh datastore hits it, both with the right "
        "bytes",
    )
    client, bucket = s3_env.client, s3_env.bucket
    root = s3_env.url("cache")
    runner.add_flow("big_flow.py", BIG_FLOW)
    proxy = FaultProxy(
        s3_env.endpoint_url, rate=1.0, match="uploadId=", latency=5.0, kinds=("latency",)
    ).start()
    try:
        slow = dict(
            s3_env.env,
            AWS_ENDPOINT_URL_S3=proxy.url,
            METAFLOW_S3_ENDPOINT_URL=proxy.url,
            METAFLOW_MEMOIZE_ROOT=root,
        )
        landed = sum(_kill_while_uploading(runner, slow, client, bucket) for _ in range(kills))
    finally:
        proxy.stop()
    left_by_kills = len(_uploads(client, bucket))
    bodies = runner.count("start")
    pruned = _cli(s3_env, root, "prune", "--yes", "--grace", "0s")
    assert pruned.returncode == 0, pruned.stderr
    left = _uploads(client, bucket)
    env = dict(s3_env.env, METAFLOW_MEMOIZE_ROOT=root)
    rerun = runner.run("big_flow.py", env=env)
    fresh = FlowRunner(runner.workdir.parent / "fresh", extra_env=env)
    fresh.add_flow("big_flow.py", BIG_FLOW)
    hit = fresh.run("big_flow.py")
    digests = [
        runner.client_json(DIGEST_SCRIPT, rerun.run_id),
        fresh.client_json(DIGEST_SCRIPT, hit.run_id),
    ]
    fault(
        observed="%d of %d kills landed mid-upload (%d step bodies ran); %d incomplete uploads "
        "before the prune, %d after; re-run rc=%d, fresh-datastore run %s, digests %s"
        % (
            landed,
            kills,
            bodies,
            left_by_kills,
            len(left),
            rerun.returncode,
            "hit" if fresh.count("start") == 0 else "miss",
            "correct" if digests == [BIG_DIGEST] * 2 else "WRONG",
        )
    )
    assert landed == kills
    assert left_by_kills >= kills
    assert left == []
    assert digests == [BIG_DIGEST] * 2
    assert fresh.count("start") == 0  # the re-run's entry was served


@pytest.mark.slow
def test_writers_killed_mid_upload_leave_nothing_after_prune(runner, s3_env, fault):
    check_killed_uploads(runner, s3_env, fault, 2)


@pytest.mark.stress
def test_twenty_writers_killed_mid_upload_leave_nothing_after_prune(runner, s3_env, fault):
    check_killed_uploads(runner, s3_env, fault, KILLED)
