"""The @memoize step decorator: coordinates key, cache and restore; computes nothing itself."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from metaflow.decorators import StepDecorator

from .. import config
from .. import metaflow_compat as mf
from ..cache import audit
from ..cache.entries import Cache
from ..cache.manifest import ArtifactRecord, Manifest, foreach_text
from ..cache.singleflight import Lease
from ..cache.stores import ROOT_URL_FORMS, missing_library, open_store, root_url_problem
from ..cache.stores import s3 as s3_store
from ..cache.stores.faults import share_budget
from ..cache.transfer import export_blobs, import_blobs
from ..card import CARD_TYPE
from ..durations import format_count, format_duration
from ..exceptions import (
    CacheFault,
    CorruptEntry,
    MemoizeException,
    MemoizeRefreshError,
    MemoizeStrictError,
)
from ..key import native  # registers the native file recorder (a collector)
from ..key.code import assigned_attributes, step_attribute_usage
from ..key.components import (
    BOOKKEEPING_ARTIFACTS,
    changed_static_inputs,
    diff_components,
    diff_other_item,
    key_of,
)
from ..key.deps import observed_dependencies, read_artifact_names
from ..key.identity import (
    UnidentifiableInput,
    dependency_context,
    environment_component,
    join_input_sources,
    shown_parameters,
    task_components,
    unstable_inputs,
)
from ..key.observe import Observer, end_import_phase
from ..key.verified import verified_lookup
from ..settings import parse_arguments
from ..version import __version__
from .explain import NO_ENTRY_FOR_ITEM, NOTHING_COMPARED
from .orchestrator_hits import HIT_REASON, OrchestratorHits

# Never restored from an entry: per-task state that Metaflow sets itself.
_NEVER_RESTORED = BOOKKEEPING_ARTIFACTS | {"name", "input", "index"}


def _request_refresh_all():
    os.environ[config.ENV_REFRESH] = "1"


#: step names given with --memoize-refresh-step in this process (checked in step_init,
#: where the flow's steps are known; the option's callback runs before that)
_REFRESH_STEPS_FROM_CLI: set[str] = set()


def _request_refresh_steps(steps):
    _REFRESH_STEPS_FROM_CLI.update(steps)
    current = os.environ.get(config.ENV_REFRESH, "")
    if current.strip().lower() in ("1", "true", "yes", "on", "all", "*"):
        return
    names = [s for s in current.split(",") if s.strip()] + list(steps)
    os.environ[config.ENV_REFRESH] = ",".join(sorted(set(names)))


def _receive_refresh_request(value):
    os.environ[config.ENV_REFRESH] = value


def _request_card():
    os.environ[config.ENV_CARD] = "1"


if not mf.part_untrusted("refresh options"):
    mf.install_run_options(
        _request_refresh_all, _request_refresh_steps, _receive_refresh_request, _request_card
    )
# `spin` (Metaflow 2.19+) would skip @memoize with four warnings per spin; it runs
# its hooks instead, and they do nothing under spin (a spun step always runs)
mf.allow_in_spin("memoize")
_WARNED_UNTESTED_RELEASE = False


def _check_root_setting():
    """METAFLOW_MEMOIZE_ROOT='s3:/bucket' would quietly become a local directory."""
    root = config.cache_root_setting()
    problem = root and root_url_problem(root)
    if problem:
        install = missing_library(root)
        raise MemoizeException(
            "%s=%r %s: install it, or set another root." % (config.ENV_ROOT, root, problem)
            if install
            else "%s=%r %s: use %s, e.g. s3://team-cache/memoize."
            % (config.ENV_ROOT, root, problem, ROOT_URL_FORMS)
        )


def _check_refresh_request(flow):
    """A refresh request naming no @memoize step would refresh nothing while the user
    believes it did: unknown and unmemoized step names stop the run at start."""
    _, from_env = config.refresh_request()
    requested = set(from_env) | _REFRESH_STEPS_FROM_CLI
    if not requested:
        return
    steps = {f.__name__: f for f in mf.step_functions(flow)}
    memoized = sorted(n for n, f in steps.items() if any(d.name == "memoize" for d in f.decorators))
    problems = []
    for name in sorted(requested):
        if name in memoized:
            continue
        source = (
            "--memoize-refresh-step %s" % name
            if name in _REFRESH_STEPS_FROM_CLI
            else "%s names '%s'" % (config.ENV_REFRESH, name)
        )
        if name in steps:
            problems.append(
                "%s: step '%s' of %s is not memoized (no @memoize; add it, or run with "
                "--with memoize)" % (source, name, flow.name)
            )
        else:
            problems.append("%s: %s has no step '%s'" % (source, flow.name, name))
    if problems:
        raise MemoizeRefreshError(
            "%s. The @memoize steps of %s are: %s."
            % ("; ".join(problems), flow.name, ", ".join(memoized) or "none")
        )


#: whether this process already printed the `--with memoize` note (step_init runs
#: once per step: the note is for the run)
_WITH_NOTE_PRINTED = False


def _note_memoized_by_with(flow, graph):
    """`--with memoize` memoizes every step, `end` and steps run for their side
    effects included: say once per run what a hit skips there."""
    global _WITH_NOTE_PRINTED
    if _WITH_NOTE_PRINTED:
        return
    _WITH_NOTE_PRINTED = True
    decorators = {f.__name__: f.decorators for f in mf.step_functions(flow)}
    added = [
        name
        for name in mf.sorted_steps(graph)
        if any(
            d.name == "memoize" and mf.added_on_the_command_line(d)
            for d in decorators.get(name, ())
        )
    ]
    log(
        "note: --with memoize memoizes %s: on a hit a step's body does not run, so "
        "what it does besides setting artifacts (writing files, sending messages, "
        "calling services) is not done again. If a step is run for such side effects, "
        "put @memoize on the steps to cache instead of using --with memoize." % ", ".join(added)
    )


def log(message: str) -> None:
    print("[memoize] %s" % message, file=sys.stderr, flush=True)


class MemoizeDecorator(StepDecorator):
    """
    Skip the step when its code and inputs are unchanged since an earlier run,
    restoring the artifacts it produced then.

    Parameters
    ----------
    ttl : Union[int, str], optional, default None
        How long an entry stays valid: seconds, or "90s", "30m", "12h", "7d",
        "2w". None: never expires.
    version : str, optional, default None
        Mixed into the key: change it to invalidate entries by hand.
    inputs : List[str], optional, default None
        Only these artifacts (plus the foreach item) enter the key.
    ignore : List[str], optional, default None
        Artifacts left out of the key.
    outputs : List[str], optional, default None
        Only these artifacts are stored and restored.
    refresh : bool, default False
        Always recompute this step and overwrite its entry.
    store : str, optional, default None
        Cache root for this step: a directory or s3://bucket/prefix.
    depends_on : List[Union[str, Callable, ModuleType]], optional, default None
        Extra things whose content enters the key: files, directories,
        functions, modules.
    env : List[str], optional, default None
        Installed packages whose versions enter the key.
    lock : bool, default False
        Single flight: while one task computes a key, others wait for its entry.
    audit : float, optional, default None
        Fraction of hits whose body runs anyway to check the entry (0 to 1).
        None: METAFLOW_MEMOIZE_AUDIT, else 0.
    """

    name = "memoize"
    _spin = None  # set by step_init: mf.spinning()
    defaults = {
        "ttl": None,
        "version": None,
        "inputs": None,
        "ignore": None,
        "outputs": None,
        "refresh": False,
        "store": None,
        "depends_on": None,
        "env": None,
        "lock": False,
        "audit": None,
    }

    def __init__(self, attributes=None, statically_defined=False, inserted_by=None):
        # Metaflow rejects unknown arguments here, before the step is known; we
        # keep them aside and reject them in step_init with the step's name.
        attributes = dict(attributes or {})
        self._unknown_arguments = sorted(
            k for k in attributes if k not in self.defaults and not k.startswith("_")
        )
        for name in self._unknown_arguments:
            attributes.pop(name)
        super().__init__(*mf.decorator_init_args(attributes, statically_defined, inserted_by))
        self.inserted_by = inserted_by  # set by Metaflow itself since 2.16

    # -- orchestrator and task: validate -------------------------------------
    def step_init(self, flow, graph, step_name, decorators, environment, flow_datastore, logger):
        # the flow's modules are imported: what they read at import is recorded
        # (observe.import_phase); what Metaflow reads from here on is not
        end_import_phase()
        self._step_name = step_name
        # `spin STEP` is for debugging one step: it always runs, nothing is looked
        # up or stored, and the orchestrator says so once
        self._spin = mf.spinning()
        if self._spin:
            if self._spin == "orchestrator":
                log("spin: %s runs (no cache lookup, nothing stored)" % step_name)
            return
        if self._unknown_arguments:
            from ..exceptions import MemoizeArgumentError

            raise MemoizeArgumentError(
                step_name,
                self._unknown_arguments[0],
                "is not an argument of @memoize",
                "Supported arguments: %s." % ", ".join(sorted(self.defaults)),
            )
        flow_file = mf.flow_file(flow)
        flow_dir = os.path.dirname(os.path.abspath(flow_file)) if flow_file else os.getcwd()
        self.args = parse_arguments(step_name, self.attributes, flow_dir)
        if mf.has_parallel_or_ubf(graph, step_name) or any(
            d.name == "parallel" for d in decorators
        ):
            raise MemoizeException(
                "Step *%s*: @memoize cannot be used on a @parallel step (its tasks are not "
                "independent). Remove @memoize from this step." % step_name
            )
        self._check_names_exist(flow, step_name, "inputs")
        self._check_names_exist(flow, step_name, "ignore")
        self._check_outputs_set(flow, step_name)
        _check_root_setting()
        if mf.starting_a_run():
            # tasks and deployments get the request already checked (or, for
            # `create`, warn about it themselves)
            _check_refresh_request(flow)
            if mf.added_on_the_command_line(self):
                _note_memoized_by_with(flow, graph)
            if config.card_requested():
                # the runtime forwards it to the end task as `--with card:type=memoize`
                mf.attach_card(
                    flow, graph, mf.end_step(graph), CARD_TYPE, environment, flow_datastore, logger
                )
        self._env_component = environment_component(decorators, self.args["env"])
        self._datastore_type = getattr(flow_datastore, "TYPE", "local")
        self._datastore_root = mf.datastore_root_for_cli(flow_datastore)
        config.mode()  # fail fast on a bad METAFLOW_MEMOIZE_MODE
        self.audit_fraction()  # and on a bad METAFLOW_MEMOIZE_AUDIT

    def audit_fraction(self) -> float:
        """audit=, else METAFLOW_MEMOIZE_AUDIT (audit.py)."""
        own = self.args["audit"]
        return config.audit_fraction() if own is None else own

    def _check_names_exist(self, flow, step_name, argument):
        """`inputs` or `ignore` naming an artifact no step ever sets is a typo: say so
        at start.

        Only checked when every step's assignments can be read from its source.
        """
        if not self.args[argument]:
            return
        known = set(mf.parameter_names(flow)) | {"input"}
        for func in mf.step_functions(flow):
            assigned = assigned_attributes(func)
            if assigned is None:
                return  # a step passes `self` around: anything may be set
            known |= assigned
        unknown = [n for n in self.args[argument] if n not in known]
        if unknown:
            from ..exceptions import MemoizeArgumentError

            raise MemoizeArgumentError(
                step_name,
                argument,
                "names %s, which no step of %s sets and no parameter is called"
                % (", ".join(repr(u) for u in unknown), flow.name),
                "Use the names of artifacts (self.NAME = ...) or parameters.",
            )

    def _check_outputs_set(self, flow, step_name):
        """`outputs` naming an artifact the step never touches would store an entry
        without it, and every later hit would lack it: refuse at start.

        A name the step only reads is allowed (it may mutate an inherited artifact,
        which outputs= must then list); when the step's use of `self` cannot be
        read (it hands `self` to other code), nothing is refused.
        """
        if not self.args["outputs"]:
            return
        usage = step_attribute_usage(mf.step_function(flow, step_name), flow.__class__)
        if usage is None:
            return
        assigned, mentioned = usage
        never = [n for n in self.args["outputs"] if n not in assigned and n not in mentioned]
        if never:
            from ..exceptions import MemoizeArgumentError

            raise MemoizeArgumentError(
                step_name,
                "outputs",
                "names %s, which the step never sets (no self.NAME = ... in %s or the "
                "methods it calls)" % (", ".join(repr(n) for n in never), step_name),
                "Set it in the step, or remove it from outputs= (list the artifacts the "
                "step produces).",
            )

    def cache_root(self) -> str:
        return (
            self.args["store"]
            or config.cache_root_setting()
            or config.default_root(self._datastore_type, self._datastore_root)
        )

    def runtime_step_cli(self, cli_args, retry_count, max_user_code_retries, ubf_context):
        if self._spin:
            return
        # The environment reaches local tasks only; the command line reaches all.
        request = os.environ.get(config.ENV_REFRESH, "").strip()
        if request:
            mf.forward_refresh_request(cli_args, request)

    # -- orchestrator: end-of-run summary ------------------------------------
    def runtime_init(self, flow, graph, package, run_id):
        global _WARNED_UNTESTED_RELEASE
        if self._spin:
            return
        _RunSummary.start(flow, graph, run_id)
        native.preload_for_tasks()  # task processes start with the file recorder
        untrusted = mf.untrusted()
        if untrusted and not _WARNED_UNTESTED_RELEASE:
            _WARNED_UNTESTED_RELEASE = True
            print(mf.untested_release_warning(), file=sys.stderr, flush=True)
        if not {"memoize", "orchestrator"} & set(untrusted):
            # the runtime exists now (importing it with this module would be circular)
            mf.install_launch_hook(_RunSummary.orchestrator)

    def runtime_finished(self, exception):
        if not self._spin:
            _RunSummary.finish()

    # -- task ----------------------------------------------------------------
    def task_pre_step(
        self,
        step_name,
        task_datastore,
        metadata,
        run_id,
        task_id,
        flow,
        graph,
        retry_count,
        max_user_code_retries,
        ubf_context,
        inputs,
    ):
        self._task = {
            "flow": flow,
            "graph": graph,
            "output": task_datastore,
            "inputs": inputs,
            "metadata": metadata,
            "run_id": run_id,
            "task_id": task_id,
            "retry": retry_count,
        }
        self._status = None
        self._manifest = None
        self._components = None
        self._shown_foreach = []  # the foreach items as people see them (identity.py)
        self._body_ok = False
        self._body_seconds = 0.0
        self._transition = None
        self._cache = None
        self._lease = None
        self._held_miss = None  # (step, key, reason) of a miss not yet logged (lock=True)
        self._waited = None  # how long this task waited for another's entry (lock=True)
        self._merged = None
        self._rewrite_after_fault = False
        self._replace_entry = False
        self._store_key = None  # where a recomputed entry goes (a variant key or the key)
        self._dep_ctx = None
        self._observer = None
        self._recording = None
        self._reads = None  # mf.ArtifactReads while the body runs
        self._read_names = set()
        self._strict = config.strict()
        mode = config.mode()
        self._mode = mode
        meta: dict[str, Any] = {}
        if self._spin:
            self._status = "spin"  # the body runs; task_decorate and _finish pass
            return
        if mode == "off" or ubf_context or mf.part_untrusted("memoize"):
            self._status = "disabled"
            self._register({"memoize_status": "disabled"})
            return
        try:
            metaflow_client = mf.loaded_s3_client(task_datastore)
            if metaflow_client is not None:
                # an S3 datastore: our S3 client can skip parsing the service models again
                s3_store.reuse_loaded_models(metaflow_client)
            store = open_store(self.cache_root())
            # a root that keeps failing is switched off for the rest of the run
            share_budget(store.url, "%s/%s" % (flow.name, run_id))
            self._cache = Cache(store, signing_key=config.signing_key())
            try:
                self._components = task_components(
                    flow,
                    graph,
                    step_name,
                    inputs,
                    self.args,
                    self._env_component,
                    shown=self._shown_foreach,
                )
            except UnidentifiableInput as err:
                self._status = "uncacheable"
                log("%s: not cached: %s" % (step_name, err))
                self._register({"memoize_status": "uncacheable", "memoize_reason": str(err)})
                return
            key = key_of(self._components)
            self._key = key
            self._store_key = key
            if foreach_text(self._shown_foreach):  # the memoize card shows it
                meta["memoize_foreach"] = foreach_text(self._shown_foreach)
            self._dep_ctx = dependency_context(
                flow,
                step_name,
                mf.foreach_frames(flow),
                inputs[0] if inputs else None,
                [self._datastore_root, self.cache_root()],
                graph=graph,
                args=self.args,
                join_inputs=join_input_sources(graph, step_name, inputs),
            )
            meta["memoize_key"] = key
            refresh_all, refresh_steps = config.refresh_request()
            refresh = (
                mode == "refresh"
                or self.args["refresh"]
                or refresh_all
                or step_name in refresh_steps
            )
            if refresh:
                self._status = "refresh"
                meta["memoize_reason"] = "refresh requested"
                meta["memoize_compared"] = NOTHING_COMPARED
                log("refresh %s key=%s (recomputing)" % (step_name, key[:12]))
            else:
                single_flight = self.args["lock"] and mode == "on"
                # with lock=True a miss is only a miss once this task holds the
                # lease: a task that waits for another's entry says so instead
                self._status = self._look_up(
                    flow.name, step_name, key, meta, announce_miss=not single_flight
                )
                if self._status == "miss" and single_flight:
                    self._status = self._single_flight(flow.name, step_name, key, meta)
                # audit (audit.py): a sampled hit runs its body; task_finished compares
                if self._status == "hit" and audit.sampled(self.audit_fraction()):
                    self._status = "audit"
                    log(
                        "audit %s key=%s: running the body to check the entry"
                        % (step_name, key[:12])
                    )
        except CacheFault as err:
            # a corrupt entry was removed: recomputing may store a good one
            self._rewrite_after_fault = isinstance(err, CorruptEntry)
            self._fault(step_name, err, meta)
        meta["memoize_status"] = self._status
        self._register(meta)
        if self._status in ("miss", "refresh", "error", "audit") and self._dep_ctx is not None:
            # last thing before the body: user step decorators' code counts too
            self._observer = Observer()
            self._observer.start()
            if self._dep_ctx.reads_keyed and inputs:
                # a join reads from every input; a linear step's input is its own
                self._reads = mf.ArtifactReads(inputs if self._dep_ctx.input_ids else inputs[:1])
                self._reads.start()

    def _stop_observing(self):
        if self._observer is not None:
            self._recording = self._observer.stop()
            self._observer = None
        if self._reads is not None:
            per_input = self._reads.stop()
            if self._dep_ctx.input_ids:
                self._read_names = dict(zip(self._dep_ctx.input_ids, per_input))
            else:
                self._read_names = per_input[0]
            self._reads = None

    def _single_flight(self, flow_name, step_name, key, meta) -> str:
        lease = Lease(self._cache, flow_name, step_name, key, config.lock_lease_seconds())

        def usable():
            found = verified_lookup(self._cache, flow_name, step_name, key, self._dep_ctx)
            return found.status == "found"

        if lease.try_acquire():
            self._lease = lease
            if not usable():
                log(_miss_line(*self._held_miss))
                return "miss"
            # published between our lookup and our lease: use it
            lease.release()
            self._lease = None
            meta.pop("memoize_reason", None)
            return self._look_up(flow_name, step_name, key, meta)
        # said before the wait, which may be long (log() flushes)
        log(
            "%s key=%s: not in the cache yet; another task is computing it; waiting "
            "(lock=True)" % (step_name, key[:12])
        )
        started = time.time()
        outcome = lease.wait(usable)
        waited = format_duration(time.time() - started)
        if outcome == "acquired":
            self._lease = lease
            log(
                _miss_line(
                    *self._held_miss,
                    "waited %s; the task that held the lock stored no entry: computing it here"
                    % waited,
                )
            )
            return "miss"
        meta.pop("memoize_reason", None)
        self._waited = waited  # said on the hit line: one line, read at once (see _look_up)
        return self._look_up(flow_name, step_name, key, meta)

    def _look_up(self, flow_name, step_name, key, meta, announce_miss=True) -> str:
        """Returns "hit" (the entry is restored) or "miss". A miss is logged unless
        ``announce_miss`` is False; its line then waits in ``self._held_miss``."""
        try:
            decision = verified_lookup(self._cache, flow_name, step_name, key, self._dep_ctx)
        except CorruptEntry as err:
            bad = err.key or key
            self._quarantine(flow_name, step_name, bad)
            raise CorruptEntry("entry %s is corrupt (%s); removed" % (bad[:12], err), bad)
        self._store_key = decision.store_key
        self._replace_entry = decision.replace
        if decision.store_key != key:
            meta["memoize_entry"] = decision.store_key  # for `memoize explain`
        # what `memoize explain` shows for this task, recorded now rather than
        # reconstructed later from entries that may have changed since
        compared = decision.manifest or decision.first
        meta["memoize_compared"] = compared.key if compared is not None else NOTHING_COMPARED
        if decision.changed_inputs:
            meta["memoize_changed_inputs"] = ",".join(decision.changed_inputs)
        if decision.status == "found":
            manifest = decision.manifest
            misfit = mf.entry_misfit(self._task["graph"], step_name, manifest)
            if misfit:
                self._quarantine(flow_name, step_name, manifest.key)
                raise CorruptEntry(
                    "entry %s is unusable: %s" % (manifest.key[:12], misfit), manifest.key
                )
            changed = self._passthrough_changed(manifest)
            if changed:
                reason = (
                    "input '%s' is not in the key but changed, and the step may set it" % changed[0]
                )
                meta["memoize_reason"] = reason
                self._miss(step_name, key, reason, announce_miss)
                self._replace_entry = True
                return "miss"
            merged = self._merged_now(manifest)
            if merged is None:
                reason = "the inputs of this join no longer agree on an artifact it merged"
                meta["memoize_reason"] = reason
                self._miss(step_name, key, reason, announce_miss)
                self._replace_entry = True
                return "miss"
            try:
                moved = import_blobs(
                    mf.DatastoreBlobs(self._task["output"]),
                    self._cache,
                    manifest.artifacts,
                    may_delete=self._mode != "read",
                )
            except CorruptEntry as err:
                self._quarantine(flow_name, step_name, manifest.key)
                raise CorruptEntry(
                    "entry %s is corrupt (%s); removed" % (manifest.key[:12], err), manifest.key
                )
            except FileNotFoundError as err:
                raise CorruptEntry(
                    "entry %s lost a blob (%s)" % (manifest.key[:12], err), manifest.key
                )
            self._manifest = manifest
            self._merged = merged
            meta["memoize_origin"] = manifest.origin
            meta["memoize_reason"] = HIT_REASON
            meta["memoize_saved_seconds"] = "%.3f" % manifest.body_seconds
            saved = format_duration(manifest.body_seconds)
            # lines a task writes together may reach the console together, late:
            # Metaflow's runtime reads one line per wake-up of a task's pipe
            waited = "; waited %s for the task computing it" % self._waited if self._waited else ""
            log(
                "hit %s key=%s from %s (saved %s; %s%s)"
                % (step_name, key[:12], manifest.origin, saved, moved.describe(), waited)
            )
            try:
                if self._mode != "read":  # read mode writes nothing
                    self._cache.record_use(flow_name, step_name, manifest.key)
            except CacheFault:
                pass  # recency is best effort: never worth a miss
            return "hit"
        if decision.status == "unsigned":
            log(
                "WARNING: %s: ignoring cache entry %s: %s (METAFLOW_MEMOIZE_SIGNING_KEY is set)"
                % (step_name, key[:12], decision.detail)
            )
            meta["memoize_reason"] = decision.detail
            # the warning says why; the miss itself is said once this task computes
            self._miss(step_name, key, decision.detail, announce=False)
            return "miss"
        reason = decision.detail
        if decision.status == "absent":
            same_item = self._components.get("foreach")
            previous = self._cache.latest_entry(
                flow_name, step_name, prefer=lambda m: m.components.get("foreach") == same_item
            )
            if previous is not None and previous.components.get("foreach") != same_item:
                # none of this item among the newest entries: another item's
                # still tells a change of code or arguments, not of the item
                meta["memoize_compared"] = previous.key
                reason = "; ".join(diff_other_item(previous.components, self._components))
                reason = reason or NO_ENTRY_FOR_ITEM
            elif previous is not None:
                meta["memoize_compared"] = previous.key
                reasons = diff_components(previous.components, self._components)
                if reasons:
                    reason = "; ".join(reasons)
                changed = changed_static_inputs(previous.components, self._components)
                if changed:
                    meta["memoize_changed_inputs"] = ",".join(changed)
        meta["memoize_reason"] = reason
        self._miss(step_name, key, reason, announce_miss)
        return "miss"

    def _miss(self, step_name, key, reason, announce):
        self._held_miss = (step_name, key, reason)
        if announce:
            log(_miss_line(step_name, key, reason))

    def _merged_now(self, manifest):
        """{name: {sha, info}} of the artifacts a join merged through, from the
        current inputs; None when the inputs disagree (merging would fail)."""
        merged = mf.merged_artifacts(self._task["inputs"] or [], manifest.merged)
        if merged is None:
            return None
        return {name: {"sha": sha, "info": info} for name, (sha, info) in merged.items()}

    def _passthrough_changed(self, manifest):
        if not self._task["inputs"]:
            return []
        return mf.changed_passthrough(manifest, self._task["inputs"][0])

    def _quarantine(self, flow_name, step_name, key):
        if self._mode == "read":  # read mode deletes nothing
            return
        try:
            self._cache.remove_entry(flow_name, step_name, key)
        except CacheFault:
            pass

    def _fault(self, step_name, err, meta):
        where = self._cache.store.url if self._cache else self.cache_root()
        if self._strict:
            raise MemoizeStrictError(
                "Step *%s*: cache %s failed: %s (METAFLOW_MEMOIZE_STRICT is set)"
                % (step_name, where, err)
            )
        log("WARNING: %s runs uncached: cache %s failed: %s" % (step_name, where, err))
        self._status = "error"
        meta["memoize_error"] = str(err)

    def _register(self, fields):
        t = self._task
        try:
            mf.register_task_metadata(
                t["metadata"], t["run_id"], self._step_name, t["task_id"], t["retry"], fields
            )
        except Exception as err:  # metadata is informative; never fail the task on it
            log("could not record task metadata: %s" % err)

    def task_decorate(
        self, step_func, flow, graph, retry_count, max_user_code_retries, ubf_context
    ):
        if self._status == "hit":
            manifest = self._manifest
            restored = {n: {"sha": a.sha, "info": a.info} for n, a in manifest.artifacts.items()}
            restored.update(self._merged or {})
            # the entry holds what the step produced after its user decorators
            mf.skip_user_step_wrappers(flow, self._step_name)

            def restored_step(*args):
                mf.replay(flow, restored, manifest.transition)

            return restored_step
        if self._status in ("miss", "refresh", "error", "audit"):

            def timed_step(*args):
                started = time.time()
                step_func(*args)
                self._body_seconds = time.time() - started

            return timed_step
        return step_func

    def task_post_step(self, step_name, flow, graph, retry_count, max_user_code_retries):
        if self._status in ("miss", "refresh", "error", "audit"):
            self._stop_observing()
            self._body_ok = True
            self._transition = mf.record_transition(flow)

    def task_finished(self, step_name, flow, graph, is_task_ok, retry_count, max_user_code_retries):
        try:
            self._stop_observing()  # the body failed: nothing is stored
            self._finish(step_name, flow, graph, is_task_ok)
        finally:
            if self._lease is not None:
                self._lease.release()
                self._lease = None

    def _finish(self, step_name, flow, graph, is_task_ok):
        if self._status == "audit":  # audit.py
            if is_task_ok and self._body_ok:
                self._finish_audit(step_name, flow, graph)
            return
        # after a corrupt entry was removed, recomputing may store a good one
        writable = self._status in ("miss", "refresh") or (
            self._status == "error" and self._rewrite_after_fault and self._components
        )
        if not writable or self._mode == "read":
            return
        # @catch fallbacks and failed bodies never reach task_post_step
        if not (is_task_ok and self._body_ok):
            return
        meta: dict[str, Any] = {}
        try:
            self._store_entry(step_name, flow, graph)
        except CacheFault as err:
            self._fault(step_name, err, meta)
            meta["memoize_status"] = "error"
            self._register(meta)
        except MemoizeException:
            raise
        except OSError as err:
            self._fault(step_name, CacheFault(str(err)), meta)
            self._register(meta)

    def _finish_audit(self, step_name, flow, graph):
        """audit.py: compare what the body produced with the entry."""
        observed, used_names = {}, set()
        if self._recording is not None:
            observed, used_names = observed_dependencies(
                self._recording, self._dep_ctx, self._read_names
            )
        produced = self._produced_artifacts(
            self._task["output"], graph, step_name, used_names, observed
        )[0]
        task = "%s/%s/%s/%s" % (flow.name, self._task["run_id"], step_name, self._task["task_id"])
        self._register(
            audit.conclude(self._cache, self._manifest, produced, self._transition, task, log)
        )

    def _store_entry(self, step_name, flow, graph):
        t = self._task
        output = t["output"]
        if self._recording is not None:
            observed, used_names = observed_dependencies(
                self._recording, self._dep_ctx, self._read_names
            )
        else:
            observed, used_names = {"incomplete:not-recorded": "incomplete"}, set()
        if any(dep.startswith("incomplete:") for dep in observed):
            log(
                "WARNING: %s not cached: what it used while it ran is unknown (another "
                "profiler or debugger replaced memoize's recorder, or the cache failed "
                "before the body started)" % step_name
            )
            return
        wanted = self.args["outputs"]
        present = mf.artifact_hashes(output)
        unset = [n for n in wanted or () if n not in present]
        if unset:
            # an entry without them would hit forever and fail downstream
            _not_cached(
                step_name,
                "outputs= lists %s, which the step did not set; an entry would restore "
                "nothing for %s" % (_quoted(unset), _them(unset)),
                "set %s in the step, or remove %s from outputs=" % (_them(unset), _them(unset)),
            )
            self._register({"memoize_status": "uncacheable", "memoize_reason": "outputs="})
            return
        produced, passthrough, merged, left_out = self._produced_artifacts(
            output, graph, step_name, used_names, observed
        )
        if left_out:
            _not_cached(
                step_name,
                "outputs= leaves out %s, which this step sets or changes; a hit would leave "
                "%s different from a run of the step" % (_quoted(left_out), _them(left_out)),
                "add %s to outputs=, or remove outputs=" % _them(left_out),
            )
            self._register({"memoize_status": "uncacheable", "memoize_reason": "outputs="})
            return
        final = mf.artifact_hashes(output)
        unrestored = {
            n: sha
            for n, sha in final.items()
            if n in _NEVER_RESTORED and n not in BOOKKEEPING_ARTIFACTS
        }
        now = self._cache.clock()
        manifest = Manifest(
            key=self._store_key or self._key,
            flow=flow.name,
            step=step_name,
            components=self._components,
            artifacts=produced,
            transition=self._transition,
            created=now,
            expires=None if self.args["ttl"] is None else now + self.args["ttl"],
            origin="%s/%s/%s/%s" % (flow.name, t["run_id"], step_name, t["task_id"]),
            body_seconds=self._body_seconds,
            versions={"metaflow": _metaflow_version(), "metaflow-memoize": __version__},
            passthrough=passthrough,
            unrestored=unrestored,
            observed=observed,
            static_key=self._key,
            merged=merged,
            context={
                "foreach": self._shown_foreach,
                "parameters": shown_parameters(flow, output),
            },
        )
        moved = export_blobs(mf.DatastoreBlobs(output), self._cache, produced)
        # An absent key is published first-writer-wins; an entry we could not
        # use (expired, unsigned, stale pass-through) or a refresh is replaced.
        published = self._cache.publish(
            manifest, overwrite=self._status == "refresh" or self._replace_entry
        )
        if published:
            log(
                "stored %s key=%s (%s; %s)"
                % (
                    step_name,
                    self._key[:12],
                    format_count(len(produced), "artifact"),
                    moved.describe(),
                )
            )
        else:
            log(
                "%s key=%s: another run stored this entry first; keeping it"
                % (step_name, self._key[:12])
            )
        self._warn_unstable(t["inputs"], observed)

    def _produced_artifacts(self, output, graph, step_name, used_names=(), observed=()):
        """What the entry stores, as (produced, passthrough, merged, left_out).

        produced: artifacts the step set. Inherited artifacts that are in the key
        come from the current inputs on a hit. For the others, an unchanged hash
        is ambiguous (untouched, or set to the same value): the names the
        executed code mentions decide, and when the step passes ``self`` where
        its source cannot follow, the hash is pinned (passthrough) and must
        match on a hit. merged: a join's artifacts equal in every input that has
        them (merge_artifacts): a hit takes them from the current inputs.
        left_out: with outputs=, artifacts the step changed that are not listed.
        """
        final = mf.artifact_hashes(output)
        infos = mf.artifact_infos(output)
        inputs = self._task["inputs"] or []
        inherited: dict[str, str] = {}
        is_join = mf.node_type(graph, step_name) == "join"
        if inputs:
            inherited = mf.artifact_hashes(inputs[0])
            if is_join:
                # a join inherits only the parameters, which Metaflow passes down
                params = set(mf.parameter_names(self._task["flow"]))
                inherited = {n: sha for n, sha in inherited.items() if n in params}
        input_hashes = [mf.artifact_hashes(ds) for ds in inputs] if is_join else []
        keyed = self._components.get("inputs")
        if isinstance(keyed, dict):
            keyed = set(keyed)
        else:  # join rows: [step, index, digest, selected names]
            keyed = {name for row in keyed or [] for name in row[3]}
        # read artifacts are verified equal before a hit: keyed as much as the rest
        keyed |= read_artifact_names(observed)
        if "*" in keyed:  # the body enumerated its input's artifacts
            keyed |= set(inherited)
        # parameters are read-only: Metaflow passes them down from the current run
        parameters = set(mf.parameter_names(self._task["flow"]))
        assigned = assigned_attributes(mf.step_function(self._task["flow"], step_name))
        if assigned is not None:
            # helpers and methods the step ran may set artifacts too
            assigned = set(assigned) | set(used_names)
        wanted = self.args["outputs"]
        produced, passthrough, merged, left_out = {}, {}, [], []
        for name, sha in final.items():
            if name in _NEVER_RESTORED or name in parameters:
                continue
            if is_join and name not in inherited:
                carriers = [h[name] for h in input_hashes if name in h]
                if carriers and all(c == sha for c in carriers):
                    merged.append(name)
                    continue
            if wanted is not None and name not in wanted:
                if inherited.get(name) != sha:
                    left_out.append(name)
                continue
            if inherited.get(name) == sha:
                if name in keyed or (assigned is not None and name not in assigned):
                    continue  # passed down: a hit takes it from the current inputs
                if assigned is None:
                    passthrough[name] = sha
                    continue
            produced[name] = ArtifactRecord(sha=sha, info=infos.get(name, {}))
        return produced, passthrough, sorted(merged), sorted(left_out)

    def _warn_unstable(self, inputs, observed):
        if not inputs:
            return
        keyed = self._components.get("inputs")
        names = list(keyed) if isinstance(keyed, dict) else []
        names += sorted(read_artifact_names(observed) - {"*"})
        for name in unstable_inputs(mf.artifact_infos(inputs[0]), sorted(set(names))):
            log(
                "WARNING: %s: input '%s' is a set: sets of strings pickle differently in every "
                "process, so this step may never hit. Fix: @memoize(ignore=['%s']) or store it "
                "as a sorted list." % (self._step_name, name, name)
            )


def _miss_line(step_name: str, key: str, reason: str, more: str | None = None) -> str:
    return "miss %s key=%s (%s%s)" % (step_name, key[:12], reason, "; " + more if more else "")


def _quoted(names) -> str:
    return ", ".join("'%s'" % n for n in names)


def _them(names) -> str:
    return "it" if len(names) == 1 else "them"


def _not_cached(step_name: str, why: str, fix: str) -> None:
    log("WARNING: %s not cached: %s. Fix: %s." % (step_name, why, fix))


class _RunSummary:
    """After a run: hits, misses, refreshes, compute time saved, and why each
    step that ran did (summary.py).

    Every @memoize instance gets the runtime hooks; the summary prints once.
    """

    flow = None
    graph = None
    run_id = None
    printed = False
    orchestrator = None  # the run's OrchestratorHits: what it cloned, what it launched

    @classmethod
    def start(cls, flow, graph, run_id):
        if cls.run_id != run_id or cls.orchestrator is None:
            cls.orchestrator = OrchestratorHits()
        cls.flow, cls.graph, cls.run_id, cls.printed = flow, graph, run_id, False

    @classmethod
    def finish(cls):
        if cls.printed or cls.run_id is None:
            return
        cls.printed = True
        lines = []
        try:
            from .summary import cause_lines, outcomes_of, run_outcomes, summarize

            seen = cls.orchestrator
            if seen is not None and (seen.cloned or seen.launched):
                outcomes = outcomes_of(seen.cloned, seen.launched)
            else:
                outcomes = run_outcomes(cls.flow.name, cls.run_id)
            lines.append(summarize(outcomes))
            if lines[0]:
                memoized = {
                    f.__name__
                    for f in mf.step_functions(cls.flow)
                    if any(d.name == "memoize" for d in f.decorators)
                }
                lines += cause_lines(outcomes, cls.flow.__class__, cls.graph, memoized)
        except Exception as err:  # informative only: never fail a finished run
            lines.append("summary unavailable (%s)" % err)
        for line in lines:
            if line:
                log(line)


def _metaflow_version() -> str:
    try:
        from metaflow.metaflow_version import get_version

        return get_version()
    except Exception:
        return "unknown"
