"""The seed's three Athena queries on generated data: Headwater (sandboxed DuckDB over Iceberg)
against DuckDB over a plain hive-partitioned Parquet copy (the seed's Glue output layout).

Data: --events rows over one year (2025), --users distinct users, written straight into the
`events` Iceberg table month by month (day partitions, sorted by time) and copied with DuckDB
to year=/month=/day= Parquet. Each query runs once to warm up, then --runs times; the median is
reported ("hot").
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import Progress

from bench.common import emit
from headwater.core.events import EVENTS_SCHEMA
from headwater.core.settings import Settings
from headwater.lake.tables import ensure_tables, open_catalog
from headwater.query import seed_queries
from headwater.query.engine import QueryEngine

EVENT_NAMES = np.array(["LOGIN", "VIEW", "CLICK", "PURCHASE", "LOGOUT"])


def month_table(rng: np.random.Generator, month: int, rows: int, users: int, first_id: int) -> pa.Table:
    start = np.datetime64(f"2025-{month:02d}-01T00:00:00", "s")
    end = (
        np.datetime64(f"2025-{month + 1:02d}-01T00:00:00", "s")
        if month < 12
        else np.datetime64("2026-01-01T00:00:00", "s")
    )
    seconds = np.sort(rng.integers(0, int((end - start) / np.timedelta64(1, "s")), rows))
    ts = pa.array((start + seconds.astype("timedelta64[s]")).astype("datetime64[us]")).cast(pa.timestamp("us"))
    user_ids = pc.binary_join_element_wise("user", pc.cast(pa.array(rng.integers(0, users, rows)), pa.string()), "")
    event_ids = pc.binary_join_element_wise(
        "bench-", pc.cast(pa.array(np.arange(first_id, first_id + rows)), pa.string()), ""
    )
    columns: dict[str, Any] = {
        "event_id": event_ids,
        "type": pa.array(["track"] * rows),
        "event": pa.array(EVENT_NAMES[rng.integers(0, len(EVENT_NAMES), rows)]),
        "user_id": user_ids,
        "timestamp": ts,
        "received_at": ts,
        "source": pa.array(["bench"] * rows),
    }
    arrays = [columns.get(f.name, pa.nulls(rows, f.type)) for f in EVENTS_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)


def generate(settings: Settings, hive_dir: Path, events: int, users: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = ensure_tables(open_catalog(settings))["events"]
    con = duckdb.connect()
    per_month = [events // 12 + (1 if m < events % 12 else 0) for m in range(12)]
    first = 0
    with Progress() as progress:
        task = progress.add_task("generating", total=events)
        for month, rows in enumerate(per_month, start=1):
            for offset in range(0, rows, 5_000_000):  # bounded memory for --events 200000000
                chunk = month_table(rng, month, min(5_000_000, rows - offset), users, first)
                first += chunk.num_rows
                table.append(chunk)
                con.register("chunk", chunk)
                con.execute(
                    f"COPY (SELECT user_id, event, timestamp, year(timestamp) AS year, month(timestamp) AS month, "
                    f"day(timestamp) AS day FROM chunk) TO '{hive_dir}' "
                    f"(FORMAT parquet, PARTITION_BY (year, month, day), APPEND true, COMPRESSION zstd)"
                )
                con.unregister("chunk")
                progress.advance(task, chunk.num_rows)


def timed(run: Any, runs: int) -> tuple[float, Any]:
    result = run()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("bench/data"))
    parser.add_argument("--keep", action="store_true", help="reuse data generated earlier with the same --events")
    args = parser.parse_args()
    work = args.workdir / f"queries-{args.events}-{args.users}"
    hive_dir = work / "hive"
    settings = Settings(data_dir=work / "headwater", query_max_rows=100_000, query_timeout_s=3600)
    if not (args.keep and (work / "done").exists()):
        shutil.rmtree(work, ignore_errors=True)
        hive_dir.mkdir(parents=True)
        started = time.perf_counter()
        generate(settings, hive_dir.resolve(), args.events, args.users, seed=42)
        (work / "done").write_text(f"{time.perf_counter() - started:.1f}")
    engine = QueryEngine(settings)
    plain = duckdb.connect()
    source = f"read_parquet('{hive_dir.resolve()}/**/*.parquet', hive_partitioning = true)"
    cases = {
        "distinct_users_in_month": (
            seed_queries.DISTINCT_USERS_IN_MONTH.format(month="2025-06"),
            seed_queries.HIVE_DISTINCT_USERS_IN_MONTH.format(source=source, year=2025, month_number=6),
        ),
        "events_by_day_all_partitions": (
            seed_queries.EVENTS_BY_DAY,
            seed_queries.HIVE_EVENTS_BY_DAY.format(source=source),
        ),
        "distinct_users_by_year_month": (
            seed_queries.DISTINCT_USERS_BY_MONTH,
            seed_queries.HIVE_DISTINCT_USERS_BY_MONTH.format(source=source),
        ),
    }
    results: dict[str, Any] = {}
    for name, (ours, theirs) in cases.items():
        ours_s, ours_rows = timed(lambda sql=ours: engine.execute(sql, max_rows=100_000).rows, args.runs)
        plain_s, plain_rows = timed(lambda sql=theirs: plain.execute(sql).fetchall(), args.runs)
        same = [list(map(str, r)) for r in ours_rows] == [list(map(str, r)) for r in plain_rows]
        results[name] = {
            "headwater_s": round(ours_s, 4),
            "hive_parquet_duckdb_s": round(plain_s, 4),
            "ratio": round(ours_s / plain_s, 2) if plain_s else None,
            "rows": len(ours_rows),
            "same_answer": same,
        }
    emit(
        "queries" if (args.events, args.users) == (20_000_000, 1_000_000) else f"queries-{args.events}-{args.users}",
        {"events": args.events, "users": args.users, "runs": args.runs,
         "generate_s": float((work / "done").read_text()), "queries": results},
    )  # fmt: skip


if __name__ == "__main__":
    main()
