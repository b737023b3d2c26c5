"""Retention drops whole day partitions in one snapshot that adds no file; the files and rollups of the dropped
partitions disappear with the usual expiry and sweep; a running Headwater does it by itself."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

import headwater.lake.maintenance as maintenance_module
from headwater.lake.maintenance import Maintenance
from headwater.lake.retention import RETENTION_PROPERTY, Dropped, Retention, count_late, late_buckets
from headwater.lake.tables import close_catalog, open_catalog, snapshot_offsets
from headwater.lake.writer import GROUP, LakeWriter
from headwater.log.sqlite import SqliteLog
from headwater.processing.records import encode_output
from headwater.processing.tables import OutputTableWriter
from headwater.query.engine import QueryEngine
from tests.helpers import RunningHeadwater, child_env, make_keys, make_settings, serving

NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def event(i: int, moment: str, received: datetime = NOW) -> bytes:
    meta = {"src": "t", "ep": "track-raw", "ra": int(received.timestamp() * 1000)}
    return orjson.dumps({"m": meta, "e": {"event": "E", "userId": "u", "messageId": f"m{i}", "time": moment}})


def rejected(i: int, received: datetime) -> bytes:
    meta = {"src": "t", "ep": "track-raw", "ra": int(received.timestamp() * 1000)}
    return orjson.dumps({"m": meta, "q": "bad", "raw": f"raw{i}"})


def pump(writer: LakeWriter) -> None:
    while batch := writer.consumer.poll(100_000, 0):
        writer.add(batch)
    writer.flush()


def paths(table: Table) -> set[str]:
    return {task.file.file_path for task in table.scan().plan_files()}


def local(path: str) -> Path:
    return Path(path.removeprefix("file://"))


def sample(name: str, table: str) -> float:
    return REGISTRY.get_sample_value(name, {"table": table}) or 0.0


def expire_all(maintenance: Maintenance, name: str) -> None:
    """Expire every snapshot but the current one, then sweep without grace (as maintenance does, later)."""
    maintenance_module.MAX_SNAPSHOTS, saved = 1, maintenance_module.MAX_SNAPSHOTS
    try:
        maintenance.expire(name)
    finally:
        maintenance_module.MAX_SNAPSHOTS = saved
    maintenance.sweep(name, grace_s=0)


def test_whole_old_day_partitions_go_without_a_rewrite_then_from_disk(data_dir: Path) -> None:
    settings = make_settings(data_dir, events_retention_days=3, quarantine_retention_days=2)
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    producer = log.producer()
    writer = LakeWriter(settings, log.consumer(GROUP), log)
    days = {  # event time -> rows; cutoff 2026-03-07 15:00: that day straddles it and is kept whole
        "2026-03-01 10:00:00": 5, "2026-03-05 10:00:00": 3, "2026-03-06 23:59:59": 2,
        "2026-03-07 00:00:00": 4, "2026-03-07 16:00:00": 1, "2026-03-10 12:00:00": 2,
    }  # fmt: skip
    i = 0
    for moment, n in days.items():
        for _ in range(n):
            producer.append([(b"u", event(i, moment))]).result()
            i += 1
    received = [datetime(2026, 3, 5, 9, tzinfo=UTC)] * 2 + [datetime(2026, 3, 8, 0, 30, tzinfo=UTC), NOW]
    producer.append([(None, rejected(j, at)) for j, at in enumerate(received)]).result()
    pump(writer)
    producer.append([(b"u", event(i + j, "2026-03-01 11:00:00")) for j in range(5)]).result()  # a 2nd file
    pump(writer)
    events, quarantine = writer.tables["events"], writer.tables["quarantine"]
    before = {"events": paths(events), "quarantine": paths(quarantine)}
    rollups = writer.files["events"].rollups
    assert rollups is not None and before["events"] <= rollups.paths("events")
    offsets = snapshot_offsets(events)
    counted = {(m, t): sample(f"headwater_retention_dropped_{m}_total", t) for m in ("partitions", "rows")
               for t in ("events", "quarantine")}  # fmt: skip

    retention = Retention(settings, writer.tables)
    done = sorted(retention.run(now=NOW.timestamp()), key=lambda d: d.table)
    assert done == [
        Dropped("events", date(2026, 3, 7), partitions=3, files=4, rows=15),
        Dropped("quarantine", date(2026, 3, 8), partitions=1, files=1, rows=2),
    ]
    for name, table in (("events", events), ("quarantine", quarantine)):
        snapshot = table.current_snapshot()
        assert snapshot is not None and snapshot.summary is not None
        summary = snapshot.summary
        assert summary.operation == Operation.OVERWRITE
        assert summary.get("added-data-files") in (None, "0")  # nothing rewritten: no file added
        assert summary[RETENTION_PROPERTY] == ("2026-03-07" if name == "events" else "2026-03-08")
        assert paths(table) < before[name]  # only files that were there already
    gone = before["events"] - paths(events)
    assert len(gone) == 4
    assert snapshot_offsets(events) == offsets  # exactly-once bookkeeping carried over
    for (metric, table_name), was in counted.items():
        want = {("partitions", "events"): 3, ("rows", "events"): 15, ("partitions", "quarantine"): 1,
                ("rows", "quarantine"): 2}[(metric, table_name)]  # fmt: skip
        assert sample(f"headwater_retention_dropped_{metric}_total", table_name) == was + want
    query = QueryEngine(make_settings(data_dir))
    by_day = "SELECT CAST(timestamp AS DATE)::VARCHAR d, count(*) FROM events GROUP BY d ORDER BY d"
    assert query.execute(by_day).rows == [["2026-03-07", 5], ["2026-03-10", 2]]
    assert query.execute("SELECT count(*) FROM quarantine").rows == [[2]]

    current = events.current_snapshot()
    assert retention.run(now=NOW.timestamp()) == []  # nothing due: no new snapshot
    assert events.current_snapshot() == current
    producer.append([(b"u", event(1000, "2026-03-09 10:00:00"))]).result()  # the writer goes on committing
    pump(writer)
    assert query.execute(by_day).rows == [["2026-03-07", 5], ["2026-03-09", 1], ["2026-03-10", 2]]

    maintenance = Maintenance(settings, writer.tables, writer.files)
    assert all(local(p).exists() for p in gone)  # older snapshots still reference them
    expire_all(maintenance, "events")
    assert not any(local(p).exists() for p in gone)
    assert all(local(p).exists() for p in paths(writer.tables["events"]))
    kept_rollups = rollups.paths("events")
    assert not kept_rollups & gone and paths(writer.tables["events"]) <= kept_rollups
    query.close()
    producer.close()


def test_processor_output_tables_named_in_table_retention_days(data_dir: Path) -> None:
    settings = make_settings(data_dir, table_retention_days={"bets_out": 2})
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    writer = LakeWriter(settings, log.consumer(GROUP), log)
    stream = log.stream("bets")
    producer = stream.producer()
    now_ms = int(time.time() * 1000)
    ages = [10, 10, 5, 0]  # days
    outputs_ = [encode_output(f"k{i}", {"n": i}, now_ms - d * 86_400_000, f"o{i}") for i, d in enumerate(ages)]
    producer.append(outputs_).result()
    catalog = open_catalog(settings)
    outputs = OutputTableWriter(catalog, log, "bets", "bets_out")
    while outputs.poll(timeout_s=0.5):
        pass
    table = catalog.load_table("headwater.bets_out")
    before = paths(table)
    offsets = snapshot_offsets(table, outputs.offsets_key)
    assert len(before) == 3 and sum(offsets.values()) == 4

    maintenance = Maintenance(settings, writer.tables, writer.files)
    assert maintenance.run()
    trimmed = maintenance.retention.others["bets_out"]
    assert paths(trimmed) < before and len(paths(trimmed)) == 1
    assert snapshot_offsets(trimmed, outputs.offsets_key) == offsets  # the stream's offsets carried over
    summary = trimmed.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None and summary.get("added-data-files") in (None, "0")
    producer.append([encode_output("k9", {"n": 9}, now_ms, "o9")]).result()
    stop = threading.Event()  # the output writer's loop: its first commit after the drop conflicts, it resumes
    loop = threading.Thread(target=outputs.run, args=(stop, 0.1))
    loop.start()
    query = QueryEngine(make_settings(data_dir))
    deadline = time.monotonic() + 20
    try:
        while query.execute("SELECT count(*) FROM bets_out WHERE key = 'k9'").rows != [[1]]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join()
    assert query.execute("SELECT key FROM bets_out ORDER BY key").rows == [["k3"], ["k9"]]  # nothing twice
    trimmed = catalog.load_table("headwater.bets_out")
    maintenance.retention.others["bets_out"] = trimmed
    gone = before - paths(trimmed)
    expire_all(maintenance, "bets_out")
    assert not any(local(p).exists() for p in gone)
    query.close()
    outputs.close()
    producer.close()
    close_catalog(catalog)


def test_late_age_buckets() -> None:
    assert late_buckets(72) == [(1, "1h-6h"), (6, "6h-24h"), (24, "24h-72h"), (72, "beyond")]
    assert late_buckets(12) == [(1, "1h-6h"), (6, "6h-12h"), (12, "beyond")]
    assert late_buckets(0) == [(1, "beyond")]
    hours = [0, 0.5, 1, 5.9, 6, 30, 71, 72, 500, -3]  # how long before receipt each event happened
    received = 1_800_000_000_000_000
    rows = pa.table(
        {
            "timestamp": pa.array([received - int(h * 3_600_000_000) for h in hours], pa.timestamp("us")),
            "received_at": pa.array([received] * len(hours), pa.timestamp("us")),
        }
    )
    assert count_late(rows, 72) == {"1h-6h": 2, "6h-24h": 1, "24h-72h": 2, "beyond": 2}


@pytest.fixture(scope="module")
def trimmed_headwater(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("retention")
    keys = make_keys(data_dir)
    env = child_env(data_dir, flush_interval_ms=200, maintenance_interval_s=0.5, events_retention_days=3)
    with serving(RunningHeadwater(data_dir, env, keys=keys)) as running:
        yield running


def metric(headwater: RunningHeadwater, name: str, **labels: str) -> float:
    text = httpx.get(headwater.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample_ in family.samples:
            if sample_.name == name and all(sample_.labels.get(k) == v for k, v in labels.items()):
                return float(sample_.value)
    return 0.0


def test_a_running_headwater_drops_old_days_by_itself(trimmed_headwater: RunningHeadwater) -> None:
    headwater = trimmed_headwater
    user = f"old-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    ages = {"d10": 10, "d5a": 5, "d5b": 5, "d1": 1, "d0": 0}  # days; 3 days' retention
    body = "\n".join(
        f'{{"event":"{name}","userId":"{user}","timestamp":"{(now - timedelta(days=d)).isoformat()}"}}'
        for name, d in ages.items()
    )
    assert headwater.post("/track", body, headwater.keys["write"]).json()["accepted"] == 5
    deadline = time.monotonic() + 30
    while metric(headwater, "headwater_retention_dropped_rows_total", table="events") < 3:
        assert time.monotonic() < deadline, headwater.log_text()
        time.sleep(0.2)
    headwater.wait_rows(f"SELECT event FROM events WHERE user_id = '{user}' ORDER BY event", [["d0"], ["d1"]])
    assert metric(headwater, "headwater_retention_dropped_rows_total", table="events") == 3
    assert metric(headwater, "headwater_retention_dropped_partitions_total", table="events") == 2
    catalog = open_catalog(make_settings(headwater.data_dir))
    try:
        table = catalog.load_table("headwater.events")
        drops: list[Any] = [
            s.summary for s in table.metadata.snapshots if s.summary and s.summary.get(RETENTION_PROPERTY)
        ]
        assert drops and all(s.get("added-data-files") in (None, "0") for s in drops)
        assert sum(int(s["deleted-data-files"]) for s in drops) >= 2
    finally:
        close_catalog(catalog)
