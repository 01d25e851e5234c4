"""Where the harness finds things, what it runs (sizes and repeat counts), and the one
error it raises."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
FLOWS = REPO / "benchmarks" / "flows"
DEFAULT_OUTPUT = REPO / "docs" / "performance.md"
PY = sys.executable
MB = 1 << 20
#: moto keeps every object in memory: no S3 object in these benchmarks is larger
S3_OBJECT_CAP_MB = 128


class Plan:
    """Sizes and repeat counts. Repeats are per measured variant."""

    def __init__(self, quick: bool):
        self.quick = quick
        if quick:
            self.hit_sizes = [1.0, 10.0]
            self.hit_reps = {1.0: 2, 10.0: 2}
            self.miss_mb = 10.0
            self.miss_reps = 2
            self.s3_mb = 10.0
            self.s3_reps = 2
            self.copy_local_sizes = [10.0]
            self.copy_reps = {10.0: 2}
            self.key_synthetic = [1000, 10000]
            self.key_synthetic_reps = 11
            self.key_flow = [1000]
            self.key_flow_reps = 2
            self.hit_remote = ["S3 cache"]
            self.remote_reps = 1
            self.s3_miss_reps = 1
            self.warm = False
            self.eight_sleep = 0.1
            self.eight_reps = 1
            self.eight_variants = ["memo", "resume"]
            self.probes = 1
            self.prune_entries = 200
            self.prune_reps = 1
            self.wide_widths = [4]
            # each task process on the S3 datastore (moto) takes seconds: the
            # smallest foreach that still has siblings
            self.wide_s3_widths = [2]
            self.wide_reps = {}
            self.wide_sleep = 0.0
            self.commands_entries = [200]
            self.commands_width = 4
            self.commands_reps = 1
        else:
            self.hit_sizes = [1.0, 100.0, 1024.0]
            self.hit_reps = {1.0: 7, 100.0: 7, 1024.0: 7}
            self.miss_mb = 100.0
            self.miss_reps = 5
            self.s3_mb = 100.0
            self.s3_reps = 5
            self.copy_local_sizes = [100.0, 1024.0]
            self.copy_reps = {100.0: 5, 1024.0: 5}
            self.key_synthetic = [1000, 10000]
            self.key_synthetic_reps = 21
            self.key_flow = [1000, 10000]
            self.key_flow_reps = 5
            self.hit_remote = ["S3 cache", "S3 datastore + S3 cache"]
            self.remote_reps = 11
            self.s3_miss_reps = 5
            self.warm = True
            self.eight_sleep = 2.0
            self.eight_reps = 7
            self.eight_variants = ["memo", "memo_tasks", "resume", "resume_end", "plain", "empty"]
            self.probes = 3
            self.prune_entries = 10000
            self.prune_reps = 2
            # the sweep of issue 17 (the 1,000-item first runs, memoized and plain,
            # take about 12 minutes here); BENCH_WIDE_WIDTHS=10,100 for a shorter one
            self.wide_widths = _widths(os.environ.get("BENCH_WIDE_WIDTHS", "10,100,1000"))
            # on Metaflow's S3 datastore (moto): BENCH_WIDE_S3_WIDTHS=0 for none
            self.wide_s3_widths = _widths(os.environ.get("BENCH_WIDE_S3_WIDTHS", "100"))
            # rounds by width: a 10-wide re-run takes about a second, and its ratio to
            # resume spreads 0.75-1.20x between rounds (the median of 9 moved between
            # 0.90x and 1.05x from one sitting to the next); a 1,000-wide one takes 20 s
            self.wide_reps = {10: 21, 100: 5}
            self.wide_sleep = 0.0
            # target 8: entries in the cache root (BENCH_COMMANDS_ENTRIES=10000 for
            # one size); foreach width of the planned flow
            self.commands_entries = _widths(os.environ.get("BENCH_COMMANDS_ENTRIES", "1000,10000"))
            self.commands_width = 20
            self.commands_reps = 3
        assert self.miss_mb in self.hit_sizes and self.s3_mb in self.hit_sizes
        assert all(s in self.hit_sizes for s in self.copy_local_sizes)
        assert self.s3_mb <= S3_OBJECT_CAP_MB


def _widths(text: str) -> list[int]:
    return [int(w) for w in text.split(",") if w.strip() and int(w) > 0]


class BenchError(Exception):
    pass
