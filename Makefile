# Targets CI calls: install, lint, test. `make up` starts the platform with demo traffic.
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(shell command -v $(PYTHON))

.PHONY: install up test lint format bench clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	touch $@

install: $(VENV)/.installed  ## create .venv with .venv/bin/headwater (idempotent)

up: install  ## start everything on embedded defaults, with demo traffic
	$(VENV)/bin/headwater up --demo

lint: install  ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

test: lint  ## the whole suite
	$(VENV)/bin/pytest

format: install
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

bench: install  ## benchmarks; JSON on stdout, a copy in bench/results/
	bash bench/run.sh

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
