"""What lake writers share: message-id claims, the maintenance lease, and fencing of a writer whose
partitions another writer committed (all on SQLite here; the cluster suite runs them on PostgreSQL)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from headwater.lake.coordination import CLAIMS, ClaimStore, Lease, open_engine
from headwater.lake.writer import GROUP, LakeWriter
from headwater.log.sqlite import SqliteLog
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings


def envelope(message_id: str, user: str = "u") -> bytes:
    meta = {"src": "t", "ep": "track-raw", "ra": 1_768_471_200_000}
    event = {"event": "E", "userId": user, "messageId": message_id, "time": "2026-01-15 10:00:00"}
    return orjson.dumps({"m": meta, "e": event})


def test_claims_keep_first_position_and_replays_of_it(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'c.db'}")
    store = ClaimStore(engine, window_s=3600, log_id="log-a")
    first = [("s", "m1", 0, 10), ("s", "m2", 0, 11), ("s", "m1", 0, 12), ("other", "m1", 1, 3)]
    assert store.duplicates(first) == {2}  # a repeat inside one batch: the later one goes
    assert store.duplicates([("s", "m1", 0, 10), ("s", "m2", 0, 11)]) == set()  # replay after a crash: kept
    assert store.duplicates([("s", "m1", 3, 99), ("s", "m3", 3, 100)]) == {0}  # a retry on another partition
    assert ClaimStore(engine, 3600, log_id="log-b").duplicates([("s", "m1", 0, 10)]) == {0}  # another log
    with engine.begin() as conn:
        conn.execute(CLAIMS.update().values(claimed_ms=0))
    assert store.purge() == 4
    assert store.duplicates([("s", "m1", 5, 5)]) == set()  # past the window it is new again
    engine.dispose()


def test_lease_has_one_holder_until_it_expires(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'c.db'}")
    a = Lease(engine, "maintenance", "writer-a", ttl_s=0.3)
    b = Lease(engine, "maintenance", "writer-b", ttl_s=0.3)
    assert a.acquire() and not b.acquire()
    assert a.acquire()  # renewal
    time.sleep(0.4)
    assert b.acquire() and not a.acquire()
    b.release()
    assert a.acquire()
    engine.dispose()


def setup(data_dir: Path, deduplicating_log: bool) -> tuple[SqliteLog, Any]:
    settings = make_settings(data_dir)
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    log.deduplicates = deduplicating_log  # type: ignore[misc]
    return log, log.producer(dedupe_window_s=86_400 if deduplicating_log else 0)


def pump(writer: LakeWriter) -> None:
    while writer.poll(0) > 0:
        pass
    writer.flush()


def rows(data_dir: Path) -> list[list[Any]]:
    engine = QueryEngine(make_settings(data_dir))
    try:
        return engine.execute("SELECT count(*), count(DISTINCT event_id) FROM events").rows
    finally:
        engine.close()


def test_writer_drops_repeated_message_ids_when_the_log_does_not(data_dir: Path) -> None:
    log, producer = setup(data_dir, deduplicating_log=False)
    writer = LakeWriter(make_settings(data_dir), log.consumer(GROUP), log)
    assert writer.claims is not None
    batch = [(f"u{i % 3}".encode(), envelope(f"m{i}", f"u{i % 3}")) for i in range(30)]
    producer.append(batch).result()
    producer.append(batch[:10]).result()  # a client retry: in the log twice
    pump(writer)
    producer.append(batch[5:15]).result()  # a retry after the first copies are in the lake
    pump(writer)
    assert rows(data_dir) == [[30, 30]]
    producer.close()


def test_a_writer_whose_partitions_were_committed_by_another_drops_its_buffer(data_dir: Path) -> None:
    log, producer = setup(data_dir, deduplicating_log=True)
    settings = make_settings(data_dir)
    stale = LakeWriter(settings, log.consumer(GROUP), log)  # e.g. paused through a rebalance
    producer.append([(b"u", envelope(f"m{i}")) for i in range(20)]).result()
    while stale.poll(0) > 0:
        pass
    current = LakeWriter(settings, log.consumer(GROUP), log)  # took the partitions over
    pump(current)
    assert stale.flush() == 0  # refused: the table moved under it
    assert rows(data_dir) == [[20, 20]]
    producer.append([(b"u", envelope(f"n{i}")) for i in range(5)]).result()
    pump(stale)  # after re-reading the table it carries on from where the other stopped
    assert rows(data_dir) == [[25, 25]]
    producer.close()
