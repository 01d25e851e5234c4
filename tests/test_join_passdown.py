"""A join hit restores what the join set, never a stale copy of what Metaflow passes down."""


def test_join_ignoring_a_parameter_passes_the_current_value_down(runner):
    runner.add_flow("join_param_flow.py")
    runner.run("join_param_flow.py", "--noise", "0")
    second = runner.run("join_param_flow.py", "--noise", "1")
    assert runner.count("join") == 1  # the parameter is ignored: the join hits
    arts = runner.artifacts("JoinParamFlow", second.run_id)
    assert arts["join"][0]["noise"] == "1"
    assert arts["end"][0]["seen_noise"] == "1"
    assert arts["end"][0]["total"] == "3"
