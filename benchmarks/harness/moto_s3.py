"""The S3 endpoint: moto's server in a process of its own, and the bucket the benchmarks use."""

from __future__ import annotations

import os
import socket
import subprocess
import textwrap
import time

from .config import PY, BenchError

BUCKET = "memoize-bench"


def s3_url(prefix, bucket=BUCKET):
    return "s3://%s/%s" % (bucket, prefix)


_MOTO_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()  # until the harness closes our stdin (or dies)
    server.stop()
    """
)


class Moto:
    """moto's S3 server in a process of its own (so it never shares our GIL)."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [PY, "-c", _MOTO_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            raise BenchError("moto server did not start")
        self.endpoint = "http://127.0.0.1:%s" % line
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", int(line)), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "METAFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1"
        )

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.terminate()
                self.proc.wait(timeout=10)


def empty_prefix(client, prefix, bucket=BUCKET):
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        for start in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
            )


def serve_bucket() -> Moto:
    """Start moto, point this process's AWS settings at it (the product's in-process S3
    clients read them, and no profile or real endpoint may leak in), and create the bucket."""
    moto = Moto()
    os.environ.update(moto.env)
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
    ):
        os.environ.pop(name, None)
    moto.client().create_bucket(Bucket=BUCKET)
    return moto


def read_every_object(bench, prefix, suffix="", bucket=BUCKET):
    """Seconds plain boto3 takes to list ``prefix`` and GET every object under it whose
    key ends with ``suffix``, 16 at a time (the maintenance module's parallelism):
    the least a command that reads every manifest pays."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=bench.moto.endpoint,
        region_name="us-east-1",
        config=Config(max_pool_connections=16),
    )
    started = time.perf_counter()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", ()) if o["Key"].endswith(suffix)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: client.get_object(Bucket=bucket, Key=k)["Body"].read(), keys))
    return time.perf_counter() - started
