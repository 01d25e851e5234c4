"""Summaries of repeated samples, paired comparisons, and the interleaving that makes
pairs comparable."""

from __future__ import annotations

import statistics

from .config import MB


def summary(values):
    values = [float(v) for v in values]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "samples": [round(v, 6) for v in values],
    }


def interleaved(reps, variants):
    """Run each variant ``reps`` times, alternating the order every round."""
    out = {name: [] for name, _ in variants}
    for i in range(reps):
        order = variants if i % 2 == 0 else list(reversed(variants))
        for name, fn in order:
            out[name].append(fn(i))
    return out


def paired_ratios(numerators, denominators):
    """Each sample over its interleaved partner, then summarised: pairs taken side by side
    cancel most of the machine's drift."""
    return summary([a / b for a, b in zip(numerators, denominators)])


def paired_differences(minuends, subtrahends):
    return summary([a - b for a, b in zip(minuends, subtrahends)])


def throughput(samples, nbytes):
    """The product's transfer against the baseline (``boto3`` or ``copy``) of the same bytes."""
    product = samples["product"]
    baseline = samples["boto3"] if "boto3" in samples else samples["copy"]
    return {
        "bytes": nbytes,
        "product_s": summary(product),
        "baseline_s": summary(baseline),
        "product_mbps": summary([nbytes / MB / t for t in product]),
        "baseline_mbps": summary([nbytes / MB / t for t in baseline]),
        "ratio": paired_ratios(baseline, product),
    }
