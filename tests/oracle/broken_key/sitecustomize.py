"""A deliberately broken key, for the oracle's self-test (tests/test_oracle.py).

`python -m tests.oracle --broken-key` puts this directory on PYTHONPATH for the
memoized runs: Python imports this file at start-up, and it wraps the key
builder so that helper code (``helper:*`` code components) never enters a key.
The oracle must then report false hits on every helper edit.

Keep the patch in this one file: when the key code changes, adapt TARGET and
``_broken`` here.
"""

import importlib.abc
import importlib.util
import sys

TARGET = "metaflow_extensions.memoize.plugins.memoize.keys"
FUNCTION = "build_components"


def _broken(build):
    def build_components(flow, step, code, *args, **kwargs):
        code = {k: v for k, v in dict(code).items() if not k.startswith("helper:")}
        return build(flow, step, code, *args, **kwargs)

    return build_components


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Wraps TARGET.FUNCTION as soon as TARGET is executed, before anyone imports it by name."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
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
            setattr(module, FUNCTION, _broken(getattr(module, FUNCTION)))

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchAfterImport())
