"""Pure parts of the causal "why": reasons of a join, producers of an artifact."""

from metaflow import FlowSpec, step
from metaflow.graph import FlowGraph

from metaflow_extensions.memoize.plugins.memoize.key.deps import (
    changed_input_names,
    describe_changes,
)
from metaflow_extensions.memoize.plugins.memoize.runtime import causes
from metaflow_extensions.memoize.plugins.memoize.runtime.summary import TaskOutcome, cause_lines


class ChainFlow(FlowSpec):
    @step
    def start(self):
        self.raw = 1
        self.next(self.featurize)

    @step
    def featurize(self):
        self.features = self.raw
        self.next(self.train)

    @step
    def train(self):
        self.model = self.features
        self.next(self.end)

    @step
    def end(self):
        pass


def _join_deps(changed_of_five):
    old = {"input:fit/%d:model" % i: "old" for i in range(5)}
    new = {d: ("new" if i < changed_of_five else "old") for i, d in enumerate(old)}
    return [d for d in old if old[d] != new[d]], old, new


def test_a_join_names_each_changed_artifact_once_with_how_many_inputs():
    changed, old, new = _join_deps(4)
    assert describe_changes(changed, old, new, join_inputs=5) == [
        "input 'model' changed in 4 of 5 inputs (read by the step)"
    ]
    one, old, new = _join_deps(1)
    assert describe_changes(one, old, new, join_inputs=5) == [
        "input 'model' of fit[0] changed (read by the step)"
    ]
    merged = ["input:a/-:*", "input:b/-:*"]
    assert describe_changes(merged, dict.fromkeys(merged, "x"), dict.fromkeys(merged, "y"), 2) == [
        "an artifact changed in 2 of 2 inputs (merged by the step)"
    ]
    gone = {"input:fit/4:model": "absent input"}
    assert describe_changes(list(gone), {"input:fit/4:model": "h"}, gone, 5) == [
        "input fit[4] is gone"
    ]


def test_changed_input_names_are_the_artifacts_among_dependencies():
    deps = ["artifact:features", "artifact:*", "input:fit/0:model", "input:a/-:*", "code:m:f"]
    assert changed_input_names(deps) == ["features", "model"]


def test_the_producer_is_the_nearest_step_above_that_sets_the_artifact():
    graph = FlowGraph(ChainFlow)
    assigns = causes.static_assignments(ChainFlow)
    assert causes.producer_of(graph, assigns, "train", "features") == "featurize"
    assert causes.producer_of(graph, assigns, "end", "raw") == "start"
    assert causes.producer_of(graph, assigns, "train", "nobody_sets_this") is None
    statuses = {"featurize": ["miss"], "start": ["not memoized"]}
    assert causes.cause(graph, assigns, "train", ["features"], statuses) == (
        "because featurize re-ran"
    )
    assert causes.cause(graph, assigns, "end", ["raw", "features"], statuses) == (
        "because start ran (not memoized) and featurize re-ran"
    )
    assert causes.cause(graph, assigns, "train", ["features"], {"featurize": ["hit"]}) == (
        "because featurize hit an entry with other outputs"
    )


def test_after_a_run_each_step_that_ran_names_its_root_cause():
    graph = FlowGraph(ChainFlow)
    memoized = {"featurize", "train", "end"}
    first = [TaskOutcome(s, "miss", reason="no entry") for s in ("featurize", "train", "end")]
    assert cause_lines(first, ChainFlow, graph, memoized) == [
        "  no entry yet: featurize, train, end"
    ]
    changed = [
        TaskOutcome("featurize", "miss", reason="code changed (step body)"),
        TaskOutcome(
            "train", "miss", reason="input 'features' changed", changed_inputs=("features",)
        ),
        TaskOutcome("end", "hit"),
    ]
    assert cause_lines(changed, ChainFlow, graph, memoized) == [
        "  featurize: miss: code changed (step body)",
        "  train: miss: input 'features' changed, because featurize re-ran",
    ]
    mixed = [
        TaskOutcome("train", "miss", reason="a"),
        TaskOutcome("train", "miss", reason="a"),
        TaskOutcome("train", "refresh", reason="refresh requested"),
        TaskOutcome("train", "hit"),
    ]
    assert cause_lines(mixed, ChainFlow, graph, memoized) == [
        "  train: 3 of 4 tasks ran: a (and 1 other reason)"
    ]


def test_an_entry_of_another_item_tells_what_changed_besides_the_item():
    from metaflow_extensions.memoize.plugins.memoize.key.components import diff_other_item

    base = {"format": 2, "code": {"step": "a"}, "args": {"version": 1}, "foreach": [{"item": "x"}]}
    other_item = dict(base, foreach=[{"item": "y"}])
    assert diff_other_item(other_item, base) == []
    new_version = dict(base, args={"version": 2})
    assert diff_other_item(other_item, new_version) == ["argument 'version' changed"]
