# credfresh: `make demo` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint types unit props torture soak bench image image-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/credfresh demo $(ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(VENV)/.test-installed
	$(BIN)/mypy --strict daemon/ tests/ benchmarks/

# The AWS CLI pins its own botocore, so it gets a venv of its own (inside $(VENV), so
# .gitignore and `make clean` cover it); the torture tests run `aws configure set` from it.
AWSCLI_VENV := $(VENV)/awscli
export CREDFRESH_AWSCLI := $(abspath $(AWSCLI_VENV))/bin/aws

$(AWSCLI_VENV)/bin/aws:
	$(PYTHON) -m venv $(AWSCLI_VENV)
	$(AWSCLI_VENV)/bin/python -m pip install --quiet 'awscli>=1.33,<2'

# Branch coverage of daemon/credfresh (devsts excluded), child processes included; the floor
# is [tool.coverage.report] fail_under. `make unit COVERAGE=` runs the same tests unmeasured.
COVERAGE ?= 1
unit: $(VENV)/.test-installed $(AWSCLI_VENV)/bin/aws
ifeq ($(COVERAGE),1)
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -m 'not slow' $(PYTEST_ARGS)
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report
else
	$(BIN)/pytest -m 'not slow' $(PYTEST_ARGS)
endif

test: lint types unit

torture: $(VENV)/.test-installed $(AWSCLI_VENV)/bin/aws
	$(BIN)/pytest -m slow -k 'not soak' $(PYTEST_ARGS)

PROPERTY_TESTS := tests/unit/test_config_props.py tests/unit/test_credfile_props.py \
	tests/unit/test_fastpath.py tests/unit/test_metrics.py \
	tests/integration/test_hostile.py tests/integration/test_alerts.py
# The property tests with every example (make test runs a third of each count).
props: $(VENV)/.test-installed
	CREDFRESH_PROPERTY_SCALE=1 $(BIN)/pytest -m 'not slow' $(PROPERTY_TESTS) $(PYTEST_ARGS)

soak: $(VENV)/.test-installed
	$(BIN)/pytest -m soak $(PYTEST_ARGS)

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/run.py

# localhost/credfresh:dev from host-built wheels, on a Debian base built once with mmdebstrap
# (podman, runc and mmdebstrap installed with apt-get if missing). BASE=python:3.11-slim
# builds on that image instead; ENGINE=docker builds with docker.
image: | $(BIN)/python
	PYTHON=$(BIN)/python .ci/image.sh build

# The pod pattern with real containers (tests/image, outside make test's testpaths).
# ENGINE=docker runs it with docker.
image-test: $(VENV)/.test-installed
	$(BIN)/pytest -m image tests/image $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage .coverage.*
