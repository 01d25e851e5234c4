"""A deliberately broken key, for the oracle's self-test (tests/test_oracle.py).

`python -m tests.oracle --broken-key` puts this directory on PYTHONPATH for the
memoized runs: Python imports this file at start-up, and it wraps the recorder
of observed dependencies so that helper code (``code:`` dependencies other than
the flow's own methods) is never recorded, hence never verified before a hit.
The oracle must then report false hits on every helper edit.

Keep the patch in this one file: when the key code changes, adapt TARGET and
``_broken`` here.
"""

import importlib.abc
import importlib.util
import sys

TARGET = "metaflow_extensions.memoize.plugins.memoize.key.deps"
FUNCTION = "observed_dependencies"


def _is_flow_method(dep):
    # code:__main__:SomeFlow.method: a method of a class in the flow file
    module, _, path = dep[len("code:") :].partition(":")
    return module == "__main__" and "." in path


def _broken(observed_dependencies):
    def broken(*args, **kwargs):
        values, names = observed_dependencies(*args, **kwargs)
        kept = {
            dep: value
            for dep, value in values.items()
            if not dep.startswith("code:") or _is_flow_method(dep)
        }
        return kept, names

    return broken


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
