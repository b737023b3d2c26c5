#!/usr/bin/env bash
# Runs every benchmark; each prints JSON and keeps a copy in bench/results/.
# Options are passed through as environment variables:
#   BENCH_DURATION (ingest seconds per mode, default 20), BENCH_EVENTS (query data size, default 20000000)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m bench.ingest --duration "${BENCH_DURATION:-20}"
$PY -m bench.freshness
$PY -m bench.kafka  # Kafka + PostgreSQL + S3 (needs Java and PostgreSQL 15: make services); BENCH_SECONDS or BENCH_DURATION
$PY -m bench.s3_query  # the seed queries on an S3 warehouse (s3proxy): DuckDB httpfs vs pyarrow, local disk as reference
# the seed's queries and the insights: Headwater vs DuckDB and chdb over plain Parquet (200 M: a year, 1 M people)
$PY -m bench.queries --events "${BENCH_EVENTS:-20000000}" --keep
$PY -m bench.importer
$PY -m bench.analyst --events "${BENCH_EVENTS:-20000000}"  # the demo shop: trend+breakdown, 4-step funnel, 8-week retention, cohort filter; p50/p95
$PY -m bench.maintenance
$PY -m bench.processing  # stream processors: records/s through the runner and TestDriver, HTTP ack -> output latency, state lookups
$PY -m bench.quix_compare  # Headwater processors vs Quix Streams on one Kafka broker (own venv .tools/quix-venv); BENCH_QUIX_RECORDS, BENCH_QUIX_REPEATS
$PY -m bench.sources --lines "${BENCH_SOURCE_LINES:-10000000}"  # file drop (10 M NDJSON lines), Kafka topic, RabbitMQ queue, PMU COBOL frames
$PY -m bench.cobol  # COBOL frames decoded/s (the 200-byte bet frame and the PMU mix)
$PY -m bench.grib  # GRIB grid points/s
$PY -m bench.trusted  # ingest with a tracking plan and every enrichment beside the same load without
$PY -m bench.enrich  # each enrichment stage alone and together, rows/s
$PY -m bench.ga4  # GA4 export import (Parquet, Avro, NDJSON.gz): rows/s, day replaces
$PY -m bench.privacy  # GDPR deletion of 1,000 people from the queries lake (BENCH_EVENTS); restores the lake after
$PY -m bench.isolation  # freshness and /track latency alone and while a compaction, a deletion and 8 heavy queries run
