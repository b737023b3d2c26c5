"""The seed's three queries on a lake in S3 (s3proxy on this machine) against the same lake on local
disk, and DuckDB's httpfs (what Headwater uses) against pyarrow's S3 filesystem handed to DuckDB.

Data: BENCH_S3_EVENTS rows over 2025 (default 2 M), written month by month into `events` with a
PostgreSQL catalog and an s3:// warehouse, and again into a local SQLite catalog. Each query runs
once to warm up, then BENCH_RUNS times; the median is reported. s3proxy stores objects on the
local disk, so this measures the S3 protocol path (HTTP requests, range reads), not a network.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.dataset as ds
from tests.services import PostgresServer, S3Server

from bench.common import emit
from bench.queries import month_table
from headwater.core.settings import Settings
from headwater.lake.tables import close_catalog, ensure_tables, open_catalog
from headwater.query import seed_queries
from headwater.query.engine import QueryEngine

QUERIES = {
    "distinct users in one month": seed_queries.DISTINCT_USERS_IN_MONTH.format(month="2025-06"),
    "event count by day, all partitions": seed_queries.EVENTS_BY_DAY,
    "distinct users by year and month": seed_queries.DISTINCT_USERS_BY_MONTH,
}


def fill(settings: Settings, events: int, users: int) -> None:
    rng = np.random.default_rng(7)
    catalog = open_catalog(settings)
    table = ensure_tables(catalog)["events"]
    first = 0
    for month in range(1, 13):
        chunk = month_table(rng, month, events // 12, users, first)
        first += chunk.num_rows
        table.append(chunk)
    close_catalog(catalog)


def timed(run: Any, runs: int) -> float:
    run()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples), 3)


def headwater_times(settings: Settings, runs: int) -> dict[str, float]:
    engine = QueryEngine(settings)
    try:
        return {name: timed(lambda sql=sql: engine.execute(sql, max_rows=1000), runs) for name, sql in QUERIES.items()}
    finally:
        engine.close()


def pyarrow_times(settings: Settings, s3: S3Server, runs: int) -> dict[str, float]:
    """pyarrow's S3 filesystem over the same files (from the same scan plan), scanned by DuckDB."""
    catalog = open_catalog(settings)
    table = catalog.load_table("headwater.events")
    files = [task.file.file_path.removeprefix("s3://") for task in table.scan().plan_files()]
    close_catalog(catalog)
    dataset = ds.dataset(files, format="parquet", filesystem=s3.filesystem())
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", dataset)
    try:
        return {name: timed(lambda sql=sql: con.execute(sql).fetchall(), runs) for name, sql in QUERIES.items()}
    finally:
        con.close()


def main() -> None:
    events = int(os.environ.get("BENCH_S3_EVENTS", "2000000"))
    users = int(os.environ.get("BENCH_S3_USERS", "100000"))
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    os.environ["AWS_REQUEST_CHECKSUM_CALCULATION"] = "WHEN_REQUIRED"
    os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "WHEN_REQUIRED"
    with tempfile.TemporaryDirectory(prefix="hw-s3-bench-") as tmp:
        root = Path(tmp)
        postgres = PostgresServer(root / "pg")
        s3 = S3Server(root / "s3")
        try:
            postgres.start()
            s3.start()
            s3.create_bucket("bench")
            Settings.config_file = None
            remote = Settings(
                data_dir=root / "remote",
                catalog_uri=postgres.create_database("bench"),
                warehouse="s3://bench/wh",
                s3_endpoint=s3.endpoint,
                s3_access_key_id=s3.access_key,
                s3_secret_access_key=s3.secret_key,
                s3_region=s3.region,
            )
            local = Settings(data_dir=root / "local")
            started = time.perf_counter()
            fill(remote, events, users)
            fill(local, events, users)
            load_s = round(time.perf_counter() - started, 1)
            result = {
                "events": events,
                "users": users,
                "runs": runs,
                "load_both_lakes_s": load_s,
                "local_disk_duckdb": headwater_times(local, runs),
                "s3_duckdb_httpfs": headwater_times(remote, runs),
                "s3_pyarrow_filesystem": pyarrow_times(remote, s3, runs),
                "note": "s3proxy (filesystem-nio2 provider) on the same 2-core machine; hot, median",
            }
        finally:
            s3.stop()
            postgres.close()
    emit("s3_query", result)


if __name__ == "__main__":
    main()
