"""Errors raised by metaflow-memoize.

Two families, handled differently:

* ``MemoizeException`` (a ``MetaflowException``): the user asked for something
  that cannot work (bad decorator argument, unsupported step). It stops the flow
  at start with a message naming the step, the argument and the fix.
* ``CacheFault``: the cache misbehaved (unreachable store, corrupt entry, full
  disk). It never fails a flow unless strict mode is on: the step runs uncached.
"""

from __future__ import annotations

from metaflow.exception import MetaflowException


class MemoizeException(MetaflowException):
    headline = "@memoize error"


class MemoizeArgumentError(MemoizeException):
    headline = "Invalid @memoize argument"

    def __init__(self, step, argument, problem, fix):
        self.step = step
        self.argument = argument
        msg = "Step *%s*: @memoize argument `%s` %s. %s" % (step, argument, problem, fix)
        super().__init__(msg)


class MemoizeRefreshError(MemoizeException):
    headline = "Invalid @memoize refresh request"


class MemoizeStrictError(MemoizeException):
    headline = "@memoize cache fault (strict mode)"


class MemoizeCliError(MemoizeException):
    headline = "memoize"


class CacheFault(Exception):
    """Something went wrong in the cache itself; the step can still run."""


class StoreUnavailable(CacheFault):
    """The store cannot be reached or refused access."""


class CorruptEntry(CacheFault):
    """An entry exists but cannot be trusted (parse error, missing or bad blob)."""

    def __init__(self, message, key=None):
        super().__init__(message)
        self.key = key


class UnsafePath(CacheFault, ValueError):
    """A name would make the store read or write outside its root."""
