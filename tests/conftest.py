import pytest  # noqa: E402
from cloud_servers import *  # noqa: F401,F403
from flowrunner import FlowRunner  # noqa: E402
from s3_server import *  # noqa: F401,F403


@pytest.fixture
def runner(tmp_path):
    """A FlowRunner in a private directory: its own datastore and default cache."""
    return FlowRunner(tmp_path / "work")


#: The longest tests (about a minute or more each on a quiet 2-core machine),
#: started first: with pytest-xdist handing out tests in collection order, one
#: of them left to the end keeps the run going on one worker while the other idles.
LONG_FIRST = (
    "test_bench_harness.py::",  # its module fixture runs the quick benchmarks
    "test_oracle.py::test_quick_subset_finds_no_unlisted_false_hit",
    "test_oracle.py::test_the_case_that_was_a_false_hit_is_none_now",
    "test_faults.py::test_flaky_s3_never_fails_a_run",
    "test_observed_deps.py::test_a_join_is_keyed_by_what_it_reads_from_its_inputs",
    "test_multipart.py::test_writers_killed_mid_upload_leave_nothing_after_prune",
    "test_audit.py::test_a_nondeterministic_step_is_flagged_and_its_entry_set_aside",
    "test_cloud_cache.py::test_miss_hit_in_task_cloned_and_prune",
    "test_cli_scale.py::test_list_and_stats_on_s3_read_only_the_manifests_they_show",
    "test_composed_hits.py::test_appending_one_item_runs_one_body_and_writes_what_an_uncached_run_writes",
    "test_card.py::test_card_shows_every_decision_of_the_run",
)


#: Module-scoped fixtures that run flows for many seconds, and the xdist group of
#: the tests that use them: with `--dist loadgroup` (the Makefile) those tests run
#: in one worker, which makes the fixture once, instead of once in each worker.
SHARED_SETUP_GROUPS = {
    "card_runs": "card-runs",
    "cached": "cli-seed",
    "quick_report": "bench-quick",  # the whole quick benchmark run: about 5 minutes
}


def pytest_collection_modifyitems(config, items):
    def long(item):
        return any(name in item.nodeid for name in LONG_FIRST)

    items[:] = [i for i in items if long(i)] + [i for i in items if not long(i)]
    for item in items:
        for fixture, group in SHARED_SETUP_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                break
