"""Store faults: every exception a store operation raises is a cache fault, and a
store that keeps failing is switched off.

Every public operation of a ``Store`` subclass is wrapped (``guard_operations``,
applied by ``Store.__init_subclass__``):

* an exception that is not already a ``CacheFault`` (a urllib3 error from a reply
  that broke off, an OS error, a bug in a client library) becomes
  ``StoreUnavailable``, which callers handle by running the step uncached;
* each ``StoreUnavailable`` counts against the root's fault budget; once
  ``FAULT_LIMIT`` faults are counted, every later operation on that root fails
  at once with "disabled after N faults", so a dead endpoint costs a task a few
  seconds, not minutes of timeouts and retries.

The budget is per process and per root URL. ``share_budget`` extends it to every
process of one run (the run's tasks on this machine): faults are then also
counted in a small file under the temporary directory, one byte per fault.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import tempfile
import threading

from ...exceptions import CacheFault, StoreUnavailable

#: faults after which a root is disabled (for the process, or the run: see share_budget)
FAULT_LIMIT = 3

#: the operations that talk to the store
OPERATIONS = (
    "get",
    "get_dated",
    "put",
    "put_if_absent",
    "head",
    "exists",
    "list",
    "list_split",
    "list_folders",
    "delete",
    "put_file",
    "get_file",
    "fetch_hashed",
    "stale_temporaries",
    "copy_from_url",
    "copy_to_url",
    "touch",
    "incomplete_uploads",
    "abort_uploads",
)


class FaultBudget:
    """Faults counted for one root: in this process, and optionally in a shared file."""

    def __init__(self, url: str):
        self.url = url
        self.count = 0
        self.path: str | None = None
        self.last: str | None = None
        self._lock = threading.Lock()

    def total(self) -> int:
        if self.path is None:
            return self.count
        try:
            return max(self.count, os.stat(self.path).st_size)
        except OSError:
            return self.count

    def exhausted(self) -> bool:
        return self.total() >= FAULT_LIMIT

    def record(self, err: BaseException) -> None:
        with self._lock:
            self.count += 1
            self.last = str(err)
        if self.path is not None:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, b"x")
                finally:
                    os.close(fd)
            except OSError:
                pass  # the in-process count still applies

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.last = None


_budgets: dict[str, FaultBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(url: str) -> FaultBudget:
    with _budgets_lock:
        budget = _budgets.get(url)
        if budget is None:
            budget = _budgets[url] = FaultBudget(url)
        return budget


def share_budget(url: str, scope: str) -> None:
    """Count the faults of ``url`` across every process that shares ``scope`` (a run)."""
    digest = hashlib.sha256(("%s\0%s" % (scope, url)).encode()).hexdigest()[:24]
    directory = os.path.join(tempfile.gettempdir(), "metaflow-memoize-faults-%d" % os.getuid())
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return
    budget_for(url).path = os.path.join(directory, digest)


def reset_budgets() -> None:
    """Forget every fault counted in this process (tests, long-lived processes)."""
    with _budgets_lock:
        _budgets.clear()


def _disabled(budget: FaultBudget) -> StoreUnavailable:
    return StoreUnavailable(
        "cache %s disabled after %d faults (last: %s)"
        % (budget.url, budget.total(), budget.last or "in another task of this run")
    )


def _as_fault(store, name: str, err: Exception) -> CacheFault:
    if isinstance(err, CacheFault):
        return err
    fault = StoreUnavailable(
        "cache %s: %s failed: %s: %s"
        % (getattr(store, "url", "?"), name, type(err).__name__, err or "")
    )
    fault.__cause__ = err
    return fault


def _guard(name: str, method):
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def guarded_iter(self, *args, **kwargs):
            budget = budget_for(self.url)
            if budget.exhausted():
                raise _disabled(budget)
            try:
                yield from method(self, *args, **kwargs)
            except Exception as err:
                fault = _counted_fault(self, name, err, budget)
                if fault is err:
                    raise
                raise fault from err

        guarded_iter._memoize_guarded = True
        return guarded_iter

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        budget = budget_for(self.url)
        if budget.exhausted():
            raise _disabled(budget)
        try:
            return method(self, *args, **kwargs)
        except Exception as err:
            fault = _counted_fault(self, name, err, budget)
            if fault is err:
                raise
            raise fault from err

    guarded._memoize_guarded = True
    return guarded


def _counted_fault(store, name, err, budget):
    """The cache fault ``err`` stands for; an unavailable store counts against
    the root's budget for the run."""
    fault = _as_fault(store, name, err)
    if isinstance(fault, StoreUnavailable):
        budget.record(fault)
    return fault


def guard_operations(cls) -> None:
    """Wrap the store operations that ``cls`` itself defines (see the module docstring)."""
    for name in OPERATIONS:
        method = cls.__dict__.get(name)
        if method is None or getattr(method, "_memoize_guarded", False):
            continue
        setattr(cls, name, _guard(name, method))
