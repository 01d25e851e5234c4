"""Target 8: the cache commands `stats`, `list` and `plan` on a cache of many entries,
local and on S3 (issue 17), whole commands timed, against reading every manifest."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import PY, BenchError
from ..flows import FlowDir, settle
from ..markdown import fmt, rng, verdict
from ..moto_s3 import empty_prefix, read_every_object, s3_url
from ..product import product
from ..stats import summary

TITLE = "Target 8: cache commands (stats, list, plan) on many entries"

FLOW, STEP = "WideFlow", "body"
#: the issue's criterion: each command within this many seconds at JUDGED_AT entries
LIMIT_S = 10.0
JUDGED_AT = 10000
COMMANDS = ("stats", "list", "plan")
STANDALONE = Path(PY).with_name("metaflow-memoize")
#: WideFlow's memoized steps besides the body: start, join and end
RUN_STEPS_BESIDE_BODY = 3
#: the S3 roots get a bucket of their own, as a team's cache would: moto walks every
#: key of the bucket for each listing page (AWS S3 does not), so the other targets'
#: objects would be timed as if they were this cache's
BUCKET = "memoize-bench-commands"


def _publish_older_entries(cache, n):
    """``n`` entries of WideFlow's body from older versions of its code (another key
    each), published as a run publishes them (manifest, index object on S3, marker):
    what a cache gathers over many body edits. Each has a tiny blob of its own."""
    P = product()
    Manifest, Record = P.manifest.Manifest, P.manifest.ArtifactRecord
    created = time.time() - 86400

    def one(i):
        payload = b"older result %d" % i
        sha = hashlib.sha1(payload).hexdigest()
        manifest = Manifest(
            key=hashlib.sha256(b"older%d" % i).hexdigest()[:32],
            flow=FLOW,
            step=STEP,
            components={"code": {"step": "older version %d" % i}},
            artifacts={"result": Record(sha, {"size": len(payload)}, True, len(payload))},
            transition={},
            created=created + i * 0.001,
            expires=None,
            origin="%s/1/%s/%d" % (FLOW, STEP, i),
        )
        cache.store.put(cache.blob_key(sha), payload)
        cache.publish(manifest)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(n)))


def _timed(cmd, cwd, env):
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError("`%s` failed:\n%s" % (" ".join(map(str, cmd)), proc.stdout[-4000:]))
    return wall, proc.stdout


def _one(bench, where, n):
    """Populate a root with ``n`` entries (older ones, then a real run of WideFlow at
    the plan's width), edit the body, and time the commands."""
    P = product()
    width = bench.plan.commands_width
    name = "commands-%s-%d" % (where, n)
    fd = FlowDir(bench.work / name, "wide_flow.py", bench.env)
    if where == "S3":
        prefix = name
        client = bench.moto.client()
        if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
            client.create_bucket(Bucket=BUCKET)
        root = s3_url(prefix, BUCKET)
        store = P.S3Store(root)
    else:
        root = str(fd.root / "cache")
        store = P.LocalStore(root)
    env = dict(fd.env, METAFLOW_MEMOIZE_ROOT=root)
    older = max(0, n - width - RUN_STEPS_BESIDE_BODY)
    bench.log("target 8: %s, %d entries: publishing %d older body entries" % (where, n, older))
    started = time.perf_counter()
    _publish_older_entries(P.Cache(store), older)
    setup_s = time.perf_counter() - started
    settle()  # the run's entries are then the newest (S3 times have a 1 s resolution)
    # Metaflow refuses more than 100 foreach children unless told (only `run` takes it)
    splits = ("--max-num-splits", str(width + 10))
    run = fd.run("--width", str(width), *splits, env={"METAFLOW_MEMOIZE_ROOT": root})
    if run.memoize.count("stored") != width + RUN_STEPS_BESIDE_BODY:
        raise BenchError("the first run stored %d entries" % run.memoize.count("stored"))
    source = fd.root / fd.flow_file
    edited = source.read_text().replace(
        "self.result = len(self.input)", "self.result = len(self.input) + 0"
    )
    source.write_text(edited)
    standalone = [str(STANDALONE), "--root", root, "--flow", FLOW]
    commands = {
        "stats": standalone + ["stats"],
        "list": standalone + ["list"],
        "plan": [PY, fd.flow_file, "--no-pylint", "memoize", "plan", "--width", str(width)],
    }
    # the first `stats` after the entries were published has no catalog to start
    # from (on S3 it lists the index too, and writes the catalogs the others use);
    # repeated with the catalogs removed before each
    firsts = []
    for _ in range(bench.plan.commands_reps):
        store.delete([info.key for info in store.list(P.Cache.catalog_prefix(FLOW))])
        wall, out = _timed(commands["stats"], fd.root, env)
        if ("%d entries" % n) not in out:
            raise BenchError("stats did not count %d entries:\n%s" % (n, out[-2000:]))
        firsts.append(wall)
    times = {c: [] for c in COMMANDS}
    for rep in range(bench.plan.commands_reps):
        for command in COMMANDS:
            wall, out = _timed(commands[command], fd.root, env)
            times[command].append(wall)
            if rep == 0 and command == "stats" and ("%d entries" % n) not in out:
                raise BenchError("stats did not count %d entries:\n%s" % (n, out[-2000:]))
            if rep == 0 and command == "list" and "WideFlow/" not in out:
                raise BenchError("list showed no entry:\n%s" % out[-2000:])
            if rep == 0 and command == "plan" and "body" not in out:
                raise BenchError("plan did not show the body step:\n%s" % out[-2000:])
    row = {
        "where": where,
        "n": n,
        "width": width,
        "setup_s": setup_s,
        "stats_first_s": summary(firsts),
        **{c + "_s": summary(t) for c, t in times.items()},
    }
    if where == "S3":
        row["floor_scan_s"] = read_every_object(bench, prefix + "/v1/entries/", bucket=BUCKET)
        empty_prefix(client, prefix + "/", BUCKET)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return row


def measure(bench):
    rows = []
    for n in bench.plan.commands_entries:
        for where in ("local", "S3"):
            rows.append(_one(bench, where, n))
    return {"width": bench.plan.commands_width, "rows": rows}


def section(report, r):
    out = [
        "A cache root with *N* entries: *N* − %d entries of WideFlow's `body` step from "
        "older versions of its code (published through the cache API, as runs publish "
        "them: on S3 each with its index object), then a real run of WideFlow at width "
        "%d. After an edit of the body, timed as whole commands (Python start included): "
        "`metaflow-memoize --root R --flow WideFlow stats`, `... list` (the default table: "
        "the 50 newest), and `python wide_flow.py memoize plan --width %d` (every body task "
        "would run, and each is explained against the step's latest entry), each the median of "
        "its repetitions. The first `stats` after the entries were published is timed on its "
        "own: it has no catalog yet (on S3 it lists the index as well as the entries, and "
        "writes the catalog that the next `stats` and `list` start from). On S3, for "
        "comparison, a plain boto3 list + GET of every manifest (16 threads): what `stats` "
        "and `list` paid at least before they used the index. The S3 roots are in a bucket "
        "of their own: moto's cost per listing page grows with every key in the bucket, which "
        "AWS S3's does not. Criterion: each command ≤ %g s at %d entries."
        % (r["width"] + RUN_STEPS_BESIDE_BODY, r["width"], r["width"], LIMIT_S, JUDGED_AT),
        "",
        "| store | entries | first stats (no catalog) | stats | list | plan "
        "| reading every manifest (S3, boto3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        out.append(
            "| %s | %d | %s | %s | %s | %s | %s |"
            % (
                row["where"],
                row["n"],
                fmt(row["stats_first_s"]["median"], "s") if "stats_first_s" in row else "–",
                fmt(row["stats_s"]["median"], "s"),
                fmt(row["list_s"]["median"], "s"),
                fmt(row["plan_s"]["median"], "s"),
                fmt(row["floor_scan_s"], "s") if "floor_scan_s" in row else "–",
            )
        )
    out += ["", "| criterion | median | min – max | target | result |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        where = "%d entries, %s" % (row["n"], row["where"])
        timed = [("`%s`, %s" % (c, where), row[c + "_s"]) for c in COMMANDS]
        if "stats_first_s" in row:
            # a scan without a catalog is what a user meets after many new entries
            # too (more than one in catalog.READ_SHARE uncovered): judged the same
            timed.insert(0, ("first `stats` (no catalog), %s" % where, row["stats_first_s"]))
        for label, s in timed:
            ok = s["median"] <= LIMIT_S if row["n"] >= JUDGED_AT else None
            out.append(
                "| %s | %s | %s | ≤ %g s | %s |"
                % (
                    label,
                    fmt(s["median"], "s"),
                    rng(s, "s"),
                    LIMIT_S,
                    verdict(ok) if ok is not None else "info",
                )
            )
            report.row(8, label, s, "s", ok)
    out += [
        "",
        "On S3, `stats` and `list` read no manifest that has a verified index object "
        "(`list` reads those of the rows it shows), and once a step has a catalog they list "
        "its entries alone, not its index; on a local root, whose listing has no "
        "MD5 to verify an index against, they read every manifest, as before. `plan` "
        "lists each step's entries once and reads at most 8 of the newest to explain the "
        "tasks that would run, however many tasks and entries there are.",
    ]
    return out


FINDINGS = ()
