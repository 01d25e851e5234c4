# Everything runs inside a project-local virtualenv so a fresh machine with only
# python3 needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Metaflow refuses to run without a user name; CI machines may not set one.
export USERNAME ?= $(or $(USER),memoize-user)

.PHONY: install test-tools browser demo test test-slow test-stress test-compat test-python lint format bench bench-quick verify clean

# An editable install: the checkout's code is what runs. Metaflow finds the
# extension through the `metaflow_extensions` namespace package; setup.py lists
# that namespace among its packages so that setuptools' editable finder maps it
# to this checkout, where Metaflow looks (it used to take the deprecated
# `editable_mode=compat`, whose deprecation box opened every fresh `make demo`).
# Every editable mode of setuptools also prints an informational box, "Editable
# installation ... folders in your working directory with the same name as your
# package may take precedence": here that folder is the package itself, so
# there is nothing to act on, and PYTHONWARNINGS hides that one message.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Azurite, the Azure Blob Storage emulator the Azure cache tests start
# (tests/cloud_servers.py), from npm into .tools/ (gitignored). Skipped when it
# is there; without node/npm the Azure tests skip and say why.
AZURITE := .tools/node_modules/.bin/azurite-blob
$(AZURITE):
	@if command -v npm >/dev/null 2>&1; then \
		npm install --prefix .tools --no-audit --no-fund --silent azurite@3 \
		|| echo "npm install azurite failed: the Azure cache tests will skip"; \
	else echo "npm not found: the Azure cache tests will skip (no Azurite)"; fi

# The package's bytecode, compiled ahead: every task of every flow is a new Python
# process that imports it, and where PYTHONDONTWRITEBYTECODE is set (as on some CI
# images) each would compile it again (about a tenth of a small task's CPU).
# Quick when nothing changed.
install: $(STAMP)
	@$(BIN)/python -m compileall -q metaflow_extensions

# What the tests need beyond the virtualenv: Azurite and Chromium (below). Not
# part of `install`, so `make demo` installs neither.
test-tools: browser $(AZURITE)

# The memoize card's browser test (tests/test_card.py) renders the card in
# headless Chromium. Installed here when missing and apt-get can (as root, or
# through sudo without a password); anywhere else this says so and moves on,
# and that test skips with the reason. Nothing to do when it is installed.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if ! command -v apt-get >/dev/null 2>&1; then \
			echo "note: no chromium and no apt-get: the card's browser test will skip"; \
		else \
			if [ "$$(id -u)" = 0 ]; then SUDO=; \
			elif sudo -n true >/dev/null 2>&1; then SUDO="sudo -n"; \
			else echo "note: no chromium, and apt-get needs root: the card's browser test will skip"; exit 0; fi; \
			echo "installing chromium (apt-get) for the card's browser test"; \
			{ $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || \
			  { $$SUDO apt-get update -qq >/dev/null 2>&1 && \
			    $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1; }; } || \
			echo "note: apt-get could not install chromium: the card's browser test will skip"; \
		fi; }

# Clears the quickstart's entries first (when an earlier demo made its cache) so
# the demo always shows a miss, then a hit.
demo: install
	cd examples/quickstart && if [ -d .metaflow/memoize-cache ]; then \
		../../$(BIN)/python quickstart_flow.py memoize invalidate --all --yes; fi
	@echo "=== first run: featurize misses and runs ==="
	cd examples/quickstart && ../../$(BIN)/python quickstart_flow.py run
	@echo "=== second run: featurize hits and is skipped ==="
	cd examples/quickstart && ../../$(BIN)/python quickstart_flow.py run

# `make test`: everything but the tests marked slow (the whole false-hit corpus,
# the oracle's broken-key self-test, the benchmark harness) or stress; `make
# test-slow` runs the slow ones, and CI runs both.
test: install test-tools
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not slow and not stress" tests

test-slow: install test-tools
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "slow and not stress and not compat" tests

# The full-size reliability runs (20 writers killed mid-upload, 8 concurrent runs
# x 10 keys, prune racing 4 runs, flaky S3 at 5% and 20% on the S3 datastore):
# about 15 minutes; their small variants run in `make test` or `make test-slow`.
test-stress: install test-tools
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m stress tests

# The compat suite (tests marked compat) against each supported Metaflow release,
# each in .venv-compat/<version>: the newest patch of every minor (docs/compatibility.md).
# `make test` already runs it against the Metaflow in .venv; CI adds the oldest.
COMPAT_VERSIONS ?= 2.12.37 2.12.39 2.13.10 2.14.3 2.15.21 2.16.8 2.17.5 2.18.13 2.19.39
test-compat:
	PYTHON=$(PYTHON) bash tests/compat.sh $(COMPAT_VERSIONS)

# What differs between Pythons (the code recorder, code identity, observed
# dependencies, composed hits, the S3 store, the quickstart, spin) on each of
# 3.9-3.13 found (pyenv or PATH; a missing one is skipped and named), each in
# .venv-python/<version>: tests/python_matrix.sh. QUICK=1 (CI): the full subset on
# 3.9 and 3.13, a quick one on the others. PYTHONS="3.9 3.12" picks versions.
test-python:
	bash tests/python_matrix.sh $(if $(QUICK),--quick) $(PYTHONS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The differential oracle (docs/oracle.md): CASES flows x mutations, memoized
# against uncached; the tally goes to docs/verification.md. MINUTES=0: no limit.
CASES ?= 500
SEED ?= 0
MINUTES ?= 0
JOBS ?= 2
verify: install
	$(BIN)/python -m tests.oracle --cases $(CASES) --seed $(SEED) --minutes $(MINUTES) --jobs $(JOBS) --report docs/verification.md

bench: install
	$(BIN)/python -m pip install --quiet numpy
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/observe_cost.py --markdown docs/observation-cost.md

bench-quick: install
	$(BIN)/python benchmarks/run.py --quick
	$(BIN)/python benchmarks/observe_cost.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .tools
