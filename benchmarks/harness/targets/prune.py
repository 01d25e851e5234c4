"""Target 6: pruning entries on the S3 store, against the floor of reading every manifest."""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

from ..markdown import fmt, rng, verdict
from ..moto_s3 import BUCKET, empty_prefix, read_every_object, s3_url
from ..product import product
from ..stats import summary

TITLE = "Target 6: pruning entries on the S3 store"

#: the signed rep's key; prune believes only index objects signed with it
SIGNING_KEY = "bench-signing-key"


def measure(bench):
    P = product()
    client = bench.moto.client()
    n = bench.plan.prune_entries
    try:
        from metaflow_extensions.memoize.plugins.memoize.cache import maintenance
    except ImportError:
        maintenance = None
    api = maintenance is not None and all(
        hasattr(maintenance, a) for a in ("open_target", "plan_prune", "execute", "PruneCriteria")
    )
    rows = []
    # even reps: signed entries and a prune with the key (index objects believed,
    # no manifest read); odd reps: unsigned, where prune reads the manifest of every
    # entry it removes first (maintenance.confirm: a forged index object must not
    # get a valid entry deleted)
    for rep in range(max(2, bench.plan.prune_reps)):
        signed = rep % 2 == 0
        prefix = "prune-%d" % rep
        bench.log(
            "target 6: writing %d %s entries (manifest + marker + index + blob) under %s"
            % (n, "signed" if signed else "unsigned", prefix)
        )
        key = SIGNING_KEY if signed else None
        setup_s = _write_entries(bench, client, prefix, n, key)
        url = s3_url(prefix)
        row = {
            "setup_s": setup_s,
            "objects": (4 if hasattr(P.Cache, "index_key") else 3) * n,
            "signed": signed,
        }
        if rep == 0:  # as slow as the prune itself on moto: once is enough
            row["floor_scan_s"] = _floor_scan(bench, prefix)
        started = time.perf_counter()
        if api:
            # what open_target builds, with this rep's key instead of the environment's
            target = maintenance.Target(P.Cache(P.S3Store(url), signing_key=key))
            now = time.time()
            plan = maintenance.plan_prune(
                target, maintenance.PruneCriteria(older_than=0.0), now, grace=0.0
            )
            t_plan = time.perf_counter() - started
            outcome = maintenance.execute(target, plan)
            row.update(
                method="maintenance.plan_prune + execute",
                plan_s=t_plan,
                execute_s=time.perf_counter() - started - t_plan,
                entries=getattr(outcome, "entries", None),
                markers=getattr(outcome, "markers", None),
                index=len(getattr(plan, "index", ())),
                blobs=getattr(outcome, "blobs", None),
            )
        else:
            store = P.S3Store(url)
            listed = [o.key for o in store.list("")]
            t_list = time.perf_counter() - started
            store.delete(listed)
            row.update(
                method="S3Store.list + S3Store.delete (no maintenance API yet)",
                plan_s=t_list,
                execute_s=time.perf_counter() - started - t_list,
                entries=n,
                markers=n,
                blobs=n,
            )
        row["total_s"] = time.perf_counter() - started
        left = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("KeyCount", 0)
        row["left"] = left
        empty_prefix(client, prefix + "/")
        rows.append(row)
    signed = [r for r in rows if r["signed"]]
    unsigned = [r for r in rows if not r["signed"]]
    return {
        "n": n,
        "method": rows[0]["method"],
        "total_s": summary([r["total_s"] for r in signed]),
        "plan_s": summary([r["plan_s"] for r in signed]),
        "execute_s": summary([r["execute_s"] for r in signed]),
        "unsigned_total_s": summary([r["total_s"] for r in unsigned]),
        "unsigned_plan_s": summary([r["plan_s"] for r in unsigned]),
        "unsigned_execute_s": summary([r["execute_s"] for r in unsigned]),
        "setup_s": summary([r["setup_s"] for r in rows]),
        "floor_scan_s": summary([r["floor_scan_s"] for r in rows if "floor_scan_s" in r]),
        "floor_s": summary(
            [r["floor_scan_s"] + r["execute_s"] for r in rows if "floor_scan_s" in r]
        ),
        "rows": rows,
    }


def _floor_scan(bench, prefix):
    """Plain boto3, the least any prune that reads every manifest must do: list the
    prefix, GET every manifest. Read-only: the product prune then runs on the same objects."""
    return read_every_object(bench, prefix + "/", ".json")


def _write_entries(bench, client, prefix, n, signing_key=None):
    P = product()
    Cache, Manifest, Record = P.Cache, P.manifest.Manifest, P.manifest.ArtifactRecord
    created = time.time() - 7200
    started = time.perf_counter()

    def one(i):
        payload = ("blob %d" % i).encode() * 8
        sha = hashlib.sha1(payload).hexdigest()
        key = hashlib.sha256(b"key%d" % i).hexdigest()[:32]
        step = "step%d" % (i % 10)
        manifest = Manifest(
            key=key,
            flow="PruneFlow",
            step=step,
            components={"inputs": {"x": sha}},
            artifacts={"x": Record(sha=sha, info={"size": len(payload)}, stored_size=len(payload))},
            transition={},
            created=created,
            expires=None,
            origin="PruneFlow/1/%s/%d" % (step, i),
        )
        if signing_key:  # as Cache.publish signs with a key set
            manifest.sign(signing_key)
        base = prefix + "/"
        client.put_object(Bucket=BUCKET, Key=base + Cache.blob_key(sha), Body=payload)
        client.put_object(
            Bucket=BUCKET,
            Key=base + Cache.manifest_key("PruneFlow", step, key),
            Body=manifest.dumps(),
        )
        client.put_object(
            Bucket=BUCKET,
            Key=base + Cache.used_key("PruneFlow", step, key),
            Body=json.dumps({"used": created}).encode(),
        )
        if hasattr(Cache, "index_key"):  # what Cache.publish writes on S3
            md5 = hashlib.md5(manifest.dumps()).hexdigest()
            index = Cache.index_key(manifest, md5, signing_key)
            client.put_object(Bucket=BUCKET, Key=base + index, Body=b"")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(n)))
    # the root marker every run that stores an entry writes (a root without one is
    # listed whole once, to be adopted: not what a prune of a real cache pays)
    P.Cache(P.S3Store(s3_url(prefix))).ensure_marker()
    return time.perf_counter() - started


def section(report, r):
    limit = 30.0 * r["n"] / 10000
    ok = r["total_s"]["median"] < limit
    out = [
        "%d entries on the S3 store (moto), each a manifest, a last-use marker, an index "
        "object and its own tiny blob (%d objects), all older than the prune age. Pruned "
        "with %s: scan (list entries, index, markers, blobs; read only the manifests that "
        "have no believed index object), then delete manifests, markers, index objects and "
        "the blobs left unreferenced. Two variants, on separate sets of entries: **signed** "
        "(entries and index objects signed, prune run with the key: index objects are "
        "believed, no manifest is read) and **unsigned** (no key: before deleting an entry "
        "it selected from its index object alone, prune reads the manifest, so that a forged "
        "index object cannot get a valid entry deleted; see security.md). Criterion, on the "
        "signed variant: < 30 s for 10,000 entries%s."
        % (
            r["n"],
            r["rows"][0].get("objects", 3 * r["n"]),
            r["method"],
            "" if r["n"] == 10000 else " (scaled linearly: %.1f s for %d)" % (limit, r["n"]),
        ),
        "",
        "| phase | median | min – max |",
        "|---|---|---|",
        "| signed: plan (scan) | %s | %s |"
        % (fmt(r["plan_s"]["median"], "s"), rng(r["plan_s"], "s")),
        "| signed: execute (delete) | %s | %s |"
        % (fmt(r["execute_s"]["median"], "s"), rng(r["execute_s"], "s")),
        "| **signed: total** | %s | %s |"
        % (fmt(r["total_s"]["median"], "s"), rng(r["total_s"], "s")),
        "| unsigned: plan (scan + one manifest GET per removed entry) | %s | %s |"
        % (fmt(r["unsigned_plan_s"]["median"], "s"), rng(r["unsigned_plan_s"], "s")),
        "| unsigned: execute (delete) | %s | %s |"
        % (fmt(r["unsigned_execute_s"]["median"], "s"), rng(r["unsigned_execute_s"], "s")),
        "| unsigned: total | %s | %s |"
        % (fmt(r["unsigned_total_s"]["median"], "s"), rng(r["unsigned_total_s"], "s")),
        "| (setup: writing the entries, not measured) | %s | %s |"
        % (fmt(r["setup_s"]["median"], "s"), rng(r["setup_s"], "s")),
        "| reading every manifest instead: plain boto3 list + GET (16 threads) | %s | %s |"
        % (fmt(r["floor_scan_s"]["median"], "s"), rng(r["floor_scan_s"], "s")),
        "| that + the product's delete phase | %s | %s |"
        % (fmt(r["floor_s"]["median"], "s"), rng(r["floor_s"], "s")),
        "",
        "A prune that reads every manifest pays at least one GET per entry, and moto serves "
        "one request at a time from one Python process (on AWS S3 GETs run in parallel). The "
        "index objects, written by `Cache.publish` after each manifest, carry the manifest's "
        "MD5, creation and expiry times and its blob references in their names; an index is "
        "used only while that MD5 equals the one the listing reports for the manifest, "
        "otherwise the manifest is read.",
        "",
        "Deleted per run: %s; objects left under the prefix: %s. Result: %s."
        % (
            ", ".join(
                "%s %s" % (r["rows"][0].get(k), k) for k in ("entries", "markers", "index", "blobs")
            ),
            ", ".join(str(x["left"]) for x in r["rows"]),
            verdict(ok),
        ),
    ]
    report.row(6, "prune %d signed entries on S3" % r["n"], r["total_s"], "s", ok)
    report.row(
        6,
        "prune %d unsigned entries on S3 (reads each removed manifest)" % r["n"],
        r["unsigned_total_s"],
        "s",
        None,
    )
    report.row(
        6,
        "reading every manifest: plain boto3 scan + delete, %d entries" % r["n"],
        r["floor_s"],
        "s",
        None,
    )
    return out


def prune_finding(res, ph):
    r = res[6]
    return (
        "**Pruning %d signed entries** with the key spends %s scanning (listings only: what "
        "pruning needs is in the names of the signed index objects, so no manifest is read) "
        "and %s deleting (batched). Reading every manifest instead cannot take less than a "
        "plain boto3 list + GET of them: %s here (moto serves one request at a time from one "
        "Python process), so the signed prune takes %s of that floor. **Without a key** "
        "prune reads the manifest of every entry it removes before deleting it (an unsigned "
        "index object could be forged): %s in all, %s of the floor; on AWS S3 those GETs run "
        "16 at a time."
        % (
            r["n"],
            fmt(r["plan_s"]["median"], "s"),
            fmt(r["execute_s"]["median"], "s"),
            fmt(r["floor_scan_s"]["median"], "s"),
            fmt(r["total_s"]["median"] / r["floor_s"]["median"], "x"),
            fmt(r["unsigned_total_s"]["median"], "s"),
            fmt(r["unsigned_total_s"]["median"] / r["floor_s"]["median"], "x"),
        )
    )


FINDINGS = (prune_finding,)
