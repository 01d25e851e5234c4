"""Depth 1 of the kitchen flow's helper chain."""

from kitchen_deep import normalize


def clean(words):
    return [normalize(w) for w in words if w]


def offset():
    return 11


def square(x):
    return x * x
