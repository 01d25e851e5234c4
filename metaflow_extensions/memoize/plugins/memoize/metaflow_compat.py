"""Every use of Metaflow internals lives here, so a Metaflow upgrade is a one-file change.

Verified against metaflow 2.19.x (see docs/concepts.md). What we rely on:

* ``TaskDataStore._objects`` / ``_info``: name -> content hash (sha1 of the
  pickled bytes) and per-artifact info; ``persist()`` copies the flow's
  ``_datastore`` maps into the task's output.
* The content-addressed store layout ``<root>/<Flow>/data/<sha[:2]>/<sha>``
  (plus ``<path>_meta`` on local storage) and ``DataStoreStorage`` methods.
* The flow's transition attributes (``_transition``, ``_foreach_*``).
* ``LazyGroup._lazy_load``: the only way to add options to ``run``/``resume``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from metaflow.metadata_provider import MetaDatum

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


def input_identity(task_datastore):
    """(step name, foreach index of the task or None) of an input datastore."""
    index = None
    try:
        stack = task_datastore["_foreach_stack"]
        if stack:
            index = stack[-1].index
    except Exception:
        index = None
    return task_datastore.step_name, index


def foreach_frames(flow) -> list[Any]:
    return list(getattr(flow, "_foreach_stack", None) or [])


def foreach_item_repr(flow, item) -> Any:
    """The truncated representation Metaflow records for a foreach item."""
    getter = getattr(flow, "_get_foreach_item_value", None)
    return getter(item) if getter else None


def step_function(flow, step_name):
    return getattr(flow.__class__, step_name)


def record_transition(flow) -> dict[str, Any]:
    """The step's recorded transition, JSON-able, to replay on a hit."""
    recorded = {}
    for attr in TRANSITION_ATTRIBUTES:
        value = flow.__dict__.get(attr, getattr(flow, attr, None))
        if attr == "_transition" and value is not None:
            funcs, foreach = value[0], value[1]
            extra = list(value[2:]) if len(value) > 2 else []
            value = {"funcs": list(funcs), "foreach": foreach, "extra": extra}
        recorded[attr] = value
    return recorded


def replay(flow, artifacts: dict[str, dict[str, Any]], transition: dict[str, Any]) -> None:
    """Make the task look as if the step body had run: restore artifacts by reference
    and set the recorded transition. ``artifacts``: name -> {"sha", "info"}."""
    datastore = flow._datastore
    for name, record in artifacts.items():
        # attributes on the flow object win over the datastore in persist()
        flow.__dict__.pop(name, None)
        datastore._objects[name] = record["sha"]
        datastore._info[name] = dict(record["info"])
    for attr in TRANSITION_ATTRIBUTES:
        value = transition.get(attr)
        if attr == "_transition" and value is not None:
            value = tuple([value["funcs"], value["foreach"]] + list(value.get("extra") or []))
        setattr(flow, attr, value)


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
    return list(graph.sorted_nodes)


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


# -- the run's datastore, seen as a blob source/destination -----------------
class DatastoreBlobs:
    """Metaflow's content-addressed artifact blobs of one flow in one datastore."""

    def __init__(self, task_datastore):
        ca_store = task_datastore._ca_store
        self._storage = ca_store._storage_impl
        self._prefix = ca_store._prefix
        self.kind = "s3" if self._storage.TYPE == "s3" else "local"
        self.root = self._storage.datastore_root

    def path(self, sha: str) -> str:
        return self._storage.path_join(self._prefix, sha[:2], sha)

    def url(self, sha: str) -> str:
        """Absolute local path or s3:// URL of a blob."""
        return self._storage.full_uri(self.path(sha))

    def existing(self, shas: Iterable[str]) -> set[str]:
        shas = list(shas)
        if not shas:
            return set()
        flags = self._storage.is_file([self.path(s) for s in shas])
        return {s for s, present in zip(shas, flags) if present}

    def cas_meta(self, sha: str) -> dict[str, Any] | None:
        exists, meta = self._storage.info_file(self.path(sha))
        return meta if exists else None

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
        from .stores.local import file_mode_from_umask

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


# -- `run --memoize-refresh` -------------------------------------------------
#: top-level flow option that carries a refresh request to every task command
#: line; Metaflow forwards top-level options to remote tasks (`kubernetes step`,
#: `batch step`), where an environment variable of this process would not arrive
TOP_LEVEL_REFRESH_OPTION = "memoize-refresh-request"
_OPTIONS_INSTALLED = False


def install_run_options(on_refresh_all, on_refresh_steps, on_refresh_request) -> None:
    """Add --memoize-refresh / --memoize-refresh-step to `run` and `resume`, and the
    top-level --memoize-refresh-request that task command lines carry.

    Metaflow has no hook for extensions to add options to these commands: we wrap
    LazyGroup._lazy_load (run/resume are loaded lazily) and the constructor of the
    top-level command collection, and append click options.
    """
    global _OPTIONS_INSTALLED
    if _OPTIONS_INSTALLED:
        return
    _OPTIONS_INSTALLED = True
    from metaflow._vendor import click
    from metaflow.cli_components import utils

    original_lazy_load = utils.LazyGroup._lazy_load
    original_collection_init = utils.LazyPluginCommandCollection.__init__

    def refresh_all_cb(ctx, param, value):
        if value:
            on_refresh_all()
        return value

    def refresh_steps_cb(ctx, param, value):
        if value:
            on_refresh_steps(list(value))
        return value

    def refresh_request_cb(ctx, param, value):
        if value:
            on_refresh_request(value)
        return value

    def add_run_options(cmd):
        if getattr(cmd, "_memoize_options", False):
            return
        cmd._memoize_options = True
        cmd.params.append(
            click.Option(
                ["--memoize-refresh"],
                is_flag=True,
                default=False,
                expose_value=False,
                callback=refresh_all_cb,
                help="Recompute every @memoize step and overwrite its cache entry.",
            )
        )
        cmd.params.append(
            click.Option(
                ["--memoize-refresh-step"],
                multiple=True,
                expose_value=False,
                callback=refresh_steps_cb,
                help="Recompute this @memoize step (repeatable) and overwrite its entry.",
            )
        )

    def lazy_load(self, cmd_name):
        cmd = original_lazy_load(self, cmd_name)
        if cmd_name in ("run", "resume"):
            add_run_options(cmd)
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

    utils.LazyGroup._lazy_load = lazy_load
    utils.LazyPluginCommandCollection.__init__ = collection_init


def forward_refresh_request(cli_args, value: str) -> None:
    """Put a refresh request on a task's command line (local or remote)."""
    cli_args.top_level_options[TOP_LEVEL_REFRESH_OPTION] = value


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
