"""The lake writer's stage pipeline: added columns become lake columns, quarantined rows land in quarantine with
the event as sent, a crash before the commit runs the stages again without duplicates, replays keep their ids."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from headwater.core.stages import StageBatch
from headwater.lake.writer import GROUP, LakeWriter
from headwater.log.sqlite import SqliteLog
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings


class Tagger:
    """Adds `tag` (the upper-cased event) and `seen_ip`; quarantines events named BAD."""

    name = "tagger"

    def __init__(self) -> None:
        self.batches = 0

    def apply(self, batch: StageBatch) -> StageBatch:
        self.batches += 1
        events = batch.events
        events = events.append_column("tag", pc.utf8_upper(events.column("event")))
        events = events.append_column("seen_ip", events.column("_ip"))
        bad = pc.equal(events.column("event"), "BAD").to_pylist()
        rows = [i for i, b in enumerate(bad) if b]
        batch.events = events
        batch.quarantine(rows, ["plan x@1-0-0: $.properties: unplanned"] * len(rows))
        return batch

    def close(self) -> None:
        pass


def envelope(i: int, event: str = "Viewed", **meta: Any) -> bytes:
    m = {"src": "web", "ep": "track-raw", "ra": 1_768_471_200_000, "ip": "10.1.2.3", **meta}
    return orjson.dumps({"m": m, "e": {"event": event, "userId": f"u{i}", "time": "2026-01-15 10:00:00", "n": i}})


def rows(data_dir: Path, sql: str) -> list[list[Any]]:
    return QueryEngine(make_settings(data_dir)).execute(sql).rows


def writer_for(data_dir: Path, stage: Tagger) -> tuple[SqliteLog, LakeWriter]:
    settings = make_settings(data_dir)
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    return log, LakeWriter(settings, log.consumer(GROUP), log, stages=[stage])


def pump(writer: LakeWriter) -> None:
    while batch := writer.consumer.poll(100_000, 0):
        writer.add(batch)
    writer.flush()


def test_stage_columns_land_and_quarantined_rows_move(data_dir: Path) -> None:
    log, writer = writer_for(data_dir, Tagger())
    producer = log.producer()
    producer.append([(b"k", envelope(i, "BAD" if i % 10 == 0 else "Viewed")) for i in range(50)]).result()
    pump(writer)
    assert rows(data_dir, "SELECT count(*), min(tag), min(seen_ip) FROM events") == [[45, "VIEWED", "10.1.2.3"]]
    names = [r[0] for r in rows(data_dir, "DESCRIBE events")]
    assert "tag" in names and not any(n.startswith("_") for n in names)
    quarantined = rows(data_dir, "SELECT endpoint, reason, raw, log_offset FROM quarantine ORDER BY log_offset")
    assert len(quarantined) == 5
    assert quarantined[0][:2] == ["track-raw", "plan x@1-0-0: $.properties: unplanned"]
    assert orjson.loads(quarantined[1][2]) == {"event": "BAD", "userId": "u10", "time": "2026-01-15 10:00:00", "n": 10}
    assert [q[3] for q in quarantined] == [0, 10, 20, 30, 40]
    producer.close()


def test_files_before_a_column_existed_read_as_null(data_dir: Path) -> None:
    settings = make_settings(data_dir)
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    producer = log.producer()
    producer.append([(b"k", envelope(i)) for i in range(5)]).result()
    pump(LakeWriter(settings, log.consumer(GROUP), log))  # no stages: no `tag`
    # the columns the built-in stages add are there before any stage ran, as NULL
    assert rows(data_dir, "SELECT count(*), count(country), count(is_bot), count(plan_version) FROM events") == [
        [5, 0, 0, 0]
    ]
    producer.append([(b"k", envelope(i)) for i in range(5, 8)]).result()
    pump(LakeWriter(settings, log.consumer(GROUP), log, stages=[Tagger()]))
    assert rows(data_dir, "SELECT count(*), count(tag) FROM events") == [[8, 3]]
    producer.close()


@pytest.mark.parametrize("fail_at", ["quarantine", "events"])
def test_crash_before_commit_runs_stages_again_without_duplicates(data_dir: Path, fail_at: str) -> None:
    stage = Tagger()
    log, writer = writer_for(data_dir, stage)
    producer = log.producer()
    producer.append([(b"k", envelope(i, "BAD" if i < 2 else "Viewed")) for i in range(20)]).result()
    while batch := writer.consumer.poll(100_000, 0):
        writer.add(batch)
    original = writer.files[fail_at].append

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk gone")

    writer.files[fail_at].append = boom  # type: ignore[method-assign]
    with contextlib.suppress(Exception):
        writer.flush()
    writer.files[fail_at].append = original  # type: ignore[method-assign]
    pump(writer)
    assert stage.batches == 2
    assert rows(data_dir, "SELECT count(*), count(DISTINCT event_id) FROM events") == [[18, 18]]
    assert rows(data_dir, "SELECT count(*) FROM quarantine") == [[2]]
    producer.close()


def test_replayed_event_keeps_its_original_id(data_dir: Path) -> None:
    log, writer = writer_for(data_dir, Tagger())
    producer = log.producer()
    producer.append([(b"k", envelope(1, rp="1:77"))]).result()
    pump(writer)
    assert rows(data_dir, "SELECT event_id FROM events") == [["hw-" + writer.log_id + "-1-77"]]
    producer.close()


def test_stage_must_keep_the_row_count(data_dir: Path) -> None:
    class Dropper(Tagger):
        def apply(self, batch: StageBatch) -> StageBatch:
            batch.events = batch.events.slice(1)
            return batch

    log, writer = writer_for(data_dir, Dropper())
    producer = log.producer()
    producer.append([(b"k", envelope(i)) for i in range(3)]).result()
    while batch := writer.consumer.poll(100_000, 0):
        writer.add(batch)
    try:
        writer.flush()
        raise AssertionError("expected a LakeError")
    except Exception as exc:
        assert "changed the number of rows" in str(exc)
    assert pa is not None
    producer.close()


def test_stages_clean_what_quarantine_keeps(data_dir: Path) -> None:
    """A stage's `clean_raw` sees the raw event of every quarantine row: the IP setting reaches quarantine too."""
    from headwater.enrich.ip import IPStage

    settings = make_settings(data_dir)
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    writer = LakeWriter(settings, log.consumer(GROUP), log, stages=[Tagger(), IPStage("drop")])
    producer = log.producer()
    bad = {"m": {"src": "web", "ep": "track-raw", "ra": 1_768_471_200_000}, "q": "invalid", "raw": '{"ip":"10.9.9.9"}'}
    producer.append([(b"k", envelope(1, "BAD")), (None, orjson.dumps(bad))]).result()
    producer.append([(b"k", orjson.dumps({"m": {"src": "web", "ep": "track-raw", "ra": 1}, "e": {
        "event": "BAD", "userId": "u", "ip": "10.1.1.1", "context": {"ip": "10.2.2.2"}}}))]).result()  # fmt: skip
    pump(writer)
    raws = [r[0] for r in rows(data_dir, "SELECT raw FROM quarantine")]
    assert len(raws) == 3 and not any("10." in raw for raw in raws), raws
    producer.close()
