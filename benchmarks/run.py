#!/usr/bin/env python3
"""Performance benchmarks of metaflow-memoize (issue 7): measure, compare, report.

    .venv/bin/python benchmarks/run.py            # full run, writes docs/performance.md
    .venv/bin/python benchmarks/run.py --quick    # small sizes, < 1 min, writes to a temp dir
    .venv/bin/python benchmarks/run.py --quick --output /tmp/perf.md
    .venv/bin/python benchmarks/run.py --only 1,4 --keep   # some targets, keep the work dir

Everything runs on this machine: a private Metaflow datastore per benchmark
(local datastore + local metadata, as tests/flowrunner.py does) and a moto S3
server started here, in its own process. Every comparison is measured side by
side in the same run, interleaved, and repeated; the report gives the median
and the min-max. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# The harness package sits next to this file; put it on the path also when this file is
# loaded by path rather than run (tests/test_bench_harness.py does that).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from harness.config import DEFAULT_OUTPUT, Plan  # noqa: E402
from harness.machine import load1, wait_quiet  # noqa: E402
from harness.runner import measure_and_report, render_saved  # noqa: E402
from harness.targets import TITLES  # noqa: E402  (also read by tests/test_bench_harness.py)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats (< 1 min)"
    )
    parser.add_argument(
        "--output",
        help="report path (default: docs/performance.md for a full run of every target, "
        "else a file in a new temp dir)",
    )
    parser.add_argument("--only", help="comma-separated target numbers to run, e.g. 1,4")
    parser.add_argument(
        "--workdir", help="where to put datastores and caches (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="measure nothing: re-render a report from the results file a run saved",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="first wait up to this many seconds for the load average to drop below 1 "
        "(default: 120 for a full run, 0 for --quick)",
    )
    return parser


def output_path(args) -> Path:
    """Only a full run of every target replaces the committed report by default."""
    if args.output:
        return Path(args.output)
    if args.quick or args.only:
        return Path(tempfile.mkdtemp(prefix="memoize-bench-report-")) / "performance.md"
    return DEFAULT_OUTPUT


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.render:
        state_quick = json.loads(Path(args.render).read_text())["quick"]
        args.quick = args.quick or state_quick
        return render_saved(args.render, output_path(args))
    wait = args.wait_quiet if args.wait_quiet is not None else (0 if args.quick else 120)
    if wait > 0:
        print(
            "[bench] waiting up to %.0f s for a quiet machine (load %.1f)" % (wait, load1()),
            file=sys.stderr,
        )
        wait_quiet(wait)
    started = time.perf_counter()
    plan = Plan(args.quick)
    only = {int(x) for x in args.only.split(",")} if args.only else set(TITLES)
    return measure_and_report(plan, only, output_path(args), args.workdir, args.keep, started)


if __name__ == "__main__":
    sys.exit(main())
