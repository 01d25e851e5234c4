"""Target 2: a hit whose blobs must be copied in from the cache, against a plain copy."""

from __future__ import annotations

import os
import shutil
import time

from ..config import MB, BenchError
from ..flows import expect
from ..markdown import fmt, rng, verdict
from ..moto_s3 import BUCKET, empty_prefix
from ..product import datastore_blobs, fresh_records, product, s3_cache, work_entry
from ..stats import interleaved, paired_differences, summary, throughput

TITLE = "Target 2: hit with copy-in (fresh datastore, entry in the cache)"


def measure(bench):
    out = {"local": [], "s3": None, "e2e": []}
    for mb in bench.plan.copy_local_sizes:
        row, e2e = _local_copyin(bench, mb)
        out["local"].append(row)
        out["e2e"].append(e2e)
    if bench.moto is not None:
        out["s3"] = _s3_copyin(bench)
    return out


def _local_copyin(bench, mb):
    P = product()
    fresh = bench.work / "fresh-datastores"
    fd, run = bench.hit_flow(mb)
    cache, manifest = work_entry(fd)
    blob_files = [cache.store.url_for(cache.blob_key(a.sha)) for a in manifest.artifacts.values()]
    nbytes = sum(os.path.getsize(f) for f in blob_files)

    def importer(link):
        how = "link" if link else "copy"

        def product_import(i):
            root = fresh / ("import-%d" % i)
            dest = datastore_blobs(root, "ArtifactsFlow")
            # the default links when it can (here: the same filesystem);
            # METAFLOW_MEMOIZE_LINK=0 measures the copy path (another filesystem)
            os.environ["METAFLOW_MEMOIZE_LINK"] = "1" if link else "0"
            os.sync()  # the previous variant's writes must not throttle this one
            try:
                started = time.perf_counter()
                moved = P.transfer.import_blobs(dest, cache, manifest.artifacts)
                took = time.perf_counter() - started
            finally:
                os.environ.pop("METAFLOW_MEMOIZE_LINK", None)
            if (moved.linked if link else moved.copied) != len(blob_files):
                raise BenchError("import_blobs did not %s: %s" % (how, moved.describe()))
            shutil.rmtree(root)
            return took

        return product_import

    def plain_copy(i):
        root = fresh / ("copy-%d" % i)
        root.mkdir(parents=True)
        os.sync()
        started = time.perf_counter()
        for n, f in enumerate(blob_files):
            shutil.copyfile(f, root / str(n))
        took = time.perf_counter() - started
        shutil.rmtree(root)
        return took

    reps = bench.plan.copy_reps[mb]
    bench.log(
        "target 2: local copy-in %g MB, %d x (import_blobs link, import_blobs copy, copy)"
        % (mb, reps)
    )
    s = interleaved(
        reps,
        [("product", importer(True)), ("nolink", importer(False)), ("copy", plain_copy)],
    )
    row = throughput({"product": s["product"], "copy": s["copy"]}, nbytes)
    row["nolink"] = throughput({"product": s["nolink"], "copy": s["copy"]}, nbytes)
    row["mb"] = mb
    row["parts"] = _import_parts(bench, cache, manifest)
    return row, _copyin_task(bench, fd, run, manifest, mb)


def _import_parts(bench, cache, manifest):
    """The pieces of one import, timed alone: fetch, verify, and the stored-bytes digest
    that could replace verify."""
    P = product()
    tmpdir = bench.work / "parts"
    tmpdir.mkdir(exist_ok=True)
    fetch = verify = fast = 0.0
    for a in manifest.artifacts.values():
        tmp = tmpdir / a.sha
        started = time.perf_counter()
        cache.store.get_file(cache.blob_key(a.sha), str(tmp))
        fetch += time.perf_counter() - started
        started = time.perf_counter()
        P.transfer.verify_blob_file(str(tmp), a.sha, a.cas_raw)
        verify += time.perf_counter() - started
        started = time.perf_counter()
        stored_digest(tmp)
        fast += time.perf_counter() - started
        tmp.unlink()
    return {"fetch_s": fetch, "verify_s": verify, "stored_digest_s": fast}


def _copyin_task(bench, fd, run, manifest, mb):
    """End to end: a hit task in a datastore that lacks the blobs (deleted before each
    rep), restored from the local cache, vs the empty task of the same run."""
    src = datastore_blobs(fd.datastore_root, "ArtifactsFlow")
    start = run.input_path("start")
    env = {"METAFLOW_MEMOIZE_ROOT": str(fd.default_cache)}

    def copyin(_):
        for a in manifest.artifacts.values():
            for suffix in ("", "_meta"):
                path = src.url(a.sha) + suffix
                if os.path.exists(path):
                    os.unlink(path)
        t = fd.task("work", run.run_id, start, env=env)
        expect(t, "hit")
        if "copied" not in t.output and "linked" not in t.output:
            raise BenchError("expected a copy-in:\n" + t.output[-2000:])
        return t

    reps = bench.plan.copy_reps[mb]
    bench.log("target 2: copy-in hit tasks %g MB, %d x (copy-in hit, empty)" % (mb, reps))
    s = interleaved(
        reps, [("hit", copyin), ("empty", lambda _: fd.task("empty", run.run_id, start))]
    )
    nbytes = stored_bytes(manifest)
    hit_wall, empty_wall = [t.wall for t in s["hit"]], [t.wall for t in s["empty"]]
    return {
        "mb": mb,
        "bytes": nbytes,
        "hit_s": summary(hit_wall),
        "empty_s": summary(empty_wall),
        "increment_s": paired_differences(hit_wall, empty_wall),
        "hit_rss": summary([t.rss_mb for t in s["hit"]]),
        "empty_rss": summary([t.rss_mb for t in s["empty"]]),
    }


def _s3_copyin(bench):
    P = product()
    mb = bench.plan.s3_mb
    manifest, src = bench.stored_entry(mb)
    client = bench.moto.client()
    prefix = "copyin"
    cache = s3_cache(prefix)
    P.transfer.export_blobs(src, cache, fresh_records(manifest))
    keys = ["%s/%s" % (prefix, cache.blob_key(a.sha)) for a in manifest.artifacts.values()]
    nbytes = sum(client.head_object(Bucket=BUCKET, Key=k)["ContentLength"] for k in keys)
    fresh = bench.work / "fresh-datastores"

    def product_import(i):
        root = fresh / ("s3-import-%d" % i)
        dest = datastore_blobs(root, "ArtifactsFlow")
        started = time.perf_counter()
        P.transfer.import_blobs(dest, cache, manifest.artifacts)
        took = time.perf_counter() - started
        shutil.rmtree(root)
        return took

    def boto3_download(i):
        root = fresh / ("s3-download-%d" % i)
        root.mkdir(parents=True)
        started = time.perf_counter()
        for n, k in enumerate(keys):
            client.download_file(BUCKET, k, str(root / str(n)))
        took = time.perf_counter() - started
        shutil.rmtree(root)
        return took

    bench.log("target 2: S3 copy-in %g MB, %d x (import_blobs, boto3)" % (mb, bench.plan.s3_reps))
    s = interleaved(bench.plan.s3_reps, [("product", product_import), ("boto3", boto3_download)])
    row = throughput(s, nbytes)
    row["mb"] = mb
    row["parts"] = _import_parts(bench, cache, manifest)
    empty_prefix(client, prefix + "/")
    return row


def stored_digest(path):
    """xxh3-128 of a file's stored (still compressed) bytes: the cheaper check that
    could replace inflate + sha1 on copy-in (see the report's target 2)."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stored_bytes(manifest):
    return sum(a.stored_size or 0 for a in manifest.artifacts.values())


def section(report, r):
    out = [
        "The entry is in the cache, the run's datastore lacks the blob. Measured in-process "
        "(the product's `transfer.import_blobs` into a fresh real Metaflow local datastore) "
        "against the plain copy of the same stored bytes: `shutil.copyfile` from the local "
        "cache, boto3 `download_file` (default settings) from the same moto endpoint. Files "
        "are warm in the page cache for both. Criterion: throughput ≥ 80% of the baseline "
        "(median of the paired time ratios baseline/product). The local cache here is on the "
        "datastore's filesystem, so by default the blob is hard-linked and the link hashed "
        '("local, link"); "local, copy" is the same import with `METAFLOW_MEMOIZE_LINK=0`, '
        "the path taken when linking is off or unsafe: a kernel copy (`copy_file_range`) "
        "whose chunks are hashed as they land, overlapping the copy (across filesystems "
        "the kernel may refuse it, and the bytes then pass through a buffer). The three "
        "variants are interleaved.",
        "",
        "| store | bytes | import_blobs | baseline | import_blobs MB/s | baseline MB/s | ratio (min – max) | alone: fetch / verify (inflate + sha1) / xxh3 of stored bytes | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for x in r["local"]:
        if "nolink" in x:
            rows.append(("local, link", x))
            rows.append(("local, copy", dict(x["nolink"], parts=x["parts"])))
        else:
            rows.append(("local", x))
    rows += [("S3 (moto)", r["s3"])] if r["s3"] else []
    for store, x in rows:
        ok = x["ratio"]["median"] >= 0.8
        out.append(
            "| %s | %.0f MB | %s | %s | %s | %s | %s (%s) | %s / %s / %s | %s |"
            % (
                store,
                x["bytes"] / MB,
                fmt(x["product_s"]["median"], "s"),
                fmt(x["baseline_s"]["median"], "s"),
                fmt(x["product_mbps"]["median"], "MB/s"),
                fmt(x["baseline_mbps"]["median"], "MB/s"),
                fmt(x["ratio"]["median"], "%"),
                rng(x["ratio"], "%"),
                fmt(x["parts"]["fetch_s"], "s"),
                fmt(x["parts"]["verify_s"], "s"),
                fmt(x["parts"].get("stored_digest_s"), "s"),
                verdict(ok),
            )
        )
        report.row(
            2,
            "copy-in throughput vs %s, %s %.0f MB"
            % (
                "file copy" if store.startswith("local") else "boto3 download",
                store,
                x["bytes"] / MB,
            ),
            x["ratio"],
            "%",
            ok,
        )
    out += [
        "",
        "End to end (informational): a whole hit task that copies the blob in from the local "
        "cache, against the empty task of the same run. The increment is what the copy-in "
        "adds to a task.",
        "",
        "| artifact | copy-in hit task | empty task | increment (min – max) | implied MB/s | peak RSS copy-in / empty |",
        "|---|---|---|---|---|---|",
    ]
    for e in r["e2e"]:
        inc = e["increment_s"]["median"]
        out.append(
            "| %g MB | %s | %s | %s (%s) | %s | %s / %s |"
            % (
                e["mb"],
                fmt(e["hit_s"]["median"], "s"),
                fmt(e["empty_s"]["median"], "s"),
                fmt(inc, "s"),
                rng(e["increment_s"], "s"),
                fmt(e["bytes"] / MB / inc, "MB/s") if inc > 0 else "n/a",
                fmt(e["hit_rss"]["median"], "MB"),
                fmt(e["empty_rss"]["median"], "MB"),
            )
        )
    return out


def copy_in_finding(res, ph):
    rows = res[2]["local"]
    r = rows[-1]
    parts = r["parts"]
    s3_text = ""
    s3 = res[2].get("s3")
    if s3:
        s3_text = (
            " **From S3** the download takes %s alone and the verification %s (%s with the "
            "stored-bytes digest), one after the other; import_blobs reaches %s of boto3's "
            "default `download_file` (%s vs %s)."
            % (
                fmt(s3["parts"]["fetch_s"], "s"),
                fmt(s3["parts"]["verify_s"], "s"),
                fmt(s3["parts"].get("stored_digest_s"), "s"),
                fmt(s3["ratio"]["median"], "%"),
                fmt(s3["product_mbps"]["median"], "MB/s"),
                fmt(s3["baseline_mbps"]["median"], "MB/s"),
            )
        )
    nolink = r.get("nolink")
    copy_text = ""
    if nolink:
        copy_text = (
            " With linking off (`METAFLOW_MEMOIZE_LINK=0`, or across filesystems) the blob "
            "is copied by the kernel, each chunk hashed as it lands: %s, %s of the plain copy."
            % (
                fmt(nolink["product_mbps"]["median"], "MB/s"),
                fmt(nolink["ratio"]["median"], "%"),
            )
        )
    return (
        "**Copy-in from the local store** (on the datastore's filesystem, so the blob is "
        "hard-linked and the link hashed with xxh3-128, %s for these %g MB alone) runs at "
        "%s against %s for a plain copy of the same bytes (%s).%s Unpacking and sha1 of the "
        "payload, the check left for entries without a stored-bytes digest, takes %s.%s"
        % (
            fmt(parts.get("stored_digest_s"), "s"),
            r["mb"],
            fmt(r["product_mbps"]["median"], "MB/s"),
            fmt(r["baseline_mbps"]["median"], "MB/s"),
            fmt(r["ratio"]["median"], "%"),
            copy_text,
            fmt(parts["verify_s"], "s"),
            s3_text,
        )
    )


FINDINGS = (copy_in_finding,)
