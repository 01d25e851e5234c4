"""Inputs that hash differently in every process are reported, never papered over."""


def test_a_set_of_strings_input_is_reported_as_unstable(runner):
    runner.add_flow("unstable_flow.py")
    first = runner.run("unstable_flow.py")
    warnings = [line for line in first.memoize_lines() if "WARNING" in line]
    assert len(warnings) == 1, first.memoize_lines()
    assert "input 'tags' is a set" in warnings[0]
    assert "ignore=['tags']" in warnings[0] and "sorted list" in warnings[0]


def test_ignoring_the_unstable_input_makes_the_step_hit(runner):
    source = runner.add_flow("unstable_flow.py")
    source.write_text(
        source.read_text().replace("    @memoize\n", '    @memoize(ignore=["tags"])\n')
    )
    first = runner.run("unstable_flow.py")
    assert not [line for line in first.memoize_lines() if "WARNING" in line]
    runner.run("unstable_flow.py")
    assert runner.count("count") == 1
