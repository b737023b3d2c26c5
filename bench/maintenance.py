"""Query latency as small commits pile up, with and without the writer's table maintenance.

The lake writer commits every 500 ms, so a busy day collects thousands of small files and
snapshots. This appends --commits small batches (like the writer does) into two lakes; one runs
maintenance (compaction + snapshot expiry) every --every commits as the writer does between
flushes, the other never does. A query is timed (median of 5) every --every commits.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.common import emit
from headwater.core.events import EVENTS_SCHEMA
from headwater.core.settings import Settings
from headwater.lake.coordination import open_engine
from headwater.lake.layout import file_writers
from headwater.lake.maintenance import Maintenance
from headwater.lake.tables import ensure_tables, open_catalog
from headwater.query.engine import QueryEngine

SQL = "SELECT count(*), count(DISTINCT user_id) FROM events WHERE timestamp >= TIMESTAMP '2026-01-01'"


def small_batch(rng: np.random.Generator, rows: int, first: int) -> pa.Table:
    ts = pa.array(
        np.datetime64("2026-01-01T00:00:00", "us") + rng.integers(0, 86_400_000_000, rows).astype("timedelta64[us]")
    )
    columns: dict[str, Any] = {
        "event_id": pa.array([f"e{first + i}" for i in range(rows)]),
        "type": pa.array(["track"] * rows),
        "event": pa.array(["LOGIN"] * rows),
        "user_id": pa.array([f"u{v}" for v in rng.integers(0, 10_000, rows)]),
        "timestamp": ts,
        "received_at": ts,
        "source": pa.array(["bench"] * rows),
    }
    return pa.Table.from_arrays(
        [columns.get(f.name, pa.nulls(rows, f.type)) for f in EVENTS_SCHEMA], schema=EVENTS_SCHEMA
    )


def latency(engine: QueryEngine) -> float:
    engine.execute(SQL)
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        engine.execute(SQL)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=600)
    parser.add_argument("--rows", type=int, default=2000, help="rows per commit")
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=Path("bench/data"))
    args = parser.parse_args()
    curves: dict[str, list[dict[str, float]]] = {}
    for mode in ("with_maintenance", "without_maintenance"):
        work = args.workdir / f"maintenance-{mode}"
        shutil.rmtree(work, ignore_errors=True)
        settings = Settings(data_dir=work, compact_min_files=24, snapshot_retention_minutes=1)
        tables = ensure_tables(open_catalog(settings))
        maintenance = Maintenance(settings, tables, file_writers(settings, open_engine(settings.effective_catalog_uri)))
        engine = QueryEngine(settings)
        rng = np.random.default_rng(5)
        points = []
        for commit in range(1, args.commits + 1):
            tables["events"].append(small_batch(rng, args.rows, commit * args.rows))
            if mode == "with_maintenance" and commit % 24 == 0:
                maintenance.run()
            if commit % args.every == 0:
                files = len(list(tables["events"].scan().plan_files()))
                snapshots = len(tables["events"].metadata.snapshots)
                points.append(
                    {"commits": commit, "files": files, "snapshots": snapshots, "query_s": round(latency(engine), 4)}
                )
        curves[mode] = points
    emit("maintenance", {"rows_per_commit": args.rows, "sql": SQL, **curves})


if __name__ == "__main__":
    main()
