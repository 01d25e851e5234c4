"""Pytest fixtures for a real (moto) S3 endpoint on 127.0.0.1.

Tests talk HTTP to moto's server, so boto3, Metaflow's S3 client and flows run
in subprocesses all behave as against a real endpoint. conftest.py pulls these
in with ``from s3_server import *``.

Fixtures:

* ``s3_server`` (session): the running server; ``.endpoint_url``.
* ``s3_env`` (function): a fresh bucket, and the process environment pointed
  at it for the test's duration. ``.env`` holds the variables to pass to a
  subprocess (they are also already in ``os.environ``); ``.bucket``,
  ``.endpoint_url``, ``.client`` (boto3) and ``.url(prefix)``.
* ``dead_s3_env`` (function): the same shape, pointed at a closed local port.
"""

import logging
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import pytest

__all__ = ["S3Server", "S3Env", "s3_server", "s3_env", "dead_s3_env", "free_port"]

# Host settings that would otherwise leak into the tests' credential chain.
_SCRUBBED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
)


@dataclass
class S3Server:
    endpoint_url: str
    host: str
    port: int


@dataclass
class S3Env:
    env: Dict[str, str]
    bucket: str
    endpoint_url: str
    client: Optional[Any]  # a boto3 S3 client; None for dead_s3_env

    def url(self, prefix: str = "") -> str:
        prefix = prefix.strip("/")
        return "s3://%s/%s" % (self.bucket, prefix) if prefix else "s3://" + self.bucket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing was listening on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env_for(endpoint_url: str, bucket: str) -> Dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "METAFLOW_S3_ENDPOINT_URL": endpoint_url,
        # only used by runs that choose --datastore=s3
        "METAFLOW_DATASTORE_SYSROOT_S3": "s3://%s/metaflow" % bucket,
    }


def _apply(monkeypatch: pytest.MonkeyPatch, env: Dict[str, str]) -> None:
    for name in _SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # port=0 works: werkzeug binds an ephemeral port and moto reports it
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server("http://%s:%d" % (host, port), host, port)
    finally:
        server.stop()


def _empty_and_remove(client: Any, bucket: str) -> None:
    # moto keeps objects in memory for the whole session; give it back
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", ())]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Env]:
    import boto3

    bucket = "memoize-test-%s" % uuid.uuid4().hex[:12]
    env = _env_for(s3_server.endpoint_url, bucket)
    _apply(monkeypatch, env)
    client = boto3.session.Session().client(
        "s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1"
    )
    client.create_bucket(Bucket=bucket)
    try:
        yield S3Env(env, bucket, s3_server.endpoint_url, client)
    finally:
        try:
            _empty_and_remove(client, bucket)
        except Exception:
            pass  # a test may have deleted it; the server dies with the session


@pytest.fixture
def dead_s3_env(monkeypatch: pytest.MonkeyPatch) -> S3Env:
    endpoint_url = "http://127.0.0.1:%d" % free_port()
    bucket = "memoize-dead-%s" % uuid.uuid4().hex[:12]
    env = _env_for(endpoint_url, bucket)
    _apply(monkeypatch, env)
    return S3Env(env, bucket, endpoint_url, None)
