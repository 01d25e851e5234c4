# Load Metaflow before any of our modules: importing Metaflow loads its plugins,
# this decorator among them, and our modules import Metaflow in turn. Starting
# from Metaflow keeps that cycle in the order Metaflow expects (the standalone
# `metaflow-memoize` command imports us without a flow).
import metaflow  # noqa: F401
