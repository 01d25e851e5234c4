"""Makes Python processes look as if they ran a Metaflow release newer than any
metaflow-memoize was tested with (tests/test_newer_release.py).

Put this directory on PYTHONPATH: Python imports this file at start-up. It sets
`metaflow.version.metaflow_version` (hence `metaflow.__version__`) to
MEMOIZE_TEST_METAFLOW_VERSION as soon as Metaflow's version module runs.
"""

import importlib.abc
import importlib.util
import os
import sys

VERSION = os.environ.get("MEMOIZE_TEST_METAFLOW_VERSION", "2.20.0")


def _set_version(module):
    module.metaflow_version = VERSION


PATCHES = {"metaflow.version": _set_version}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Patches a module as soon as it is executed, before anyone uses it."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchAfterImport())
