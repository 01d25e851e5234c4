"""Metaflow's core test graphs, converted, and a generator of corpus flows from them.

The graph shapes below are converted from Metaflow's own test harness
(https://github.com/Netflix/metaflow, test/core/graphs/*.json, Apache-2.0).
The source distribution on PyPI does not ship test/, so the shapes are kept
here. ``parallel`` (refused by @memoize) and the recursive switches are left out.
Foreach lists are integers so that every step can compute a number from them.
"""

from __future__ import annotations

from typing import Any

from .mutations import Mutation

GRAPHS: dict[str, dict[str, dict[str, Any]]] = {
    "branch": {
        "start": {"branch": ["a", "b"]},
        "a": {"linear": "join"},
        "b": {"linear": "join"},
        "join": {"linear": "end", "join": True},
        "end": {},
    },
    "foreach": {
        "start": {"linear": "foreach_split"},
        "foreach_split": {"foreach": "foreach_inner_first", "foreach_var": "arr"},
        "foreach_inner_first": {"linear": "foreach_inner_second"},
        "foreach_inner_second": {"linear": "foreach_join"},
        "foreach_join": {"linear": "end", "join": True},
        "end": {},
    },
    "small_foreach": {
        "start": {"foreach": "foreach_inner", "foreach_var": "arr"},
        "foreach_inner": {"linear": "foreach_join"},
        "foreach_join": {"linear": "end", "join": True},
        "end": {},
    },
    "nested_foreach": {
        "start": {"linear": "foreach_split_x"},
        "foreach_split_x": {"foreach": "foreach_split_y", "foreach_var": "x"},
        "foreach_split_y": {"foreach": "foreach_split_z", "foreach_var": "y"},
        "foreach_split_z": {"foreach": "foreach_inner", "foreach_var": "z"},
        "foreach_inner": {"linear": "foreach_join_z"},
        "foreach_join_z": {"linear": "foreach_join_y", "join": True},
        "foreach_join_y": {"linear": "foreach_join_x", "join": True},
        "foreach_join_x": {"linear": "end", "join": True},
        "end": {},
    },
    "switch_basic": {
        "start": {"switch": {"case1": "a", "case2": "b"}, "condition": "cond"},
        "a": {"linear": "end"},
        "b": {"linear": "end"},
        "end": {},
    },
    "switch_in_foreach": {
        "start": {"foreach": "process_item", "foreach_var": "items"},
        "process_item": {
            "switch": {"type_a": "handle_a", "type_b": "handle_b"},
            "condition": "item_type",
        },
        "handle_a": {"linear": "join"},
        "handle_b": {"linear": "join"},
        "join": {"linear": "end", "join": True},
        "end": {},
    },
    "switch_in_branch": {
        "start": {"branch": ["a", "b"]},
        "a": {"switch": {"case1": "c", "case2": "d"}, "condition": "cond"},
        "b": {"linear": "join"},
        "c": {"linear": "join"},
        "d": {"linear": "join"},
        "join": {"linear": "end", "join": True},
        "end": {},
    },
    "foreach_in_switch": {
        "start": {
            "switch": {"process": "process_items", "skip": "skip_processing"},
            "condition": "mode",
        },
        "process_items": {"foreach": "do_work", "foreach_var": "items_to_process"},
        "do_work": {"linear": "join_work"},
        "join_work": {"linear": "end", "join": True},
        "skip_processing": {"linear": "end"},
        "end": {},
    },
    "branch_in_switch": {
        "start": {
            "switch": {"process": "process_branch", "skip": "skip_path"},
            "condition": "mode",
        },
        "process_branch": {"branch": ["p1", "p2"]},
        "p1": {"linear": "process_join"},
        "p2": {"linear": "process_join"},
        "process_join": {"linear": "end", "join": True},
        "skip_path": {"linear": "end"},
        "end": {},
    },
    "switch_nested": {
        "start": {"switch": {"case1": "switch2", "case2": "b"}, "condition": "condition1"},
        "switch2": {"switch": {"case2_1": "c", "case2_2": "d"}, "condition": "condition2"},
        "b": {"linear": "end"},
        "c": {"linear": "end"},
        "d": {"linear": "end"},
        "end": {},
    },
}

# the foreach lists of the generated flows, by nesting depth (small: runs are real)
_LISTS = {0: [1, 2, 3], 1: [4, 5], 2: [6, 7]}

HELPERS = '''"""Helpers of the generated core-graph flows: a call chain of depth 3."""


def mix(x, c):
    return fold(x) * 31 + c


def fold(x):
    if isinstance(x, (list, tuple)):
        return sum((i + 1) * fold(v) for i, v in enumerate(x))
    return squash(x)


def squash(x):
    return x % 1000003
'''


def _class_name(graph: str) -> str:
    return "Core" + "".join(p.capitalize() for p in graph.split("_")) + "Flow"


def generate(graph_name: str) -> tuple[str, dict[str, str], list[Mutation]]:
    """(flow class name, {file: text}, mutation sites) for one core graph."""
    graph = GRAPHS[graph_name]
    cls = _class_name(graph_name)
    parents: dict[str, list[str]] = {n: [] for n in graph}
    for name, node in graph.items():
        for s in (
            ([node["linear"]] if "linear" in node else [])
            + node.get("branch", [])
            + ([node["foreach"]] if "foreach" in node else [])
            + list(node.get("switch", {}).values())
        ):
            parents[s].append(name)
    # foreach depth of each step: +1 below a foreach split, -1 at a join closing a foreach
    depth: dict[str, int] = {}
    foreach_join: dict[str, bool] = {}

    def visit(name, d):
        if name in depth:
            return
        node = graph[name]
        if node.get("join"):
            # a join closes a static branch or, in these graphs, else a foreach
            foreach_join[name] = not _is_static_join(graph, name)
            if foreach_join[name]:
                d -= 1
        depth[name] = d
        if "linear" in node:
            visit(node["linear"], d)
        for s in node.get("branch", []):
            visit(s, d)
        if "foreach" in node:
            visit(node["foreach"], d + 1)
        for s in node.get("switch", {}).values():
            visit(s, d)

    visit("start", 0)
    lines = [
        '"""Generated from Metaflow\'s core test graph %r (tests/oracle/core_graphs.py)."""'
        % graph_name,
        "",
        "from _counter import record",
        "from gen_helpers import mix",
        "from metaflow import FlowSpec, Parameter, memoize, step",
        "",
        "OFFSET = 7",
        "",
        "",
        "class %s(FlowSpec):" % cls,
        '    alpha = Parameter("alpha", default=3)',
        "",
    ]
    sites: list[Mutation] = []
    all_steps = list(graph)
    for i, (name, node) in enumerate(graph.items()):
        const = 1000 + 10 * i
        is_join = bool(node.get("join"))
        deco = '@memoize(version="1")' if i == 1 else "@memoize"
        lines += ["    %s" % deco, "    @step"]
        lines.append("    def %s(self%s):" % (name, ", inputs" if is_join else ""))
        lines.append('        record("%s")' % name)
        if name == "start":
            value = "self.alpha + OFFSET"
        elif is_join and foreach_join.get(name) and len(parents[name]) > 1:
            # after a switch inside a foreach, Metaflow orders the join's inputs by a
            # set of step names (runtime._queue_task_join), so by PYTHONHASHSEED
            value = "sorted(i.val for i in inputs)"
        elif is_join and foreach_join.get(name):
            value = "[i.val for i in inputs]"
        elif is_join:
            value = "sorted(i.val for i in inputs)"
        elif parents[name] and "foreach" in graph[parents[name][0]]:
            value = "[self.val, self.input]"
        else:
            value = "self.val"
        lines.append("        self.val = mix(%s, %d)" % (value, const))
        lines.append('        self.%s_out = "%s:%%d" %% self.val' % (name, name))
        body_edit = "mix(%s, %d)" % (value, const)
        sites.append(
            Mutation(
                "step_body:%s" % name,
                "step_body",
                [("flow.py", body_edit, "mix(%s, %d)" % (value, const + 1))],
                needs=[name],
            )
        )
        if "linear" in node:
            lines.append("        self.next(self.%s)" % node["linear"])
        elif "branch" in node:
            lines.append("        self.next(%s)" % ", ".join("self.%s" % s for s in node["branch"]))
        elif "foreach" in node:
            var = node["foreach_var"]
            items = _LISTS[min(depth[name], 2)]
            lines.append("        self.%s = %r" % (var, items))
            lines.append('        self.next(self.%s, foreach="%s")' % (node["foreach"], var))
            old = "self.%s = %r" % (var, items)
            for kind, new in (
                ("foreach_reorder", items[::-1]),
                ("foreach_extend", items + [items[-1] + 10]),
                ("foreach_shrink", items[:-1]),
                ("foreach_duplicate", items[:1] + items),
            ):
                sites.append(
                    Mutation(
                        "%s:%s" % (kind, name),
                        kind,
                        [("flow.py", old, "self.%s = %r" % (var, new))],
                        needs=[name],
                    )
                )
        elif "switch" in node:
            cases = list(node["switch"])
            cond = node["condition"]
            if depth[name] > 0:
                lines.append("        self.%s = %r[self.val %% 2]" % (cond, cases))
            else:
                lines.append("        self.%s = %r" % (cond, cases[0]))
                sites.append(
                    Mutation(
                        "switch_flip:%s" % name,
                        "switch_flip",
                        [
                            (
                                "flow.py",
                                "self.%s = %r" % (cond, cases[0]),
                                "self.%s = %r" % (cond, cases[1]),
                            )
                        ],
                        needs=[name],
                    )
                )
            targets = ", ".join("%r: self.%s" % (k, v) for k, v in node["switch"].items())
            lines.append('        self.next({%s}, condition="%s")' % (targets, cond))
        lines.append("")
    lines += ["", 'if __name__ == "__main__":', "    %s()" % cls, ""]
    second = list(graph)[1]
    sites += [
        Mutation("helper_d1", "helper_d1", [("gen_helpers.py", "* 31 +", "* 37 +")], all_steps),
        Mutation(
            "helper_d2",
            "helper_d2",
            [("gen_helpers.py", "(i + 1) * fold(v)", "(i + 2) * fold(v)")],
            all_steps,
        ),
        Mutation(
            "helper_d3",
            "helper_d3",
            [("gen_helpers.py", "x % 1000003", "(x + 1) % 1000003")],
            all_steps,
        ),
        Mutation("constant", "constant", [("flow.py", "OFFSET = 7", "OFFSET = 8")], ["start"]),
        Mutation("param_value", "param_value", [], ["start"], args=["--alpha", "4"]),
        Mutation(
            "param_default",
            "param_default",
            [("flow.py", 'Parameter("alpha", default=3)', 'Parameter("alpha", default=5)')],
            ["start"],
        ),
        Mutation(
            "memoize_version",
            "memoize_args",
            [("flow.py", '@memoize(version="1")', '@memoize(version="2")')],
            [second],
        ),
        Mutation(
            "memoize_ttl",
            "memoize_args",
            [("flow.py", '@memoize(version="1")', '@memoize(version="1", ttl="7d")')],
            [],
        ),
    ]
    return cls, {"flow.py": "\n".join(lines), "gen_helpers.py": HELPERS}, sites


def _is_static_join(graph, name) -> bool:
    """A join whose parents come from a static branch (or a switch inside one)."""
    for node in graph.values():
        if "branch" in node and _reaches_only_through(graph, node["branch"], name):
            return True
    return False


def _reaches_only_through(graph, starts, target) -> bool:
    seen, todo = set(), list(starts)
    while todo:
        n = todo.pop()
        if n == target:
            return True
        if n in seen:
            continue
        seen.add(n)
        node = graph[n]
        if "foreach" in node:
            continue  # a join below a foreach split closes that foreach first
        todo += [node["linear"]] if "linear" in node else []
        todo += node.get("branch", []) + list(node.get("switch", {}).values())
    return False
