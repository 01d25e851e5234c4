"""`python flow.py memoize ...`: parses, calls maintenance, prints.

Every command acts on a *scope*: the flow's cache roots (flow-level commands)
or one root given by URL (the standalone `metaflow-memoize`, which reuses these
commands). Decisions live in maintenance.py, formatting in report.py.
"""

import functools
import sys
import time

from metaflow._vendor import click

from .. import config
from .. import metaflow_compat as mf
from ..cache import maintenance as mt
from ..durations import format_count, parse_duration, parse_size
from ..exceptions import CacheFault, MemoizeCliError, UnsafePath
from . import report

SCOPE = "memoize.scope"  # ctx.meta key: the scope the group set up
STANDALONE_COMMANDS = ("list", "show", "stats", "invalidate", "prune")


class FlowScope:
    """The roots a flow uses: --store, else the default root plus each step's store=."""

    show_flow = False

    def __init__(self, obj):
        self.obj = obj
        self.flow = obj.flow.name

    def targets(self, store=None):
        flow = self.obj.flow
        if store:
            return [_available(mt.open_target(store, flow.name))]
        ds = self.obj.flow_datastore
        default = config.cache_root_setting() or config.default_root(
            ds.TYPE, mf.datastore_root_for_cli(ds)
        )
        targets = _unique(
            [mt.open_target(root, flow.name) for root in mt.flow_roots(flow, default)]
        )
        # the default root is required only when a step uses it; otherwise it is
        # listed only if an earlier version of the flow left entries there
        if not _uses_default_root(flow) and not mt.is_cache_root(targets[0]):
            targets = targets[1:]
        return [_available(t) for t in targets]

    def check_step(self, step, targets):
        """A step name must be a @memoize step of the flow: a typo would act on nothing."""
        steps = {f.__name__: f for f in mf.step_functions(self.obj.flow)}
        memoized = sorted(
            n for n, f in steps.items() if any(d.name == "memoize" for d in f.decorators)
        )
        listed = ", ".join(memoized) or "none"
        if step not in steps:
            raise MemoizeCliError(
                "%s has no step %r; its @memoize steps are: %s" % (self.flow, step, listed)
            )
        if step not in memoized:
            raise MemoizeCliError(
                "step %r of %s is not memoized; its @memoize steps are: %s (a step memoized "
                "by `run --with memoize` needs it here too: python flow.py --with memoize "
                "memoize ...)" % (step, self.flow, listed)
            )


class RootScope:
    """One root by URL, one flow or all of them (the standalone command)."""

    def __init__(self, root, flow=None):
        self.root = root
        self.flow = flow
        self.show_flow = flow is None

    def targets(self, store=None):
        root = store or self.root
        if not root:
            raise MemoizeCliError("no cache root: pass --root URL or set %s" % config.ENV_ROOT)
        return [_available(mt.open_target(root, self.flow))]

    def check_step(self, step, targets):
        """Without a flow file the steps are unknown: a step must have entries here."""
        found = set().union(*(mt.steps_with_entries(t) for t in targets))
        if step not in found:
            raise MemoizeCliError(
                "no entry of a step %r%s in %s; steps with entries: %s"
                % (
                    step,
                    " of %s" % self.flow if self.flow else "",
                    ", ".join(t.root for t in targets),
                    ", ".join(sorted(found)) or "none",
                )
            )


def _available(target):
    mt.require_cache_root(target)
    return target


def _uses_default_root(flow):
    """Whether a step of the flow stores in the default root: a @memoize without
    store=, or no @memoize at all (then steps may get it from `run --with memoize`)."""
    decorators = [d for step in flow for d in step.decorators if d.name == "memoize"]
    return not decorators or any(not d.attributes.get("store") for d in decorators)


def _unique(targets):
    seen, out = set(), []
    for t in targets:
        if t.root not in seen:
            seen.add(t.root)
            out.append(t)
    return out


@click.group()
def cli():
    pass


@cli.group(help="Inspect and manage the @memoize cache of this flow.")
@click.pass_context
def memoize(ctx):
    ctx.meta[SCOPE] = FlowScope(ctx.obj)


# -- shared plumbing ---------------------------------------------------------
def command(name, **kwargs):
    """Register ``fn(scope, targets, **options)`` as ``memoize <name>``, with --store.

    ``targets()`` opens the cache roots in scope (one per root); ``scope.obj`` is
    Metaflow's CLI state for flow-level commands. Errors become one line.
    """

    def wrap(fn):
        @click.option(
            "--store",
            metavar="URL",
            default=None,
            help="Cache root to act on (directory or s3://bucket/prefix) instead of the flow's.",
        )
        @click.pass_context
        @functools.wraps(fn)
        def run(ctx, store, **options):
            scope = ctx.meta[SCOPE]
            try:
                return fn(scope, lambda: scope.targets(store), **options)
            except MemoizeCliError as err:
                raise click.ClickException(err.message)
            except UnsafePath as err:
                raise click.ClickException(str(err))
            except CacheFault as err:
                raise click.ClickException("cache unavailable: %s" % err)

        return memoize.command(name, **kwargs)(run)

    return wrap


def _parsed(parse, value, option):
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as err:
        raise MemoizeCliError("%s: %s" % (option, err))


def _require_consent_possible(yes):
    if not yes and not sys.stdin.isatty():
        raise MemoizeCliError(
            "refusing to delete without --yes: stdin is not a terminal, so nobody can confirm"
        )


def _confirm(yes, plans):
    if yes or all(p.empty for p in plans):
        return
    what = "; ".join(report.plan_summary(p) for p in plans if not p.empty)
    if not click.confirm("Remove %s?" % what, default=False, err=True):
        # an answer, not an error; still status 1, so that a script can tell
        click.echo("Nothing removed.", err=True)
        raise click.exceptions.Exit(1)


def _check_listed_step(scope, step, targets):
    """A typo in --step would show nothing: the step must be one the scope knows
    (check_step), or have entries (a step that lost its @memoize still has some)."""
    try:
        scope.check_step(step, targets)
    except MemoizeCliError:
        if not any(step in mt.steps_with_entries(t) for t in targets):
            raise


def _progress(label, total):
    """How far a long scan or deletion got: click's progress bar on stderr, only
    when stderr is a terminal (a pipe or a log file gets nothing). click draws
    nothing either for what takes under half a second."""
    stderr = click.get_text_stream("stderr")
    if not stderr.isatty():
        return mt.no_progress(label, total)
    return click.progressbar(length=total, label=label, file=stderr, show_pos=True)


def _echo(text):
    click.echo(text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
step_option = click.option("--step", metavar="STEP", default=None, help="Only this step.")
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
verbose_option = click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="List every entry removed, also past %d (then one row per step)." % report.TABLE_ROWS,
)


# -- commands ----------------------------------------------------------------
@command(
    "list",
    help="One line per cache entry, newest first; the first %d unless --limit "
    "(--json: all unless --limit)." % report.TABLE_ROWS,
)
@step_option
@click.option(
    "--sort",
    "order",
    type=click.Choice(list(mt.LIST_ORDERS)),
    default="created",
    show_default=True,
    help="Order: "
    + "; ".join("%s: %s" % (name, how) for name, how in mt.LIST_ORDERS.items())
    + ".",
)
@click.option(
    "--since", metavar="DUR", default=None, help="Only entries created within DUR (2h, 7d)."
)
@click.option(
    "--limit",
    metavar="N",
    type=click.IntRange(min=0),
    default=None,
    help="Show at most N entries (default %d; 0: all). --json lists all unless --limit is given."
    % report.TABLE_ROWS,
)
@json_option
def list_entries(scope, targets, step, order, since, limit, as_json):
    since_s = _parsed(parse_duration, since, "--since")
    resolved = targets()
    if step is not None:
        _check_listed_step(scope, step, resolved)
    now = time.time()
    if limit is None and not as_json:
        limit = report.TABLE_ROWS
    shown, matched = mt.list_entries(resolved, step, now, order, since_s, limit, _progress)
    if as_json:
        _echo(report.to_json([report.entry_dict(e, root, now) for root, e in shown]))
        return
    for t in resolved:
        in_root = sum(1 for root, _ in matched if root == t.root)
        here = [e for root, e in shown if root == t.root]
        _echo(report.root_heading(t.root, in_root, len(here)))
        if here:
            _echo(report.entries_table(here, now, scope.show_flow))
    if len(shown) < len(matched):
        _echo(report.listing_cut(len(matched) - len(shown), order))


@command(
    "show",
    help="One entry in full, with what a hit relies on (its recorded dependencies, "
    "grouped by kind); KEY may be a unique prefix.",
)
@click.argument("key")
@json_option
def show(scope, targets, key, as_json):
    now = time.time()
    resolved = targets()
    found = [(t, e) for t in resolved for e in mt.find_entries(t, key)]
    mt.resolve_key([e for _, e in found], key, ", ".join(t.root for t in resolved))
    if as_json:
        docs = [report.entry_dict(e, t.root, now, dependencies=True) for t, e in found]
        _echo(report.to_json(docs[0] if len(docs) == 1 else docs))
        return
    _echo("\n\n".join(report.entry_text(e, t.root, now) for t, e in found))


@command("stats", help="Entries, blobs and bytes (shared blobs counted once), per step.")
@step_option
@json_option
def stats(scope, targets, step, as_json):
    resolved = targets()
    if step is not None:
        _check_listed_step(scope, step, resolved)
    per_root = mt.summarize_targets(resolved, step, time.time(), _progress)
    uploads = [mt.incomplete_uploads(t) for t in resolved]
    audits = [report.audit_rows(t.cache.audit_counts(t.flow), step) for t in resolved]
    if as_json:
        doc = report.stats_json(scope.flow, step, per_root)
        doc["incomplete_uploads"] = sum(uploads)
        for root_doc, count in zip(doc["roots"], uploads):
            root_doc["incomplete_uploads"] = count
        doc["audits"] = [row for rows in audits for row in rows]  # audit.py
        _echo(report.to_json(doc))
        return
    for (root, total, per_step), count, rows in zip(per_root, uploads, audits):
        _echo(report.stats_text(root, total, per_step, scope.show_flow))
        if count:
            _echo(
                "  %s of killed writers (`prune` aborts those older than --grace)"
                % format_count(count, "incomplete multipart upload")
            )
        if rows:
            _echo(report.audits_text(rows))


@command("invalidate", help="Remove entries so that the next run recomputes them.")
@step_option
@click.option(
    "--key", metavar="KEY", default=None, help="The entry with this key (or unique prefix)."
)
@click.option("--all", "everything", is_flag=True, help="Every entry in scope.")
@yes_option
@verbose_option
@json_option
def invalidate(scope, targets, step, key, everything, yes, verbose, as_json):
    if everything == bool(step or key):
        raise click.UsageError("say what to invalidate: --step STEP, --key KEY, or --all")
    _require_consent_possible(yes)
    resolved = targets()
    if step is not None:
        scope.check_step(step, resolved)
    plans = [mt.plan_invalidate(t, step, key, progress=_progress) for t in resolved]
    if key is not None:
        mt.check_one_key(plans, key, ", ".join(t.root for t in resolved))
    _confirm(yes, plans)
    results = [(p, mt.execute(t, p, _progress)) for t, p in zip(resolved, plans)]
    _print_removal(scope, results, False, None, as_json, verbose)


@command(
    "prune", help="Delete expired, old or least recently used entries, then unreferenced blobs."
)
@click.option("--expired", is_flag=True, help="Entries past their ttl (the default criterion).")
@click.option("--older-than", metavar="DUR", help="Entries created longer ago than DUR (e.g. 30d).")
@click.option(
    "--max-size",
    metavar="SIZE",
    help="Evict least recently used entries until the cache fits SIZE (e.g. 20GB).",
)
@step_option
@click.option(
    "--grace",
    metavar="DUR",
    default="1h",
    show_default=True,
    help="Never delete blobs younger than this.",
)
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@yes_option
@verbose_option
@json_option
def prune(
    scope, targets, expired, older_than, max_size, step, grace, dry_run, yes, verbose, as_json
):
    older = _parsed(parse_duration, older_than, "--older-than")
    size = _parsed(parse_size, max_size, "--max-size")
    grace_s = _parsed(parse_duration, grace, "--grace")
    criteria = mt.PruneCriteria(expired or (older is None and size is None), older, size)
    if not dry_run:
        _require_consent_possible(yes)
    now = time.time()
    resolved = targets()
    if step is not None:
        scope.check_step(step, resolved)
    plans = [mt.plan_prune(t, criteria, now, grace_s, step, progress=_progress) for t in resolved]
    if dry_run:
        _print_removal(scope, [(p, None) for p in plans], True, grace_s, as_json, verbose)
        return
    _confirm(yes, plans)
    results = [(p, mt.execute(t, p, _progress)) for t, p in zip(resolved, plans)]
    _print_removal(scope, results, False, grace_s, as_json, verbose)


def _print_removal(scope, results, dry_run, grace, as_json, verbose):
    """JSON lists every entry; text sums up a long removal per step unless ``verbose``."""
    if as_json:
        _echo(report.to_json(report.removal_json(results, dry_run)))
        return
    now = time.time()
    for plan, outcome in results:
        _echo(report.removal_text(plan, outcome, now, scope.show_flow, grace, verbose))


# -- why did it miss, what would run ------------------------------------------
def _memoize_decorators(flow):
    """step name -> its @memoize decorator (initialized by Metaflow for this command)."""
    return {
        step.__name__: deco
        for step in mf.step_functions(flow)
        for deco in step.decorators
        if deco.name == "memoize"
    }


@command(
    "explain",
    help="Hit or miss, and why, component by component, for a step's tasks; then what "
    "each task's entry relies on, grouped by kind.",
)
@click.argument("step")
@click.option("--run", "run_id", default=None, help="Run id (default: the latest run).")
@json_option
def explain(scope, targets, step, run_id, as_json):
    from ..cache.entries import Cache
    from ..cache.stores import open_store
    from ..runtime.explain import explain_step
    from .plan_report import explain_json, explain_text

    flow = scope.obj.flow
    deco = _memoize_decorators(flow).get(step)
    roots = [t.root for t in targets()]
    root = deco.cache_root() if deco is not None else roots[0]
    cache = Cache(open_store(root), signing_key=config.signing_key())
    run_pathspec, explanations = explain_step(
        cache, flow.name, step, run_id, flow_spec=flow, graph=scope.obj.graph
    )
    if as_json:
        _echo(explain_json(run_pathspec, step, explanations))
        return
    _echo(explain_text(run_pathspec, step, explanations))
    deps = report.explain_dependencies_text(explanations)
    if deps:
        _echo(deps)


def _plan_command(fn):
    from metaflow import parameters

    return parameters.add_custom_parameters(deploy_mode=True)(fn)


@_plan_command
@command(
    "plan",
    help="Before running: which steps would hit and which would run, with the same "
    "parameter options as `run`. Runs nothing.",
)
@json_option
def plan(scope, targets, as_json, **param_values):
    from ..runtime.plan import Planner
    from .plan_report import plan_json, plan_text

    obj = scope.obj
    hashes, _infos = mf.parameter_artifact_hashes(
        obj.flow, obj.graph, param_values, obj.config_options, obj.environment
    )
    planner = Planner(obj.flow, obj.graph, obj.flow_datastore, _memoize_decorators(obj.flow))
    result = planner.plan(hashes)
    _echo(plan_json(result) if as_json else plan_text(result))
