"""The benchmark harness behind benchmarks/run.py: one module per shared concern, one per
target under targets/."""
