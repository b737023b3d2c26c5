"""Erasing people from the embedded log (issue #11): records of u1 become ERASED in place, everyone else's stay
byte for byte, offsets do not move, the files' bytes no longer hold u1, and every reader of the log skips them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.core.erasure import ERASED, ErasureSet
from headwater.core.settings import Settings
from headwater.lake.tables import NAMESPACE, open_catalog
from headwater.lake.writer import GROUP, LakeWriter
from headwater.live.tail import LiveTail
from headwater.log.base import Record
from headwater.log.erase import TokenMatcher
from headwater.log.sqlite import SqliteLog
from headwater.processing.records import EventDecoder, decode_outputs
from headwater.processing.sinks import SinkRunner, WebhookSink
from headwater.processing.tables import OutputTableWriter
from headwater.query.engine import QueryEngine
from headwater.sources.lander import SourceLander
from headwater.sources.status import erase_rejections
from tests.helpers import make_settings
from tests.processing.test_sinks import Receiver
from tests.sources.support import drain, make_runner, put_file

RECEIVED = 1_767_225_600_000
USERS = ["u1", "u10", "u2"]


def event(i: int, user: str, **properties: Any) -> tuple[bytes, bytes]:
    body = {"type": "track", "event": "view", "userId": user, "anonymousId": f"anon-{user}", "messageId": f"m{i}",
            "properties": {"n": i, **properties}}  # fmt: skip
    return user.encode(), orjson.dumps({"m": {"ra": RECEIVED + i, "src": "web", "ep": "track"}, "e": body})


def quarantined(raw: str) -> tuple[None, bytes]:
    return None, orjson.dumps({"m": {"ra": RECEIVED, "src": "web", "ep": "track"}, "q": "bad JSON", "raw": raw})


def output(i: int, user: str) -> tuple[bytes, bytes]:
    return user.encode(), orjson.dumps({"k": user, "v": {"user": user, "n": i}, "t": RECEIVED + i, "id": f"o/{i}"})


def everything(log: SqliteLog) -> list[Record]:
    reader = log.reader()
    out: list[Record] = []
    try:
        for partition, end in reader.end_offsets().items():
            position = 0
            while position < end:
                records = reader.read(partition, position, 1000)
                out.extend(records)
                position = records[-1].offset + 1
        return out
    finally:
        reader.close()


def batches(log: SqliteLog) -> list[tuple[int, int, int]]:
    import sqlite3

    conn = sqlite3.connect(log.path)
    try:
        return conn.execute("SELECT partition, base_offset, count FROM batches ORDER BY 1, 2").fetchall()
    finally:
        conn.close()


def file_bytes(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


@pytest.fixture
def filled(data_dir: Path) -> tuple[Settings, SqliteLog]:
    """Events of u1, u10 and u2 (u1 also only in a property, and as a key only), a quarantined payload
    holding u1, and a processor output stream keyed by user."""
    settings = make_settings(data_dir, log_partitions=3)
    log = SqliteLog.from_settings(settings)
    producer = log.producer()
    for start in range(0, 300, 30):  # several batches per partition
        producer.append([event(i, USERS[i % 3]) for i in range(start, start + 30)]).result()
    producer.append(
        [
            event(300, "u2", friend="u1"),  # u1 only inside the value
            event(301, "u2", note="u1 was here"),  # free text: not an id
            (b"u1", orjson.dumps({"m": {"ra": RECEIVED, "src": "web", "ep": "track"}, "e": {"event": "k"}})),
            quarantined('{"userId":"u1","event":'),
            quarantined('{"userId":"u10","event":'),
        ]
    ).result()
    producer.close()
    out = log.stream("counts").producer()
    out.append([output(i, USERS[i % 3]) for i in range(60)]).result()
    out.close()
    return settings, log


def test_erase_replaces_only_the_persons_records_and_keeps_offsets(filled: tuple[Settings, SqliteLog]) -> None:
    _, log = filled
    before, layout = everything(log), batches(log)
    ends = log.admin().end_offsets()
    stream = log.stream("counts")
    stream_before = everything(stream)
    assert b'"u1"' in file_bytes(log.path)

    assert log.erase(ErasureSet.of(["u1"])) == {"events": 100 + 3, "counts": 20}

    after = everything(log)
    assert [(r.partition, r.offset) for r in after] == [(r.partition, r.offset) for r in before]
    assert batches(log) == layout and log.admin().end_offsets() == ends
    for old, new in zip(before, after, strict=True):
        decoded = orjson.loads(old.value)
        user = decoded.get("e", {}).get("userId")
        gone = user == "u1" or old.key == b"u1" or decoded.get("e", {}).get("properties", {}).get("friend") == "u1"
        gone = gone or '"u1"' in decoded.get("raw", "")
        if gone:
            assert (new.key, new.value) == (None, ERASED)
        else:
            assert (new.key, new.value) == (old.key, old.value)  # u10, u2, the free text: byte for byte
    assert sum(r.value == ERASED for r in after) == 103
    stream_after = everything(stream)
    assert [r.value == ERASED for r in stream_after] == [orjson.loads(r.value)["k"] == "u1" for r in stream_before]
    for path in (log.path, stream.path):  # the database files and their WALs: no u1 token left
        raw = file_bytes(path)
        assert b'"u1"' not in raw and b'\\"u1\\"' not in raw
        assert b'"u10"' in raw

    assert log.erase(ErasureSet.of(["u1"])) == {"events": 0, "counts": 0}  # idempotent


def test_erase_while_appending_keeps_every_appended_record(filled: tuple[Settings, SqliteLog]) -> None:
    _, log = filled
    producer = log.producer()
    done = threading.Event()
    appended: list[int] = []

    def append() -> None:
        i = 1000
        while not done.is_set() or i < 1100:
            producer.append([event(i, "u2")]).result()
            appended.append(i)
            i += 1

    thread = threading.Thread(target=append)
    thread.start()
    try:
        erased = log.erase(ErasureSet.of(["u1"]))
    finally:
        done.set()
        thread.join()
        producer.close()
    assert erased["events"] == 103
    envelopes = [orjson.loads(r.value) for r in everything(log) if r.value != ERASED]
    numbers = [e["e"].get("properties", {}).get("n") for e in envelopes if "e" in e]
    assert set(appended) <= set(numbers)


def test_matcher_is_exact_and_fast_paths_agree() -> None:
    ids = ErasureSet.of(["u1", "é-7"])
    matcher = TokenMatcher(ids, keys=True)
    assert matcher.record(None, orjson.dumps({"a": ["x", {"b": "u1"}]}))
    assert matcher.record(None, b'{"a":"\\u00e9-7"}')  # ASCII-escaped by another JSON writer
    assert not matcher.record(None, orjson.dumps({"a": "u10", "b": "xu1", "c": "u1 ", "d": 'said "u1"'}))
    assert matcher.record(b"u1", b'{"a":1}') and not matcher.record(b"u10", b'{"a":1}')
    assert matcher.record(None, orjson.dumps({"q": "bad", "raw": '{"user":"u1"'}))  # JSON text in a string
    assert not matcher.record(None, ERASED)
    many = ErasureSet.of([f"person-{i}" for i in range(2000)])
    assert TokenMatcher(many).search(b'{"x":"person-1999"}') and not TokenMatcher(many).search(b'{"x":"person-2000"}')


def test_readers_skip_erased_records(filled: tuple[Settings, SqliteLog], data_dir: Path) -> None:
    settings, log = filled
    log.erase(ErasureSet.of(["u1"]))
    records = everything(log)
    # processors: the events decoder, and output streams
    users = [value["user_id"] for _, value, _, _ in EventDecoder(log.log_id).decode(records)]
    assert "u1" not in users and users.count("u10") == 100 and users.count("u2") == 101  # not the one naming u1
    outputs = everything(log.stream("counts"))
    assert sorted({key for key, *_ in decode_outputs(outputs)}) == ["u10", "u2"]
    # the lake writer
    writer = LakeWriter(settings, log.consumer(GROUP), log)
    while batch := writer.consumer.poll(100_000, 0):
        writer.add(batch)
    writer.flush()
    rows = QueryEngine(settings).execute("SELECT user_id, count(*) FROM events GROUP BY 1 ORDER BY 1").rows
    assert rows == [["u10", 100], ["u2", 101]]
    assert QueryEngine(settings).execute("SELECT count(*) FROM quarantine").rows == [[1]]  # u10's stays
    # a processor's output table
    table_writer = OutputTableWriter(open_catalog(settings), log, "counts", "counts_table")
    while table_writer.poll(0.05):
        pass
    landed = open_catalog(settings).load_table((NAMESPACE, "counts_table")).scan().to_arrow()
    assert sorted(set(landed.column("key").to_pylist())) == ["u10", "u2"] and landed.num_rows == 40
    # the live view: events and a stream
    tail = LiveTail(log, lambda: {"counts"})
    try:
        page = tail.read(limit=1000)
        assert {row["user_id"] for row in page["events"] if row["rejected"] is None} == {"u10", "u2"}
        assert len(page["events"]) == 201 + 1  # and u10's quarantined payload
        assert {row["key"] for row in tail.read(limit=1000, stream="counts")["events"]} == {"u10", "u2"}
    finally:
        tail.close()


def test_a_sink_delivers_everything_but_erased_records(filled: tuple[Settings, SqliteLog]) -> None:
    _, log = filled
    log.erase(ErasureSet.of(["u1"]))
    receiver = Receiver()
    dead: list[Any] = []
    runner = SinkRunner(WebhookSink(receiver.url), log.stream("counts").consumer("sink"), lambda *a: dead.append(a))
    try:
        while runner.run_once(timeout_s=0.05):
            pass
    finally:
        runner.close()
        receiver.stop()
    assert dead == [] and len(receiver.by_id) == 40
    assert {body["key"] for body in receiver.by_id.values()} == {"u10", "u2"}


def test_a_source_table_and_its_status_lose_the_person(data_dir: Path) -> None:
    drop = data_dir / "drop"
    drop.mkdir()
    rows = [{"user": USERS[i % 3], "n": i} for i in range(9)]
    put_file(drop, "a.ndjson", b"\n".join(orjson.dumps(r) for r in rows) + b'\n{"user": "u1", "n": \n')
    runner = make_runner(data_dir, {"log_partitions": 1}, kind="files", format="ndjson", path=str(drop), table="people")
    drain(runner)
    runner.status.write(force=True)
    status_path = runner.status.path
    assert '"u1"' in orjson.loads(status_path.read_bytes())["recent_rejections"][0]["raw"]

    erased = runner.event_log.erase(ErasureSet.of(["u1"]))
    assert erased[str(runner.source.feed_stream)] == 3 and erased["events"] == 1  # the feed; the quarantined row
    assert erase_rejections(runner.settings, ErasureSet.of(["u1"])) == {"src": 1}
    runner.status.reject("later", "another", '{"user": "u2"}')
    runner.status.write(force=True)  # the running source does not bring the erased rejection back
    kept = orjson.loads(status_path.read_bytes())["recent_rejections"]
    assert [r["id"] for r in kept] == ["later"]

    lander = SourceLander(open_catalog(runner.settings), runner.event_log, runner.source)
    while lander.poll(timeout_s=0.1):
        pass
    lander.close()
    table = open_catalog(runner.settings).load_table((NAMESPACE, "people")).scan().to_arrow()
    assert sorted(table.column("user").to_pylist()) == ["u10"] * 3 + ["u2"] * 3
    runner.close()
