"""Parsing and formatting of durations (TTLs, ages), byte sizes and counts. Pure."""

from __future__ import annotations

import re

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_duration(value: None | float | str) -> float | None:
    """Seconds for ``value``: None, a number of seconds, or "90s"/"30m"/"12h"/"7d"/"2w".

    Raises ValueError with the accepted forms on anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean %r" % value)
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative (%r)" % value)
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return float(text)
        match = _DURATION_RE.match(text)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    raise ValueError(
        "%r is not a duration: use seconds (3600) or a number with a unit "
        "s, m, h, d or w (90s, 30m, 12h, 7d, 2w)" % (value,)
    )


def parse_size(value: int | str) -> int:
    """Bytes for ``value``: an int, or "500MB", "20GB", "1.5GiB" (decimal and binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean %r" % value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative (%r)" % value)
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).upper() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    raise ValueError(
        "%r is not a size: use bytes (1048576) or a number with a unit "
        "B, KB, MB, GB, TB (or KiB, MiB, GiB, TiB), e.g. 20GB" % (value,)
    )


def format_duration(seconds: float | None) -> str:
    """Short human form, in the unit a person would have written: 0.5s, 45s,
    4m12s, 3h05m, 3d, 30d, 2w.

    Under a second: one decimal, and ``0s`` when that rounds to nothing (so a
    zero reads the same everywhere). From a day on: whole days, rounded, so a
    30-day ttl reads ``30d`` (not ``4w``) even a second after it was set;
    weeks only for whole weeks from 14 days on (``2w``, ``4w``).
    """
    if seconds is None:
        return "-"
    seconds = float(seconds)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    tenths = round(seconds, 1)
    if tenths < 1:
        return "%s%.1fs" % (sign, tenths) if tenths else "0s"
    whole = int(seconds + 0.5)
    if whole < 60:
        return "%s%ds" % (sign, whole)
    if whole < 3600:
        return "%s%dm%02ds" % (sign, whole // 60, whole % 60)
    if whole < 86400:
        return "%s%dh%02dm" % (sign, whole // 3600, (whole % 3600) // 60)
    days = int(seconds / 86400 + 0.5)
    if days >= 14 and days % 7 == 0:
        return "%s%dw" % (sign, days // 7)
    return "%s%dd" % (sign, days)


def format_count(count: int, singular: str, plural: str | None = None) -> str:
    """'1 entry', '2 entries', '0 blobs', '1 artifact': a count with its noun agreeing."""
    if count == 1:
        return "1 %s" % singular
    if plural is None:
        if singular.endswith("y") and singular[-2:-1] not in "aeiou":
            plural = singular[:-1] + "ies"
        elif singular.endswith(("s", "sh", "ch", "x")):
            plural = singular + "es"
        else:
            plural = singular + "s"
    return "%d %s" % (count, plural)


def format_size(size: int | None) -> str:
    """Short human form with decimal units: 512 B, 1.4 MB, 20.0 GB."""
    if size is None:
        return "-"
    size = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1000.0
    return "%.1f PB" % size
