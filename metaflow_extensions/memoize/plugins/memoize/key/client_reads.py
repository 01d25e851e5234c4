"""Metaflow Client reads as observed dependencies.

A step that reads another flow's results (``Flow("X").latest_successful_run
.data.model``, Metaflow's tutorials 03 and 04) depends on which run the query
chose, not only on its own code and inputs. While a body is recorded, the
Client seam (metaflow_compat/client.py) reports each query and what it resolved
to; each becomes a dependency

  client:<canonical JSON of the query>   ->  what it resolved to

- ``{"q": "latest_successful_run" | "latest_run", "flow", "ns", "md"}``: the run
  pathspec (``latest_run`` adds `` (unfinished)`` while it runs);
- ``{"q": "runs", "flow", "tags", "ns", "md"}``: a listing (``Flow.runs(*tags)``,
  iterating a Flow): its size, newest run and a digest of its sorted pathspecs;
- ``{"q": "object", "kind", "path", "ns", "md"}``: ``Run("X/12")`` that failed
  (absent, outside the namespace): the error; an object that exists is fixed
  by the code that names it and records nothing;
- ``{"q": "run_state", "run", "md"}``: a run read while not successful (its
  ``successful``/``finished``/``end_task``/``data``);
- ``{"q": "artifacts", "task", "names"[, "attempt"]}``: the shas of the
  artifacts the body loaded from that task (a metadata read, no download);
- ``{"q": "namespace"}``: the namespace the body started with, when a query
  used it (a run as another user, or with ``--namespace``, resolves otherwise);
- ``{"q": "trigger"}``: what ``current.trigger`` names (the triggering runs or
  events); where it is not set yet when the check runs, a miss.

``ns`` is the namespace the query filtered with (``null``: the global one) and
``md`` the metadata provider: before a hit the query is asked again with that
namespace (passed to the Client objects; the process's namespace is untouched)
and must resolve to the same value; a different metadata provider is a miss.
The same query answered twice differently during the body (the upstream run
finished meanwhile) can never verify.

The Client's own download cache (``METAFLOW_CLIENT_CACHE_PATH``) is never a
dependency: ``client_cache_roots()`` joins the private roots in deps.py.
"""

from __future__ import annotations

import json
import os
import threading

from ..metaflow_compat import client as mfclient
from . import deps, describe, observe

KIND = "client"


def dependency_id(query: dict) -> str:
    return "%s:%s" % (KIND, json.dumps(query, sort_keys=True, separators=(",", ":")))


def client_cache_roots() -> list:
    """Folders where the Client keeps its downloads: never a dependency."""
    try:
        return mfclient.cache_roots()
    except Exception:
        return []


class _Sink:
    """What the seam reports while a body is recorded, kept per recording."""

    def __init__(self):
        self._lock = threading.Lock()
        self.recording = None
        self.start_ns = None
        self.ns_known = False
        self.values: dict = {}
        self.artifacts: dict = {}

    # -- the seam calls these (from any thread of the body)
    def active(self) -> bool:
        recording = self.recording
        return recording is not None and recording is observe.current_recording()

    def query(self, query: dict, value: str) -> None:
        with self._lock:
            if self.recording is None:
                return
            self._put(dependency_id(query), value)
            if "ns" in query and self.ns_known and query["ns"] == self.start_ns:
                # the body used the namespace it was started with: another
                # user, or another --namespace, would have asked elsewhere
                self._put(dependency_id({"q": "namespace"}), json.dumps(self.start_ns))

    def artifact(self, task: str, attempt, name: str, sha: str) -> None:
        with self._lock:
            if self.recording is None:
                return
            shas = self.artifacts.setdefault((task, attempt), {})
            if shas.get(name, sha) != sha:
                sha = "changed while the step ran %s" % os.urandom(8).hex()
            shas[name] = sha

    def quiet(self):
        """What the Client does inside a recorded call is not the body's."""
        return observe.not_recorded()

    def unobserved(self, line: str) -> None:
        with self._lock:
            if self.recording is not None and line not in self.recording.unobserved:
                self.recording.unobserved.append(line)

    def _put(self, dep: str, value: str) -> None:
        old = self.values.get(dep)
        if old is not None and old != value:
            # asked twice, answered differently: what the body used is gone
            value = "changed while the step ran %s" % os.urandom(8).hex()
        self.values[dep] = value


class ClientReads:
    """The collector (observe.register_collector): records a body's Client reads."""

    def __init__(self):
        self.sink = _Sink()

    def start(self, recording) -> None:
        sink = self.sink
        with sink._lock:
            sink.recording = recording
            sink.values = {}
            sink.artifacts = {}
            try:
                sink.start_ns, sink.ns_known = mfclient.namespace_now(), True
            except Exception:  # no identity to default to: queries say so
                sink.start_ns, sink.ns_known = None, False
        mfclient.install(sink)

    def stop(self, recording) -> None:
        sink = self.sink
        with sink._lock:
            if sink.recording is not recording:
                return
            values = dict(sink.values)
            for (task, attempt), shas in sink.artifacts.items():
                query = {"q": "artifacts", "task": task, "names": sorted(shas)}
                if attempt is not None:
                    query["attempt"] = attempt
                values[dependency_id(query)] = json.dumps(shas, sort_keys=True)
            sink.recording = None
            sink.values, sink.artifacts = {}, {}
        recording.values.update(values)


COLLECTOR = ClientReads()


def current_value(rest: str, ctx) -> str:
    """The query asked again now (deps.register_kind)."""
    query = json.loads(rest)
    if query.get("q") == "artifacts":
        shas = mfclient.artifact_shas(query["task"], query.get("attempt"))
        return json.dumps({n: shas.get(n, "absent") for n in query["names"]}, sort_keys=True)
    return mfclient.ask(query)


def _query_text(query: dict) -> str:
    q = query.get("q")
    flow = "Flow('%s')" % query.get("flow")
    if q in ("latest_successful_run", "latest_run"):
        return "%s.%s" % (flow, q)
    if q == "runs":
        tags = query.get("tags") or []
        return "%s.runs(%s)" % (flow, ", ".join(repr(t) for t in tags)) if tags else flow
    if q == "object":
        return "%s('%s')" % (query.get("kind", "object").capitalize(), query.get("path"))
    if q == "run_state":
        return "Run('%s')" % query.get("run")
    return q or "?"


def describe_change(rest: str, old: str, new: str) -> str:
    """A changed Client dependency in words (describe.DESCRIBERS)."""
    try:
        query = json.loads(rest)
    except ValueError:
        return "a Metaflow Client read changed"
    q = query.get("q")
    if q == "namespace":
        return "the Client namespace is now %s (was %s)" % (new, old)
    if q == "trigger":
        return "current.trigger now names %s (was %s)" % (new, old)
    if q == "artifacts":
        return _describe_artifacts(query, old, new)
    if q == "run_state":
        return "upstream run %s is now %s (was %s)" % (query.get("run"), new, old)
    if q == "object":
        return "upstream `%s` now %s (was %s)" % (_query_text(query), new, old)
    verb = "now lists" if q == "runs" else "now resolves to"
    if str(new).startswith(("unavailable", "error")):
        verb = "is now"
    ns = " in namespace %s" % query["ns"] if query.get("ns") else ""
    return "upstream `%s`%s %s %s (was %s)" % (_query_text(query), ns, verb, new, old)


def _describe_artifacts(query: dict, old: str, new: str) -> str:
    try:
        before, after = json.loads(old), json.loads(new)
        names = sorted(n for n in before if before.get(n) != after.get(n))
    except (ValueError, AttributeError):
        names = list(query.get("names") or [])
    return "upstream artifact%s %s of %s changed" % (
        "s" if len(names) != 1 else "",
        ", ".join(names) or "?",
        query.get("task"),
    )


observe.register_collector(COLLECTOR)
deps.register_kind(KIND, current_value)
describe.DESCRIBERS[KIND] = describe_change
