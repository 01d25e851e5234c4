"""Depth 3 of the kitchen flow's helper chain."""


def fold(word):
    return word.lower()
