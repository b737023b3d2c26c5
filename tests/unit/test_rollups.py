"""Rollup and metadata answers equal raw scans: live ingestion with late events, imports, compactions and
file rewrites (what a deletion does) interleaved; random queries of the supported shapes; fallbacks."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.insights.engine import InsightEngine
from headwater.lake.importer import Importer
from headwater.lake.maintenance import Maintenance
from headwater.lake.writer import GROUP, LakeWriter
from headwater.log.sqlite import SqliteLog
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings

EVENTS = ["LOGIN", "VIEW", "CLICK", "PURCHASE"]
DAYS = ["2026-01-13", "2026-01-14", "2026-01-15", "2026-01-16", "2026-02-01"]


def raw_event(rng: random.Random, day: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": rng.choice(EVENTS),
        "time": f"{day or rng.choice(DAYS)} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
    }
    if rng.random() < 0.8:
        event["userId"] = f"u{rng.randint(0, 60)}"
    if rng.random() < 0.4 or "userId" not in event:
        event["anonymousId"] = f"a{rng.randint(0, 40)}"
    return event


def envelope(event: dict[str, Any]) -> bytes:
    return orjson.dumps({"m": {"src": "t", "ep": "track-raw", "ra": 1_768_471_200_000}, "e": event})


def pump(writer: LakeWriter) -> None:
    while batch := writer.consumer.poll(100_000, 0):
        writer.add(batch)
    writer.flush()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A lake built the ways a real one is: live flushes (with late events), an import, compaction, and a
    rewrite of one file without some person's rows (as a deletion does)."""
    data_dir = tmp_path_factory.mktemp("rollups")
    settings = make_settings(data_dir, compact_min_files=3)
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    producer = log.producer()
    writer = LakeWriter(settings, log.consumer(GROUP), log)
    rng = random.Random(7)
    for _ in range(6):  # live rounds, today's day plus late events for earlier days
        batch = [raw_event(rng, "2026-01-16") for _ in range(40)] + [raw_event(rng) for _ in range(10)]
        producer.append([(b"k", envelope(e)) for e in batch]).result()
        pump(writer)
    backfill = data_dir / "backfill.ndjson"
    backfill.write_bytes(b"\n".join(orjson.dumps(raw_event(rng)) for _ in range(500)))
    importer = Importer(settings, workers=1)
    importer.import_file(backfill)
    importer.close()
    maintenance = Maintenance(settings, writer.tables, writer.files)
    writer.tables["events"].refresh()  # the import committed meanwhile
    assert maintenance.compact("events") >= 1
    table = writer.tables["events"]
    victim = next(t.file for t in table.scan().plan_files() if t.file.record_count > 20)
    with table.io.new_input(victim.file_path).open() as stream:
        rows = pq.read_table(stream)
    kept = rows.filter(pc.invert(pc.fill_null(pc.equal(rows.column("user_id"), "u1"), False)))
    files = writer.files["events"]
    files.replace(table, [victim], files.write(table, kept), {})
    for _ in range(2):  # more live rounds after the compaction
        producer.append([(b"k", envelope(raw_event(rng))) for _ in range(30)]).result()
        pump(writer)
    producer.close()
    fast = QueryEngine(settings)
    raw = QueryEngine(make_settings(data_dir, query_fast_path=False))
    yield fast, raw
    fast.close()
    raw.close()


def same(lake: Any, sql: str) -> str:
    fast, raw = lake
    ours, theirs = fast.execute(sql, max_rows=10_000), raw.execute(sql, max_rows=10_000)
    assert theirs.answered_by == "raw"
    assert (ours.columns, ours.types) == (theirs.columns, theirs.types), sql
    assert ours.rows == theirs.rows, sql
    return ours.answered_by


SEED = [
    ("SELECT count(DISTINCT user_id) FROM events WHERE timestamp >= TIMESTAMP '2026-01-01 00:00:00' "
     "AND timestamp < TIMESTAMP '2026-01-01 00:00:00' + INTERVAL 1 MONTH", "rollup"),
    ("SELECT CAST(timestamp AS DATE) AS day, count(*) AS events FROM events GROUP BY day ORDER BY day", "metadata"),
    ("SELECT year(timestamp) AS year, month(timestamp) AS month, count(DISTINCT user_id) AS users "
     "FROM events GROUP BY year, month ORDER BY year, month", "rollup"),
    ("SELECT count(*), min(timestamp), max(timestamp) FROM events", "metadata"),
    ("SELECT event, count(*) AS n, count(DISTINCT coalesce(user_id, anonymous_id)) AS people FROM events "
     "WHERE timestamp >= DATE '2026-01-14' AND timestamp < '2026-01-16' GROUP BY event ORDER BY n DESC, event",
     "rollup"),
    ("SELECT hour(timestamp) AS h, event, count(*) FROM events WHERE event IN ('LOGIN', 'VIEW') "
     "GROUP BY ALL ORDER BY 1, 2", "rollup"),
    ("SELECT date_trunc('week', timestamp) AS w, count(DISTINCT user_id) FROM events GROUP BY w ORDER BY w", "rollup"),
    ("SELECT count(DISTINCT user_id) FROM events WHERE timestamp >= '2030-01-01'", "rollup"),
    ("SELECT dayofweek(timestamp) d, count(*) c FROM events GROUP BY d ORDER BY c DESC, d LIMIT 2 OFFSET 1",
     "metadata"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "path"), SEED)
def test_fast_answers_equal_the_raw_scan(lake: Any, sql: str, path: str) -> None:
    assert same(lake, sql) == path


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM events WHERE timestamp >= '2026-01-14 10:30:00'",  # cuts an hour
        "SELECT count(DISTINCT user_id) FROM events WHERE timestamp > '2026-01-14'",  # > cuts a bucket
        "SELECT hour(timestamp), count(DISTINCT user_id) FROM events GROUP BY 1 ORDER BY 1",  # people per hour
        "SELECT source, count(*) FROM events GROUP BY source ORDER BY source",  # a column rollups do not hold
        "SELECT count(DISTINCT anonymous_id) FROM events",
        "SELECT count(*) FROM events WHERE user_id = 'u3'",
        "SELECT CAST(timestamp AS DATE) d, count(*) FROM events GROUP BY d HAVING count(*) > 5 ORDER BY d",
        "SELECT count(*) FROM (SELECT * FROM events)",
        "SELECT hour(timestamp) AS h, min(timestamp) FROM events GROUP BY h ORDER BY h",  # bounds are per day
        "SELECT year(timestamp) AS anonymous_id, count(*) c FROM events GROUP BY anonymous_id, year(timestamp) "
        "ORDER BY 1, 2",  # GROUP BY names the column, not the alias
        "SELECT count(*) FROM events USING SAMPLE 10 ROWS",
        "SELECT count(*) FROM events WHERE random() < 2",  # per row, not per bucket
    ],
)
def test_other_shapes_fall_back_to_the_raw_data(lake: Any, sql: str) -> None:
    assert same(lake, sql) == "raw"


KEYS = [
    "CAST(timestamp AS DATE)", "year(timestamp)", "month(timestamp)", "date_trunc('month', timestamp)",
    "dayofweek(timestamp)", "event", "hour(timestamp)", "date_part('day', timestamp)", "extract(week FROM timestamp)",
]  # fmt: skip
MEASURES = ["count(*)", "count(DISTINCT user_id)", "count(DISTINCT coalesce(user_id, anonymous_id))", "count(1)"]
BOUNDS = ["'2026-01-13'", "DATE '2026-01-15'", "TIMESTAMP '2026-01-16 00:00:00'", "'2026-01-15 13:00:00'",
          "'2026-02-01'", "'2026-01-14 07:15:00'"]  # fmt: skip


@given(
    keys=st.lists(st.sampled_from(KEYS), max_size=2, unique=True),
    measures=st.lists(st.sampled_from(MEASURES), min_size=1, max_size=2),
    low=st.none() | st.sampled_from(BOUNDS),
    high=st.none() | st.sampled_from(BOUNDS),
    events=st.none() | st.lists(st.sampled_from([*EVENTS, "NEVER"]), min_size=1, max_size=3, unique=True),
    limit=st.none() | st.integers(0, 5),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_supported_queries_equal_the_raw_scan(
    lake: Any, keys: list[str], measures: list[str], low: str | None, high: str | None,
    events: list[str] | None, limit: int | None,
) -> None:  # fmt: skip
    select = [f"{k} AS k{i}" for i, k in enumerate(keys)] + [f"{m} AS m{i}" for i, m in enumerate(measures)]
    where = []
    if low:
        where.append(f"timestamp >= {low}")
    if high:
        where.append(f"timestamp < {high}")
    if events:
        where.append("event IN (" + ", ".join(f"'{e}'" for e in events) + ")")
    sql = f"SELECT {', '.join(select)} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if keys:
        order = ", ".join(f"k{i}" for i in range(len(keys)))
        sql += f" GROUP BY ALL ORDER BY {order}"
    if limit is not None:
        sql += f" LIMIT {limit}"
    grain = "hour" if "hour(timestamp)" in keys else "day"
    cut = {"day": ("13:00", "07:15"), "hour": ("07:15",)}[grain]
    aligned = not any(b and any(c in b for c in cut) for b in (low, high))
    people = any("DISTINCT" in m for m in measures)
    expected_fast = aligned and not (people and grain == "hour")
    assert (same(lake, sql) != "raw") == expected_fast, sql


def test_files_without_rollups_fall_back_until_maintenance_computes_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    importer = Importer(settings, workers=1)
    source = tmp_path / "in.ndjson"
    rng = random.Random(3)
    source.write_bytes(b"\n".join(orjson.dumps(raw_event(rng)) for _ in range(300)))
    importer.import_file(source)
    rollups = importer.files["events"].rollups
    assert rollups is not None
    table = importer.tables["events"]
    rollups.delete(t.file.file_path for t in table.scan().plan_files())  # as if written by another engine
    sql = "SELECT count(DISTINCT user_id) FROM events"
    engine = QueryEngine(settings)
    before = engine.execute(sql)
    assert before.answered_by == "raw"
    assert Maintenance(settings, importer.tables, importer.files).backfill_rollups() == len(
        list(table.scan().plan_files())
    )
    engine.close()
    engine = QueryEngine(settings)  # a fresh server: no cached rollups
    after = engine.execute(sql)
    assert after.answered_by == "rollup" and after.rows == before.rows
    engine.close()
    importer.close()


DATES = ["2026-01-12T00:00:00", "2026-01-14T00:00:00", "2026-01-15T00:00:00", "2026-01-17T00:00:00",
         "2026-02-02T00:00:00", "2026-01-15T06:00:00"]  # fmt: skip


@given(
    kind=st.sampled_from(["trend", "retention"]),
    events=st.lists(st.sampled_from(EVENTS), min_size=2, max_size=2),
    measure=st.sampled_from(["count", "users"]),
    interval=st.sampled_from(["day", "week", "month"]),
    dates=st.lists(st.sampled_from(DATES), min_size=2, max_size=2, unique=True),
    compare=st.booleans(),
    periods=st.integers(1, 4),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_trends_and_retention_from_rollups_equal_the_sql(
    lake: Any, kind: str, events: list[str], measure: str, interval: str, dates: list[str], compare: bool,
    periods: int,
) -> None:  # fmt: skip
    fast, raw = lake
    date_from, date_to = sorted(dates)
    spec: dict[str, Any] = {"kind": kind, "date_from": date_from, "date_to": date_to}
    if kind == "trend":
        spec |= {"series": [{"event": e, "measure": measure} for e in events], "interval": interval,
                 "compare": compare}  # fmt: skip
    else:
        spec |= {"start_event": events[0], "return_event": events[1], "period": interval, "periods": periods}
    ours, theirs = InsightEngine(fast).run(spec), InsightEngine(raw).run(spec)
    assert ours["result"] == theirs["result"], spec
    aligned = "T06" not in date_from + date_to
    assert ours["answered_by"] == ("rollup" if aligned else "raw")
    assert theirs["answered_by"] == "raw"
