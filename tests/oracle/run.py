"""The differential oracle: every mutation, memoized against uncached.

    python -m tests.oracle [--cases N] [--seed S] [--minutes M] [--quick] [--jobs J]

For each case (a corpus flow and one or more mutations) the mutated flow runs
twice against a private copy of the original flow's run and warm cache: once
memoized and once uncached (METAFLOW_MEMOIZE_MODE=off). Every artifact of every
task of the two runs is compared by value: a difference is a *false hit*. The
step bodies the memoized run executed are counted against the minimum needed
(steps whose code or non-artifact inputs the mutation changed, tasks that are
new, and tasks whose input artifacts changed): the excess is a *needless miss*.

Exit status: 0 when every false hit is listed in known_false_hits.txt, every
listed case that ran as a single mutation still produces one, and no case
errored or proved nondeterministic (a task both runs executed on equal inputs
differs: a flaw of the corpus flow, which then proves nothing); 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import TESTS_FLOWS, CorpusFlow, corpus
from .mutations import MutationDoesNotApply, apply

HERE = Path(__file__).parent
KNOWN_FILE = HERE / "known_false_hits.txt"
BROKEN_KEY_DIR = HERE / "broken_key"
_RUN_ID = re.compile(r"run-id (\S+?)\)?:")
#: a flow run slower than this is an error of its case (a loaded machine is slow)
RUN_TIMEOUT = int(os.environ.get("ORACLE_RUN_TIMEOUT", "1800"))

#: the deterministic subset `make test` runs (tests/test_oracle.py): one or two
#: cases of each family of kinds, over several shapes
QUICK = [
    "kitchen:foreach_reorder",
    "include:step_body:count",
    "core_switch_in_foreach:foreach_extend:start",
    "core_branch_in_switch:switch_flip:start",
]


@dataclass
class Case:
    flow: CorpusFlow
    mutations: list

    @property
    def id(self) -> str:
        return "%s:%s" % (self.flow.name, "+".join(m.id for m in self.mutations))

    @property
    def kind(self) -> str:
        return "+".join(m.kind for m in self.mutations)


@dataclass
class Outcome:
    case: Case
    error: str = ""
    diffs: list = field(default_factory=list)
    executed: dict = field(default_factory=dict)
    needed: dict = field(default_factory=dict)
    seconds: float = 0.0
    # differences in tasks both runs executed on equal inputs: the flow is not
    # deterministic, so the case proves nothing about the cache (fix the flow)
    nondeterministic: list = field(default_factory=list)

    @property
    def needless(self) -> int:
        return sum(max(0, n - self.needed.get(s, 0)) for s, n in self.executed.items())

    @property
    def skipped_needed(self) -> int:
        return sum(max(0, n - self.executed.get(s, 0)) for s, n in self.needed.items())


def _env(ds: Path, cache: Path, counts: Path, extra=None) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("METAFLOW_") and not k.startswith("PYTEST")
    }
    env.update(
        {
            "USERNAME": os.environ.get("USERNAME") or "oracle",
            "METAFLOW_DEFAULT_DATASTORE": "local",
            "METAFLOW_DEFAULT_METADATA": "local",
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(ds),
            "METAFLOW_MEMOIZE_ROOT": str(cache),
            "MEMOIZE_TEST_COUNTERS": str(counts),
            "PYTHONHASHSEED": "random",
            # the Client's download cache, per world (never machine-wide)
            "METAFLOW_CLIENT_CACHE_PATH": str(ds / "client-cache"),
        }
    )
    env.update(extra or {})
    return env


def _run_upstream(src: Path, ds: Path, cache: Path, flow_files, log_dir: Path) -> None:
    """Flows another flow reads through the Metaflow Client, run uncached first."""
    scratch = log_dir / "upstream-counts"
    scratch.mkdir(exist_ok=True)
    for flow_file in flow_files:
        env = _env(ds, cache, scratch, {"METAFLOW_MEMOIZE_MODE": "off"})
        _run(src, env, [], log_dir / ("%s.log" % Path(flow_file).stem), flow_file)


def _run(src: Path, env: dict, args, log: Path, flow_file: str = "flow.py") -> tuple[str, str]:
    """(run id, output) of `python flow.py run`, its output kept in ``log``; raises on failure."""
    proc = subprocess.run(
        [sys.executable, flow_file, "--no-pylint", "run", *args],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    out = proc.stdout + proc.stderr
    log.write_text(out)
    match = _RUN_ID.search(out)
    if proc.returncode != 0 or not match:
        raise RuntimeError("flow run failed (rc=%s):\n%s" % (proc.returncode, out[-3000:]))
    return match.group(1), out


def _counts(directory: Path) -> dict:
    counts: dict = {}
    for f in directory.iterdir():
        step = f.name.split("--")[0]
        counts[step] = counts.get(step, 0) + len(f.read_text().splitlines())
    return counts


def index_readers(flow_file: Path) -> list:
    """Steps whose body reads ``self.index``: their result depends on the position."""
    tree = ast.parse(flow_file.read_text())
    steps = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(n, ast.Attribute)
            and n.attr == "index"
            and isinstance(n.value, ast.Name)
            and n.value.id == "self"
            for n in ast.walk(node)
        ):
            steps.append(node.name)
    return sorted(steps)


def _write_flow(flow: CorpusFlow, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in flow.files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    for link, target in flow.links.items():
        (directory / link).symlink_to(target)
    shutil.copy(TESTS_FLOWS / "_counter.py", directory / "_counter.py")


def _broken_env(broken: bool) -> dict:
    if not broken:
        return {}
    path = str(BROKEN_KEY_DIR)
    if os.environ.get("PYTHONPATH"):
        path += os.pathsep + os.environ["PYTHONPATH"]
    return {"PYTHONPATH": path}


class Warm:
    """The original flow run memoized once: its datastore, cache and run id."""

    def __init__(self, flow: CorpusFlow, root: Path, broken: bool):
        self.dir = root / "warm" / flow.name
        src, ds, cache, counts = (self.dir / n for n in ("src", "ds", "cache", "counts"))
        for d in (ds, counts):
            d.mkdir(parents=True, exist_ok=True)
        (ds / ".metaflow").mkdir(exist_ok=True)
        _write_flow(flow, src)
        self.ds, self.cache = ds, cache
        _run_upstream(src, ds, cache, flow.before, self.dir)
        self.run_id, _ = _run(
            src, _env(ds, cache, counts, _broken_env(broken)), flow.args, self.dir / "run.log"
        )


class WarmRuns:
    """Each flow's warm run, made when its first case needs it (cases start at once,
    and a run cut short by --minutes warms only the flows it reached)."""

    def __init__(self, root: Path, broken: bool):
        self.root, self.broken = root, broken
        self._lock = threading.Lock()
        self._flows: dict = {}

    def get(self, flow: CorpusFlow):
        """The flow's Warm, or why it could not run (a string)."""
        with self._lock:
            slot = self._flows.setdefault(flow.name, {"lock": threading.Lock()})
        with slot["lock"]:
            if "result" not in slot:
                try:
                    slot["result"] = Warm(flow, self.root, self.broken)
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    slot["result"] = str(err).splitlines()[0]
            return slot["result"]


def run_case(case: Case, warm: Warm, root: Path, broken: bool) -> Outcome:
    started = time.time()
    out = Outcome(case)
    d = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    try:
        src = d / "src"
        _write_flow(case.flow, src)
        apply(src, case.mutations)
        ds, cache = d / "ds", d / "cache"
        shutil.copytree(warm.ds, ds)
        shutil.copytree(warm.cache, cache)
        c_off, c_memo = d / "counts-off", d / "counts-memo"
        c_off.mkdir()
        c_memo.mkdir()
        _run_upstream(src, ds, cache, [f for m in case.mutations for f in m.before], d)
        args = list(case.flow.args) + [a for m in case.mutations for a in m.args]
        extra: dict = {}
        for m in case.mutations:
            extra.update(m.env)
        off_id, _ = _run(
            src,
            _env(ds, cache, c_off, dict(extra, METAFLOW_MEMOIZE_MODE="off")),
            args,
            d / "off.log",
        )
        memo_env = _env(ds, cache, c_memo, dict(extra, **_broken_env(broken)))
        memo_id, _ = _run(src, memo_env, args, d / "memo.log")
        needs = sorted({s for m in case.mutations for s in m.needs})
        proc = subprocess.run(
            [
                sys.executable,
                str(HERE / "analyze.py"),
                case.flow.cls,
                warm.run_id,
                off_id,
                memo_id,
                json.dumps(needs),
                json.dumps(index_readers(src / "flow.py")),
            ],
            cwd=src,
            env=_env(ds, cache, c_off),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        if proc.returncode != 0:
            raise RuntimeError("analysis failed:\n%s" % proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        out.diffs = result["diffs"]
        out.nondeterministic = result.get("nondeterministic", [])
        out.needed = result["needed"]
        out.executed = _counts(c_memo)
        if not os.environ.get("ORACLE_KEEP"):
            shutil.rmtree(d, ignore_errors=True)
    except (RuntimeError, MutationDoesNotApply, subprocess.TimeoutExpired) as err:
        out.error = "%s (kept in %s)" % (err, d)
    out.seconds = time.time() - started
    return out


def read_known(path: Path = KNOWN_FILE) -> dict:
    """{case id: why} from the known false hits list (`case id | why | issue`)."""
    known = {}
    if not path.exists():
        return known
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        known[parts[0]] = parts[1] if len(parts) > 1 else ""
    return known


def deterministic_cases(flows) -> list:
    return [Case(f, [m]) for f in flows for m in f.sites]


def random_cases(flows, rng: random.Random, count: int, exclude=()) -> list:
    """Random flows and 1-3 compatible mutations each, without repeating a case."""
    seen = set(exclude)
    cases = []
    attempts = 0
    while len(cases) < count and attempts < count * 50:
        attempts += 1
        flow = rng.choice(flows)
        n = rng.choice([1, 2, 2, 3])
        picked: list = []
        for m in rng.sample(flow.sites, len(flow.sites)):
            if len(picked) == n:
                break
            if all(not m.conflicts(p) for p in picked):
                picked.append(m)
        picked.sort(key=lambda m: m.id)
        case = Case(flow, picked)
        if case.id in seen:
            continue
        seen.add(case.id)
        cases.append(case)
    return cases


def _parse_case(case_id: str, flows) -> Case:
    """A combination a random run printed (`flow:mutation+mutation`), to replay it."""
    name, _, mutations = case_id.partition(":")
    flow = next((f for f in flows if f.name == name), None)
    if flow is None:
        raise SystemExit("no corpus flow %r (see --list)" % name)
    try:
        return Case(flow, sorted((flow.site(m) for m in mutations.split("+")), key=lambda m: m.id))
    except KeyError as err:
        raise SystemExit("%s (see --list)" % err.args[0]) from None


def select(args, flows) -> list:
    by_id = {c.id: c for c in deterministic_cases(flows)}
    if args.case:
        return [by_id.get(c) or _parse_case(c, flows) for c in args.case]
    if args.quick:
        return [by_id[c] for c in QUICK]
    cases = list(by_id.values())
    if args.kinds:
        cases = [c for c in cases if c.kind in args.kinds]
    rng = random.Random(args.seed)
    if args.cases and args.cases > len(cases):
        cases += random_cases(flows, rng, args.cases - len(cases), exclude=by_id)
    elif args.cases:
        cases = rng.sample(cases, args.cases)
    # shuffled, so that a run cut short by --minutes still covers every kind;
    # --first: those flows' single mutations first (the most informative cases)
    rng.shuffle(cases)
    first = set(args.first or ())
    cases.sort(key=lambda c: not (c.flow.name in first and len(c.mutations) == 1))
    return cases


def judge(outcomes, known: dict) -> dict:
    """Unexpected false hits, known ones still seen, listed cases that stopped failing."""
    unexpected, seen_known, fixed = [], [], []
    for o in outcomes:
        if o.error or not o.diffs:
            continue
        ids = {"%s:%s" % (o.case.flow.name, m.id) for m in o.case.mutations} | {o.case.id}
        if ids & set(known):
            seen_known.append(o)
        else:
            unexpected.append(o)
    singles = {o.case.id: o for o in outcomes if len(o.case.mutations) == 1 and not o.error}
    for cid in known:
        o = singles.get(cid)
        if o is not None and not o.diffs:
            fixed.append(cid)
    return {"unexpected": unexpected, "known": seen_known, "fixed": fixed}


def _fmt_diff(o: Outcome, limit: int = 6, nondeterministic: bool = False) -> list:
    lines = []
    diffs = o.nondeterministic if nondeterministic else o.diffs
    for d in diffs[:limit]:
        lines.append(
            "    step %s task %s artifact %s: memoized=%s uncached=%s%s"
            % (
                d["step"],
                d["task"],
                d["artifact"],
                d["memoized"],
                d["uncached"],
                " (%s)" % d["why"] if d.get("why") else "",
            )
        )
    if len(diffs) > limit:
        lines.append("    ... %d more differences" % (len(diffs) - limit))
    return lines


def _mark(o: Outcome) -> str:
    if o.error:
        return "ERROR"
    if o.diffs:
        return "FALSE HIT"
    return "NONDETERMINISTIC" if o.nondeterministic else "ok"


def _failed(outcomes, verdict) -> bool:
    return bool(
        verdict["unexpected"]
        or verdict["fixed"]
        or any(o.error or o.nondeterministic for o in outcomes)
    )


def tally(outcomes, verdict, known: dict, elapsed: float, seed, broken: bool) -> str:
    by_kind: dict = {}
    for o in outcomes:
        for m in o.case.mutations:
            k = by_kind.setdefault(
                m.kind, {"cases": 0, "false_hits": 0, "needless": 0, "needed": 0}
            )
            k["cases"] += 1
            k["false_hits"] += 1 if o.diffs else 0
            k["needless"] += o.needless
            k["needed"] += sum(o.needed.values())
    errors = [o for o in outcomes if o.error]
    nondet = [o for o in outcomes if o.nondeterministic and not o.diffs]
    lines = [
        "oracle: %d cases (%d flows, %d mutation kinds), seed %s%s, %.0fs"
        % (
            len(outcomes),
            len({o.case.flow.name for o in outcomes}),
            len(by_kind),
            seed,
            ", BROKEN KEY" if broken else "",
            elapsed,
        ),
        "false hits: %d unexpected, %d known (known_false_hits.txt), %d listed but fixed"
        % (len(verdict["unexpected"]), len(verdict["known"]), len(verdict["fixed"])),
        "needless misses: %d step bodies in %d cases; nondeterministic cases: %d; errors: %d"
        % (
            sum(o.needless for o in outcomes),
            sum(1 for o in outcomes if o.needless),
            len(nondet),
            len(errors),
        ),
        "",
        "%-24s %6s %6s %9s %9s" % ("kind", "cases", "false", "needless", "needed"),
    ]
    for kind in sorted(by_kind):
        k = by_kind[kind]
        lines.append(
            "%-24s %6d %6d %9d %9d"
            % (kind, k["cases"], k["false_hits"], k["needless"], k["needed"])
        )
    for title, items in (
        ("UNEXPECTED FALSE HITS", verdict["unexpected"]),
        ("known false hits", verdict["known"]),
    ):
        if items:
            lines += ["", "%s:" % title]
            for o in items:
                why = known.get(o.case.id) or next(
                    (
                        known["%s:%s" % (o.case.flow.name, m.id)]
                        for m in o.case.mutations
                        if "%s:%s" % (o.case.flow.name, m.id) in known
                    ),
                    "",
                )
                lines.append("  %s%s" % (o.case.id, " (%s)" % why if why else ""))
                lines += _fmt_diff(o)
    if nondet:
        lines += [
            "",
            "NONDETERMINISTIC (a task both runs executed differs on equal inputs; "
            "not the cache, but the case proves nothing: make the flow deterministic):",
        ]
        for o in nondet:
            lines.append("  %s" % o.case.id)
            lines += _fmt_diff(o, nondeterministic=True)
    if verdict["fixed"]:
        lines += ["", "LISTED IN known_false_hits.txt BUT NO LONGER FALSE HITS (remove them):"]
        lines += ["  %s" % c for c in verdict["fixed"]]
    needless = sorted((o for o in outcomes if o.needless), key=lambda o: -o.needless)
    if needless:
        lines += ["", "needless misses (case: step bodies run / needed):"]
        for o in needless[:40]:
            steps = ", ".join(
                "%s %d/%d" % (s, n, o.needed.get(s, 0))
                for s, n in sorted(o.executed.items())
                if n > o.needed.get(s, 0)
            )
            lines.append("  %s: %s" % (o.case.id, steps))
    if errors:
        lines += ["", "ERRORS:"]
        for o in errors:
            lines.append("  %s: %s" % (o.case.id, o.error.splitlines()[0]))
            lines += ["    " + line for line in o.error.splitlines()[1:][-8:]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.oracle", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--cases",
        type=int,
        default=0,
        help="run this many cases (random beyond the deterministic corpus)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--minutes", type=float, default=0, help="stop starting cases after this long"
    )
    parser.add_argument(
        "--quick", action="store_true", help="the deterministic subset make test runs"
    )
    parser.add_argument("--case", action="append", help="run this case id (repeatable)")
    parser.add_argument("--flow", action="append", help="only these corpus flows")
    parser.add_argument("--kinds", nargs="*", help="only these mutation kinds")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--first", action="append", help="run this flow's single mutations first")
    parser.add_argument(
        "--broken-key",
        action="store_true",
        help="run with the key patched to leave helper code out (broken_key/)",
    )
    parser.add_argument("--report", help="write the tally to this markdown file")
    parser.add_argument("--workdir", help="keep work files here (default: a temporary directory)")
    parser.add_argument("--list", action="store_true", help="list the deterministic cases and exit")
    parser.add_argument("--save", help="write every outcome to this JSON file")
    parser.add_argument(
        "--resume",
        metavar="PARTIAL",
        help="skip the cases an interrupted run already saved in PARTIAL (its --save "
        "file + .partial); same --cases and --seed, so the same cases; merge with --rejudge",
    )
    parser.add_argument(
        "--rejudge",
        action="append",
        help="judge the outcomes saved by --save again, no runs (repeatable: merged)",
    )
    args = parser.parse_args(argv)
    flows = corpus()
    if args.rejudge:
        return rejudge(args.rejudge, flows, args)
    if args.flow:
        flows = [f for f in flows if f.name in args.flow]
    if args.list:
        for c in deterministic_cases(flows):
            print("%-60s %s" % (c.id, c.kind))
        return 0
    cases = select(args, flows)
    if args.resume:
        done = {
            "%s:%s" % (row["flow"], "+".join(row["mutations"]))
            for row in map(json.loads, Path(args.resume).read_text().splitlines())
        }
        cases = [c for c in cases if c.id not in done]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="oracle-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print("oracle: %d cases, %d jobs, work in %s" % (len(cases), args.jobs, root), flush=True)
    warmed = WarmRuns(root, args.broken_key)
    with ThreadPoolExecutor(args.jobs) as pool:
        deadline = started + args.minutes * 60 if args.minutes else None

        def one(case):
            if deadline and time.time() > deadline:
                return None
            warm = warmed.get(case.flow)
            if isinstance(warm, Warm):
                o = run_case(case, warm, root, args.broken_key)
            else:  # the original flow did not run: every case of it is an error
                o = Outcome(case, error="warm run failed: %s" % warm)
            if args.save:
                with open(args.save + ".partial", "a") as f:  # survives an interrupted run
                    f.write(json.dumps(_row(o)) + "\n")
            print(
                "  %-70s %-9s needless=%d %.0fs" % (case.id, _mark(o), o.needless, o.seconds),
                flush=True,
            )
            return o

        outcomes = [o for o in pool.map(one, cases) if o is not None]
    if args.save:
        save(Path(args.save), outcomes, time.time() - started)
    known = read_known()
    verdict = judge(outcomes, known)
    text = tally(outcomes, verdict, known, time.time() - started, args.seed, args.broken_key)
    print("\n" + text)
    if args.report:
        write_report(Path(args.report), text, args)
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if _failed(outcomes, verdict) else 0


def write_report(path: Path, text: str, args) -> None:
    command = "make verify CASES=%d SEED=%d" % (args.cases, args.seed)
    if args.minutes:
        command += " MINUTES=%g" % args.minutes
    path.write_text(
        "# Verification: the differential oracle\n\n"
        "Written by `%s` (tests/oracle/, see [oracle.md](oracle.md)). "
        "A false hit is a task artifact that differs between the memoized and the uncached "
        "run of a mutated flow; a needless miss is a step body the memoized run executed "
        "beyond the minimum needed.\n\n```\n%s\n```\n" % (command, text)
    )


def _row(o: Outcome) -> dict:
    return {
        "flow": o.case.flow.name,
        "mutations": [m.id for m in o.case.mutations],
        "error": o.error,
        "diffs": o.diffs,
        "nondeterministic": o.nondeterministic,
        "executed": o.executed,
        "needed": o.needed,
        "seconds": o.seconds,
    }


def save(path: Path, outcomes, elapsed: float) -> None:
    rows = [_row(o) for o in outcomes]
    path.write_text(json.dumps({"elapsed": elapsed, "outcomes": rows}, indent=1))


def rejudge(paths, flows, args) -> int:
    """The verdict and tally of saved outcomes (several files: merged, the last outcome
    of a case wins) against the current known list. A `.partial` file (JSON lines) is
    what an interrupted run saved."""
    rows, elapsed = {}, 0.0
    for path in paths:
        text = Path(path).read_text()
        if path.endswith(".partial"):
            found = [json.loads(line) for line in text.splitlines() if line.strip()]
            elapsed += sum(r["seconds"] for r in found) / max(1, args.jobs)
        else:
            data = json.loads(text)
            found, elapsed = data["outcomes"], elapsed + data["elapsed"]
        for r in found:
            rows[(r["flow"], tuple(r["mutations"]))] = r
    by_name = {f.name: f for f in flows}
    outcomes = []
    for r in rows.values():
        flow = by_name[r["flow"]]
        case = Case(flow, [flow.site(m) for m in r["mutations"]])
        outcomes.append(
            Outcome(
                case,
                r["error"],
                r["diffs"],
                r["executed"],
                r["needed"],
                r["seconds"],
                r.get("nondeterministic", []),
            )
        )
    known = read_known()
    verdict = judge(outcomes, known)
    text = tally(outcomes, verdict, known, elapsed, args.seed, args.broken_key)
    print(text)
    if args.report:
        write_report(Path(args.report), text, args)
    return 1 if _failed(outcomes, verdict) else 0
