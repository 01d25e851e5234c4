"""What invalidates an entry and what must not: parameters, code edits (real and
cosmetic), decorator arguments (version vs ttl), foreach items, and the
inputs= / ignore= / outputs= arguments."""

import pytest
from test_shapes import (
    assert_restored_from,
    by_pathspec,
    counts,
    edited,
    entry_files,
    of_step,
    step_status,
    tasks,
)

LINEAR = ("start", "middle", "end")


def linear_source(decorator="@memoize", body="self.doubled = self.base * 2", extra=""):
    return edited(
        "t2_linear_flow.py",
        ("@memoize  # MIDDLE-DECORATOR", decorator),
        ("self.doubled = self.base * 2  # MIDDLE-BODY", body),
        ("    def middle(self):\n", "    def middle(self):\n" + extra),
    )


def only(task_list, step):
    (task,) = of_step(task_list, step)
    return task


@pytest.mark.slow
def test_parameter_change_misses_at_start_and_old_value_still_hits(runner):
    runner.add_flow("t2_linear_flow.py")
    first = runner.run("t2_linear_flow.py", "--alpha", "1")
    assert counts(runner, LINEAR) == {"start": 1, "middle": 1, "end": 1}
    first_tasks = tasks(runner, "T2LinearFlow", first.run_id)

    changed = runner.run("t2_linear_flow.py", "--alpha", "2")
    # every task sees every parameter: all of them re-run
    assert counts(runner, LINEAR) == {"start": 2, "middle": 2, "end": 2}
    changed_tasks = tasks(runner, "T2LinearFlow", changed.run_id)
    start = only(changed_tasks, "start")
    assert start["metadata"]["memoize_status"] == "miss"
    assert "alpha" in start["metadata"]["memoize_reason"], start["metadata"]
    assert only(changed_tasks, "end")["artifacts"]["result"] == "41"

    # the entries of alpha=1 are still there
    again = runner.run("t2_linear_flow.py", "--alpha", "1")
    assert counts(runner, LINEAR) == {"start": 2, "middle": 2, "end": 2}
    assert_restored_from(tasks(runner, "T2LinearFlow", again.run_id), first_tasks, first.run_id)
    assert only(tasks(runner, "T2LinearFlow", again.run_id), "end")["artifacts"]["result"] == "21"


@pytest.mark.slow
def test_code_edits_invalidate_only_what_they_change(runner):
    def run(source):
        runner.add_flow("t2_linear_flow.py", source=source)
        result = runner.run("t2_linear_flow.py")
        return result, tasks(runner, "T2LinearFlow", result.run_id)

    first, first_tasks = run(linear_source())
    assert counts(runner, LINEAR) == {"start": 1, "middle": 1, "end": 1}

    # comments, a docstring and blank lines are not code
    cosmetic = linear_source(
        body="\n        # a new comment\n\n        self.doubled = self.base * 2  # why not",
        extra='        """A docstring that was not there before.\n\n        Two paragraphs."""\n\n\n',
    )
    assert cosmetic != linear_source()
    _, cosmetic_tasks = run(cosmetic)
    assert counts(runner, LINEAR) == {"start": 1, "middle": 1, "end": 1}
    assert_restored_from(cosmetic_tasks, first_tasks, first.run_id)

    # ttl is policy, not identity: adding it still hits
    _, ttl_tasks = run(linear_source(decorator='@memoize(ttl="1h")'))
    assert counts(runner, LINEAR) == {"start": 1, "middle": 1, "end": 1}
    assert_restored_from(ttl_tasks, first_tasks, first.run_id)

    # version= is identity: middle misses; its output is unchanged so end hits
    _, version_tasks = run(linear_source(decorator='@memoize(ttl="1h", version="2")'))
    assert counts(runner, LINEAR) == {"start": 1, "middle": 2, "end": 1}
    middle = only(version_tasks, "middle")
    assert middle["metadata"]["memoize_status"] == "miss"
    assert "version" in middle["metadata"]["memoize_reason"], middle["metadata"]
    assert step_status(version_tasks, "start") == "hit"
    assert step_status(version_tasks, "end") == "hit"

    # a real code change with byte-identical output: middle misses, end hits (early cut-off)
    _, same_tasks = run(linear_source(body="self.doubled = self.base + self.base"))
    assert counts(runner, LINEAR) == {"start": 1, "middle": 3, "end": 1}
    middle = only(same_tasks, "middle")
    assert middle["metadata"]["memoize_status"] == "miss"
    assert "code changed" in middle["metadata"]["memoize_reason"], middle["metadata"]
    assert step_status(same_tasks, "start") == "hit"
    assert step_status(same_tasks, "end") == "hit"
    assert only(same_tasks, "end")["artifacts"] == only(first_tasks, "end")["artifacts"]

    # a code change with a different output: middle and end re-run, start still hits
    _, diff_tasks = run(linear_source(body="self.doubled = self.base * 3"))
    assert counts(runner, LINEAR) == {"start": 1, "middle": 4, "end": 2}
    assert step_status(diff_tasks, "start") == "hit"
    assert step_status(diff_tasks, "middle") == "miss"
    assert step_status(diff_tasks, "end") == "miss"
    assert only(diff_tasks, "end")["artifacts"]["result"] == "31"


def foreach_source(items):
    return edited("t2_foreach_flow.py", ("ITEMS = [3, 1, 2]", "ITEMS = %r" % (items,)))


@pytest.mark.slow
def test_foreach_items_are_keyed_by_value_not_position(runner):
    runner.add_flow("t2_foreach_flow.py", source=foreach_source([3, 1, 2]))
    first = runner.run("t2_foreach_flow.py")
    first_tasks = tasks(runner, "T2ForeachFlow", first.run_id)
    bodies = of_step(first_tasks, "body")
    assert len({t["metadata"]["memoize_key"] for t in bodies}) == 3, "items share a key"
    assert len(entry_files(runner, "T2ForeachFlow", "body")) == 3

    # reorder the list and add one new value
    items = [2, 4, 3, 1]
    runner.add_flow("t2_foreach_flow.py", source=foreach_source(items))
    second = runner.run("t2_foreach_flow.py")
    assert counts(runner, ("start", "body", "join", "end")) == {
        "start": 2,  # its code (the constant) changed
        "body": 4,  # only the new value 4 ran
        "join": 2,  # its inputs arrive in a new order
        "end": 2,
    }
    ran = sorted(
        line for f in runner.counter_dir.glob("body--*") for line in f.read_text().splitlines()
    )
    assert ran == ["1", "2", "3", "4"]
    second_tasks = tasks(runner, "T2ForeachFlow", second.run_id)
    originals = by_pathspec(first_tasks)
    for t in of_step(second_tasks, "body"):
        item = items[t["index"]]
        # each task got its own value's result, never a neighbour's
        assert t["artifacts"]["item"] == repr(item), t
        assert t["artifacts"]["out"] == repr(item * 10), t
        assert t["artifacts"]["items"] == repr(items), t  # inherited from this run
        if item == 4:
            assert t["metadata"]["memoize_status"] == "miss", t
        else:
            assert t["metadata"]["memoize_status"] == "hit", t
            origin = originals[t["metadata"]["memoize_origin"]]
            assert origin["artifacts"]["item"] == repr(item), (t, origin)
    assert step_status(second_tasks, "join") == "miss"
    assert only(second_tasks, "join")["artifacts"]["outs"] == repr([20, 40, 30, 10])
    assert only(second_tasks, "end")["artifacts"]["total"] == "100"


@pytest.mark.slow
def test_inputs_ignore_and_outputs_arguments(runner):
    runner.add_flow("t2_args_flow.py")
    memoized = ("pick", "skip", "limited")

    first = runner.run("t2_args_flow.py", "--noise", "0")
    assert counts(runner, memoized) == {"pick": 1, "skip": 1, "limited": 1}
    first_tasks = tasks(runner, "T2ArgsFlow", first.run_id)
    assert only(first_tasks, "end")["artifacts"]["seen"] == repr(("note-0", 6, 12, 13, True))

    # noise and note change: outside pick's inputs= and in skip's ignore=
    second = runner.run("t2_args_flow.py", "--noise", "1")
    assert counts(runner, memoized) == {"pick": 1, "skip": 1, "limited": 2}
    second_tasks = tasks(runner, "T2ArgsFlow", second.run_id)
    pick = only(second_tasks, "pick")
    assert pick["metadata"]["memoize_status"] == "hit"
    # artifacts outside the key flow through from this run, not from the entry
    assert pick["artifacts"]["note"] == repr("note-1")
    assert pick["artifacts"]["noise"] == "1"
    assert pick["artifacts"]["total"] == "6"
    assert step_status(second_tasks, "skip") == "hit"
    assert only(second_tasks, "skip")["artifacts"]["note"] == repr("note-1")
    assert only(second_tasks, "end")["artifacts"]["seen"] == repr(("note-1", 6, 12, 13, True))

    # limited's outputs= leaves out `scratch`, which it sets: a hit would lose it,
    # so limited is never cached (issue 13) and runs again with its scratch
    third = runner.run("t2_args_flow.py", "--noise", "0")
    assert "outputs= leaves out 'scratch'" in third.output, third
    assert counts(runner, memoized) == {"pick": 1, "skip": 1, "limited": 3}
    third_tasks = tasks(runner, "T2ArgsFlow", third.run_id)
    limited = only(third_tasks, "limited")
    assert limited["artifacts"]["kept"] == "13"
    assert limited["artifacts"]["scratch"] == repr("scratch-note-0")
    assert only(third_tasks, "end")["artifacts"]["seen"] == repr(("note-0", 6, 12, 13, True))

    # knob is in pick's inputs=: pick misses, and so does everything after it
    runner.run("t2_args_flow.py", "--noise", "0", "--knob", "2")
    assert counts(runner, memoized) == {"pick": 2, "skip": 2, "limited": 4}


@pytest.mark.slow
def test_a_changed_pass_through_input_is_recomputed_once_then_hits(runner):
    runner.add_flow("t2_passthrough_flow.py")
    runner.run("t2_passthrough_flow.py", "--noise", "0")
    runner.run("t2_passthrough_flow.py", "--noise", "1")
    assert runner.count("work") == 2
    third = runner.run("t2_passthrough_flow.py", "--noise", "1")
    third_tasks = tasks(runner, "T2PassthroughFlow", third.run_id)
    assert only(third_tasks, "end")["artifacts"]["seen"] == repr(("note-1", 2))
    assert runner.count("work") == 2, "the same inputs as the previous run missed again"
    assert step_status(third_tasks, "work") == "hit"
