"""Content digests of files: what a file or source dependency is compared by."""

from __future__ import annotations

import ast
import os
import threading
import time

import xxhash

from .components import digest_json


def source_digest(path: str) -> str:
    """A whole source file, without comments or formatting."""
    if not os.path.isfile(path):
        return "missing"
    with open(path, "rb") as f:
        data = f.read()
    try:
        return digest_json(ast.dump(ast.parse(data), include_attributes=False))
    except SyntaxError:
        return xxhash.xxh3_128_hexdigest(data)


_STAT_CACHE_VERSION = 1


def digest_memo_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "metaflow-memoize", "file-digests")


def file_digest(path: str) -> str:
    """Content digest of a file, with a stat-keyed memo on disk so that an
    unchanged large file is hashed once, not at every lookup."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    real = os.path.realpath(path)
    stamp = "%d %d %d %d %d" % (
        _STAT_CACHE_VERSION,
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
        st.st_ctime_ns,
    )
    memo = os.path.join(digest_memo_dir(), xxhash.xxh3_64_hexdigest(real.encode()))
    # a file modified within the last 2 s may change again within the same
    # mtime tick: never trust a memo for it
    fresh = (st.st_mtime_ns / 1e9) > (time.time() - 2.0)
    if not fresh:
        try:
            with open(memo, encoding="utf-8") as f:
                saved_stamp, saved_path, digest = f.read().split("\n")[:3]
            if saved_stamp == stamp and saved_path == real:
                return digest
        except (OSError, ValueError):
            pass
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if not fresh:
        try:
            os.makedirs(os.path.dirname(memo), exist_ok=True)
            # per thread too: the orchestrator checks tasks side by side
            tmp = "%s.%d.%d.tmp" % (memo, os.getpid(), threading.get_ident())
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("%s\n%s\n%s\n" % (stamp, real, digest))
            os.replace(tmp, memo)
        except OSError:
            pass  # the memo is an optimisation only
    return digest
