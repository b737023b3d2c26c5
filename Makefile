# Targets CI calls: install, lint, test. `make up` starts the platform with demo traffic.
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(shell command -v $(PYTHON))
# Where the environment sets PYTHONDONTWRITEBYTECODE (this machine does), every Python process the targets start
# (each child of `up`, each CLI call of the tests) compiled every module it imported from source: ~7 s of CPU per
# start of `up`. The venv is compiled at install (--compile-bytecode); Headwater's own modules are cached on use.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install up test test-fast test-processing test-sources test-privacy test-trust test-ops test-hardening test-cluster test-engines lint format bench clean browser screenshots

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet --compile-bytecode
	touch $@

ECHARTS := src/headwater/web/static/vendor/echarts.min.js
$(ECHARTS): web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --silent
	mkdir -p $(dir $@)
	cp web/node_modules/echarts/dist/echarts.min.js $@

install: $(VENV)/.installed $(ECHARTS)  ## .venv with .venv/bin/headwater, and the web app's chart library (idempotent)

browser:  ## Debian's chromium for the browser tests (apt, as root), when missing
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

.PHONY: services
services:  ## real Kafka, S3 (s3proxy) and Spark jars from Maven Central into .tools/jars; Debian's PostgreSQL, Redis and RabbitMQ, when missing
	@tools/fetch-jars.sh kafka s3proxy spark
	@test -x /usr/lib/postgresql/15/bin/postgres || (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null)
	@test -x /usr/lib/rabbitmq/bin/rabbitmq-server || (apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null)
	@command -v ss >/dev/null || (apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null)  # the chaos test watches sockets

up: install  ## start everything on embedded defaults, with demo traffic
	HEADWATER_MODELS_DIR=$${HEADWATER_MODELS_DIR:-examples/models} HEADWATER_SQL_PORT=$${HEADWATER_SQL_PORT:-5433} $(VENV)/bin/headwater up --demo

lint: install  ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy
	for example in examples/*/; do find "$$example" -name "*.py" | grep -q . || continue; $(VENV)/bin/mypy --explicit-package-bases "$$example" || exit 1; done

test: lint browser services  ## the whole suite (what CI runs)
	$(VENV)/bin/pytest

test-fast: install  ## embedded deployment only: no Kafka, PostgreSQL, S3, Spark, Trino or crash loops
	$(VENV)/bin/pytest -m "not cluster and not kafka and not services and not spark and not trino and not slow"

test-processing: install services  ## stream processors: semantics, exactly-once, sinks, examples (Kafka included)
	$(VENV)/bin/pytest tests/processing tests/examples

test-sources: install services  ## sources: files, Kafka topics, RabbitMQ queues, COBOL, GRIB, the PMU and Encored examples
	$(VENV)/bin/pytest tests/sources tests/unit/test_cobol.py tests/unit/test_cobol_records.py tests/unit/test_grib.py \
		tests/unit/test_source_mapping.py tests/examples/test_pmu_frames.py tests/examples/test_encored.py \
		tests/integration/test_sources_api.py

test-privacy: install services  ## lifecycle: deletions, erasure in the log and processors, retention, late data, audit, GA4
	$(VENV)/bin/pytest tests/integration/test_privacy.py tests/integration/test_log_erasure.py \
		tests/processing/test_erasure.py tests/integration/test_retention.py tests/integration/test_late_data.py \
		tests/integration/test_audit.py tests/integration/test_ga4.py tests/sources/test_ga4_drop.py \
		tests/unit/test_ga4_map.py tests/browser/test_privacy_page.py tests/browser/test_audit_page.py

test-trust: install services  ## tracking plans, enforcement, replay, enrichment, identity stitching
	$(VENV)/bin/pytest tests/unit/test_plan_*.py tests/unit/test_enrich_*.py tests/unit/test_identity*.py \
		tests/unit/test_writer_stages.py tests/integration/test_plan_*.py tests/integration/test_enrich_e2e.py \
		tests/integration/test_identity*.py tests/browser/test_plan_page.py tests/browser/test_live_violations.py

test-ops: install services  ## SQL models, data checks, alerting, query slots, upgrades, processor state versions
	$(VENV)/bin/pytest tests/unit/test_alerts*.py tests/unit/test_checks.py tests/unit/test_example_models.py \
		tests/integration/test_models*.py tests/integration/test_checks*.py tests/integration/test_alerts*.py \
		tests/integration/test_query_slots.py tests/integration/test_upgrade*.py tests/processing/test_state_versions.py \
		tests/engines/test_spark_models.py

test-hardening: install browser  ## start-up, data directory, sign-in throttling, exposure/CSP, browser SDK, SQL server, OpenAPI fuzz
	$(VENV)/bin/pytest -m "not cluster" tests/integration/test_startup.py tests/unit/test_datadir.py \
		tests/integration/test_security.py tests/browser/test_csp.py tests/integration/test_segment_paths.py \
		tests/browser/test_segment_sdk.py tests/integration/test_sql_server.py tests/integration/test_openapi.py

test-cluster: install services  ## every suite on Kafka + PostgreSQL + S3 (started by the tests)
	$(VENV)/bin/pytest -m cluster

test-engines: install services  ## Spark and Trino read the lake
	$(VENV)/bin/pytest -m "spark or trino"

screenshots: install browser  ## refresh docs/screenshots/ from the browser tests
	HEADWATER_SCREENSHOTS=1 $(VENV)/bin/pytest tests/browser -q

format: install
	$(VENV)/bin/ruff format src tests bench examples
	$(VENV)/bin/ruff check --fix src tests bench

bench: install services  ## benchmarks; JSON on stdout, a copy in bench/results/
	$(UV) sync --frozen --quiet --group bench  # chdb: ClickHouse in-process, the peer in bench/queries.py
	bash bench/run.sh

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
