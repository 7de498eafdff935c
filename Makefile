# The two quick-start commands are `make demo` and `make test`; each sets up what it needs.
# The Python the app is deployed on (infra/modules/function-app.bicep); another 3.11+ with PYTHON=...
PYTHON ?= $(shell python3 -m devtools.prerequisites --which-python)
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo run prerequisites test lint bench infra-check clean

IAC_VENV := .devstate/iac-venv
# pytest's worker processes (pytest-xdist; 0: one process). Each runs whole test files with stand-ins of its own.
PYTEST_WORKERS ?= 2

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# checkov lives in its own virtualenv: its pinned dependencies clash with the app's.
$(IAC_VENV)/.installed: infra/requirements-iac.txt | $(VENV)/.installed
	$(PY) -m devtools.check_infra --install

# Options go in ARGS, e.g. `make demo ARGS="--format mp3"` (see `python -m devtools.demo --help`).
demo: setup
	$(PY) -m devtools.demo $(ARGS)

run: setup
	$(PY) -m devtools.run

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# What only the system provides (browser, driver, espeak-ng...): installed with apt-get where that needs
# no one's answer (root, as CI runs), otherwise one message naming each and its install command.
prerequisites:
	python3 -m devtools.prerequisites --python $(PYTHON)

# `prerequisites` comes first: a missing tool stops the run before anything is installed or run.
test: prerequisites lint $(IAC_VENV)/.installed
	$(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(ARGS)

infra-check: $(IAC_VENV)/.installed
	$(PY) -m devtools.check_infra

bench: setup
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.spoken_parallel
	$(PY) -m benchmarks.spares

clean:
	rm -rf $(VENV) node_modules .devstate out .pytest_cache .ruff_cache .hypothesis
