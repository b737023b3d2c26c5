"""External sinks against real services: an HTTP receiver, redis-server, PostgreSQL and Kafka.

The runner reads an output stream of the embedded log (SqliteLog) as a consumer group, as in production.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.log.sqlite import SqliteConsumer, SqliteLog
from headwater.processing.sinks import (
    KafkaSink,
    PostgresSink,
    RedisSink,
    Sink,
    SinkRecord,
    SinkRunner,
    WebhookSink,
    decode_output,
    sink_from_config,
)
from tests.services import KafkaBroker, PostgresServer, RedisServer

DeadLetters = list[tuple[SinkRecord, str, int]]


def output(key: str | None, value: Any, t: int, id_: str) -> tuple[bytes | None, bytes]:
    """One record of an output stream, in the fixed output format."""
    return (None if key is None else key.encode(), orjson.dumps({"k": key, "v": value, "t": t, "id": id_}))


def append(log: SqliteLog, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = log.producer()
    try:
        producer.append(records).result(10)
    finally:
        producer.close()


def drain(runner: SinkRunner) -> int:
    """run_once until a poll comes back empty; returns the records committed."""
    total = 0
    while count := runner.run_once(timeout_s=0.05):
        total += count
    return total


def all_committed(consumer: SqliteConsumer) -> bool:
    committed = consumer.committed()
    return all(committed.get(p, 0) == end for p, end in consumer.end_offsets().items())


def rewind(consumer: SqliteConsumer) -> None:
    for partition in consumer.assignment():
        consumer.seek(partition, 0)


@pytest.fixture
def stream(tmp_path: Path) -> SqliteLog:
    return SqliteLog(tmp_path / "s.db", tmp_path / "o.db", partitions=2)


@pytest.fixture
def runners() -> Iterator[Callable[..., tuple[SinkRunner, DeadLetters]]]:
    """make(sink, consumer, **options) -> (runner, dead letters); every runner is closed at the end."""
    made: list[SinkRunner] = []

    def make(sink: Sink, consumer: SqliteConsumer, **options: Any) -> tuple[SinkRunner, DeadLetters]:
        dead: DeadLetters = []
        options = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, **options}
        runner = SinkRunner(sink, consumer, lambda r, reason, n: dead.append((r, reason, n)), **options)
        made.append(runner)
        return runner, dead

    yield make
    for runner in made:
        runner.close()


# ---------------------------------------------------------------------------------------------------------------------
# Webhook


class Receiver:
    """A real HTTP server; `status(n)` answers the n-th request (from 1). Keeps what a receiver that
    dedupes by Idempotency-Key would: `raw` (every accepted request) and `by_id` (first body per key)."""

    def __init__(self, status: Callable[[int], int] = lambda n: 200, delay_s: float = 0.0) -> None:
        self.status, self.delay_s = status, delay_s
        self.requests = 0
        self.raw: list[str] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.requests += 1
                    code = receiver.status(receiver.requests)
                    if 200 <= code < 300:
                        key = self.headers["Idempotency-Key"]
                        receiver.raw.append(key)
                        receiver.by_id.setdefault(key, body)
                time.sleep(receiver.delay_s)
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*args: Any, **kwargs: Any) -> Receiver:
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.stop()


@pytest.mark.parametrize("code", [503, 429])
def test_webhook_retries_and_delivers_once_per_id(stream: SqliteLog, receivers: Any, runners: Any, code: int) -> None:
    receiver = receivers(lambda n: code if n in (1, 2, 3, 7) else 200)  # failures: before any, and mid-batch
    append(stream, [output(f"k{i}", {"n": i}, 1000 + i, f"out-{i}") for i in range(12)])
    consumer = stream.consumer("sink-x")
    runner, dead = runners(WebhookSink(receiver.url), consumer, batch_size=50)
    assert drain(runner) == 12
    assert sorted(receiver.by_id) == sorted(f"out-{i}" for i in range(12))
    assert receiver.by_id["out-3"] == {"id": "out-3", "key": "k3", "value": {"n": 3}, "timestamp": 1003}
    assert len(receiver.raw) > 12  # the batch failed mid-way: its first records came again, deduped by the receiver
    assert runner.retried > 0 and runner.delivered == 12 and dead == []
    assert str(code) in (runner.last_error or "")
    assert all_committed(consumer) and runner.lag == 0


def test_webhook_always_failing_dead_letters_after_max_attempts(
    stream: SqliteLog, receivers: Any, runners: Any
) -> None:
    receiver = receivers(lambda n: 503)
    append(stream, [output("a", 1, 1, "out-a"), output("b", 2, 2, "out-b"), output("c", 3, 3, "out-c")])
    consumer = stream.consumer("sink-x")
    runner, dead = runners(WebhookSink(receiver.url), consumer, max_attempts=3)
    assert drain(runner) == 3
    assert sorted(r.id for r, _, _ in dead) == ["out-a", "out-b", "out-c"]
    for _record, reason, attempts in dead:
        assert "HTTP 503" in reason and attempts >= 3
    assert runner.dead_lettered == 3 and runner.delivered == 0 and receiver.by_id == {}
    assert all_committed(consumer)  # dead-lettered records do not block the stream


def test_webhook_client_error_dead_letters_at_once(stream: SqliteLog, receivers: Any, runners: Any) -> None:
    receiver = receivers(lambda n: 400)
    append(stream, [output("a", 1, 1, "out-a"), output("a", 2, 2, "out-b")])
    runner, dead = runners(WebhookSink(receiver.url), stream.consumer("sink-x"), backoff_initial_s=30)
    started = time.monotonic()
    assert drain(runner) == 2
    assert time.monotonic() - started < 5  # no backoff: a 400 is not retried
    assert [(r.id, n) for r, _, n in dead] == [("out-a", 2), ("out-b", 2)]  # the batch, then one by one
    assert all("HTTP 400" in reason for _, reason, _ in dead) and runner.retried == 0


def test_webhook_batch_mode(stream: SqliteLog, receivers: Any, runners: Any) -> None:
    receiver = receivers()
    append(stream, [output("a", 1, 1, "out-a"), output("a", 2, 2, "out-b")])
    runner, _ = runners(WebhookSink(receiver.url, batch=True, headers={"X-Token": "t"}), stream.consumer("g"))
    assert drain(runner) == 2
    [(key, body)] = receiver.by_id.items()
    assert key.startswith("batch-") and [item["id"] for item in body] == ["out-a", "out-b"]


def test_stop_during_backoff_commits_nothing_and_loses_nothing(stream: SqliteLog, receivers: Any, runners: Any) -> None:
    healthy = threading.Event()
    receiver = receivers(lambda n: 200 if healthy.is_set() else 503)
    append(stream, [output(f"k{i}", i, i, f"out-{i}") for i in range(20)])
    consumer = stream.consumer("sink-x")
    runner, dead = runners(WebhookSink(receiver.url), consumer, max_attempts=10_000)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while receiver.requests < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()  # the sink is down, the runner is backing off: it stops polling, then stops
    thread.join(10)
    assert not thread.is_alive()
    assert consumer.committed() == {} and runner.delivered == 0 and dead == []
    assert consumer.positions() == {0: 0, 1: 0}  # sought back to the batch's start
    healthy.set()
    again, dead = runners(WebhookSink(receiver.url), stream.consumer("sink-x"))
    assert drain(again) == 20
    assert sorted(receiver.by_id) == sorted(f"out-{i}" for i in range(20)) and dead == []


def test_failing_dead_letter_callback_keeps_the_batch(stream: SqliteLog, receivers: Any) -> None:
    receiver = receivers(lambda n: 400)
    append(stream, [output("a", 1, 1, "out-a")])
    consumer = stream.consumer("sink-x")

    def refuse(record: SinkRecord, reason: str, attempts: int) -> None:
        raise RuntimeError("dead-letter store down")

    runner = SinkRunner(WebhookSink(receiver.url), consumer, refuse)
    try:
        with pytest.raises(RuntimeError, match="dead-letter store down"):
            runner.run_once(timeout_s=0.05)
        assert consumer.committed() == {} and sum(consumer.positions().values()) == 0
        kept: DeadLetters = []
        runner.dead_letter = lambda r, reason, n: kept.append((r, reason, n))
        assert runner.run_once(timeout_s=0.05) == 1 and kept[0][0].id == "out-a"
    finally:
        runner.close()


_CHILD = """
import sys, threading
from pathlib import Path
from headwater.log.sqlite import SqliteLog
from headwater.processing.sinks import SinkRunner, WebhookSink
log = SqliteLog(Path(sys.argv[1]), Path(sys.argv[2]), partitions=2)
def dead(record, reason, attempts):
    sys.exit(f"dead letter {record.id}: {reason}")
SinkRunner(WebhookSink(sys.argv[3]), log.consumer("sink-x"), dead, batch_size=7).run(threading.Event())
"""


def test_kill_9_loses_nothing(tmp_path: Path, stream: SqliteLog, receivers: Any, runners: Any) -> None:
    receiver = receivers(delay_s=0.005)
    ids = [f"out-{i}" for i in range(200)]
    append(stream, [output(f"k{i}", i, i, id_) for i, id_ in enumerate(ids)])
    args = [sys.executable, "-c", _CHILD, str(tmp_path / "s.db"), str(tmp_path / "o.db"), receiver.url]
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while len(receiver.raw) < 60 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
        assert child.stderr is not None
        stderr = child.stderr.read().decode()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL, stderr
    consumer = stream.consumer("sink-x")
    committed = consumer.committed()
    assert 0 < sum(committed.values()) < 200
    runner, dead = runners(WebhookSink(receiver.url), consumer)
    delivered_before = set(receiver.by_id)
    reread: list[str] = []
    while records := consumer.poll(500, 0.05):  # what the dead runner committed had all been delivered
        reread += [decode_output(r).id for r in records]
    assert set(ids) - set(reread) <= delivered_before
    for partition in consumer.assignment():
        consumer.seek(partition, committed.get(partition, 0))
    drain(runner)
    assert sorted(receiver.by_id) == sorted(ids) and dead == []
    assert all_committed(consumer)


# ---------------------------------------------------------------------------------------------------------------------
# Redis


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.mark.services
def test_redis_set_latest_value_replay_and_stale(
    stream: SqliteLog, redis_server: RedisServer, redis_client: Any, runners: Any
) -> None:
    prefix = uuid.uuid4().hex
    append(stream, [output("a", {"n": 1}, 100, "o1"), output("b", "x", 100, "o2"), output("a", {"n": 2}, 200, "o3")])
    consumer = stream.consumer("sink-x")
    sink = RedisSink(redis_server.url, key_template=prefix + ":{key}")
    runner, dead = runners(sink, consumer)
    assert drain(runner) == 3
    state = {key: redis_client.get(f"{prefix}:{key}") for key in ("a", "b", "a:event_time", "b:event_time")}
    assert state == {"a": b'{"n":2}', "b": b'"x"', "a:event_time": b"200", "b:event_time": b"100"}
    rewind(consumer)  # replay everything: the same state
    assert drain(runner) == 3
    assert {key: redis_client.get(f"{prefix}:{key}") for key in state} == state
    append(stream, [output("a", {"n": "old"}, 150, "o4")])  # older than what is stored: skipped
    assert drain(runner) == 1
    assert redis_client.get(f"{prefix}:a") == b'{"n":2}' and sink.skipped_stale >= 2
    assert dead == [] and redis_client.ttl(f"{prefix}:a") == -1


@pytest.mark.services
def test_redis_hash_mode(stream: SqliteLog, redis_server: RedisServer, redis_client: Any, runners: Any) -> None:
    prefix = uuid.uuid4().hex
    records = [
        output("a", {"name": "x", "n": 3, "tags": [1]}, 1, "o1"),
        output("a", {"name": "y"}, 2, "o2"),  # replaces the whole hash
        output("b", 5, 1, "o3"),  # not an object: dead letter
        output(None, {"name": "z"}, 1, "o4"),  # no key: dead letter
        output("c", {"name": "c", "n": 1.5, "ok": True}, 1, "o5"),
    ]
    append(stream, records)
    sink = RedisSink(redis_server.url, key_template=prefix + ":{key}", mode="hash", ttl_s=60)
    runner, dead = runners(sink, stream.consumer("sink-x"))
    assert drain(runner) == 5
    assert redis_client.hgetall(f"{prefix}:a") == {b"name": b"y"}
    assert redis_client.hgetall(f"{prefix}:c") == {b"name": b"c", b"n": b"1.5", b"ok": b"true"}
    assert 0 < redis_client.pttl(f"{prefix}:a") <= 60_000 and redis_client.pttl(f"{prefix}:a:event_time") > 0
    assert sorted(r.id for r, _, _ in dead) == ["o3", "o4"] and runner.delivered == 3
    assert all("PermanentSinkError" in reason for _, reason, _ in dead)


@pytest.mark.services
def test_redis_down_then_up(tmp_path: Path, stream: SqliteLog, runners: Any) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        server.stop()
        append(stream, [output("a", 1, 1, "o1")])
        runner, dead = runners(RedisSink(server.url), stream.consumer("sink-x"), max_attempts=2)
        assert drain(runner) == 1
        assert dead and "SinkError" in dead[0][1] and runner.retried == 1
        server.start()  # same port and directory
        append(stream, [output("a", 2, 2, "o2")])
        assert drain(runner) == 1 and runner.delivered == 1
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------------------------
# PostgreSQL


def _rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


@pytest.mark.services
def test_postgres_upsert_replay_and_stale(stream: SqliteLog, postgres_server: PostgresServer, runners: Any) -> None:
    dsn, table = postgres_server.dsn(), f"sink_{uuid.uuid4().hex[:8]}"
    append(stream, [output("a", {"n": 1}, 100, "o1"), output("b", [1, 2], 100, "o2"), output("a", {"n": 2}, 200, "o3")])
    consumer = stream.consumer("sink-x")
    runner, dead = runners(PostgresSink(dsn, table), consumer)
    assert drain(runner) == 3
    query = f"SELECT key, value, event_time, output_id FROM {table} ORDER BY key"
    expected = [("a", {"n": 2}, at(200), "o3"), ("b", [1, 2], at(100), "o2")]
    assert _rows(dsn, query) == expected
    rewind(consumer)
    assert drain(runner) == 3
    assert _rows(dsn, query) == expected
    append(stream, [output("a", {"n": "old"}, 150, "o4"), output("b", None, 300, "o5")])
    assert drain(runner) == 2
    assert _rows(dsn, query) == [expected[0], ("b", None, at(300), "o5")] and dead == []


@pytest.mark.services
def test_postgres_mapped_columns(stream: SqliteLog, postgres_server: PostgresServer, runners: Any) -> None:
    dsn, table = postgres_server.dsn(), f"public.sink_{uuid.uuid4().hex[:8]}"
    columns = {"user_id": "text", "amount": "numeric(10,2)", "tags": "jsonb", "seen": "timestamptz"}
    sink = PostgresSink(dsn, table, key_columns=["user_id"], columns=columns)
    append(
        stream,
        [
            output("u1", {"user_id": "u1", "amount": 1.5, "tags": ["a"], "seen": "2024-01-01T00:00:00Z"}, 1, "o1"),
            output("u2", {"user_id": "u2", "amount": "abc"}, 1, "o2"),  # not a number: dead letter
            output("u3", {"user_id": "u3", "amount": 7, "extra": "ignored"}, 1, "o3"),
        ],
    )
    consumer = stream.consumer("sink-x")
    runner, dead = runners(sink, consumer)
    assert drain(runner) == 3
    query = f"SELECT user_id, amount::text, tags, seen, output_id FROM {table} ORDER BY user_id"
    expected = [
        ("u1", "1.50", ["a"], dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "o1"),
        ("u3", "7.00", None, None, "o3"),
    ]
    assert _rows(dsn, query) == expected
    assert [r.id for r, _, _ in dead] == ["o2"] and "InvalidTextRepresentation" in dead[0][1]
    rewind(consumer)
    drain(runner)
    assert _rows(dsn, query) == expected and len(dead) == 2


# ---------------------------------------------------------------------------------------------------------------------
# Kafka


@pytest.mark.kafka
def test_kafka_sink(stream: SqliteLog, kafka_broker: KafkaBroker, runners: Any) -> None:
    from confluent_kafka import Consumer

    topic = f"sink-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic)
    records = [output("a", {"n": 1}, 1_700_000_000_000, "o1"), output(None, [1], 1_700_000_000_001, "o2")]
    append(stream, [*records, output("big", "x" * 2_000_000, 1, "o3")])  # over message.max.bytes: dead letter
    runner, dead = runners(KafkaSink(kafka_broker.bootstrap, topic), stream.consumer("sink-x"))
    assert drain(runner) == 3
    assert [(r.id, n) for r, _, n in dead] == [("o3", 2)] and "MSG_SIZE_TOO_LARGE" in dead[0][1]
    reader = Consumer(
        {"bootstrap.servers": kafka_broker.bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"}
    )
    try:
        reader.subscribe([topic])
        got: dict[str, tuple[bytes | None, Any, int]] = {}
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is None or message.error():
                continue
            headers = dict(message.headers() or [])
            got[headers["idempotency-key"].decode()] = (
                message.key(),
                orjson.loads(message.value()),
                message.timestamp()[1],
            )
    finally:
        reader.close()
    assert got == {"o1": (b"a", {"n": 1}, 1_700_000_000_000), "o2": (None, [1], 1_700_000_000_001)}


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and configuration


def test_undecodable_records_are_dead_lettered(stream: SqliteLog, receivers: Any, runners: Any) -> None:
    receiver = receivers()
    append(stream, [(b"k", b"not json"), (b"k", orjson.dumps({"k": "k", "v": 1, "t": "late", "id": "x"}))])
    append(stream, [output("k", 1, 5, "good")])
    runner, dead = runners(WebhookSink(receiver.url), stream.consumer("sink-x"))
    assert drain(runner) == 3
    assert list(receiver.by_id) == ["good"]
    assert [(r.id.split(":")[0], n) for r, _, n in dead] == [("undecodable", 0)] * 2
    assert "not JSON" in dead[0][1] and "field 't'" in dead[1][1]


def test_sink_from_config() -> None:
    sinks = [
        sink_from_config({"kind": "webhook", "url": "http://127.0.0.1:1/x", "batch": True, "timeout_s": 2}),
        sink_from_config({"kind": "redis", "url": "redis://127.0.0.1:1/0", "mode": "hash", "ttl_s": 5}),
        sink_from_config({"kind": "postgres", "dsn": "postgresql://x@127.0.0.1:1/db", "table": "t"}),
        sink_from_config({"kind": "kafka", "bootstrap_servers": "127.0.0.1:1", "topic": "t", "name": "out"}),
    ]
    try:
        assert [type(sink) for sink in sinks] == [WebhookSink, RedisSink, PostgresSink, KafkaSink]
        assert sinks[3].name == "out"
    finally:
        for sink in sinks:
            sink.close()
    bad: list[tuple[Any, str]] = [
        ({"url": "http://x"}, "missing field 'kind'"),
        ({"kind": "s3"}, "field 'kind' is 's3'"),
        ({"kind": "webhook"}, "webhook sink: missing field 'url'"),
        ({"kind": "webhook", "url": "http://x", "retries": 3}, "unknown field 'retries'"),
        ({"kind": "webhook", "url": "ftp://x"}, "field 'url'"),
        ({"kind": "webhook", "url": "http://x", "timeout_s": "10"}, "field 'timeout_s'"),
        ({"kind": "redis", "url": "redis://x", "mode": "list"}, "field 'mode'"),
        ({"kind": "redis", "url": "redis://x", "key_template": "{user}"}, "field 'key_template'"),
        ({"kind": "redis", "url": "redis://x", "ttl_s": 0}, "field 'ttl_s'"),
        ({"kind": "postgres", "dsn": "x", "table": "t", "key_columns": ["id"]}, "field 'key_columns'"),
        ({"kind": "postgres", "dsn": "x", "table": "t", "columns": {"a": "int; drop"}}, "field 'columns'"),
        ({"kind": "kafka", "bootstrap_servers": "x"}, "kafka sink: missing field 'topic'"),
        (["webhook"], "must be a mapping"),
    ]
    for spec, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            sink_from_config(spec)
