from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.core.errors import LakeError
from headwater.lake.importer import Importer
from headwater.lake.maintenance import Maintenance
from headwater.lake.tables import snapshot_offsets
from headwater.lake.writer import GROUP, LakeWriter
from headwater.log.sqlite import SqliteLog
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings


def envelope(i: int, user: str = "u", day: str = "2026-01-15", bad: bool = False) -> bytes:
    meta = {"src": "t", "ep": "track-raw", "ra": 1_768_471_200_000}
    if bad:
        return orjson.dumps({"m": meta, "q": "bad", "raw": f"raw{i}"})
    return orjson.dumps(
        {"m": meta, "e": {"event": "E", "userId": user, "messageId": f"m{i}", "time": f"{day} 10:00:00"}}
    )


def setup(data_dir: Path, **overrides: Any) -> tuple[SqliteLog, Any, LakeWriter]:
    settings = make_settings(data_dir, **overrides)
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    producer = log.producer()
    writer = LakeWriter(settings, log.consumer(GROUP), log)
    return log, producer, writer


def count(data_dir: Path, sql: str) -> Any:
    return QueryEngine(make_settings(data_dir)).execute(sql).rows


def pump(writer: LakeWriter) -> None:
    while batch := writer.consumer.poll(100_000, 0):
        writer.add(batch)
    writer.flush()


def test_writer_commits_events_and_quarantine_with_offsets(data_dir: Path) -> None:
    log, producer, writer = setup(data_dir)
    producer.append([(f"u{i % 5}".encode(), envelope(i, f"u{i % 5}")) for i in range(100)]).result()
    producer.append([(None, envelope(i, bad=True)) for i in range(3)]).result()
    pump(writer)
    assert count(data_dir, "SELECT count(*), count(DISTINCT event_id) FROM events") == [[100, 100]]
    assert count(data_dir, "SELECT count(*) FROM quarantine") == [[3]]
    offsets = snapshot_offsets(writer.tables["events"])
    assert sum(offsets.values()) == 103
    assert log.admin().lag(GROUP) == 0
    producer.close()


@pytest.mark.parametrize("fail_at", ["quarantine", "offsets"])
def test_crash_between_commits_neither_loses_nor_duplicates(data_dir: Path, fail_at: str) -> None:
    log, producer, writer = setup(data_dir)
    producer.append(
        [(b"u", envelope(i)) for i in range(50)] + [(None, envelope(i, bad=True)) for i in range(5)]
    ).result()
    while batch := writer.consumer.poll(100_000, 0):
        writer.add(batch)
    if fail_at == "quarantine":  # events committed, then the quarantine commit dies
        original = writer.files["quarantine"].append

        def boom(*args: Any, **kwargs: Any) -> None:
            raise OSError("disk gone")

        writer.files["quarantine"].append = boom  # type: ignore[method-assign]
    else:  # both tables committed, then the offset commit dies
        original = writer.consumer.commit

        def boom(*args: Any, **kwargs: Any) -> None:
            raise OSError("disk gone")

        writer.consumer.commit = boom  # type: ignore[method-assign]
    with pytest.raises(LakeError):
        writer.flush()
    del original
    # a fresh writer process after the crash
    writer2 = LakeWriter(make_settings(data_dir), log.consumer(GROUP), log)
    pump(writer2)
    assert count(data_dir, "SELECT count(*), count(DISTINCT event_id) FROM events") == [[50, 50]]
    assert count(data_dir, "SELECT count(*), count(DISTINCT raw) FROM quarantine") == [[5, 5]]
    producer.close()


def test_late_events_land_in_their_day_and_compaction_keeps_rows(data_dir: Path) -> None:
    _, producer, writer = setup(data_dir, compact_min_files=3)
    for round_ in range(4):
        producer.append([(b"u", envelope(round_ * 10 + i, day="2026-01-15")) for i in range(10)]).result()
        producer.append([(b"u", envelope(1000 + round_, day="2025-12-31"))]).result()  # late
        pump(writer)
    table = writer.tables["events"]
    files = list(table.scan().plan_files())
    assert len(files) == 8
    days = {repr(task.file.partition) for task in files}
    assert len(days) == 2
    maintenance = Maintenance(writer.settings, writer.tables, writer.files)
    assert maintenance.compact("events") == 2
    table = maintenance.tables["events"]
    assert len(list(table.scan().plan_files())) == 2
    assert snapshot_offsets(table) == writer.table_offsets["events"]  # compaction carries offsets
    rows = count(data_dir, "SELECT CAST(timestamp AS DATE)::VARCHAR d, count(*) FROM events GROUP BY d ORDER BY d")
    assert rows == [["2025-12-31", 4], ["2026-01-15", 40]]
    producer.close()


def test_expire_and_sweep_delete_unreferenced_files(data_dir: Path) -> None:
    _, producer, writer = setup(data_dir, compact_min_files=2)
    for round_ in range(3):
        producer.append([(b"u", envelope(round_ * 10 + i)) for i in range(10)]).result()
        pump(writer)
    maintenance = Maintenance(writer.settings, writer.tables, writer.files)
    maintenance.compact("events")
    data_root = Path(maintenance.tables["events"].location().removeprefix("file://")) / "data"
    before = len(list(data_root.rglob("*.parquet")))
    import headwater.lake.maintenance as m

    m.MAX_SNAPSHOTS, saved = 1, m.MAX_SNAPSHOTS
    try:
        assert maintenance.expire("events") >= 3
    finally:
        m.MAX_SNAPSHOTS = saved
    assert maintenance.sweep("events", grace_s=0) >= 3
    after = len(list(data_root.rglob("*.parquet")))
    assert before == 4 and after == 1
    assert count(data_dir, "SELECT count(*) FROM events") == [[30]]
    producer.close()


def test_import_ndjson_csv_parquet_and_resume(data_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    nd = tmp_path / "a.ndjson"
    nd.write_text('{"event":"A","userId":"u1","dateTime":"2026-01-01 00:00:00","x":1}\nbad\n{"event":"B"}\n')
    csv = tmp_path / "b.csv"
    csv.write_text("event,userId,dateTime,plan\nC,u2,2026-01-02 00:00:00,pro\nD,u3,2026-01-03 00:00:00,\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"event": ["E"], "userId": ["u4"], "time": ["2026-01-04T00:00:00Z"], "n": [5]}), parquet)
    importer = Importer(make_settings(data_dir), source="backfill")
    assert importer.import_file(nd)["events"] == 1
    assert importer.import_file(csv)["events"] == 2
    assert importer.import_file(parquet)["events"] == 1
    again = importer.import_file(nd)  # re-running is a no-op
    assert again["events"] == 0 and again["quarantined"] == 0
    rows = count(data_dir, "SELECT event, user_id, properties::VARCHAR, source FROM events ORDER BY event")
    assert rows == [
        ["A", "u1", '{"x":1}', "backfill"],
        ["C", "u2", '{"plan":"pro"}', "backfill"],
        ["D", "u3", None, "backfill"],
        ["E", "u4", '{"n":5}', "backfill"],
    ]
    assert count(data_dir, "SELECT reason FROM quarantine ORDER BY reason") == [
        ["invalid JSON"],
        ["userId: required (or anonymousId)"],
    ]


def test_a_compaction_that_loses_its_commit_deletes_what_it_wrote(data_dir: Path) -> None:
    """Files of a lost compaction are never referenced: left for the sweep, they would keep rows (a deleted
    person's too) on disk for its grace period."""
    from pyiceberg.exceptions import CommitFailedException

    _, producer, writer = setup(data_dir, compact_min_files=2)
    for round_ in range(3):
        producer.append([(b"u", envelope(round_ * 10 + i)) for i in range(10)]).result()
        pump(writer)
    maintenance = Maintenance(writer.settings, writer.tables, writer.files)
    data_root = Path(maintenance.tables["events"].location().removeprefix("file://")) / "data"
    before = set(data_root.rglob("*.parquet"))

    def lost(*args: Any, **kwargs: Any) -> None:
        raise CommitFailedException("branch main has changed")

    writer.files["events"].replace = lost  # type: ignore[method-assign]
    with pytest.raises(CommitFailedException):
        maintenance.compact("events")
    assert set(data_root.rglob("*.parquet")) == before
    assert count(data_dir, "SELECT count(*) FROM events") == [[30]]
    producer.close()
