# One entry point for people and CI. `make run` and `make test` set up
# everything they need on a fresh Debian machine (venv, redis-server).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help venv deps run test check lint typecheck deploy-check workflow-check pytest pulumi-test bench bench-quick clean

help:
	@echo "make run    set up and serve the API on a local Redis"
	@echo "make test   set up and run lint, type checks and the whole test suite"
	@echo "make check  lint and type checks only"
	@echo "make bench  start a local stack, measure it, write bench/results/ (~7 min)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
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

check: lint typecheck deploy-check workflow-check

pytest: venv deps
	$(BIN)/pytest

# The Pulumi program's unit tests: offline, with pulumi's mocks, no Pulumi CLI.
$(VENV)/.pulumi-installed: $(VENV)/.installed pulumi/requirements.txt
	$(BIN)/pip install --quiet -r pulumi/requirements.txt
	touch $@

pulumi-test: $(VENV)/.pulumi-installed
	$(BIN)/mypy --strict pulumi/couponinfra pulumi/__main__.py
	$(BIN)/python -m pytest pulumi/tests

test: check pytest pulumi-test

# Benchmarks are never part of `make test` (see bench/README.md).
bench: venv deps
	$(BIN)/python bench/run.py --update-readme

bench-quick: venv deps
	$(BIN)/python bench/run.py --quick

run: venv deps
	@scripts/run-local.sh

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
