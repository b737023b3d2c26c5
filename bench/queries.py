"""The seed's three Athena queries and the insights on lolscale-like data: Headwater against DuckDB and
ClickHouse (chdb, in process) over a plain hive-partitioned Parquet copy (the seed's Glue output layout).

Data: --events lolscale events ({"event","userId","dateTime"}, 5 event names, second precision) over --days
days from 2025-01-01 by --users people (defaults: 20 M events, 90 days, 200 k users; from 200 M events on,
365 days and 1 M users). People have Pareto-distributed activity (a few are far more active than most), a
first and a last active day, and events follow the hour of day, the day of the week and slow growth; no
person has two events in one second. Gzip'd NDJSON files, one per day (--file-minutes 60: one per hour, as
a delivery stream leaves them), are loaded the way a user would: `headwater import` (the importer in
process, then its compaction); the layout that import produces is what Headwater is measured on. The
plain copy is DuckDB's COPY of the same files to year=/month=/day= Parquet (zstd).

Each query runs once to warm up, then --runs times; the median is reported ("hot"). Answers are compared
across engines after normalising types. --keep reuses generated files, the lake and the copy;
--reimport reuses the files and the copy but imports again (to measure a new lake layout).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gzip
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import Progress

from bench import insights
from bench.common import ROOT, emit
from headwater.core.settings import Settings
from headwater.lake.importer import Importer
from headwater.lake.tables import ensure_tables, open_catalog
from headwater.query import seed_queries
from headwater.query.engine import QueryEngine

START = dt.date(2025, 1, 1)
EVENT_NAMES = ["LOGIN", "VIEW", "CLICK", "PURCHASE", "LOGOUT"]
EVENT_P = [0.15, 0.40, 0.30, 0.03, 0.12]
HOUR_W = 1.0 + 0.7 * np.cos(2 * np.pi * (np.arange(24) - 20) / 24)  # evening peak, night trough (UTC)


def sizes(events: int, days: int | None, users: int | None) -> tuple[int, int]:
    """Days and people for a data size: the issue's 20 M / 90 days / 200 k, a year and 1 M from 200 M on."""
    big = events >= 200_000_000
    return days or (365 if big else 90), users or (1_000_000 if big else 200_000)


# -- generated lolscale files --------------------------------------------------------------------------


def day_counts(rng: np.random.Generator, events: int, days: int) -> np.ndarray:
    weekday = np.array([(START + dt.timedelta(d)).weekday() for d in range(days)])
    weight = np.where(weekday >= 5, 0.8, 1.0) * (1 + 0.3 * np.arange(days) / days) * rng.uniform(0.95, 1.05, days)
    counts = np.floor(events * weight / weight.sum()).astype(np.int64)
    counts[: events - counts.sum()] += 1
    return counts


def population(rng: np.random.Generator, users: int, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activity weight, first and last active day per person: 40 % active from the start, others join later."""
    weight = rng.pareto(1.5, users) + 1.0
    first = np.where(rng.random(users) < 0.4, 0, rng.integers(0, days, users))
    last = first + rng.exponential(days * 0.6, users).astype(np.int64)
    return weight, first, last


def day_events(
    rng: np.random.Generator, rows: int, day: int, people: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(person, second of day, event index) sorted by time; no person has two events in one second, so
    every engine orders a person's events the same way (journeys, funnels)."""
    weight, first, last = people
    active = np.nonzero((first <= day) & (day <= last))[0]
    cum = np.cumsum(weight[active])
    person = active[np.searchsorted(cum, rng.random(rows) * cum[-1], side="right")]
    hours = np.searchsorted(np.cumsum(HOUR_W) / HOUR_W.sum(), rng.random(rows), side="right")
    second = hours * 3600 + rng.integers(0, 3600, rows)
    while True:
        key = person.astype(np.int64) * 86_400 + second
        _, first_seen = np.unique(key, return_index=True)
        clash = np.ones(rows, dtype=bool)
        clash[first_seen] = False
        if not clash.any():
            break
        second[clash] = rng.integers(0, 86_400, int(clash.sum()))
    order = np.argsort(second, kind="stable")
    names = rng.choice(len(EVENT_NAMES), rows, p=EVENT_P)
    return person[order], second[order], names[order]


def write_day(
    files: Path, day: dt.date, person: np.ndarray, second: np.ndarray, names: np.ndarray, minutes: int
) -> int:
    """One gzip'd NDJSON file per `minutes` of the day, as a delivery stream leaves them; returns raw bytes."""
    stamps = pa.array((np.datetime64(day, "s") + second.astype("timedelta64[s]")).astype("datetime64[s]"))
    lines = pc.binary_join_element_wise(
        '{"event":"', pa.array(np.array(EVENT_NAMES)[names]), '","userId":"user',
        pc.cast(pa.array(person), pa.string()), '","dateTime":"',
        pc.strftime(stamps, format="%Y-%m-%d %H:%M:%S"), '"}\n', "",
    )  # fmt: skip
    ends = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset :]  # the lines are contiguous
    data = lines.buffers()[2].to_pybytes()
    cuts = np.searchsorted(second, np.arange(0, 86_400 + minutes * 60, minutes * 60))
    for window, (start, stop) in enumerate(itertools.pairwise(cuts)):
        if stop > start:
            begin = window * minutes
            with gzip.open(files / f"events-{day}-{begin // 60:02d}{begin % 60:02d}.ndjson.gz", "wb", 6) as out:
                out.write(data[ends[start] : ends[stop]])
    return int(ends[len(lines)] - ends[0])


def generate(files: Path, events: int, days: int, users: int, seed: int, minutes: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    people = population(rng, users, days)
    per_person = np.zeros(users, dtype=np.int64)
    raw = 0
    files.mkdir(parents=True)
    with Progress(transient=True) as progress:
        task = progress.add_task("generating lolscale files", total=events)
        for d, rows in enumerate(day_counts(rng, events, days)):
            day = START + dt.timedelta(d)
            person, second, names = day_events(rng, int(rows), d, people)
            raw += write_day(files, day, person, second, names, minutes)
            per_person += np.bincount(person, minlength=users)
            progress.advance(task, int(rows))
    seen = np.sort(per_person[per_person > 0])[::-1]
    gz = sum(f.stat().st_size for f in files.glob("*.ndjson.gz"))
    return {
        "files": len(list(files.glob("*.ndjson.gz"))), "file_minutes": minutes,
        "ndjson_bytes_per_event": round(raw / events, 2), "gzip_bytes_per_event": round(gz / events, 2),
        "people_with_events": int(seen.size), "events_per_person_median": float(np.median(seen)),
        "events_per_person_max": int(seen[0]),
        "top_1pct_people_share": round(float(seen[: max(1, seen.size // 100)].sum() / events), 3),
    }  # fmt: skip


# -- Headwater: import, layout ---------------------------------------------------------------------------


def import_files(settings: Settings, files: list[Path]) -> dict[str, Any]:
    """What `headwater import FILES...` does: each file through the importer, then its compaction."""
    importer = Importer(settings, source="bench")
    totals: dict[str, int] = {}
    started = time.perf_counter()
    with Progress(transient=True) as progress:
        task = progress.add_task("headwater import", total=len(files))
        for path in files:
            for key, value in importer.import_file(path).items():
                totals[key] = totals.get(key, 0) + value
            progress.advance(task)
    imported = time.perf_counter() - started
    compact = getattr(importer, "compact", None)  # the CLI compacts after importing (since 995db5a)
    compacted = compact() if compact else None
    if hasattr(importer, "close"):
        importer.close()
    elapsed = time.perf_counter() - started
    return {
        "import_s": round(imported, 1), "compact_s": round(elapsed - imported, 1), "total_s": round(elapsed, 1),
        "events_per_s": round(totals.get("events", 0) / elapsed), "events": totals.get("events", 0),
        "quarantined": totals.get("quarantined", 0), "partitions_compacted": compacted,
    }  # fmt: skip


def load_direct(settings: Settings, files: list[Path]) -> dict[str, Any]:
    """What import produces, without its per-row Python validation (for 200 M events and more): each file
    read by pyarrow's JSON reader, mapped to the rows import makes of lolscale events, written and
    committed through the same layout writer (sorted files, rollups), then the same compaction."""
    import pyarrow.json as pajson

    from headwater.core.events import EVENTS_SCHEMA
    from headwater.lake.coordination import open_engine
    from headwater.lake.importer import fingerprint
    from headwater.lake.layout import file_writers

    table = ensure_tables(open_catalog(settings))["events"]
    engine = open_engine(settings.effective_catalog_uri)
    writer = file_writers(settings, engine)["events"]
    received = pa.scalar(dt.datetime.now(dt.UTC).replace(tzinfo=None), pa.timestamp("us"))
    started = time.perf_counter()
    events = 0
    with Progress(transient=True) as progress:
        task = progress.add_task("writing through the layout writer", total=len(files))
        for path in files:
            raw = pajson.read_json(path)
            rows = raw.num_rows
            ids = pc.binary_join_element_wise(
                f"hw-import:{fingerprint(path)}-0-", pc.cast(pa.array(np.arange(1, rows + 1)), pa.string()), ""
            )
            columns = {
                "event_id": ids, "type": pa.array(["track"] * rows), "event": raw.column("event"),
                "user_id": raw.column("userId"),
                "timestamp": pc.cast(raw.column("dateTime"), pa.timestamp("us")),  # the reader parsed the times
                "received_at": pa.array([received.as_py()] * rows, pa.timestamp("us")),
                "source": pa.array(["bench"] * rows),
            }  # fmt: skip
            data = pa.Table.from_arrays(
                [columns.get(f.name, pa.nulls(rows, f.type)) for f in EVENTS_SCHEMA], schema=EVENTS_SCHEMA
            )
            writer.append(table, writer.write(table, data), {})
            events += rows
            progress.advance(task)
    loaded = time.perf_counter() - started
    importer = Importer(settings, source="bench")
    compacted = importer.compact()
    importer.close()
    engine.dispose()
    elapsed = time.perf_counter() - started
    return {
        "load": "direct (layout writer, no per-row validation)", "import_s": round(loaded, 1),
        "compact_s": round(elapsed - loaded, 1), "total_s": round(elapsed, 1),
        "events_per_s": round(events / elapsed), "events": events, "quarantined": 0,
        "partitions_compacted": compacted,
    }  # fmt: skip


def layout(settings: Settings) -> dict[str, Any]:
    """Data files of `events` as the current snapshot's scan plan lists them."""
    table = ensure_tables(open_catalog(settings))["events"]
    per_day: dict[str, int] = {}
    size = rows = 0
    tasks = list(table.scan().plan_files())
    for task in tasks:
        per_day[str(task.file.partition)] = per_day.get(str(task.file.partition), 0) + 1
        size += task.file.file_size_in_bytes
        rows += task.file.record_count
    counts = sorted(per_day.values()) or [0]
    return {
        "data_files": len(tasks), "day_partitions": len(per_day), "files_per_day_min": counts[0],
        "files_per_day_median": statistics.median(counts), "files_per_day_max": counts[-1], "rows": rows,
        "rows_per_file_median": statistics.median([t.file.record_count for t in tasks]) if tasks else 0,
        "bytes_per_event": round(size / rows, 2) if rows else None, "data_bytes": size,
        "data_dir_bytes": sum(p.stat().st_size for p in settings.data_dir.rglob("*") if p.is_file()),
    }  # fmt: skip


# -- the plain copy and the peers --------------------------------------------------------------------------


def hive_copy(files: list[Path], hive: Path, events: int) -> dict[str, Any]:
    """DuckDB COPY of the generated files to year=/month=/day= Parquet (zstd), a month of files at a time."""
    con = duckdb.connect()
    started = time.perf_counter()
    months: dict[str, list[str]] = {}
    for path in files:
        months.setdefault(path.name[7:14], []).append(str(path.resolve()))
    for names in months.values():
        con.execute(
            "COPY (SELECT *, year(timestamp) AS year, month(timestamp) AS month, day(timestamp) AS day FROM ("
            "SELECT userId AS user_id, event, CAST(dateTime AS TIMESTAMP) AS timestamp FROM read_json(?, "
            "format = 'newline_delimited', columns = {event: 'VARCHAR', userId: 'VARCHAR', dateTime: 'VARCHAR'}))) "
            f"TO '{hive.resolve()}' (FORMAT parquet, PARTITION_BY (year, month, day), APPEND true, COMPRESSION zstd)",
            [names],
        )
    parquet = list(hive.rglob("*.parquet"))
    return {
        "copy_s": round(time.perf_counter() - started, 1), "files": len(parquet),
        "bytes_per_event": round(sum(p.stat().st_size for p in parquet) / events, 2),
    }  # fmt: skip


# year=/month=/day= as columns; the copy's columns hold no NULLs, so they are read as not Nullable
CH_SETTINGS = "use_hive_partitioning = 1, session_timezone = 'UTC', schema_inference_make_columns_nullable = 0"


class Peers:
    """DuckDB and chdb over the hive copy: the seeds' own SQL, and a view `events` for the insights."""

    def __init__(self, hive: Path) -> None:
        import chdb.session  # the `bench` dependency group: uv sync --group bench

        glob = f"{hive.resolve()}/**/*.parquet"
        self.duck = duckdb.connect()
        self.duck_source = f"read_parquet('{glob}', hive_partitioning = true)"
        self.duck.execute(
            "CREATE VIEW events AS SELECT user_id, CAST(NULL AS VARCHAR) AS anonymous_id, event, timestamp, "
            f"'' AS event_id FROM {self.duck_source}"
        )
        self.ch = chdb.session.Session()
        self.ch_source = f"file('{glob}', Parquet)"

    def duckdb_rows(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        cursor = self.duck.execute(sql)
        return [d[0] for d in cursor.description], [list(r) for r in cursor.fetchall()]

    def duckdb_values(self, sql: str) -> list[list[Any]]:
        return self.duckdb_rows(sql)[1]

    def chdb_rows(self, sql: str) -> list[list[Any]]:
        table = self.ch.query(f"{sql} SETTINGS {CH_SETTINGS}", "ArrowTable")
        return [list(r.values()) for r in table.to_pylist()]


def norm(value: Any) -> Any:
    """One representation per value whatever the engine returned: UTC-naive times, dates, ints, rounded floats."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day).isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return int(value) if value.is_integer() else float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    return value


def timed(run: Callable[[], Any], runs: int) -> tuple[float, Any]:
    result = run()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def same(a: Any, b: Any) -> bool:
    return bool(norm(a) == norm(b))


def row(
    seconds: tuple[float, float, float], same_duck: bool, same_ch: bool, answered_by: str | None, note: str = ""
) -> dict[str, Any]:
    """One line of the table: Headwater, DuckDB and chdb seconds, ratios, whether the answers agree."""
    hw, duck, ch = seconds
    return {
        "headwater_s": round(hw, 4), "duckdb_parquet_s": round(duck, 4), "chdb_s": round(ch, 4),
        "headwater_vs_duckdb": round(hw / duck, 3) if duck else None,
        "headwater_vs_chdb": round(hw / ch, 3) if ch else None,
        "same_answer": same_duck and same_ch, "same_as_duckdb": same_duck, "same_as_chdb": same_ch,
        "answered_by": answered_by, "note": note,
    }  # fmt: skip


def seed_cases(engine: QueryEngine, peers: Peers, month: dt.date, runs: int) -> dict[str, dict[str, Any]]:
    duck_src, ch_src = peers.duck_source, peers.ch_source
    cases = {
        f"distinct_users_in_month_{month:%Y_%m}": (
            seed_queries.DISTINCT_USERS_IN_MONTH.format(month=f"{month:%Y-%m}"),
            seed_queries.HIVE_DISTINCT_USERS_IN_MONTH.format(
                source=duck_src, year=month.year, month_number=month.month
            ),
            f"SELECT uniqExact(user_id) FROM {ch_src} WHERE year = {month.year} AND month = {month.month}",
        ),
        "events_by_day_all_partitions": (
            seed_queries.EVENTS_BY_DAY,
            seed_queries.HIVE_EVENTS_BY_DAY.format(source=duck_src),
            f"SELECT makeDate(year, month, day) AS d, count() FROM {ch_src} GROUP BY year, month, day ORDER BY d",
        ),
        "distinct_users_by_year_month": (
            seed_queries.DISTINCT_USERS_BY_MONTH,
            seed_queries.HIVE_DISTINCT_USERS_BY_MONTH.format(source=duck_src),
            f"SELECT year, month, uniqExact(user_id) FROM {ch_src} GROUP BY year, month ORDER BY year, month",
        ),
    }
    out = {}
    for name, (ours, duck_sql, ch_sql) in cases.items():
        result: list[Any] = []

        def headwater(sql: str = ours, keep: list[Any] = result) -> list[list[Any]]:
            answer = engine.execute(sql, max_rows=100_000)
            keep[:] = [answer]
            return answer.rows

        hw_s, hw_rows = timed(headwater, runs)
        duck = timed(functools.partial(peers.duckdb_values, duck_sql), runs)
        ch = timed(functools.partial(peers.chdb_rows, ch_sql), runs)
        answered_by = getattr(result[0], "answered_by", None)
        out[name] = row((hw_s, duck[0], ch[0]), same(hw_rows, duck[1]), same(hw_rows, ch[1]), answered_by)
        out[name]["rows"] = len(hw_rows)
    return out


def markdown(doc: dict[str, Any]) -> str:
    def sec(value: float) -> str:
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"

    hw, layout_, copy = doc["headwater_import"], doc["headwater_layout"], doc["hive_copy"]
    lines = [
        f"{doc['events']:,} events, {doc['days']} days from {START}, {doc['users']:,} people; hot, median of "
        f"{doc['runs']}; commit {doc['commit']}",
        f"import: {hw['total_s']} s ({hw['events_per_s']:,} events/s); {layout_['data_files']} files, "
        f"{layout_['files_per_day_median']} per day (max {layout_['files_per_day_max']}), "
        f"{layout_['bytes_per_event']} B/event; plain Parquet copy {copy['bytes_per_event']} B/event, "
        f"gzip'd NDJSON {doc['data']['gzip_bytes_per_event']} B/event",
        "",
        "| query | Headwater | answered by | DuckDB + Parquet | chdb + Parquet | vs DuckDB | vs chdb | same answer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["queries"].items():
        same = "yes" if r["same_answer"] else f"duckdb {r['same_as_duckdb']}, chdb {r['same_as_chdb']}"
        lines.append(
            f"| {name} | {sec(r['headwater_s'])} | {r['answered_by']} | {sec(r['duckdb_parquet_s'])} | "
            f"{sec(r['chdb_s'])} | {r['headwater_vs_duckdb']} | {r['headwater_vs_chdb']} | {same} |"
        )
    notes = [f"- {name}: {r['note']}" for name, r in doc["queries"].items() if r["note"]]
    return "\n".join([*lines, "", *notes])


def commit() -> str:
    """The commit of the code that ran; headwater imported from elsewhere (an older tree) names that tree."""
    import headwater

    if not Path(headwater.__file__).resolve().is_relative_to(ROOT):
        return f"headwater from {Path(headwater.__file__).resolve().parent}"
    head = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True, check=False
    )
    return head.stdout.strip() + ("+uncommitted src changes" if dirty.stdout.strip() else "")


def prepare(args: argparse.Namespace) -> tuple[Path, Settings, dict[str, Any]]:
    """Generate, import and copy as needed; returns the work dir, Headwater's settings and the data facts."""
    days, users = sizes(args.events, args.days, args.users)
    work = args.workdir / f"queries-{args.events}-{days}d-{users}u-{args.file_minutes}m"
    files_dir, hive, lake = work / "files", work / "hive", work / "headwater"
    settings = Settings(data_dir=lake, query_max_rows=200_000, query_timeout_s=3600)
    facts_path = work / "facts.json"
    facts: dict[str, Any] = orjson.loads(facts_path.read_bytes()) if args.keep and facts_path.exists() else {}
    if "data" not in facts:
        shutil.rmtree(work, ignore_errors=True)
        started = time.perf_counter()
        facts = {"data": generate(files_dir, args.events, days, users, args.seed, args.file_minutes)}
        facts["data"]["generate_s"] = round(time.perf_counter() - started, 1)
        facts_path.write_bytes(orjson.dumps(facts))
    files = sorted(files_dir.glob("*.ndjson.gz"))
    if "hive_copy" not in facts:
        shutil.rmtree(hive, ignore_errors=True)
        facts["hive_copy"] = hive_copy(files, hive, args.events)
        facts_path.write_bytes(orjson.dumps(facts))
    if args.reimport or "headwater_import" not in facts:
        facts.pop("headwater_import", None)
        facts_path.write_bytes(orjson.dumps(facts))
        shutil.rmtree(lake, ignore_errors=True)
        load = load_direct if args.load == "direct" else import_files
        facts["headwater_import"] = load(settings, files)
        facts["commit_imported"] = commit()
        facts_path.write_bytes(orjson.dumps(facts))
    return work, settings, {"days": days, "users": users, **facts}


def arguments(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--days", type=int, default=None, help="default 90, or 365 from 200 M events on")
    parser.add_argument("--users", type=int, default=None, help="default 200 k, or 1 M from 200 M events on")
    parser.add_argument(
        "--file-minutes", type=int, default=1440, help="minutes of events per generated file (60: hourly)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path("bench/data"))
    parser.add_argument("--keep", action="store_true", help="reuse the files, lake and copy made by an earlier run")
    parser.add_argument("--reimport", action="store_true", help="with --keep: import the kept files again")
    parser.add_argument(
        "--load", choices=["import", "direct"], default="import",
        help="import: `headwater import` as a user would; direct: the same layout writer without per-row "
        "validation (200 M events import for hours on 2 cores)",
    )  # fmt: skip
    parser.add_argument("--name", default=None, help="results file name (default queries, or queries-EVENTS)")
    return parser


def main() -> None:
    args = arguments(__doc__).parse_args()
    work, settings, facts = prepare(args)
    days, users = facts["days"], facts["users"]
    print(f"data: {args.events:,} events, {days} days from {START}, {users:,} people in {work}", file=sys.stderr)
    engine = QueryEngine(settings)
    peers = Peers(work / "hive")
    month = START + dt.timedelta(days // 2)
    queries = seed_cases(engine, peers, month.replace(day=1), args.runs)
    queries.update(insights.run_insights(engine, peers, args.runs))
    doc = {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "events": args.events, "days": days, "users": users, "seed": args.seed, "runs": args.runs,
        "commit": commit(), "commit_imported": facts.get("commit_imported"), "data": facts["data"],
        "headwater_import": facts["headwater_import"], "headwater_layout": layout(settings),
        "hive_copy": facts["hive_copy"], "queries": queries,
    }  # fmt: skip
    emit(args.name or ("queries" if args.events == 20_000_000 else f"queries-{args.events}"), doc)
    print(markdown(doc), file=sys.stderr)
    engine.close()


if __name__ == "__main__":
    main()
