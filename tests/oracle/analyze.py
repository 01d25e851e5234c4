"""Compares the runs of one oracle case; run in a subprocess with the case's datastore.

    python analyze.py FLOW WARM_RUN OFF_RUN MEMO_RUN NEEDS_JSON [INDEX_READERS_JSON]

Prints one JSON document: the artifact differences between the memoized and the
uncached run of the mutated flow, split into false hits (a task the memoized run
did not execute differs although its inputs are equal) and nondeterminism (a task
both runs executed differs), and per step how many tasks had to run (their step's
code changed, they are new, or their inputs changed compared with the original run).
"""

import json
import sys

from metaflow import Run, namespace

# Metaflow's bookkeeping and the per-task name: never compared
_SKIP = {"name"}


def _user(name):
    return not name.startswith("_") and name not in _SKIP


class T:
    def __init__(self, task):
        self.task = task
        self.step = task.parent.id
        self.arts = {a.id: a for a in task.artifacts}
        try:
            stack = task["_foreach_stack"].data
        except KeyError:
            stack = []
        self.stack = tuple((f.step, f.var, f.index, f.value) for f in stack or [])
        self.shas = {n: a.sha for n, a in self.arts.items() if _user(n)}

    @property
    def exact(self):
        return (self.step, tuple((s, i, v) for s, _, i, v in self.stack))

    @property
    def position(self):
        return tuple((s, i) for s, _, i, _ in self.stack)


def load(flow, run_id):
    tasks = [T(task) for step in Run("%s/%s" % (flow, run_id)) for task in step]
    start = next(t for t in tasks if t.step == "start")
    return tasks, start.task["_graph_info"].data


def _same(a, b):
    try:
        import numpy as np

        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return bool(np.array_equal(a, b))
    except ImportError:
        pass
    try:
        result = a == b
        if isinstance(result, bool):
            return result
        return bool(result.all())
    except Exception:
        return False


def _short(value, limit=160):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value(artifact):
    try:
        return True, artifact.data
    except Exception as err:
        return False, "<cannot load: %s>" % err


def differences(memo, off, order):
    """Artifact differences between the two runs, the earliest step first."""
    diffs = []
    by_off = {t.exact: t for t in off}
    by_memo = {t.exact: t for t in memo}
    for key in sorted(set(by_off) | set(by_memo), key=repr):
        where = "%s%s" % (key[0], "".join("[%s=%s]" % (i, v) for _, i, v in key[1]))
        m, o = by_memo.get(key), by_off.get(key)
        if m is None or o is None:
            diffs.append(
                {
                    "step": key[0],
                    "task": where,
                    "artifact": "<task>",
                    "memoized": "absent" if m is None else "present",
                    "uncached": "absent" if o is None else "present",
                    "pair": None,
                }
            )
            continue
        for name in sorted(set(m.shas) | set(o.shas)):
            if m.shas.get(name) == o.shas.get(name):
                continue
            if name not in m.shas or name not in o.shas:
                same = False
                mv = _short(_value(m.arts[name])[1]) if name in m.shas else "<absent>"
                ov = _short(_value(o.arts[name])[1]) if name in o.shas else "<absent>"
            else:
                ok_m, vm = _value(m.arts[name])
                ok_o, vo = _value(o.arts[name])
                same = ok_m and ok_o and _same(vm, vo)
                mv, ov = _short(vm), _short(vo)
            if not same:
                diffs.append(
                    {
                        "step": key[0],
                        "task": where,
                        "artifact": name,
                        "memoized": mv,
                        "uncached": ov,
                        "pair": (m, o),
                    }
                )
    rank = {s: i for i, s in enumerate(order)}
    diffs.sort(key=lambda d: rank.get(d["step"], len(rank)))
    return diffs


def _executed(t) -> bool:
    """Whether the memoized run ran this task's body (a hit did not)."""
    return t.task.metadata_dict.get("memoize_status") != "hit"


def classify(diffs, memo, off, preds, constants, index_readers, values):
    """(false hits, nondeterminism): a difference is the cache's fault only where the
    memoized task did not run its body although its inputs equal the uncached task's.
    A task both runs executed on equal inputs that still differs is a nondeterministic
    flow (or Metaflow: a join's input order can vary between runs), never a false hit;
    a task whose inputs differ inherits the verdict of the difference above it."""
    false, nondet = [], []
    for d in diffs:
        pair = d.pop("pair")
        if pair is None:
            same_inputs = False
        else:
            m, o = pair
            same_inputs = _same_rows(
                signature(m, memo, preds, constants, index_readers),
                signature(o, off, preds, constants, index_readers),
                values,
            )
        if same_inputs and not _executed(pair[0]):
            false.append(d)
        elif same_inputs:
            nondet.append(dict(d, why="both runs executed this task on equal inputs"))
        elif false:
            false.append(d)  # follows from a false hit above
        elif nondet:
            nondet.append(dict(d, why="its inputs differ, after a nondeterministic task"))
        else:
            false.append(d)  # inputs differ with nothing above to explain it: in doubt
    return false, nondet


def _parents(t, tasks, preds):
    mine = t.position
    out = []
    for u in tasks:
        if u.step not in preds.get(t.step, ()):
            continue
        theirs = u.position
        if theirs == mine:
            out.append((u, None))
        elif len(theirs) == len(mine) + 1 and theirs[: len(mine)] == mine:
            out.append((u, theirs[-1][1]))  # a foreach join: ordered by index
        elif len(theirs) + 1 == len(mine) and mine[:-1] == theirs and mine[-1][0] == t.step:
            out.append((u, None))  # the first step of a foreach body
    return out


def signature(t, tasks, preds, constants, index_readers=()):
    # the lists of the foreach loops the task is in: out of a foreach task's key
    # unless it reads them; a join closing a loop gets its list with its inputs
    lists = {var for _, var, _, _ in t.stack}
    if t.step == "start" or not preds.get(t.step):
        params = sorted((n, t.shas.get(n)) for n in constants)
        return [None, [["_parameters", -1, params]]]
    rows = []
    for u, index in _parents(t, tasks, preds):
        arts = {n: sha for n, sha in u.shas.items() if n not in lists}
        rows.append([u.step, -1 if index is None else index, sorted(arts.items())])
    rows.sort(key=lambda r: (r[0], r[1]))
    item = t.stack[-1][3] if t.stack and t.stack[-1][0] == t.step else None
    if t.step in index_readers and t.stack:
        # a body that reads self.index computes something else at another position
        item = [item, t.stack[-1][2]]
    return [item, rows]


def _same_rows(a, b, values):
    """Signatures equal, artifacts whose hashes differ compared by value."""
    if a == b:
        return True
    if len(a) != len(b) or a[0] != b[0] or len(a[1]) != len(b[1]):
        return False
    for ra, rb in zip(a[1], b[1]):
        if ra[:2] != rb[:2]:
            return False
        ma, mb = dict(ra[2]), dict(rb[2])
        if set(ma) != set(mb):
            return False
        for name, sha in ma.items():
            if sha != mb[name] and not _same(values(sha), values(mb[name])):
                return False
    return True


def _predecessors(info) -> dict:
    preds = {}
    for name, node in info["steps"].items():
        for nxt in node["next"]:
            preds.setdefault(nxt, []).append(name)
    return preds


def _loader(tasks):
    """Artifact value by sha, loaded once."""
    by_sha = {}
    for t in tasks:
        for a in t.arts.values():
            by_sha.setdefault(a.sha, a)
    loaded = {}

    def values(sha):
        if sha not in loaded:
            loaded[sha] = _value(by_sha[sha])[1] if sha in by_sha else object()
        return loaded[sha]

    return values


def needed(orig, orig_info, off, off_info, needs, index_readers=()):
    preds = _predecessors(off_info)
    opreds = _predecessors(orig_info)
    constants = [p["name"] for p in off_info["parameters"] + off_info["constants"]]
    oconstants = [p["name"] for p in orig_info["parameters"] + orig_info["constants"]]
    values = _loader(orig + off)

    def counterpart_keys(tasks):
        keys, seen = {}, {}
        for t in sorted(tasks, key=lambda t: (t.step, t.position)):
            base = (t.step, tuple(v for _, _, _, v in t.stack))
            seen[base] = seen.get(base, 0) + 1
            keys[id(t)] = base + (seen[base],)
        return keys

    okeys = counterpart_keys(orig)
    by_key = {okeys[id(t)]: t for t in orig}
    nkeys = counterpart_keys(off)
    count, tasks = {}, {}
    for t in off:
        tasks[t.step] = tasks.get(t.step, 0) + 1
        other = by_key.get(nkeys[id(t)])
        need = (
            t.step in needs
            or other is None
            or not _same_rows(
                signature(t, off, preds, constants, index_readers),
                signature(other, orig, opreds, oconstants, index_readers),
                values,
            )
        )
        if need:
            count[t.step] = count.get(t.step, 0) + 1
    return count, tasks


def _topological(info):
    steps = info["steps"]
    order, todo, seen = [], ["start"], set()
    while todo:
        name = todo.pop(0)
        if name in seen or name not in steps:
            continue
        seen.add(name)
        order.append(name)
        todo += steps[name]["next"]
    return order


def main():
    flow, warm, off_run, memo_run, needs = sys.argv[1:6]
    index_readers = set(json.loads(sys.argv[6])) if len(sys.argv) > 6 else set()
    namespace(None)
    orig, orig_info = load(flow, warm)
    off, off_info = load(flow, off_run)
    memo, _ = load(flow, memo_run)
    count, tasks = needed(orig, orig_info, off, off_info, set(json.loads(needs)), index_readers)
    # a step without @memoize runs every time: all its tasks are needed
    for step in {t.step for t in memo}:
        one = next(t for t in memo if t.step == step)
        if "memoize_status" not in one.task.metadata_dict:
            count[step] = tasks.get(step, 0)
    order = _topological(off_info)
    preds = _predecessors(off_info)
    constants = [p["name"] for p in off_info["parameters"] + off_info["constants"]]
    values = _loader(memo + off)
    false, nondet = classify(
        differences(memo, off, order), memo, off, preds, constants, index_readers, values
    )
    print(
        json.dumps(
            {
                "diffs": false,
                "nondeterministic": nondet,
                "needed": count,
                "tasks": tasks,
            }
        )
    )


if __name__ == "__main__":
    main()
