"""The `memoize` command group and the standalone `metaflow-memoize` command: they parse and print."""
