#!/usr/bin/env bash
# `make test-compat`: the compat-marked tests (tests/test_compat.py and the S3
# store round trip) against each Metaflow release given, each in a venv of its
# own (.venv-compat/<version>, reused while it holds that release). Prints one
# line per release with its time; fails on the first release that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
results=()
for version in "$@"; do
    venv=".venv-compat/$version"
    if ! "$venv/bin/python" -c "import metaflow, sys; sys.exit(metaflow.__version__ != '$version')" 2>/dev/null; then
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        # what the compat tests need, not the whole [test] extra (no Kubernetes
        # client, IPython or ruff): a smaller install, for CI
        PYTHONWARNINGS="ignore:Editable installation" \
            "$venv/bin/python" -m pip install --quiet "metaflow==$version" -e . \
            pytest pytest-xdist "moto[server]>=5"
    fi
    started=$(date +%s)
    echo "=== Metaflow $version ==="
    MEMOIZE_COMPAT_METAFLOW="$version" "$venv/bin/python" -m pytest -n 2 -q -m compat tests
    results+=("Metaflow $version: compat suite passed in $(( $(date +%s) - started )) s")
done
printf '%s\n' "${results[@]}"
