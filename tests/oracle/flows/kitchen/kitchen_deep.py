"""Depth 2 of the kitchen flow's helper chain."""

from kitchen_deeper import fold


def normalize(word):
    return fold(word.strip())
