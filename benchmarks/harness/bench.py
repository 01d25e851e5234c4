"""What every target shares while measuring: the plan, the work directory, the task
environment, the results so far, and the ArtifactsFlow runs several targets reuse."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .config import BenchError, Plan
from .flows import FlowDir, RunResult, settle
from .moto_s3 import Moto, s3_url
from .product import datastore_blobs, work_entry


class Bench:
    def __init__(self, plan: Plan, work: Path, moto: Moto | None, started: float | None = None):
        """``started``: the perf_counter the log's clock counts from (default: now)."""
        self.plan = plan
        self.work = work
        self.moto = moto
        self.started = time.perf_counter() if started is None else started
        self.results = {}
        self.errors = {}
        self.hit_dirs = {}
        self.spans = {}
        self.sampler = None
        self.start_load = None  # the load average when the measurements begin
        self.machine = None  # captured when the measurements end
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "PYTEST", "AWS_"))
        }
        env.update(
            {
                "USERNAME": "bench",
                "METAFLOW_DEFAULT_DATASTORE": "local",
                "METAFLOW_DEFAULT_METADATA": "local",
            }
        )
        self.env = env
        if moto is not None:
            self.use_moto(moto)

    def use_moto(self, moto: Moto) -> None:
        """Point the flows' environment and this process's S3 clients at ``moto``."""
        self.moto = moto
        self.env.update(moto.env)
        os.environ.update(moto.env)

    def log(self, msg):
        print(
            "[bench %6.1fs] %s" % (time.perf_counter() - self.started, msg),
            file=sys.stderr,
            flush=True,
        )

    def hit_flow(self, mb, s3_datastore=False) -> tuple[FlowDir, RunResult]:
        """An ArtifactsFlow run of ``mb`` MB whose ``work`` entry is stored, set up once and
        shared: targets 1, 2 and 3 all measure against it."""
        key = (mb, s3_datastore)
        if key not in self.hit_dirs:
            name = "artifacts-%gMB%s" % (mb, "-s3" if s3_datastore else "")
            s3_root = s3_url(name) if s3_datastore else None
            fd = FlowDir(self.work / name, "artifacts_flow.py", self.env, s3_root=s3_root)
            self.log(
                "setting up ArtifactsFlow --mb %g%s (first run: a miss that stores the entry)"
                % (mb, " on the S3 datastore" if s3_datastore else "")
            )
            run = fd.run("--mb", "%g" % mb, env={"BENCH_PLAIN": "0"})
            if "stored" not in run.memoize:
                raise BenchError("setup run did not store an entry:\n" + run.output[-3000:])
            settle()
            self.hit_dirs[key] = (fd, run)
        return self.hit_dirs[key]

    def stored_entry(self, mb):
        """The ``mb`` MB run's entry and the datastore blobs it names, as the product sees them."""
        fd, _ = self.hit_flow(mb)
        _, manifest = work_entry(fd)
        return manifest, datastore_blobs(fd.datastore_root, "ArtifactsFlow")
