"""Every use of Metaflow internals lives here, so a Metaflow upgrade is a one-file change.

Verified against Metaflow 2.12.37 to 2.19.x (docs/compatibility.md, `make
test-compat`); differences between releases are feature probes here, never
version strings. What we rely on:

* ``TaskDataStore._objects`` / ``_info``: name -> content hash (sha1 of the
  pickled bytes) and per-artifact info; ``persist()`` copies the flow's
  ``_datastore`` maps into the task's output.
* The content-addressed store layout ``<root>/<Flow>/data/<sha[:2]>/<sha>``
  (plus ``<path>_meta`` on local storage) and ``DataStoreStorage`` methods.
* The flow's transition attributes (``_transition``, ``_foreach_*``).
* ``LazyGroup._lazy_load``: the only way to add options to ``run``/``resume``;
  and ``original_params``, the list of ``run``'s own options that
  ``parameters.add_custom_parameters`` keeps and the Runner API
  (``runner/click_api.py``) resets ``params`` to.
* ``NativeRuntime._launch_worker`` / ``_cloned_tasks`` and ``clone_task_helper``:
  how ``resume`` completes a task without launching it, used for hits decided in
  the orchestrator (see ``install_launch_hook``); task.py's rules for
  ``_foreach_stack`` (``expected_foreach_stack``).
* ``LocalMetadataProvider._dump_json_to_file(cls, filepath, data,
  allow_overwrite)``: one JSON file per metadata field, which the threads that
  complete tasks in the orchestrator write faster, the same bytes (see
  ``_install_quick_metadata_files``; another signature, and Metaflow's runs).
* ``LazyPluginCommandCollection._lazy_load`` and the ``argo-workflows`` /
  ``step-functions`` CLI groups (``create``), the compilers ``ArgoWorkflows`` /
  ``StepFunctions`` and their module-level ``flow_decorators`` (see
  ``install_deploy_forwarding``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any

from metaflow.decorators import Decorator, FlowDecorator
from metaflow.metadata_provider import MetaDatum

_DECORATOR_TAKES_INSERTED_BY = "inserted_by" in inspect.signature(Decorator.__init__).parameters

TRANSITION_ATTRIBUTES = (
    "_transition",
    "_foreach_var",
    "_foreach_num_splits",
    "_foreach_values",
    "_unbounded_foreach",
)


# -- artifacts --------------------------------------------------------------
def artifact_hashes(task_datastore) -> dict[str, str]:
    """name -> content hash of every artifact visible in a task datastore (nothing loaded)."""
    return dict(getattr(task_datastore, "_objects", None) or {})


def artifact_infos(task_datastore) -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in (getattr(task_datastore, "_info", None) or {}).items()}


def merged_artifacts(inputs, names) -> dict[str, tuple[str, dict[str, Any]]] | None:
    """name -> (sha, info) of the artifacts a join merged through (``names``), as its
    current ``inputs`` carry them; None when the inputs that carry one disagree
    (merge_artifacts would fail). A hit takes these from the inputs, as the step would."""
    if not names:
        return {}
    hashes = [artifact_hashes(ds) for ds in inputs]
    out = {}
    for name in names:
        carriers = [i for i, h in enumerate(hashes) if name in h]
        if not carriers or len({hashes[i][name] for i in carriers}) != 1:
            return None
        first = carriers[0]
        out[name] = (hashes[first][name], artifact_infos(inputs[first]).get(name, {}))
    return out


def changed_passthrough(manifest, first_input) -> list[str]:
    """The inherited artifacts the entry pinned (passthrough) whose hash the task's
    input no longer has: the step may set them, so the entry cannot stand in."""
    if not manifest.passthrough:
        return []
    current = artifact_hashes(first_input)
    return sorted(n for n, sha in manifest.passthrough.items() if current.get(n) != sha)


def input_identity(task_datastore):
    """(step name, foreach index of the task or None) of an input datastore."""
    known = getattr(task_datastore, "_memoize_input_identity", None)
    if known is not None:
        return known
    index = None
    try:
        stack = task_datastore["_foreach_stack"]
        if stack:
            index = stack[-1].index
    except Exception:
        index = None
    identity = (task_datastore.step_name, index)
    try:  # a join's key and its read dependencies both need it: loaded once
        task_datastore._memoize_input_identity = identity
    except AttributeError:
        pass
    return identity


def foreach_frames(flow) -> list[Any]:
    return list(getattr(flow, "_foreach_stack", None) or [])


def foreach_item_repr(flow, item) -> Any:
    """The truncated representation Metaflow records for a foreach item."""
    getter = getattr(flow, "_get_foreach_item_value", None)
    return getter(item) if getter else None


def step_function(flow, step_name):
    return getattr(flow.__class__, step_name)


def skip_user_step_wrappers(flow, step_name) -> None:
    """On a hit, the restored artifacts are what the step produced *after* its
    user step decorators (``@user_step_decorator``) ran: running their
    pre/post code again would apply it twice. task.py reads the wrappers from
    the step function's ``wrappers`` list when it executes the step; this
    process runs one task, so emptying the list affects this task only."""
    func = getattr(step_function(flow, step_name), "__func__", step_function(flow, step_name))
    if getattr(func, "wrappers", None):
        func.wrappers = []


_RECORDING_CLASSES: dict[type, type] = {}
_reads_open: list[dict[int, set]] = []


def _metaflow_input_lookup() -> bool:
    """Whether the datastore is being read by FlowSpec's own ``self.input`` /
    ``foreach_stack()`` machinery (reading the foreach list to find the item:
    the item itself is keyed), not by the step's code."""
    from metaflow.flowspec import FlowSpec

    target = FlowSpec._find_input.__code__
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return False
        if frame.f_code is target:
            return True
        frame = frame.f_back
    return False


def _recording_class(base: type) -> type:
    if base not in _RECORDING_CLASSES:

        def note(datastore, name):
            for reads in _reads_open:
                names = reads.get(id(datastore))
                if names is not None and isinstance(name, str) and not _metaflow_input_lookup():
                    names.add(name)

        def getitem(self, name):
            note(self, name)
            return base.__getitem__(self, name)

        def contains(self, name):
            note(self, name)
            return base.__contains__(self, name)

        # enumerating the artifacts (merge_artifacts, to_dict) reads them all
        def items(self):
            note(self, "*")
            return base.items(self)

        def iterate(self):
            note(self, "*")
            return base.__iter__(self)

        _RECORDING_CLASSES[base] = type(
            "Recording" + base.__name__,
            (base,),
            {
                "__getitem__": getitem,
                "__contains__": contains,
                "items": items,
                "__iter__": iterate,
                "__module__": __name__,
            },
        )
    return _RECORDING_CLASSES[base]


class ArtifactReads:
    """Which artifacts a step body reads from its input datastores.

    Every read of an input artifact (``self.x``, a parameter, ``inputs[i].x``,
    ``getattr(self, name)``) goes through the input datastore's ``__getitem__``
    or ``__contains__`` (FlowSpec.__getattr__, Metaflow's parameter properties).
    For the body's duration, each input datastore's class is swapped for a
    subclass that notes the names; ``stop()`` restores it.
    """

    def __init__(self, datastores):
        self._datastores = [ds for ds in datastores if ds is not None]
        self._reads: dict[int, set] = {}
        self._classes: list[tuple[Any, type]] = []

    def start(self) -> None:
        for ds in self._datastores:
            self._reads[id(ds)] = set()
            self._classes.append((ds, type(ds)))
            ds.__class__ = _recording_class(type(ds))
        _reads_open.append(self._reads)

    def stop(self) -> list[set]:
        """The names read, per datastore (in the order given)."""
        if self._reads in _reads_open:
            _reads_open.remove(self._reads)
        for ds, cls in self._classes:
            ds.__class__ = cls
        self._classes = []
        return [self._reads.get(id(ds), set()) for ds in self._datastores]


def _recordable(attr: str, value: Any) -> Any:
    if attr == "_transition" and value is not None:
        funcs, foreach = value[0], value[1]
        extra = list(value[2:]) if len(value) > 2 else []
        return {"funcs": list(funcs), "foreach": foreach, "extra": extra}
    return value


def record_transition(flow) -> dict[str, Any]:
    """The step's recorded transition, JSON-able, to replay on a hit.

    Only what the task itself set (``next()``, task.py's ``_init_foreach``): an
    attribute it inherited (``_foreach_values`` below a foreach: as long as the
    item list) is left out, and a hit inherits it from its current parent, as the
    step would. Entries written before recorded every attribute; replaying those
    sets each one, as it always did.
    """
    return {
        attr: _recordable(attr, flow.__dict__[attr])
        for attr in TRANSITION_ATTRIBUTES
        if attr in flow.__dict__
    }


def entry_misfit(graph, step_name: str, manifest) -> str | None:
    """Why an entry that validates cannot be replayed in this flow (None if it can):
    its transition names steps the step does not go to, or an artifact's encoding
    no serializer of this Metaflow reads."""
    move = (manifest.transition or {}).get("_transition")
    if move is not None:
        try:
            allowed = set(graph[step_name].out_funcs)
        except (KeyError, AttributeError, TypeError):
            allowed = None
        wrong = [f for f in move.get("funcs") or () if allowed is not None and f not in allowed]
        if wrong:
            return "its transition goes to %s, not a next step of %s" % (wrong[0], step_name)
    for name, record in manifest.artifacts.items():
        encoding = record.info.get("encoding")
        if encoding is not None and not _encoding_known(encoding):
            return "artifact %s has encoding %r, which no serializer reads" % (name, encoding)
    return None


def _encoding_known(encoding: str) -> bool:
    try:
        from metaflow.datastore.artifacts.serializer import SerializationMetadata
        from metaflow.datastore.task_datastore import SerializerStore

        metadata = SerializationMetadata(obj_type="", size=0, encoding=encoding, serializer_info={})
        return any(s.can_deserialize(metadata) for s in SerializerStore.get_ordered_serializers())
    except Exception:
        # another Metaflow: the pickle encodings it has always had
        return encoding in ("pickle-v2", "pickle-v4", "gzip+pickle-v2", "gzip+pickle-v4")


def replay(flow, artifacts: dict[str, dict[str, Any]], transition: dict[str, Any]) -> None:
    """Make the task look as if the step body had run: restore artifacts by reference
    and set the recorded transition. ``artifacts``: name -> {"sha", "info"}."""
    datastore = flow._datastore
    for name, record in artifacts.items():
        # attributes on the flow object win over the datastore in persist()
        flow.__dict__.pop(name, None)
        datastore._objects[name] = record["sha"]
        datastore._info[name] = dict(record["info"])
    for attr, value in transition_values(transition or {}).items():
        setattr(flow, attr, value)


def transition_values(transition: dict[str, Any]) -> dict[str, Any]:
    """The flow attributes a recorded transition sets (see ``record_transition``)."""
    values = {}
    for attr in TRANSITION_ATTRIBUTES:
        if attr not in transition:
            continue  # inherited from the parent: left as it is
        value = transition[attr]
        if attr == "_transition" and value is not None:
            value = tuple([value["funcs"], value["foreach"]] + list(value.get("extra") or []))
        values[attr] = value
    return values


def has_parallel_or_ubf(graph, step_name) -> bool:
    node = graph[step_name]
    return bool(getattr(node, "parallel_step", False) or getattr(node, "parallel_foreach", False))


def parameter_names(flow) -> list[str]:
    return [name for name, _param in flow._get_parameters()]


def step_functions(flow) -> list:
    """The flow's step functions (methods marked by @step)."""
    return list(flow)


def parameter_artifact_hashes(flow, graph, param_values, config_options, environment):
    """{artifact: content hash} of the `_parameters` task a run with these values creates.

    Computed by Metaflow itself: set the constants on the flow and persist them
    into a throwaway local datastore, exactly as `run` does.
    """
    import shutil

    from metaflow.datastore import FlowDataStore
    from metaflow.plugins.datastores.local_storage import LocalStorage

    flow._set_constants(graph, param_values, config_options)
    root = tempfile.mkdtemp(prefix="memoize-plan-")
    try:
        fds = FlowDataStore(flow.name, environment, storage_impl=LocalStorage, ds_root=root)
        ds = fds.get_task_datastore("plan", "_parameters", "0", attempt=0, mode="w")
        ds.init_task()
        ds.persist(flow)
        return dict(ds._objects), {k: dict(v) for k, v in ds._info.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def last_run_task(flow_datastore, flow_name: str, step_name: str):
    """(artifact hashes, recorded transition, pathspec) of the one task of a step
    in the flow's latest successful run, or None (no such run, or the step had
    several tasks there). Nothing but the small ``_transition`` is loaded."""
    from metaflow import Flow, namespace
    from metaflow.exception import MetaflowException

    try:
        namespace(None)
        run = Flow(flow_name).latest_successful_run
        tasks = list(run[step_name]) if run is not None else []
        if len(tasks) != 1:
            return None
        task_id = tasks[0].id
        ds = flow_datastore.get_task_datastore(run.id, step_name, task_id, mode="r")
        transition = load_present(ds, ["_transition"]).get("_transition")
    except (MetaflowException, KeyError, OSError, ValueError):
        return None
    recorded = {attr: None for attr in TRANSITION_ATTRIBUTES}
    recorded["_transition"] = _recordable("_transition", transition)
    return artifact_hashes(ds), recorded, "%s/%s/%s/%s" % (flow_name, run.id, step_name, task_id)


def load_from_datastore(flow_datastore, sha: str):
    """Unpickled value of an artifact blob in the flow's datastore, or raise KeyError."""
    import pickle

    for key, blob in flow_datastore.ca_store.load_blobs([sha]):
        if key == sha:
            return pickle.loads(blob)
    raise KeyError(sha)


def join_type(graph, step_name) -> str | None:
    """ "foreach" or "split" for a join step, None for other steps."""
    node = graph[step_name]
    if node.type != "join" or not node.split_parents:
        return None
    return "foreach" if graph[node.split_parents[-1]].type == "foreach" else "split"


def sorted_steps(graph) -> list[str]:
    # Metaflow 2.12 appends a node at every visit (graph.py traverse), so a step
    # below two paths appears twice, the first time too early: keep its last visit
    # (2.13 and later keep only that one, so this changes nothing there)
    return list(reversed(list(dict.fromkeys(reversed(graph.sorted_nodes)))))


def start_step(graph) -> str:
    """The first step: configurable since 2.19.23 (``@step(start=True)``)."""
    return getattr(graph, "start_step", None) or "start"


def decorator_init_args(attributes, statically_defined, inserted_by) -> tuple:
    """``Decorator.__init__``'s arguments: ``inserted_by`` exists since 2.16."""
    if _DECORATOR_TAKES_INSERTED_BY:
        return (attributes, statically_defined, inserted_by)
    return (attributes, statically_defined)


def out_funcs(graph, step_name) -> list[str]:
    return list(graph[step_name].out_funcs)


def node_type(graph, step_name) -> str:
    return graph[step_name].type


def flow_file(flow) -> str | None:
    import sys

    module = sys.modules.get(flow.__class__.__module__)
    return getattr(module, "__file__", None)


# -- metadata ---------------------------------------------------------------
def register_task_metadata(metadata, run_id, step_name, task_id, retry_count, fields):
    tags = ["attempt_id:%d" % retry_count]
    metadata.register_metadata(
        run_id,
        step_name,
        task_id,
        [MetaDatum(field=k, value=str(v), type=k, tags=tags) for k, v in fields.items()],
    )


# -- cards ------------------------------------------------------------------
def end_step(graph) -> str:
    """The last step: configurable since 2.19.23 (``@step(end=True)``)."""
    return getattr(graph, "end_step", None) or "end"


def has_card(flow, step_name: str, card_type: str) -> bool:
    """Whether a step already carries ``@card(type=card_type)`` (in the source,
    from ``--with`` or added by us)."""
    func = getattr(flow.__class__, step_name, None)
    return any(
        d.name == "card" and str(d.attributes.get("type")) == card_type
        for d in getattr(func, "decorators", ())
    )


def attach_card(
    flow, graph, step_name: str, card_type: str, environment, flow_datastore, logger
) -> bool:
    """Put ``@card(type=card_type)`` on a step, as ``run --with card:type=...``
    does for every step (decorators.py ``_attach_decorators_to_step``): a step
    decorator that is not statically defined, which the runtime forwards to the
    step's task command line as ``--with card:type=...`` (the task attaches it
    before it initializes its decorators). Metaflow initializes decorators step
    by step and this is called from one of them: the card's ``step_init`` is
    called here (it is idempotent, and Metaflow calls it again when it reaches
    the step later). False when the step already has such a card or Metaflow
    has no card decorator."""
    if has_card(flow, step_name, card_type):
        return False
    from metaflow.plugins import STEP_DECORATORS

    card_class = next((d for d in STEP_DECORATORS if d.name == "card"), None)
    func = getattr(flow.__class__, step_name, None)
    if card_class is None or func is None:
        return False
    deco = card_class(*decorator_init_args({"type": card_type}, False, None))
    if hasattr(deco, "external_init"):  # 2.16 and later: resolves config values
        deco.external_init()
    func.decorators.append(deco)
    deco.step_init(flow, graph, step_name, func.decorators, environment, flow_datastore, logger)
    return True


def flow_class_and_graph(flow, flow_name: str):
    """(flow class, FlowGraph) for a card being rendered, or (None, None).

    ``card create`` passes the flow since 2.16 (``flow=``); before, the flow
    class is found in the module being run (the flow file: ``card create`` runs
    it as ``__main__``)."""
    if flow is not None:
        return flow.__class__, getattr(flow, "_graph", None)
    from metaflow import FlowSpec
    from metaflow.graph import FlowGraph

    main = sys.modules.get("__main__")
    cls = getattr(main, flow_name, None)
    if isinstance(cls, type) and issubclass(cls, FlowSpec):
        return cls, FlowGraph(cls)
    return None, None


# -- the run's datastore, seen as a blob source/destination -----------------
class DatastoreBlobs:
    """Metaflow's content-addressed artifact blobs of one flow in one datastore."""

    def __init__(self, task_datastore):
        ca_store = task_datastore._ca_store
        self._storage = ca_store._storage_impl
        self._prefix = ca_store._prefix
        # "local", "s3", "gs" or "azure": the scheme of the cache roots that can copy
        # server side to and from it (Metaflow's TYPE of the datastore)
        self.kind = self._storage.TYPE if self._storage.TYPE in ("s3", "gs", "azure") else "local"
        self.root = self._storage.datastore_root

    def path(self, sha: str) -> str:
        return self._storage.path_join(self._prefix, sha[:2], sha)

    def url(self, sha: str) -> str:
        """Absolute local path, or s3://, gs:// or azure:// URL of a blob."""
        uri = self._storage.full_uri(self.path(sha))
        if self.kind == "azure" and "://" not in uri:
            uri = "azure://" + uri  # Metaflow's Azure paths are container/blob
        return uri

    def existing(self, shas: Iterable[str]) -> set[str]:
        shas = list(shas)
        if not shas:
            return set()
        flags = self._storage.is_file([self.path(s) for s in shas])
        return {s for s, present in zip(shas, flags) if present}

    def cas_meta(self, sha: str) -> dict[str, Any] | None:
        if self.kind in ("gs", "azure"):
            return self._cloud_meta(sha)
        exists, meta = self._storage.info_file(self.path(sha))
        return meta if exists else None

    def _cloud_meta(self, sha: str) -> dict[str, Any] | None:
        """A blob's packing info on a GCS or Azure datastore, whose ``info_file`` is not
        implemented: its metadata, read through Metaflow's own client of the datastore
        (``root_client``: the same credentials, the same account). The keys are the
        ones their ``save_bytes`` writes."""
        blob = self._storage.root_client.get_blob_client(self.path(sha))
        if self.kind == "gs":
            from google.api_core.exceptions import NotFound

            try:
                blob.reload()
            except NotFound:
                return None
            attributes = (blob.metadata or {}).get("metaflow-user-attributes")
        else:
            from azure.core.exceptions import ResourceNotFoundError

            try:
                properties = blob.get_blob_properties()
            except ResourceNotFoundError:
                return None
            attributes = (properties.metadata or {}).get("metaflow_user_attributes")
        return json.loads(attributes) if attributes else {}

    def write_local_blob(
        self, sha: str, verified_file: str, meta: dict[str, Any], linked: bool = False
    ) -> None:
        """Move a verified blob file into a local datastore (meta first, then the blob).

        ``linked``: the file is a hard link to a cache file; its mode is the cache's
        and is left alone (a chmod would change the cache's file too)."""
        full = self.url(sha)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        fd, tmp_meta = tempfile.mkstemp(dir=os.path.dirname(full))
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        # temp files are 0600; Metaflow's own blobs follow the umask
        from ..cache.stores.local import file_mode_from_umask

        mode = file_mode_from_umask()
        os.chmod(tmp_meta, mode)
        if not linked:
            os.chmod(verified_file, mode)
        os.replace(tmp_meta, full + "_meta")
        os.replace(verified_file, full)

    def write_blob(
        self, sha: str, verified_file: str, meta: dict[str, Any], linked: bool = False
    ) -> None:
        if self.kind == "local":
            self.write_local_blob(sha, verified_file, meta, linked=linked)
            return
        with open(verified_file, "rb") as f:
            self._storage.save_bytes([(self.path(sha), (f, meta))], overwrite=True, len_hint=1)

    def download(self, sha: str, dest: str) -> None:
        """Copy a blob's stored bytes to a local file (S3 datastore to a local cache)."""
        with self._storage.load_bytes([self.path(sha)]) as loaded:
            for _key, path, _meta in loaded:
                if path is None:
                    raise FileNotFoundError(self.url(sha))
                with open(path, "rb") as src, open(dest, "wb") as out:
                    while True:
                        chunk = src.read(8 << 20)
                        if not chunk:
                            break
                        out.write(chunk)


def datastore_root_for_cli(flow_datastore) -> str | None:
    return getattr(flow_datastore, "datastore_root", None)


# -- releases newer than the newest tested -------------------------------------
#: the newest minor release `make test-compat` passed on (docs/compatibility.md)
NEWEST_TESTED = (2, 19)


def metaflow_version() -> str:
    # not metaflow.__version__: Metaflow sets it after loading its extensions,
    # which is when this module first asks
    from metaflow.version import metaflow_version as version

    return str(version or "")


def _minor(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        match = re.match(r"\d+", part)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def is_untested_release(version: str | None = None) -> bool:
    minor = _minor(version if version is not None else metaflow_version())
    return len(minor) == 2 and minor > NEWEST_TESTED


def _source_has(obj, *names: str) -> bool:
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return False
    return all(name in source for name in names)


def _invariants() -> dict[str, list[tuple[str, Callable[[], bool]]]]:
    """What each part of the extension relies on, as checks that hold on every
    tested release: {part: [(what, check)]}. ``memoize``: keys and hits at all;
    ``orchestrator``: hits completed before a task is launched (clones);
    ``refresh options``: `run --memoize-refresh`."""

    def task_datastore():
        from metaflow.datastore.task_datastore import TaskDataStore

        return TaskDataStore

    def native_runtime():
        from metaflow.runtime import NativeRuntime

        return NativeRuntime

    def clone_util():
        from metaflow import clone_util

        return clone_util

    def lazy_group():
        from metaflow.cli_components.utils import LazyGroup

        return LazyGroup

    return {
        "memoize": [
            (
                "TaskDataStore keeps artifact hashes in _objects and _info",
                lambda: _source_has(task_datastore(), "self._objects", "self._info"),
            ),
            (
                "TaskDataStore.load_artifacts",
                lambda: hasattr(task_datastore(), "load_artifacts"),
            ),
        ],
        "orchestrator": [
            (
                "NativeRuntime._launch_worker hands clones over in _cloned_tasks",
                lambda: (
                    hasattr(native_runtime(), "_launch_worker")
                    and _source_has(native_runtime(), "self._cloned_tasks", "_clone_only")
                ),
            ),
            (
                "clone_util.clone_task_helper (the way resume clones a task, which a hit copies)",
                lambda: hasattr(clone_util(), "clone_task_helper"),
            ),
        ],
        "refresh options": [
            (
                "cli_components.utils.LazyGroup._lazy_load",
                lambda: hasattr(lazy_group(), "_lazy_load"),
            ),
        ],
    }


_FAILED_INVARIANTS: dict[str, str | None] = {}


def part_untrusted(part: str) -> str | None:
    """On a Metaflow release newer than NEWEST_TESTED, the first check of ``part``
    (a key of ``_invariants``) that fails there, or None; always None on a tested
    release: the compat suite checked it whole. Evaluated when first asked, once
    per process: a part is asked for when the modules its checks import can be
    imported (not while Metaflow itself is still loading its extensions)."""
    if not is_untested_release():
        return None
    if part not in _FAILED_INVARIANTS:
        # tests/test_newer_release.py: a part whose internals a newer release changed
        # (changing them for real would break Metaflow itself, which uses them too)
        pretend_failed = os.environ.get("METAFLOW_MEMOIZE_TEST_FAIL_INVARIANT", "")
        failed = None
        for what, check in _invariants()[part]:
            try:
                holds = bool(check()) and part != pretend_failed
            except Exception:
                holds = False
            if not holds:
                failed = what
                break
        _FAILED_INVARIANTS[part] = failed
    return _FAILED_INVARIANTS[part]


def untrusted() -> dict[str, str]:
    """{part: the check that failed} for every part of the extension this (newer,
    untested) Metaflow release does not support; empty on a tested release."""
    found = {part: part_untrusted(part) for part in _invariants()}
    return {part: what for part, what in found.items() if what}


def untested_release_warning() -> str | None:
    """The one line a run on an untested release prints when something is off."""
    failed = untrusted()
    if not failed:
        return None
    if "memoize" in failed:
        effect = "@memoize is disabled: every step runs uncached"
    else:
        effect = "%s disabled, the rest of @memoize works" % " and ".join(
            {
                "orchestrator": "hits completed in the orchestrator (each hit starts its task)",
                "refresh options": "--memoize-refresh on run/resume (use METAFLOW_MEMOIZE_REFRESH)",
            }[p]
            for p in sorted(failed)
        )
    return (
        "[memoize] WARNING: Metaflow %s is newer than the newest release metaflow-memoize "
        "was tested with (%d.%d) and it changed what the extension relies on (%s): %s. "
        "Upgrade metaflow-memoize, or pin metaflow<%d.%d."
        % (
            metaflow_version(),
            NEWEST_TESTED[0],
            NEWEST_TESTED[1],
            "; ".join(failed.values()),
            effect,
            NEWEST_TESTED[0],
            NEWEST_TESTED[1] + 1,
        )
    )


# -- `run --memoize-refresh` -------------------------------------------------
#: top-level flow option that carries a refresh request to every task command
#: line; Metaflow forwards top-level options to remote tasks (`kubernetes step`,
#: `batch step`), where an environment variable of this process would not arrive
TOP_LEVEL_REFRESH_OPTION = "memoize-refresh-request"
_OPTIONS_INSTALLED = False


def install_run_options(on_refresh_all, on_refresh_steps, on_refresh_request, on_card=None) -> None:
    """Add --memoize-refresh / --memoize-refresh-step (and --memoize-card) to `run`
    and `resume`, and the top-level --memoize-refresh-request that task command
    lines carry.

    Metaflow has no hook for extensions to add options to these commands: we wrap
    LazyGroup._lazy_load (run/resume are loaded lazily) and the constructor of the
    top-level command collection, and append click options. The refresh options
    also go on `argo-workflows create` / `step-functions create` when Metaflow
    loads those CLIs (see install_deploy_forwarding).
    """
    global _OPTIONS_INSTALLED
    if _OPTIONS_INSTALLED:
        return
    _OPTIONS_INSTALLED = True
    from metaflow._vendor import click
    from metaflow.cli_components import utils

    original_lazy_load = utils.LazyGroup._lazy_load
    original_collection_init = utils.LazyPluginCommandCollection.__init__
    original_plugin_load = utils.LazyPluginCommandCollection._lazy_load

    def refresh_all_cb(ctx, param, value):
        if value:
            on_refresh_all()
        return value

    def refresh_steps_cb(ctx, param, value):
        if value:
            on_refresh_steps(list(value))
        return value

    def card_cb(ctx, param, value):
        if value and on_card is not None:
            on_card()
        return value

    def refresh_request_cb(ctx, param, value):
        if value:
            on_refresh_request(value)
        return value

    def add_run_options(cmd):
        if getattr(cmd, "_memoize_options", False):
            return
        cmd._memoize_options = True
        options = [
            click.Option(
                ["--memoize-refresh"],
                is_flag=True,
                default=False,
                expose_value=False,
                callback=refresh_all_cb,
                help="Recompute every @memoize step and overwrite its cache entry.",
            ),
            click.Option(
                ["--memoize-refresh-step"],
                multiple=True,
                expose_value=False,
                callback=refresh_steps_cb,
                help="Recompute this @memoize step (repeatable) and overwrite its entry.",
            ),
        ]
        cmd.params.extend(options)
        # `run` carries the flow's parameters (parameters.add_custom_parameters):
        # it keeps its own options in `original_params`, and the Runner API
        # (runner/click_api.py, _cleanup_flow_parameters) resets `params` to that
        # list before it reads the options a method accepts. Without ours in it,
        # Runner(...).run(memoize_refresh=True) is an "Unknown argument".
        if isinstance(getattr(cmd, "original_params", None), list):
            cmd.original_params.extend(options)

    def add_card_option(cmd):
        # run and resume only: a deployment gets the card from @card in the source
        if on_card is None or getattr(cmd, "_memoize_card_option", False):
            return
        cmd._memoize_card_option = True
        option = click.Option(
            ["--memoize-card"],
            is_flag=True,
            default=False,
            expose_value=False,
            callback=card_cb,
            help="Add the memoize card (what @memoize did in this run) to the end step.",
        )
        cmd.params.append(option)
        if isinstance(getattr(cmd, "original_params", None), list):
            cmd.original_params.append(option)

    def lazy_load(self, cmd_name):
        cmd = original_lazy_load(self, cmd_name)
        if cmd_name in ("run", "resume"):
            add_run_options(cmd)
            add_card_option(cmd)
        return cmd

    def collection_init(self, *args, **kwargs):
        original_collection_init(self, *args, **kwargs)
        if self.name == "start" and not any(
            p.name == TOP_LEVEL_REFRESH_OPTION.replace("-", "_") for p in self.params
        ):
            # exposed (not expose_value=False) so it lands in the context's params,
            # which `kubernetes step` / `batch step` forward to the remote command;
            # `start` swallows unknown keyword arguments in **deco_options
            self.params.append(
                click.Option(
                    ["--" + TOP_LEVEL_REFRESH_OPTION],
                    default=None,
                    hidden=True,
                    callback=refresh_request_cb,
                    help="Internal: carries --memoize-refresh to task command lines.",
                )
            )

    def plugin_load(self, source_name, source_path):
        group = original_plugin_load(self, source_name, source_path)
        if source_name in DEPLOY_COMPILERS:
            install_deploy_forwarding(source_name, group, add_run_options)
        return group

    utils.LazyGroup._lazy_load = lazy_load
    utils.LazyPluginCommandCollection.__init__ = collection_init
    utils.LazyPluginCommandCollection._lazy_load = plugin_load


def added_on_the_command_line(decorator) -> bool:
    """Whether a step decorator came from `--with` (or METAFLOW_DECOSPECS) rather
    than the flow's source or another decorator (decorators.py: `--with` builds
    it from a decospec, with statically_defined False and no inserted_by)."""
    return not getattr(decorator, "statically_defined", True) and not getattr(
        decorator, "inserted_by", None
    )


def starting_a_run() -> bool:
    """Whether this process is the orchestrator of `run` or `resume` (not a task,
    not `create`, not a `memoize` command): decorators are initialized in each."""
    from metaflow._vendor import click

    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.command is not None and ctx.command.name in ("run", "resume"):
            return True
        ctx = ctx.parent
    return False


def allow_in_spin(name: str) -> None:
    """Runs a step decorator's hooks under `spin` (Metaflow 2.19+), which skips
    every decorator not named in the SPIN_ALLOWED_DECORATORS setting and warns,
    for each one, twice in the orchestrator and twice in the task. The decorator's
    hooks then decide what to do under spin themselves (``spinning()``). The
    setting is one list shared by decorators.py, runtime.py and step_cmd.py; a
    user's METAFLOW_SPIN_ALLOWED_DECORATORS gets the name added too."""
    from metaflow import metaflow_config

    allowed = getattr(metaflow_config, "SPIN_ALLOWED_DECORATORS", None)
    if isinstance(allowed, list) and name not in allowed:
        allowed.append(name)


def spinning() -> str | None:
    """Under `spin` (Metaflow 2.19+): "orchestrator" in the process of `spin
    STEP`, "task" in the task it launches (`spin-step`); None anywhere else (cli.py sets ``is_spin`` on the
    CLI state from the command's first argument)."""
    from metaflow._vendor import click

    ctx = click.get_current_context(silent=True)
    if ctx is None or not getattr(ctx.find_root().obj, "is_spin", False):
        return None
    saved = getattr(ctx.find_root(), "saved_args", None) or [""]
    return "task" if saved[0] == "spin-step" else "orchestrator"


def forward_refresh_request(cli_args, value: str) -> None:
    """Put a refresh request on a task's command line (local or remote)."""
    cli_args.top_level_options[TOP_LEVEL_REFRESH_OPTION] = value


# -- `argo-workflows create` / `step-functions create` ------------------------
#: deployment command -> (compiler module, compiler class, the compiled spec as JSON)
DEPLOY_COMPILERS = {
    "argo-workflows": (
        "metaflow.plugins.argo.argo_workflows",
        "ArgoWorkflows",
        lambda compiler: str(compiler),
    ),
    "step-functions": (
        "metaflow.plugins.aws.step_functions.step_functions",
        "StepFunctions",
        lambda compiler: compiler.to_json(),
    ),
}
# `python flow.py <top-level options> step NAME --run-id ...` in a task's script
_STEP_COMMAND = re.compile(r"(?:^|\s)step\s+(\S+)\s+--run-id\b")


class RefreshRequestCarrier(FlowDecorator):
    """Not a user decorator: handed to a deployment compiler beside the flow's own
    decorators, for its get_top_level_options() hook (the one Metaflow gives flow
    decorators to put options on task command lines)."""

    name = "memoize_refresh_request"

    def __init__(self, value):
        super().__init__(attributes=None, statically_defined=False)
        self.value = value
        self.calls = 0

    def get_top_level_options(self):
        self.calls += 1
        return {TOP_LEVEL_REFRESH_OPTION: self.value}


def deploy_refresh_request() -> str | None:
    """The refresh request a deployment created now carries: what
    `create --memoize-refresh[-step]` or METAFLOW_MEMOIZE_REFRESH put in this
    process's environment (`runtime_step_cli` forwards the same on `run`)."""
    from .. import config

    value = os.environ.get(config.ENV_REFRESH, "").strip()
    if not value:
        return None
    refresh_all, steps = config.refresh_request()
    return value if refresh_all or steps else None


def install_deploy_forwarding(source_name, cli_group, add_options) -> None:
    """Make `SOURCE create` accept --memoize-refresh / --memoize-refresh-step and
    deploy task command lines that carry the request.

    Called when Metaflow loads the argo-workflows / step-functions CLI. Their
    compilers build each task's top-level options from the flow decorators'
    ``get_top_level_options()``; while a compiler runs with a request pending,
    the ``flow_decorators`` it calls also returns a RefreshRequestCarrier. The
    compiled spec is then checked: a deployment that would not carry the request
    fails at create time, before anything is deployed.
    """
    try:
        create = cli_group.commands[source_name].commands["create"]
    except (AttributeError, KeyError):
        # no `create` to add options to: `create --memoize-refresh` fails as an
        # unknown option
        return
    if getattr(create, "_memoize_deploy", False):
        return
    create._memoize_deploy = True
    try:
        _patch_compiler(source_name)
        problem = None
    except Exception as err:
        problem = "%s: %s" % (type(err).__name__, err)
    add_options(create)
    original_callback = create.callback

    @functools.wraps(original_callback)
    def guarded_create(*args, **kwargs):
        request = deploy_refresh_request()
        if request and problem:
            from ..exceptions import MemoizeException

            raise MemoizeException(
                "Cannot deploy with refresh request %r: @memoize cannot put it on the "
                "%s task command lines with this version of Metaflow (%s). Nothing "
                "was deployed." % (request, source_name, problem)
            )
        return original_callback(*args, **kwargs)

    create.callback = guarded_create


def _patch_compiler(source_name) -> None:
    import importlib

    module_name, class_name, spec_of = DEPLOY_COMPILERS[source_name]
    module = importlib.import_module(module_name)
    compiler = getattr(module, class_name)
    if not callable(getattr(module, "flow_decorators", None)):
        raise AttributeError("%s has no flow_decorators" % module_name)
    original_init = compiler.__init__
    if getattr(original_init, "_memoize_deploy", False):
        return

    @functools.wraps(original_init)
    def init(self, *args, **kwargs):
        request = deploy_refresh_request()
        if not request:
            return original_init(self, *args, **kwargs)
        carrier = RefreshRequestCarrier(request)
        original_flow_decorators = module.flow_decorators
        module.flow_decorators = lambda flow: [*original_flow_decorators(flow), carrier]
        try:
            original_init(self, *args, **kwargs)
        finally:
            module.flow_decorators = original_flow_decorators
        check_deployment(source_name, spec_of(self), request, carrier.calls)
        _announce_deployment(request, self.graph)

    init._memoize_deploy = True
    compiler.__init__ = init


def step_commands(spec_json: str) -> list[tuple[str, str]]:
    """(step name, command) of every task command visible in a compiled spec."""

    def strings(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)

    found = []
    for text in strings(json.loads(spec_json)):
        for command in text.split("&&"):
            match = _STEP_COMMAND.search(command)
            if match:
                found.append((match.group(1), command[: match.start()]))
    return found


def _carries(before_step: str, option: list[str]) -> bool:
    import shlex

    try:
        words = shlex.split(before_step)
    except ValueError:
        return " ".join(shlex.quote(w) for w in option) in before_step
    return any(words[i : i + 2] == option for i in range(len(words)))


def check_deployment(source_name, spec_json, request, hook_calls) -> None:
    """Raise unless every task command of the spec carries the request as a
    top-level option."""
    from ..exceptions import MemoizeException

    option = ["--" + TOP_LEVEL_REFRESH_OPTION, request]
    commands = step_commands(spec_json)
    missing = sorted({step for step, before in commands if not _carries(before, option)})
    # with the commands offloaded (step-functions --compress-state-machine) none
    # is visible: then the hook must at least have been used
    if missing or (not commands and not hook_calls):
        raise MemoizeException(
            "Cannot deploy with refresh request %r: the compiled %s spec does not "
            "carry it to %s (has Metaflow changed how it builds task command lines?). "
            "Nothing was deployed." % (request, source_name, ", ".join(missing) or "any task")
        )


def _announce_deployment(request, graph) -> None:
    from .. import config

    memoized = [n.name for n in graph if any(d.name == "memoize" for d in n.decorators)]
    refresh_all, steps = config.refresh_request()
    targets = memoized if refresh_all else sorted(steps)
    print(
        "[memoize] this deployment recomputes %s on every run (refresh request %r); "
        "create it again without the request to stop" % (", ".join(targets) or "no step", request),
        file=sys.stderr,
        flush=True,
    )
    unknown = sorted(set(steps) - set(memoized))
    if unknown:
        print(
            "[memoize] WARNING: not a @memoize step of this flow: %s" % ", ".join(unknown),
            file=sys.stderr,
            flush=True,
        )


# -- the S3 client Metaflow's datastore built ------------------------------------
def loaded_s3_client(task_datastore):
    """The boto3 S3 client Metaflow's S3 datastore has already built in this process,
    or None (a local datastore, or no client yet). Never builds one."""
    try:
        storage = task_datastore._ca_store._storage_impl
    except AttributeError:
        return None
    if getattr(storage, "TYPE", None) != "s3":
        return None
    return getattr(getattr(storage, "s3_client", None), "_s3_client", None)


# -- the orchestrator: hits decided before a task is launched --------------------
#: Per-task bookkeeping a cloned task must carry with the values this task would
#: have (compared by value, see ``bookkeeping_values``), and artifacts only
#: @parallel / unbounded-foreach / @catch tasks have (a clone never carries them).
VALUE_CHECKED_ARTIFACTS = frozenset(
    ("_foreach_stack", "_iteration_stack", "_task_ok", "_success", "_exception", "_current_step")
    + TRANSITION_ATTRIBUTES
)
#: What every task takes from the run's parameters task, whatever its code: a
#: clone takes it from this run, not from the origin's.
PASSED_DOWN_ARTIFACTS = frozenset(["_graph_info"])
NEVER_CLONED_ARTIFACTS = frozenset(
    (
        "_parallel_ubf_iter",
        "_control_mapper_tasks",
        "_control_task_is_mapper_zero",
        "_catch_exception",
    )
)


_launch_hook: dict[str, Any] = {"try_complete": None}

#: Tasks checked side by side in the orchestrator, at most, on a remote datastore:
#: each check there is mostly waiting on requests (a resume clones in as many
#: threads as the run has workers). A task being checked holds a worker slot.
COMPLETION_THREADS = 16


def completion_threads(flow_datastore) -> int:
    """Threads for the checks: on the local datastore a check is file writes, CPU
    and system calls under one interpreter lock, and threads beyond the cores only
    contend (an unchanged 100-wide foreach: 2.6-3.0 s with 2 threads against
    3.0-3.8 s with 16, on 2 cores); elsewhere ``COMPLETION_THREADS``."""
    if getattr(flow_datastore, "TYPE", None) == "local":
        return max(2, min(COMPLETION_THREADS, os.cpu_count() or 2))
    return COMPLETION_THREADS


def install_launch_hook(try_complete) -> None:
    """Let ``try_complete(LaunchingTask)`` finish a task before Metaflow's runtime
    launches a process for it.

    Called for the first attempt of ordinary tasks of `run` / `resume` (never
    clone-only resumes, unbounded-foreach or @parallel tasks). When it returns
    True the task is complete in the datastore (it was cloned, as `resume`
    clones) and is handed to the runtime the way `resume` hands over its clones;
    when it returns False or raises, the task is launched as usual.

    The calls run in threads (``try_complete`` must be thread-safe) while the
    runtime goes on: the runtime's ``_launch_workers`` creates the tasks its free
    workers allow, and each is handed to a thread instead of a process; a task
    being checked holds its worker slot. Each later call of ``_launch_workers``
    first collects the checked tasks (see ``_Completions``).
    """
    from metaflow import runtime

    _launch_hook["try_complete"] = try_complete
    original = runtime.NativeRuntime._launch_workers
    if getattr(original, "_memoize_hook", False):
        return

    @functools.wraps(original)
    def launch_workers(self):
        try_complete = _launch_hook["try_complete"]
        if try_complete is None or self._clone_only:
            return original(self)
        completions = _Completions.of(self)
        completions.collect(wait=False)
        launch = type(self)._launch_worker
        registrations = _DeferredRegistrations.of(self)

        def check_first(task):
            if task.retries == 0 and task.ubf_context is None and not task.is_cloned:
                completions.submit(task, try_complete)
            else:
                registrations.complete(task)
                launch(self, task)

        self._launch_worker = check_first  # for this call of the loop only
        registrations.defer()  # the tasks this loop creates are all handed to check_first
        try:
            original(self)
        finally:
            registrations.stop_deferring()
            del self._launch_worker
        if not self._cloned_tasks and not self._workers:
            # nothing else to do: _poll_workers would return at once, and the
            # runtime's loop would spin
            completions.collect(wait=True)

    launch_workers._memoize_hook = True
    runtime.NativeRuntime._launch_workers = launch_workers
    _install_quick_metadata_files()


#: set in the threads that complete tasks in the orchestrator (``_try_complete``)
_quick_metadata = threading.local()
_quick_names = itertools.count()  # next() on it is atomic under the GIL


def _install_quick_metadata_files() -> None:
    """Metaflow's local metadata provider writes each field of a task to a file
    of its own (``_dump_json_to_file``): a ``NamedTemporaryFile``, ``json.dump``,
    a rename, 130-230 us a file here (medians of two sittings). A task completed
    in the orchestrator writes ~37 of them, most of what it costs; ``resume``
    writes as many per clone. In the threads that complete tasks (only there),
    the same files are written with the same content, mode and atomic rename by
    ``_write_json_file``, in 58-85 us. Elsewhere, and on a provider whose method
    has another signature, Metaflow's own runs."""
    try:
        from metaflow.plugins.metadata_providers.local import LocalMetadataProvider
    except ImportError:
        return
    current = LocalMetadataProvider.__dict__.get("_dump_json_to_file")
    if not isinstance(current, classmethod) or getattr(current, "_memoize_quick", False):
        return
    original = current.__func__
    try:
        params = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return
    if params != ["cls", "filepath", "data", "allow_overwrite"]:
        return

    def dump_json_to_file(cls, filepath, data, allow_overwrite=False):
        if not getattr(_quick_metadata, "on", False):
            return original(cls, filepath, data, allow_overwrite=allow_overwrite)
        _write_json_file(filepath, data, allow_overwrite)

    quick = classmethod(functools.wraps(original)(dump_json_to_file))
    quick._memoize_quick = True
    LocalMetadataProvider._dump_json_to_file = quick


def _write_json_file(filepath: str, data: Any, allow_overwrite: bool = False) -> None:
    """What ``LocalMetadataProvider._dump_json_to_file`` writes: ``data`` as JSON,
    unless the file exists and ``allow_overwrite`` is false, through a temporary
    file of mode 0600 in the same directory (named ``tmp...``, as mkstemp names
    it: no reader's pattern matches it) renamed into place."""
    if not allow_overwrite and os.path.isfile(filepath):
        return
    payload = json.dumps(data).encode("utf-8")
    temporary = os.path.join(
        os.path.dirname(filepath), "tmpmemoize%d_%d" % (os.getpid(), next(_quick_names))
    )
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # os.write, not a file object: ~10 us less a file (68 against 58 us here)
        try:
            view = memoryview(payload)
            while view:  # a write may take fewer bytes than asked
                view = view[os.write(descriptor, view) :]
        finally:
            os.close(descriptor)
        os.rename(temporary, filepath)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


class _DeferredRegistrations:
    """Moves the metadata writes of a new task off the runtime's thread.

    Each task the runtime creates registers itself with the metadata provider at
    once, in the runtime's one thread: with the local provider, a directory and
    several small files per task (on Metaflow's S3 datastore, as many PUTs), one
    task after the other. That was most of what an unchanged wide foreach cost
    beyond `resume`, which clones in threads. While ``defer`` is in force, the
    local provider's ``new_task_id`` only allocates the id (as it does, from its
    counter), and ``complete(task)`` writes what it would have written: in the
    check's thread, or before the task is launched. Every task created in that
    window reaches ``check_first``, which does one or the other. Other providers
    (the metadata service hands out ids itself) are left as they are."""

    @classmethod
    def of(cls, runtime) -> _DeferredRegistrations:
        if getattr(runtime, "_memoize_registrations", None) is None:
            runtime._memoize_registrations = cls(runtime._metadata)
        return runtime._memoize_registrations

    def __init__(self, metadata):
        self._metadata = metadata
        self._pending: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._pending_attempts: set[int] = set()  # id() of tasks whose marker is due
        self._new_attempt = None  # Task.new_attempt while it is replaced
        self._lock = threading.Lock()
        self._supported = _allocates_local_task_ids(metadata)

    def defer(self) -> None:
        from metaflow.runtime import Task

        self._new_attempt = Task.__dict__.get("new_attempt")
        if self._new_attempt is not None:
            pending_attempts = self._pending_attempts

            def new_attempt(task):
                # Task.new_attempt, its attempt marker written by complete(task)
                if task.retries:
                    return self._new_attempt(task)
                task._ds = task._flow_datastore.get_task_datastore(
                    task.run_id, task.step, task.task_id, attempt=0, mode="w"
                )
                with self._lock:
                    pending_attempts.add(id(task))

            Task.new_attempt = new_attempt
        if not self._supported:
            return
        metadata, pending = self._metadata, self._pending

        def new_task_id(run_id, step_name, tags=None, sys_tags=None):
            metadata._task_id_seq += 1
            task_id = str(metadata._task_id_seq)
            with self._lock:
                pending[(str(run_id), step_name, task_id)] = (tags, sys_tags)
            return task_id

        metadata.new_task_id = new_task_id  # this instance only, until stop_deferring

    def stop_deferring(self) -> None:
        self._metadata.__dict__.pop("new_task_id", None)
        if self._new_attempt is not None:
            from metaflow.runtime import Task

            Task.new_attempt = self._new_attempt
            self._new_attempt = None

    def complete(self, task) -> None:
        """Write what the creation of ``task`` deferred, if it did; once."""
        with self._lock:
            deferred = self._pending.pop((str(task.run_id), task.step, str(task.task_id)), None)
            attempt_pending = id(task) in self._pending_attempts
            self._pending_attempts.discard(id(task))
        if deferred is not None:
            tags, sys_tags = deferred
            self._metadata._new_task(
                task.run_id, task.step, task.task_id, tags=tags, sys_tags=sys_tags
            )
        if attempt_pending:
            task._ds.init_task()


def _allocates_local_task_ids(metadata) -> bool:
    """Whether ``metadata`` is Metaflow's local provider with its own ``new_task_id``
    (a counter, then ``_new_task``), as ``_DeferredRegistrations`` replays it."""
    try:
        from metaflow.plugins.metadata_providers.local import LocalMetadataProvider
    except ImportError:
        return False
    return (
        type(metadata).new_task_id is LocalMetadataProvider.new_task_id
        and isinstance(getattr(metadata, "_task_id_seq", None), int)
        and callable(getattr(metadata, "_new_task", None))
    )


class _Completions:
    """The tasks of one runtime being checked in threads. Each counts as an active
    task (the runtime's loop goes on while any is checked, and never starts more
    than its workers); a finished check wakes the runtime's poll through a pipe
    registered with it (``_poll_workers`` ignores descriptors that are not a
    worker's), so that a check finishing while processes run is collected at once."""

    @classmethod
    def of(cls, runtime) -> _Completions:
        if getattr(runtime, "_memoize_completions", None) is None:
            runtime._memoize_completions = cls(runtime)
        return runtime._memoize_completions

    def __init__(self, runtime):
        from concurrent.futures import ThreadPoolExecutor

        self._runtime = runtime
        _SmallBlobCache.attach(runtime._flow_datastore)
        self._pool = ThreadPoolExecutor(
            completion_threads(runtime._flow_datastore), thread_name_prefix="memoize-check"
        )
        self._checking: dict[Any, Any] = {}  # future -> task, in the order they were created
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        runtime._poll.add(self._wake_read)

    def submit(self, task, try_complete) -> None:
        future = self._pool.submit(_try_complete, self._runtime, task, try_complete)
        self._checking[future] = task
        self._runtime._active_tasks[0] += 1
        future.add_done_callback(self._wake)

    def _wake(self, _future) -> None:
        try:
            os.write(self._wake_write, b"\0")
        except OSError:  # the pipe is full: the runtime has wake-ups waiting already
            pass

    def collect(self, wait: bool) -> None:
        """Hand the checked tasks to the runtime: completed ones as clones, the others
        launched (in the slot their check held). ``wait``: for one at least."""
        if not self._checking:
            return
        if wait:
            from concurrent.futures import FIRST_COMPLETED
            from concurrent.futures import wait as wait_for

            wait_for(list(self._checking), return_when=FIRST_COMPLETED)
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        runtime = self._runtime
        for future in [f for f in self._checking if f.done()]:
            task = self._checking.pop(future)
            runtime._active_tasks[0] -= 1
            completed, logged = future.result()
            # printed here, by the runtime's thread: Metaflow's logger writes a line
            # in several pieces, and lines from two threads would mix
            for line in logged:
                task.log(line)
            if completed:
                runtime._cloned_tasks.append(task)
            else:
                runtime._launch_worker(task)


#: what the runtime loads from every finished task (runtime.py: ``finished_id``,
#: ``_queue_tasks``, the foreach and join bookkeeping)
RUNTIME_READS = (
    "_transition",
    "_foreach_stack",
    "_iteration_stack",
    "_foreach_num_splits",
    "_foreach_var",
)


class _SmallBlobCache:
    """Keeps the small artifacts the orchestrator loads, decompressed, in memory.

    For every finished task the runtime loads `_foreach_stack` (``finished_id``),
    several times for a foreach child (``_queue_task_join`` checks its siblings),
    and the checks load parents' bookkeeping: each a file read and gunzip, or a
    GET on S3. A task's process has its own datastore objects, so this lives only
    in the orchestrator. Keys are content hashes, so an entry is never stale; only
    blobs up to ``MAX_BLOB`` bytes are kept, at most ``MAX_TOTAL`` in all (least
    recently used first out). Metaflow's own interface (``set_blob_cache``, as the
    client's file cache)."""

    MAX_BLOB = 64 * 1024
    MAX_TOTAL = 32 * 1024 * 1024

    @classmethod
    def attach(cls, flow_datastore) -> None:
        store = getattr(flow_datastore, "ca_store", None)
        if store is None or getattr(store, "_blob_cache", None) is not None:
            return  # someone else's cache, or none to be had
        if callable(getattr(store, "set_blob_cache", None)):
            store.set_blob_cache(cls())

    def __init__(self):
        from collections import OrderedDict

        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def load_key(self, key):
        with self._lock:
            blob = self._blobs.get(key)
            if blob is not None:
                self._blobs.move_to_end(key)
            return blob

    def store_key(self, key, blob):
        if len(blob) > self.MAX_BLOB:
            return
        with self._lock:
            if key in self._blobs:
                return
            self._blobs[key] = blob
            self._total += len(blob)
            while self._total > self.MAX_TOTAL:
                _key, dropped = self._blobs.popitem(last=False)
                self._total -= len(dropped)


def _try_complete(runtime, task, try_complete) -> tuple[bool, list[str]]:
    """(completed, the lines it logged for the task): the runtime prints them.
    The task's registration comes first, whatever follows; if it fails, the runtime
    raises it (``future.result()``), as it would have when it created the task."""
    _quick_metadata.on = True  # this thread only (a check's, in the pool)
    try:
        _DeferredRegistrations.of(runtime).complete(task)
        launching = LaunchingTask(runtime, task)
        try:
            return bool(try_complete(launching)), launching.logged
        except Exception as err:  # never lose a run to the fast path
            print(
                "[memoize] WARNING: %s: could not check the cache before launching "
                "the task (%s); launching it" % (task.step, err),
                file=sys.stderr,
                flush=True,
            )
            return False, launching.logged
    finally:
        _quick_metadata.on = False


class LaunchingTask:
    """What the orchestrator knows about a task it is about to launch."""

    def __init__(self, runtime, task):
        self._runtime = runtime
        self._task = task
        self.flow = runtime._flow
        self.graph = runtime._graph
        self.step = task.step
        self.run_id = task.run_id
        self.task_id = task.task_id
        self.split_index = task.split_index
        self.input_paths = list(task.input_paths or [])
        self.decorators = list(task.decos or [])
        self.flow_datastore = runtime._flow_datastore
        self.metadata = runtime._metadata
        self.pathspec = "%s/%s/%s/%s" % (self.flow.name, self.run_id, self.step, self.task_id)
        self.logged: list[str] = []  # lines for the task's log (see log)

    def open_task(self, run_id: str, step: str, task_id: str):
        """A finished task's datastore (read mode), or None when it is not there."""
        try:
            return self.flow_datastore.get_task_datastore(run_id, step, task_id, mode="r")
        except Exception:
            return None

    def open_inputs(self) -> list[Any] | None:
        """The input tasks' datastores, in order; None when one cannot be opened.
        A wide join's are opened side by side (one request each on S3)."""
        paths = [path.split("/") for path in self.input_paths]
        if any(len(parts) != 3 for parts in paths):
            return None
        if len(paths) <= 4:
            inputs = [self.open_task(*parts) for parts in paths]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(COMPLETION_THREADS, len(paths))) as pool:
                inputs = list(pool.map(lambda parts: self.open_task(*parts), paths))
        return None if any(ds is None for ds in inputs) else inputs

    def expected_foreach_stack(self, first: dict[str, Any]) -> list[Any]:
        """The `_foreach_stack` the task would set (task.py's ``_init_foreach``), from
        ``first``: the ``FOREACH_BOOKKEEPING`` of its first input (``load_present``)."""
        from metaflow.tuple_util import ForeachFrame

        if self.step == start_step(self.graph):
            return []
        stack = list(first.get("_foreach_stack") or [])
        kind = join_type(self.graph, self.step)
        if kind is not None:
            return stack[:-1] if kind == "foreach" else stack
        if first.get("_foreach_var") is not None:
            if self.split_index is None:
                raise ValueError("a task after a split has no split index")
            index = int(self.split_index)
            values = first.get("_foreach_values")
            frame = ForeachFrame(
                self.step,
                first["_foreach_var"],
                first.get("_foreach_num_splits"),
                index,
                values[index] if values is not None else None,
            )
            return stack + [frame]
        return stack

    def is_recursive(self) -> bool:
        return self.step in self.graph[self.step].out_funcs

    def log(self, message: str) -> None:
        """Kept for the runtime to print in its own thread (``_Completions.collect``)."""
        self.logged.append("[memoize] %s" % message)

    def clone_from(self, origin_run_id: str, origin, passed_down=None, metadata=None) -> None:
        """Complete this task as a copy of ``origin``, a finished task of the same step,
        the way `resume` does (clone_util.clone_task_helper): artifact references and
        metadata only, no artifact bytes. ``passed_down``: a datastore whose
        ``PASSED_DOWN_ARTIFACTS`` replace the origin's (what this run passes down);
        ``metadata``: more fields to register with the task's own."""
        output = self._new_output()
        output._objects = dict(origin._objects)
        output._info = {k: dict(v) for k, v in origin._info.items()}
        if passed_down is not None:
            for name in PASSED_DOWN_ARTIFACTS:
                if name in passed_down._objects:
                    output._objects[name] = passed_down._objects[name]
                    output._info[name] = dict(passed_down._info.get(name) or {})
        self._complete(
            output,
            dict(
                metadata or {},
                **{"origin-task-id": str(origin.task_id), "origin-run-id": str(origin_run_id)},
            ),
        )

    def _new_output(self):
        # the runtime opened the task's first attempt when it created the task
        # (Task.new_attempt): reuse it rather than write its attempt marker again
        output = getattr(self._task, "_ds", None)
        if (
            output is not None
            and getattr(output, "_mode", None) == "w"
            and getattr(output, "_attempt", None) == 0
            and not output._objects
        ):
            return output
        output = self.flow_datastore.get_task_datastore(
            self.run_id, self.step, self.task_id, attempt=0, mode="w"
        )
        output.init_task()
        return output

    def _complete(self, output, metadata: dict[str, str]) -> None:
        """Register the task (first attempt, successful, plus ``metadata``: field ->
        value, each its own type) and mark its datastore done, as clone_task_helper does."""
        if not str(self.task_id).isdigit():
            # a numeric id was registered when the runtime created the task (or by
            # _DeferredRegistrations); registering it again only repeats the
            # system metadata (clone_task_helper's register_task_id does)
            self.metadata.register_task_id(self.run_id, self.step, self.task_id, 0)
        tags = ["attempt_id:0"]
        data = [MetaDatum(field, value, field, tags) for field, value in metadata.items()]
        data += [
            MetaDatum("attempt", "0", "attempt", tags),
            MetaDatum("attempt_ok", "True", "internal_attempt_status", tags),
        ]
        self.metadata.register_metadata(self.run_id, self.step, self.task_id, data)
        output.done()
        # what the runtime reads back from the task (`_foreach_stack` and the rest of
        # finished_id, its transition), read from what was just written: opening the
        # task again looks for its attempts and data file, a few requests on S3
        results = self.flow_datastore.get_task_datastore(
            self.run_id,
            self.step,
            self.task_id,
            attempt=0,
            data_metadata={"objects": dict(output._objects), "info": dict(output._info)},
            mode="r",
        )
        self._task._results_ds = results
        if getattr(self.flow_datastore, "TYPE", "local") != "local":
            # the runtime reads these back one task after another in its one
            # thread, a GET each: fetched here, in this check's thread, they are in
            # the orchestrator's blob cache when it does (_SmallBlobCache)
            names = [n for n in RUNTIME_READS if n in results._objects]
            try:
                for _ in results.load_artifacts(names):
                    pass
            except Exception:
                pass  # the runtime will read them itself, and say what is wrong

    def parameters_task(self):
        """This run's ``_parameters`` task (read mode), or None when the run did not
        write it itself (a resume clones it from the origin run)."""
        params = getattr(self._runtime, "_params_task", None)
        if params is None or getattr(params, "is_cloned", True):
            return None
        parts = str(params.path).split("/")
        return self.open_task(*parts) if len(parts) == 3 else None

    def compose(
        self,
        first_input,
        parameters,
        produced: dict[str, tuple[str, dict[str, Any]]],
        transition: dict[str, Any],
        frames: list[Any],
        saved: dict[str, tuple[str, dict[str, Any]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Complete this task with what the task itself would write on a hit
        (task.py's ``run_step`` with the body replaced by ``replay``): artifact
        references and a few small bookkeeping objects, no artifact bytes.

        * A linear step starts from everything its input has (``_set_datastore``
          of the input); a join only from what ``_init_parameters`` passes down
          from its first input (parameters, public class attributes, the graph).
        * ``persist`` then stores the flow object's own attributes again: the ones
          every task stores (``name``, private class attributes) are taken from
          ``parameters``, this run's ``_parameters`` task, which stored the same.
        * Then ``produced`` (name -> (sha, info)), whose blobs must be in the
          datastore, and the bookkeeping this task sets (``task_bookkeeping``).

        ``saved``: value key -> (sha, info) of bookkeeping objects this run wrote
        before (identical objects are written once). ``metadata``: more fields to
        register with the task's own.
        """
        is_join = node_type(self.graph, self.step) == "join"
        passed = passed_down_names(self.flow)
        source = first_input._objects
        names = [n for n in source if n in passed] if is_join else list(source)
        objects = {n: source[n] for n in names}
        info = {n: dict(first_input._info.get(n) or {}) for n in names}
        for name, sha in parameters._objects.items():
            if name in passed or name in VALUE_CHECKED_ARTIFACTS:
                continue
            objects[name] = sha
            info[name] = dict(parameters._info.get(name) or {})
        for name, (sha, record) in produced.items():
            objects[name] = sha
            info[name] = dict(record)
        output = self._new_output()
        values = task_bookkeeping(self.step, frames, transition)
        unsaved = []
        for name, value in values.items():
            known = saved.get(_value_key(value))
            if known is None:
                unsaved.append((name, value))
            else:
                objects[name], info[name] = known[0], dict(known[1])
        output._objects = objects
        output._info = info
        if unsaved:
            output.save_artifacts(iter(unsaved), len_hint=len(unsaved))
            for name, value in unsaved:
                saved[_value_key(value)] = (output._objects[name], dict(output._info[name]))
        path = ",".join("%s:%s" % (f.step, f.index) for f in frames)
        fields = dict(metadata or {})
        if path:
            fields["foreach-execution-path"] = path
        self._complete(output, fields)


def _value_key(value: Any) -> str:
    return repr((type(value).__name__, value))


def _sets_iteration_stack() -> bool:
    """Whether tasks store ``_iteration_stack`` (recursive steps: Metaflow 2.17.4+)."""
    from metaflow.task import MetaflowTask

    return hasattr(MetaflowTask, "_init_iteration")


def task_bookkeeping(step: str, frames: list[Any], transition: dict[str, Any]) -> dict[str, Any]:
    """The bookkeeping attributes a (non-recursive) task of ``step`` stores when its
    body is replaced by a replay of ``transition``: task.py sets the first ones
    before the body, ``replay`` the transition."""
    values: dict[str, Any] = {
        "_foreach_var": None,
        "_foreach_num_splits": None,
        "_foreach_stack": list(frames),
        "_current_step": step,
        "_success": True,
        "_task_ok": True,
        "_exception": None,
    }
    if _sets_iteration_stack():
        values["_iteration_stack"] = []
    values.update(transition_values(transition or {}))
    return values


_passed_down: dict[type, frozenset[str]] = {}


def passed_down_names(flow) -> frozenset[str]:
    """What task.py's ``_init_parameters`` turns into read-only class properties
    (so ``persist`` leaves them as the task's input has them): the parameters, the
    public class attributes, the graph. Once per flow class: every composed task
    of a run asks."""
    cls = flow.__class__
    if cls not in _passed_down:
        _passed_down[cls] = frozenset(_passed_down_names(flow))
    return _passed_down[cls]


def _passed_down_names(flow) -> set[str]:
    from types import FunctionType, MethodType

    cls = flow.__class__
    names = set(parameter_names(flow))
    for var in dir(cls):
        if var[0] == "_" or var in cls._NON_PARAMETERS or var in names:
            continue
        if isinstance(getattr(cls, var, None), (MethodType, FunctionType, property, type)):
            continue
        names.add(var)
    return names | PASSED_DOWN_ARTIFACTS


#: What a task's foreach position is computed from, in its first input.
FOREACH_BOOKKEEPING = ("_foreach_stack", "_foreach_var", "_foreach_num_splits", "_foreach_values")


def load_present(task_datastore, names: Iterable[str]) -> dict[str, Any]:
    """The named artifacts a task has, unpickled, in one read (one request on S3)."""
    present = [n for n in names if n in task_datastore]
    return dict(task_datastore.load_artifacts(present)) if present else {}


def bookkeeping_values(task_datastore, names: Iterable[str]) -> dict[str, Any]:
    """Bookkeeping artifacts of a finished task, JSON-like (absent: None), in one read."""
    names = list(names)
    loaded = load_present(task_datastore, names)
    if "_iteration_stack" in names and loaded.get("_iteration_stack") is None:
        # written since 2.17.4 (recursive steps); Metaflow's own default before
        # (runtime.py: results.get("_iteration_stack", []))
        loaded["_iteration_stack"] = []
    return {n: jsonable_bookkeeping(n, loaded.get(n)) for n in names}


def jsonable_bookkeeping(name: str, value: Any) -> Any:
    """A bookkeeping artifact's value in the JSON form a manifest records it in."""
    if name == "_foreach_stack" and value is not None:
        value = [list(frame) for frame in value]
    return json_normalized(_recordable(name, value))


def json_normalized(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value, default=repr))


def class_level_names(flow) -> set[str]:
    """Artifacts every task of the flow persists from the class: parameters,
    constants (persist() stores every non-callable class attribute)."""
    cls = flow.__class__
    names = set()
    for var in dir(cls):
        if var.startswith("__") or var in getattr(cls, "_EPHEMERAL", ()):
            continue
        value = getattr(cls, var, None)
        if isinstance(value, (property, type)) or callable(value):
            continue
        names.add(var)
    return names | set(parameter_names(flow))
