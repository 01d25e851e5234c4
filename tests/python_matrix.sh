#!/usr/bin/env bash
# `make test-python`: the tests that exercise what differs between Python
# versions, on every interpreter found among 3.9-3.13, each in a venv of its own
# (.venv-python/<version>, reused while intact). What differs: the code recorder
# (a C recorder built on 3.9-3.11, sys.monitoring from 3.12), code identity (AST
# and bytecode change with every version), the observed-dependencies corpus,
# composed hits, the S3 store and the quickstart. A version with no interpreter
# is skipped and named; one whose tests fail fails the whole (after the others ran).
#
#   bash tests/python_matrix.sh                  # full subset on every version found
#   bash tests/python_matrix.sh 3.9 3.13         # these versions only
#   bash tests/python_matrix.sh --quick          # CI: the full subset on FULL_ON
#                                                # (3.9 3.13), the quick one elsewhere
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0
versions=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        *) versions+=("$arg") ;;
    esac
done
[ ${#versions[@]} -eq 0 ] && versions=(3.9 3.10 3.11 3.12 3.13)
# in --quick, the versions that still run the full subset: the oldest, and the
# newest (sys.monitoring); the others run the quick subset
FULL_ON=${FULL_ON:-"3.9 3.13"}

# The full subset. Real flows in subprocesses; the slow-marked parts of these
# files stay in make test-slow (default Python).
FULL_TESTS=(
    tests/test_units_observe.py     # the recorder: threads, generators, a profiler taking over
    tests/test_observed_deps.py     # observed dependencies: the quick corpus, run as flows
    tests/test_units_keys.py        # code identity: AST and bytecode normalization
    tests/test_composed_hits.py     # hits composed in the orchestrator
    tests/test_s3_cache.py          # the S3 store end to end, on moto
    "tests/test_store_contract.py::test_put_if_absent_first_writer_wins[s3]"
    "tests/test_store_contract.py::test_list_paginates[s3]"
    "tests/test_store_contract.py::test_s3_put_file_is_multipart_and_copy"
    "tests/test_examples.py::test_example_hits_on_its_second_run[quickstart/quickstart_flow.py]"
    tests/test_spin.py              # spin (Metaflow 2.19+): a memoized step runs, said once
)
# The quick subset: the recorder (unit tests, and one observed-dependency flow)
# and the quickstart, a miss then a hit
QUICK_TESTS=(
    tests/test_units_observe.py
    "tests/test_observed_deps.py::test_a_miss_names_the_observed_dependency"
    "tests/test_examples.py::test_example_hits_on_its_second_run[quickstart/quickstart_flow.py]"
)

find_python() {
    local version=$1 root candidate
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
        # the newest patch release installed under pyenv
        candidate=$(ls -d "$root/versions/$version".* 2>/dev/null | sort -V | tail -n 1)
        if [ -n "$candidate" ] && [ -x "$candidate/bin/python$version" ]; then
            echo "$candidate/bin/python$version"
            return
        fi
    fi
    for candidate in "python$version" "/usr/bin/python$version" "/usr/local/bin/python$version"; do
        # a pyenv shim exists for every installed version but runs only the active ones
        if "$candidate" -c "import sys; sys.exit(sys.version[:len('$version') + 1] != '$version.')" \
            >/dev/null 2>&1; then
            command -v "$candidate"
            return
        fi
    done
}

# The recorder each version must use: a failed build of the C recorder falls back
# to sys.setprofile silently (it is optional), which this run must not hide.
expected_recorder() {
    case "$1" in
        3.9 | 3.10 | 3.11) echo "C " ;;  # the C recorder (_tracer)
        *) echo "sys.monitoring" ;;
    esac
}

recorder_of() {
    "$1/bin/python" -c "import metaflow
from metaflow_extensions.memoize.plugins.memoize.key import observe
print(observe.mechanism())" 2>/dev/null
}

results=()
failed=0
for version in "${versions[@]}"; do
    python=$(find_python "$version")
    if [ -z "$python" ]; then
        echo "=== Python $version: no interpreter found, skipped ==="
        results+=("Python $version: skipped (no interpreter)")
        continue
    fi
    venv=".venv-python/$version"
    expected=$(expected_recorder "$version")
    started=$(date +%s)
    # reused while it runs, holds the package (editable: this checkout) and was
    # built after setup.py last changed; the C recorder is rebuilt when missing
    if ! [ "$venv/.installed" -nt setup.py ] \
        || ! "$venv/bin/python" -c "import metaflow, pytest, moto, xdist" 2>/dev/null \
        || [[ "$(recorder_of "$venv")" != "$expected"* ]]; then
        echo "=== Python $version: building $venv with $python ==="
        rm -rf "$venv"
        "$python" -m venv "$venv" || { results+=("Python $version: FAILED (venv)"); failed=1; continue; }
        "$venv/bin/python" -m pip install -qq --upgrade pip
        # what these tests need, not the whole [test] extra (no GCS/Azure
        # emulators, Kubernetes client, IPython or ruff)
        PYTHONWARNINGS="ignore:Editable installation" \
            "$venv/bin/python" -m pip install -qq -e . pytest pytest-xdist "moto[server]>=5" \
            || { results+=("Python $version: FAILED (install)"); failed=1; continue; }
        touch "$venv/.installed"
    fi
    recorder=$(recorder_of "$venv")
    echo "=== Python $version ($("$venv/bin/python" -V 2>&1), recorder: $recorder) ==="
    if [[ "$recorder" != "$expected"* ]]; then
        echo "Python $version: the recorder is '$recorder', expected '$expected' (did the C recorder build?)"
        results+=("Python $version: FAILED (recorder '$recorder', expected '$expected')")
        failed=1
        continue
    fi
    form=full
    tests=("${FULL_TESTS[@]}")
    if [ "$quick" = 1 ] && [[ " $FULL_ON " != *" $version "* ]]; then
        form=quick
        tests=("${QUICK_TESTS[@]}")
    fi
    if "$venv/bin/python" -m pytest -n 2 -q -p no:cacheprovider -m "not slow and not stress" \
        "${tests[@]}"; then
        results+=("Python $version: $form subset passed in $(( $(date +%s) - started )) s ($recorder)")
    else
        results+=("Python $version: $form subset FAILED after $(( $(date +%s) - started )) s ($recorder)")
        failed=1
    fi
done
printf '%s\n' "${results[@]}"
exit $failed
