"""The phase probe: explains where a task's time goes; its tasks are never the headline numbers."""

import textwrap

# Phase timer, run in place of `python flow.py ...` for a few extra tasks: it
# wraps product and Metaflow functions with perf_counter timers (no profiler
# overhead) and writes the totals as JSON. BENCH_PROFILE=1 adds cProfile.
PROBE_SCRIPT = textwrap.dedent(
    """
    import json, os, runpy, sys, time
    T0 = time.perf_counter()
    import metaflow  # noqa: F401
    from metaflow.task import MetaflowTask
    from metaflow.datastore.task_datastore import TaskDataStore
    from metaflow_extensions.memoize.plugins.memoize.runtime import decorator as D
    from metaflow_extensions.memoize.plugins.memoize.cache import entries as C
    IMPORTED = time.perf_counter() - T0
    phases = {}

    def wrap(owner, name, label):
        fn = getattr(owner, name, None)
        if fn is None:
            return
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - started
        setattr(owner, name, timed)

    wrap(MetaflowTask, "run_step", "metaflow: run_step (the whole task after imports)")
    wrap(MetaflowTask, "_exec_step_function", "metaflow: step body (or hit replay)")
    wrap(TaskDataStore, "persist", "metaflow: persist (pickle + gzip + write artifacts)")
    wrap(D.MemoizeDecorator, "task_pre_step", "memoize: task_pre_step (all)")
    wrap(D, "task_components", "memoize: key components (task_components)")
    wrap(D, "key_of", "memoize: key digest (key_of)")
    wrap(C.Cache, "lookup", "memoize: lookup (read manifest)")
    wrap(C.Cache, "latest_entry", "memoize: latest_entry (explain a miss)")
    wrap(D, "import_blobs", "memoize: import_blobs (restore)")
    wrap(C.Cache, "record_use", "memoize: record_use (last-use marker)")
    wrap(D.MemoizeDecorator, "task_finished", "memoize: task_finished (all)")
    wrap(D, "export_blobs", "memoize: export_blobs (store)")
    wrap(C.Cache, "publish", "memoize: publish (manifest)")
    wrap(D.MemoizeDecorator, "_register", "memoize: register task metadata")
    profile = None
    if os.environ.get("BENCH_PROFILE") == "1":
        import cProfile
        profile = cProfile.Profile()
        profile.enable()
    sys.argv = sys.argv[1:]
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    finally:
        total = time.perf_counter() - T0
        top = []
        if profile is not None:
            import pstats
            profile.disable()
            st = pstats.Stats(profile)
            for (path, line, func), (cc, nc, tt, ct, _) in st.stats.items():
                mine = "plugins/memoize" in path.replace(os.sep, "/")
                top.append([os.path.basename(path) + ":" + func, tt, ct, nc, mine])
            top.sort(key=lambda r: -r[1])
            ours = sorted((r for r in top if r[4]), key=lambda r: -r[2])[:25]
            top = top[:30] + ours
        with open(os.environ["BENCH_PROBE_OUT"], "w") as out:
            json.dump({"total": total, "imports": IMPORTED, "phases": phases, "top": top}, out)
    sys.exit(code)
    """
)
