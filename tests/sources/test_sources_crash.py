"""kill -9 of the whole of Headwater while a queue, a topic and a directory are being consumed: afterwards
every upstream record is in the lake exactly once, and none is left unacknowledged upstream."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import orjson
import pika
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.helpers import RunningHeadwater, child_env, make_keys
from tests.services import KafkaBroker, RabbitServer

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.services]
PER_SOURCE = {"topic": 30_000, "queue": 30_000, "drop": 90_000}  # the files source starts first, and is fastest
FILES = 3


def _event(source: str, i: int) -> bytes:
    return orjson.dumps({"event": f"{source}-event", "userId": f"{source}-u{i % 500}", "n": i})


def _fill_kafka(broker: KafkaBroker, topic: str) -> None:
    broker.create_topic(topic, partitions=3)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
    for i in range(PER_SOURCE["topic"]):
        while True:
            try:
                producer.produce(topic, _event("kafka", i), key=str(i))
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def _fill_rabbit(server: RabbitServer, queue: str) -> None:
    connection = pika.BlockingConnection(server.parameters())
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()
    for i in range(PER_SOURCE["queue"]):
        channel.basic_publish("", queue, _event("rabbit", i), pika.BasicProperties(message_id=f"r{i}", delivery_mode=2))
    connection.close()


def _rabbit_left(server: RabbitServer, queue: str) -> int:
    connection = pika.BlockingConnection(server.parameters())
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def _kafka_uncommitted(broker: KafkaBroker, topic: str, group: str) -> int:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions}
    finally:
        consumer.close()
    return sum(end - max(committed.get(p, 0), 0) for p, end in ends.items())


def test_kill_9_while_a_queue_a_topic_and_a_directory_are_consumed(
    kafka_broker: KafkaBroker, rabbitmq: RabbitServer, tmp_path: Path
) -> None:
    topic, queue = f"crash-{os.getpid()}-{time.monotonic_ns()}", f"crash-{time.monotonic_ns()}"
    _fill_kafka(kafka_broker, topic)
    _fill_rabbit(rabbitmq, queue)
    drop = tmp_path / "drop"
    drop.mkdir()
    per_file = PER_SOURCE["drop"] // FILES
    for f in range(FILES):
        path = drop / f"part-{f}.ndjson"
        path.write_bytes(b"\n".join(_event("files", f * per_file + i) for i in range(per_file)))
        past = time.time() - 5
        os.utime(path, (past, past))
    sources = [
        {"name": "topic", "kind": "kafka", "format": "json", "bootstrap_servers": kafka_broker.bootstrap,
         "topic": topic, "batch_size": 300},
        {"name": "queue", "kind": "rabbitmq", "format": "json", "url": rabbitmq.url, "queue": queue,
         "batch_size": 300, "prefetch": 1000},
        {"name": "drop", "kind": "files", "format": "ndjson", "path": str(drop), "batch_size": 300},
    ]  # fmt: skip
    data_dir = tmp_path / "data"
    env = child_env(data_dir, sources=json.dumps(sources), flush_interval_ms=200)
    keys = make_keys(data_dir)
    first = RunningHeadwater(data_dir, env, keys=keys).start()

    def records_in(name: str) -> int:
        path = data_dir / "sources" / name / "status.json"
        return orjson.loads(path.read_bytes()).get("records_in", 0) if path.exists() else 0

    def underway() -> bool:  # every source has started and one is well into its records: kill now
        counts = [records_in(s["name"]) for s in sources]
        return min(counts) > 0 and max(counts) >= 600

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not underway():
        time.sleep(0.02)
    first.kill_all()
    taken = {s["name"]: records_in(s["name"]) for s in sources}
    # every source had started and at least one was mid-way (status.json is written about once a second, so on a
    # fast run a small source may have finished by its first report: then it checks that a restart reads nothing
    # twice, while the sources cut mid-way check that nothing is lost)
    assert all(n > 0 for n in taken.values()), f"kill came too early: {taken}"
    assert any(n < PER_SOURCE[name] for name, n in taken.items()), f"kill came too late: {taken}"

    second = RunningHeadwater(data_dir, env, keys=keys).start()
    try:
        expected = [[name, PER_SOURCE[name], PER_SOURCE[name]] for name in ("drop", "queue", "topic")]
        sql = "SELECT source, count(*), count(DISTINCT properties) FROM events GROUP BY 1 ORDER BY 1"
        second.wait_rows(sql, expected, timeout=240)
        assert second.sql("SELECT count(*) FROM quarantine") == [[0]]
    finally:
        second.stop()
    assert _rabbit_left(rabbitmq, queue) == 0  # every message acknowledged (none ready, none unacked)
    assert _kafka_uncommitted(kafka_broker, topic, "headwater-source-topic") == 0
