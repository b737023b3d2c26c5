"""A GDPR deletion of --delete people (default 1,000) from the lolscale lake of bench/queries.py
(BENCH_EVENTS / --events events, default 20 M; 200 M: a year, 1 M people): time to complete, files and bytes
rewritten, and the seed queries before and after.

The lake is the one `python -m bench.queries --events N --keep` builds (built first when missing; --relayout
builds it again with today's layout writer), with its old snapshots expired first as a running platform keeps
them (snapshot_retention_minutes). It is used in place and restored afterwards: the warehouse is hard-linked
aside (data files are immutable, deletions only unlink them) and the catalog database copied, then both are put
back, so the next run starts from the same lake.

Also measured, for the choices in the README ("Privacy and retention"):
- merge-on-read instead of copy-on-write: the time to locate the rows (read the id columns of the candidate files
  and compute the positions a position-delete file would list), which is all a merge-on-read delete would
  write before reporting the rows invisible — but not gone: their bytes stay until a rewrite;
- a Parquet bloom filter on `user_id`: bytes it adds to a day file, against the rollups' exact people sets that
  already say which files hold a person.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.common import ROOT, emit
from bench.queries import sizes
from headwater.core.settings import Settings
from headwater.lake.maintenance import Maintenance
from headwater.lake.rewrite import live_files
from headwater.lake.tables import open_catalog
from headwater.privacy.worker import PrivacyWorker
from headwater.query import seed_queries
from headwater.query.engine import QueryEngine


def lake_dir(events: int) -> Path:
    days, users = sizes(events, None, None)
    return ROOT / "bench" / "data" / f"queries-{events}-{days}d-{users}u-1440m" / "headwater"


def query_times(settings: Settings, runs: int) -> dict[str, float]:
    engine = QueryEngine(settings)
    try:
        out = {}
        queries = {
            "distinct_users_in_month": seed_queries.DISTINCT_USERS_IN_MONTH.format(month="2025-03"),
            "events_by_day": seed_queries.EVENTS_BY_DAY,
            "distinct_users_by_month": seed_queries.DISTINCT_USERS_BY_MONTH,
            "raw_scan": "SELECT event, count(*) FROM events WHERE user_id LIKE 'user12%' GROUP BY 1",
        }
        for name, sql in queries.items():
            engine.execute(sql)
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                engine.execute(sql)
                times.append(time.perf_counter() - started)
            out[name] = round(statistics.median(times) * 1000, 1)
        return out
    finally:
        engine.close()


def locate(settings: Settings, ids: list[str]) -> dict[str, Any]:
    """What merge-on-read would do first: positions of the people's rows in every file that holds some."""
    table = open_catalog(settings).load_table("headwater.events")
    wanted = pa.array(ids)
    started = time.perf_counter()
    positions = files = 0
    for data_file in live_files(table):
        with table.io.new_input(data_file.file_path).open() as stream:
            column = pq.read_table(stream, columns=["user_id"]).column("user_id")
        found = pc.indices_nonzero(pc.fill_null(pc.is_in(column, value_set=wanted), False))
        if len(found):
            files += 1
            positions += len(found)
    return {"locate_s": round(time.perf_counter() - started, 2), "files_with_rows": files, "positions": positions}


def bloom_cost(settings: Settings) -> dict[str, Any]:
    table = open_catalog(settings).load_table("headwater.events")
    biggest = max(live_files(table), key=lambda f: f.file_size_in_bytes)
    with table.io.new_input(biggest.file_path).open() as stream:
        rows = pq.read_table(stream)
    sink, bloom = pa.BufferOutputStream(), pa.BufferOutputStream()
    pq.write_table(rows, sink, compression="zstd")
    pq.write_table(
        rows, bloom, compression="zstd", bloom_filter_options={"user_id": {"ndv": len(pc.unique(rows["user_id"]))}}
    )
    plain, with_bloom = sink.getvalue().size, bloom.getvalue().size
    return {"file_rows": rows.num_rows, "bytes_without": plain, "bytes_with_user_id_bloom": with_bloom,
            "overhead_pct": round(100 * (with_bloom - plain) / plain, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", "20000000")))
    parser.add_argument("--delete", type=int, default=1000, help="people to delete")
    parser.add_argument("--runs", type=int, default=3, help="hot runs per query (median)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--relayout", action="store_true",
        help="first load the lake again with today's layout writer (a lake bench.queries made with an older one)",
    )  # fmt: skip
    args = parser.parse_args()
    lake = lake_dir(args.events)
    if args.relayout or not (lake / "catalog.db").exists():
        from bench.queries import arguments, prepare

        prepare(arguments(None).parse_args(["--events", str(args.events), "--keep", "--reimport", "--load", "direct"]))
    backup = lake.with_name("headwater.privacy-backup")
    shutil.rmtree(backup, ignore_errors=True)
    with sqlite3.connect(lake / "catalog.db") as conn:  # the whole catalog in one file, no write-ahead log
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    backup.mkdir()
    subprocess.run(["cp", "-al", str(lake / "warehouse"), str(backup / "warehouse")], check=True)  # immutable files
    shutil.copy2(lake / "catalog.db", backup / "catalog.db")  # a copy: SQLite changes it in place
    try:
        result = run(args, lake)
    finally:
        shutil.rmtree(lake)
        backup.rename(lake)
    emit("privacy" if args.events == 20_000_000 else f"privacy-{args.events}", result)


def run(args: argparse.Namespace, lake: Path) -> dict[str, Any]:
    _, users = sizes(args.events, None, None)
    settings = Settings(data_dir=lake, privacy_expire_after_minutes=0, query_timeout_s=3600)
    rng = np.random.default_rng(args.seed)
    ids = [f"user{n}" for n in rng.choice(users, args.delete, replace=False)]
    table = open_catalog(settings).load_table("headwater.events")
    files = live_files(table)
    before = {"files": len(files), "bytes": sum(f.file_size_in_bytes for f in files),
              "rows": sum(f.record_count for f in files)}  # fmt: skip
    expired = Maintenance(settings, {"events": table}, {}).expire("events")  # as a running platform keeps it
    queries_before = query_times(settings, args.runs)
    merge_on_read = locate(settings, ids)
    worker = PrivacyWorker(settings)
    try:
        request = worker.store.create(ids, [], "bench")
        started = time.perf_counter()
        done = worker.until_done(request.id)
        elapsed = time.perf_counter() - started
    finally:
        worker.close()
    public = done.public()
    events = public["tables"]["events"]
    queries_after = query_times(settings, args.runs)
    engine = QueryEngine(settings)
    try:
        left = engine.execute(f"SELECT count(*) FROM events WHERE user_id IN ({', '.join(repr(i) for i in ids)})").rows
        total = engine.execute("SELECT count(*) FROM events").rows[0][0]
    finally:
        engine.close()
    assert left == [[0]] and total == before["rows"] - events["rows_removed"], (left, total)
    return {
        "events": args.events, "people_deleted": args.delete, "state": done.state,
        "seconds_to_complete": round(elapsed, 2), "seconds_by_step": done.progress.get("seconds", {}),
        "rows_removed": events["rows_removed"], "files_in_table": before["files"], "files_read": events["files_read"],
        "files_rewritten": events["files_rewritten"], "bytes_in_table": before["bytes"],
        "bytes_read": events["bytes_read"], "bytes_written": events["bytes_written"],
        "commit_conflicts": events["conflicts"], "old_snapshots_expired_first": expired,
        "queries_ms_before": queries_before, "queries_ms_after": queries_after,
        "merge_on_read_alternative": merge_on_read, "bloom_filter": bloom_cost(settings),
    }  # fmt: skip


if __name__ == "__main__":
    main()
