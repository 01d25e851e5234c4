"""Seam: the Metaflow Client, watched while a step body runs and asked again
before a hit.

Everything here touches Metaflow's Client (metaflow/client/core.py,
metaflow/events.py, metaflow/metaflow_current.py); key/client_reads.py decides
what the reads mean as dependencies.

Recording: ``install(sink)`` wraps, once per process, the Client entry points a
step body uses to find another flow's results:

- ``Flow.latest_successful_run`` / ``Flow.latest_run`` (properties),
  ``Flow.runs(*tags)`` and iteration over a ``Flow`` (listings);
- ``MetaflowObject.__init__`` with an explicit pathspec (``Run("X/12")``): only
  a failure is recorded (a run or flow that does not exist, or is outside the
  namespace, may exist later); an existing object named in the code is fixed;
- ``Run.successful`` / ``finished`` / ``end_task`` / ``data`` when the run is
  not finished (its answer can still change);
- ``DataArtifact.data``: the artifact's sha (metadata, no download);
- ``current.trigger``: its contents (``Trigger.run``/``runs``/``event``/...,
  ``"trigger" in current``).

The wrappers call the original first and never fail the user's call: a failure
in recording goes to ``sink.unobserved(line)``. They record only when
``sink.active()`` (a body is being recorded) and only at the outermost Client
call of a thread (``latest_successful_run`` iterating the flow is one read).

Internals relied on (checked against Metaflow 2.19.39): ``MetaflowObject``'s
``_object`` dict (``sha``, ``ts_epoch``), ``_metaflow.metadata`` (the provider
class) and its ``get_object``, ``_current_namespace``/``_namespace_check``
constructor arguments, ``metaflow.client.core.filecache`` and
``metaflow_config.CLIENT_CACHE_PATH``, ``Trigger._events``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading

#: environment variables of an event-triggered task whose ``current.trigger`` a
#: decorator sets in its own task hook (plugins/argo/argo_workflows_decorator.py)
_PENDING_TRIGGER = "METAFLOW_ARGO_EVENT_PAYLOAD_"

_lock = threading.Lock()
_installed = False
_sink = None
_local = threading.local()


# -- values: what a query resolved to (the same text when recorded and re-asked)


def run_value(run, with_state: bool = False) -> str:
    if run is None:
        return "none"
    value = run.pathspec
    if with_state and not run.finished:
        value += " (unfinished)"
    return value


def listing_value(runs) -> str:
    paths = [r.pathspec for r in runs]
    if not paths:
        return "0 runs"
    digest = hashlib.sha1("\n".join(sorted(paths)).encode("utf-8")).hexdigest()[:16]
    return "%d run%s, newest %s (%s)" % (
        len(paths),
        "" if len(paths) == 1 else "s",
        paths[0],
        digest,
    )


def run_state(run) -> str:
    if run.successful:
        return "successful"
    return "finished" if run.finished else "unfinished"


def trigger_value(trigger) -> str:
    if trigger is None:
        return "none"
    parts = []
    for event in trigger._events:
        if event.type == "run" and event.id:
            parts.append("/".join(str(event.id).split("/")[:2]))
        else:
            parts.append("event %s#%s" % (event.name, event.id))
    return ", ".join(parts) or "no events"


def error_value(err: BaseException) -> str:
    return "error: %s" % type(err).__name__


# -- the process's Client settings ---------------------------------------------------


def namespace_now():
    """The namespace a Client call made now would use (None: the global one)."""
    from metaflow.client import core

    return core.get_namespace()


def metadata_now() -> str:
    from metaflow.client import core

    return core.get_metadata()


def cache_roots() -> list:
    """Where the Client keeps its downloads in this process (never a dependency)."""
    roots = []
    try:
        from metaflow import metaflow_config

        roots.append(metaflow_config.CLIENT_CACHE_PATH)
    except Exception:  # pragma: no cover - an unusual Metaflow
        pass
    env = os.environ.get("METAFLOW_CLIENT_CACHE_PATH")
    if env:
        roots.append(env)
    try:
        from metaflow.client import core

        if core.filecache is not None:
            roots.append(core.filecache.cache_dir)
    except Exception:  # pragma: no cover
        pass
    return [r for r in roots if r]


# -- asking again -----------------------------------------------------------------------


def _flow(name: str, ns_known: bool, ns):
    from metaflow import Flow

    if not ns_known:
        return Flow(name)
    if ns is None:  # the global namespace: no check, no filter
        return Flow(name, _namespace_check=False)
    return Flow(name, _current_namespace=ns)


def ask(query: dict) -> str:
    """What ``query`` (as recorded by the wrappers) resolves to now: metadata
    reads only, with the recorded namespace (passed to the objects, the
    process's namespace is left alone)."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        return _ask(query)
    finally:
        _local.depth -= 1


def _ask(query: dict) -> str:
    q = query["q"]
    if q == "namespace":
        return json.dumps(namespace_now())
    if q == "trigger":
        from metaflow import current

        prop = type(current).__dict__.get("trigger")
        trigger = prop.fget(None) if isinstance(prop, property) else None
        if trigger is None and any(k.startswith(_PENDING_TRIGGER) for k in os.environ):
            # set later in this task (Argo's decorator reads the event payload)
            return "unavailable: current.trigger is not set yet where this check runs"
        return trigger_value(trigger)
    md = query.get("md")
    if md is not None and md != metadata_now():
        return "unavailable: the Client now reads %s" % metadata_now()
    if q in ("latest_successful_run", "latest_run", "runs"):
        try:
            flow = _flow(query["flow"], "ns" in query, query.get("ns"))
            if q == "latest_successful_run":
                return run_value(flow.latest_successful_run)
            if q == "latest_run":
                return run_value(flow.latest_run, with_state=True)
            return listing_value(list(flow.runs(*query.get("tags", ()))))
        except Exception as err:
            return error_value(err)
    if q == "object":
        from metaflow.client import core

        path = query["path"]
        cls = core._CLASSES[query["kind"]]
        kwargs = {}
        if "ns" in query:
            if query["ns"] is None:
                kwargs["_namespace_check"] = False
            else:
                kwargs["_current_namespace"] = query["ns"]
        try:
            cls(path, **kwargs)
        except Exception as err:
            return error_value(err)
        return "exists"
    if q == "run_state":
        from metaflow import Run

        try:
            return run_state(Run(query["run"], _namespace_check=False))
        except Exception as err:
            return error_value(err)
    if q == "artifacts":
        return json.dumps(artifact_shas(query["task"], query.get("attempt")), sort_keys=True)
    raise ValueError("unknown Client query %r" % q)


def artifact_shas(task_pathspec: str, attempt=None) -> dict:
    """{artifact name: sha} of a task: one metadata read, no download."""
    from metaflow.client import core

    provider = core.Metaflow().metadata
    found = provider.get_object("task", "artifact", None, attempt, *task_pathspec.split("/"))
    return {a["name"]: a["sha"] for a in found or ()}


# -- recording ---------------------------------------------------------------------------


def install(sink) -> None:
    """Wrap the Client's entry points (once per process); ``sink`` receives what
    a recorded body reads: ``active()``, ``query(query, value)``,
    ``artifact(task, attempt, name, sha)``, ``unobserved(line)``, and gives
    ``quiet()``: a context in which what this thread does is not the body's
    (the Client's own metadata files, globs and downloads: the queries above
    stand for them)."""
    global _installed, _sink
    with _lock:
        _sink = sink
        if _installed:
            return
        from metaflow.client import core
        from metaflow.events import Trigger
        from metaflow.metadata_provider import MetadataProvider
        from metaflow.metaflow_current import Current

        _wrap_property(core.Flow, "latest_successful_run", _on_latest_successful)
        _wrap_property(core.Flow, "latest_run", _on_latest)
        _wrap_method(core.Flow, "runs", _on_runs, listing=True)
        _wrap_method(core.Flow, "__iter__", _on_flow_iter, listing=True)
        _wrap_method(core.MetaflowObject, "__init__", _on_init)
        for name in ("successful", "finished", "end_task", "data"):
            _wrap_property(core.Run, name, _on_run_state)
        _wrap_property(core.DataArtifact, "data", _on_artifact)
        for name in ("run", "runs", "event", "events"):
            _wrap_property(Trigger, name, _on_trigger)
        for name in ("__getitem__", "__iter__", "__contains__"):
            _wrap_method(Trigger, name, _on_trigger)
        _wrap_method(Current, "__contains__", _on_current_contains)
        _quiet_classmethod(MetadataProvider, "get_object")
        _installed = True


def _recording() -> bool:
    sink = _sink
    if sink is None or getattr(_local, "depth", 0):
        return False
    return _active(sink)


def _quiet_classmethod(cls, name):
    """Every metadata read the Client makes (also through objects not wrapped
    for recording, ``run["start"].task``) is done quietly while a body is
    recorded: Metaflow's own files are never the body's dependencies."""
    function = cls.__dict__[name].__func__

    @functools.wraps(function)
    def quiet(klass, *args, **kwargs):
        sink = _sink
        if sink is None or not _active(sink):
            return function(klass, *args, **kwargs)
        with sink.quiet():
            return function(klass, *args, **kwargs)

    setattr(cls, name, classmethod(quiet))


def _active(sink) -> bool:
    try:
        return bool(sink.active())
    except Exception:
        return False


def _wrap_method(cls, name, on_call, listing=False):
    """``listing``: the method returns a generator; while recording it is listed
    at once (inside the user's call, so its errors stay the user's) and handed
    back as an iterator over that list."""
    original = cls.__dict__[name]
    call = (lambda self, *a, **k: list(original(self, *a, **k))) if listing else original

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        if not _recording():
            return original(self, *args, **kwargs)
        result = _watched(on_call, call, self, args, kwargs)
        return iter(result) if listing else result

    wrapper.__memoize_original__ = original
    setattr(cls, name, wrapper)


def _wrap_property(cls, name, on_call):
    prop = cls.__dict__[name]
    fget = prop.fget

    def getter(self):
        if not _recording():
            return fget(self)
        return _watched(on_call, lambda s: fget(s), self, (), {}, name)

    setattr(cls, name, property(getter, prop.fset, prop.fdel, prop.__doc__))


def _watched(on_call, original, obj, args, kwargs, name=None):
    """Run the user's call (its own exceptions propagate unchanged) and record it."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        with _quiet():
            try:
                result = original(obj, *args, **kwargs)
            except Exception as err:
                _safely(on_call, obj, args, kwargs, name, None, err)
                raise
            _safely(on_call, obj, args, kwargs, name, result, None)
        return result
    finally:
        _local.depth -= 1


def _quiet():
    try:
        return _sink.quiet()
    except Exception:
        return contextlib.nullcontext()


def _safely(on_call, obj, args, kwargs, name, result, err):
    try:
        on_call(obj, args, kwargs, name, result, err)
    except Exception as failure:  # never break the user's code: say what was not seen
        try:
            _sink.unobserved(
                "a Metaflow Client read (%s) could not be recorded: %s"
                % (getattr(on_call, "__name__", "?")[4:], type(failure).__name__)
            )
        except Exception:
            pass


def _namespace_of(obj) -> dict:
    """The namespace a Client object filters with, as recorded in a query."""
    ns = obj._current_namespace if obj._namespace_check else None
    return {"ns": ns}


def _flow_query(flow, q: str, **extra) -> dict:
    query = {"q": q, "flow": flow.id, "md": flow._metaflow.metadata.metadata_str()}
    query.update(_namespace_of(flow))
    query.update(extra)
    return query


def _on_latest_successful(flow, args, kwargs, name, result, err):
    value = error_value(err) if err is not None else run_value(result)
    _sink.query(_flow_query(flow, "latest_successful_run"), value)


def _on_latest(flow, args, kwargs, name, result, err):
    value = error_value(err) if err is not None else run_value(result, with_state=True)
    _sink.query(_flow_query(flow, "latest_run"), value)


def _on_runs(flow, args, kwargs, name, result, err):
    query = _flow_query(flow, "runs", tags=sorted(str(t) for t in args))
    _sink.query(query, error_value(err) if err is not None else listing_value(result))


def _on_flow_iter(flow, args, kwargs, name, result, err):
    _on_runs(flow, (), kwargs, name, result, err)


def _on_init(obj, args, kwargs, name, result, err):
    pathspec = args[0] if args else kwargs.get("pathspec")
    if err is None or not pathspec or kwargs.get("_object") is not None:
        return  # an object named in the code that exists: fixed
    from metaflow.client import core

    if isinstance(err, core.MetaflowInvalidPathspec):
        return  # malformed in the code itself
    query = {"q": "object", "kind": obj._NAME, "path": str(pathspec), "md": metadata_now()}
    if kwargs.get("_namespace_check", True):
        query["ns"] = kwargs.get("_current_namespace") or namespace_now()
    else:
        query["ns"] = None
    _sink.query(query, error_value(err))


def _on_run_state(run, args, kwargs, name, result, err):
    if err is None and name in ("successful", "finished") and result:
        return  # a successful or finished run stays so
    if err is None and name in ("end_task", "data") and result is not None:
        return
    query = {"q": "run_state", "run": run.pathspec, "md": run._metaflow.metadata.metadata_str()}
    _local.depth += 1
    try:
        state = run_state(run)
    finally:
        _local.depth -= 1
    if state != "successful":
        _sink.query(query, state)


def _on_artifact(artifact, args, kwargs, name, result, err):
    if err is not None:
        return
    task = "/".join(artifact.path_components[:4])
    _sink.artifact(task, artifact._attempt, artifact.id, artifact._object["sha"])


def _current_trigger():
    from metaflow import current

    return type(current).__dict__.get("trigger")


def _on_trigger(trigger, args, kwargs, name, result, err):
    prop = _current_trigger()
    current_trigger = prop.fget(None) if isinstance(prop, property) else None
    if trigger is not current_trigger:
        return  # another run's trigger (Run.trigger): fixed by that run
    _sink.query({"q": "trigger"}, trigger_value(trigger))


def _on_current_contains(current, args, kwargs, name, result, err):
    if not args or args[0] != "trigger":
        return
    prop = _current_trigger()
    trigger = prop.fget(None) if isinstance(prop, property) else None
    _sink.query({"q": "trigger"}, trigger_value(trigger))
