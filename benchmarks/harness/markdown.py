"""How measured values and the shared tables look in the report."""

from __future__ import annotations


def fmt(value, unit=""):
    if value is None:
        return "n/a"
    if unit == "s":
        if abs(value) < 0.1:
            return "%.1f ms" % (value * 1000)
        return "%.3f s" % value
    if unit == "ms":
        return "%.2f ms" % (value * 1000)
    if unit == "x":
        return "%.2fx" % value
    if unit == "%":
        return "%.0f%%" % (value * 100)
    if unit == "MB":
        return "%.1f MB" % value
    if unit == "MB/s":
        return "%.0f MB/s" % value
    return "%.3g" % value


def rng(s, unit=""):
    return "%s – %s" % (fmt(s["min"], unit), fmt(s["max"], unit))


def verdict(ok):
    return "**PASS**" if ok else "**FAIL**"


def phase_table(title, probe):
    if not probe:
        return ""
    lines = [
        "**%s**" % title,
        "",
        "| phase | seconds |",
        "|---|---|",
        "| whole process (interpreter start to exit, as seen inside) | %s |"
        % fmt(probe["total"], "s"),
        "| importing metaflow + the extension | %s |" % fmt(probe["imports"], "s"),
    ]
    for name, sec in sorted(probe["phases"].items(), key=lambda kv: -kv[1]):
        lines.append("| %s | %s |" % (name, fmt(sec, "s")))
    lines.append("")
    lines.append(
        "Phases nest (task_pre_step contains the key and lookup; run_step contains the rest)."
    )
    return "\n".join(lines)


def profile_table(title, top):
    if not top:
        return ""
    lines = [
        "**%s**" % title,
        "",
        "All code by own time (Metaflow's work is common to the hit and the empty task), then "
        "the extension's functions by cumulative time.",
        "",
        "| function (all code, by own time) | own | cumulative | calls |",
        "|---|---|---|---|",
    ]
    overall = sorted(top, key=lambda r: -r[1])[:10]
    ours = sorted((r for r in top if r[4]), key=lambda r: -r[2])[:10]
    for name, tt, ct, nc, _ in overall:
        lines.append("| `%s` | %s | %s | %d |" % (name, fmt(tt, "s"), fmt(ct, "s"), nc))
    lines += [
        "",
        "| extension function (by cumulative time) | own | cumulative | calls |",
        "|---|---|---|---|",
    ]
    for name, tt, ct, nc, _ in ours:
        lines.append("| `%s` | %s | %s | %d |" % (name, fmt(tt, "s"), fmt(ct, "s"), nc))
    return "\n".join(lines)
