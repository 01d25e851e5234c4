"""Incomplete multipart uploads (a writer killed while uploading a big blob) are
reported by `stats` and aborted by `prune` once older than the grace period.

The uploads are made the way a killed writer leaves them: a multipart upload of a
blob name started, one part uploaded, never completed nor aborted.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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
