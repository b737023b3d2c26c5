"""The Kafka topic source reader against a real broker: reading, committing only what was acknowledged,
where a new group starts, partitions and rebalances, and the errors the runner acts on."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from headwater.core.errors import SourceError, SourceUnavailable
from headwater.core.source_settings import SourceSettings
from headwater.lake.tables import open_catalog
from headwater.sources.base import Delivery
from headwater.sources.kafka import KafkaTopicReader
from headwater.sources.lander import SourceLander
from tests.services import KafkaBroker, free_ports
from tests.sources.support import events_of, log_envelopes, make_runner, quarantined

pytestmark = pytest.mark.kafka
WAIT_S = 60.0  # upper bound of every wait below (group joins take a few seconds), not a timing assertion


def _topic(broker: KafkaBroker, partitions: int = 1) -> str:
    name = f"src-{uuid.uuid4().hex[:10]}"
    broker.create_topic(name, partitions)
    return name


def _settings(broker: KafkaBroker | str, topic: str, group: str | None = None, **extra: object) -> SourceSettings:
    servers = broker if isinstance(broker, str) else broker.bootstrap
    return SourceSettings.model_validate(
        {"name": "orders", "kind": "kafka", "bootstrap_servers": servers, "topic": topic,
         "group": group or f"g-{uuid.uuid4().hex[:10]}", **extra}
    )  # fmt: skip


def _produce(broker: KafkaBroker, topic: str, values: list[dict[str, object]], **kwargs: object) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for value in values:
        producer.produce(topic, orjson.dumps(value), **kwargs)  # type: ignore[arg-type]
    assert producer.flush(30) == 0


def _read(reader: KafkaTopicReader, count: int) -> list[Delivery]:
    """Read until `count` deliveries arrived (fails after WAIT_S), then check that no more come."""
    out: list[Delivery] = []
    deadline = time.monotonic() + WAIT_S
    while len(out) < count and time.monotonic() < deadline:
        out += reader.read(1_000, 0.5)
    assert len(out) == count, f"read {len(out)} of {count}"
    out += reader.read(1_000, 0.5)
    assert len(out) == count, f"read {len(out)}, more than {count}"
    return out


def _wait_assigned(reader: KafkaTopicReader, partitions: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(reader.assignment()) < partitions:
        assert time.monotonic() < deadline, "no partition assigned"
        assert reader.read(100, 0.2) == []


def _committed(broker: KafkaBroker, topic: str, group: str, partitions: int = 1) -> dict[int, int]:
    """The group's committed offsets, read without joining the group."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in got if tp.offset >= 0}


@pytest.fixture
def readers() -> Iterator[list[KafkaTopicReader]]:
    """Readers a test opens, closed at its end."""
    opened: list[KafkaTopicReader] = []
    yield opened
    for reader in opened:
        reader.close()


def test_reads_json_records_with_stable_ids_and_headers(
    kafka_broker: KafkaBroker, readers: list[KafkaTopicReader]
) -> None:
    topic = _topic(kafka_broker)
    values = [{"event": "order", "n": i, "text": "café"} for i in range(25)]
    _produce(kafka_broker, topic, values, key=b"user-1", headers=[("trace", b"t-1"), ("bin", b"\xff\xfe")])
    readers.append(reader := KafkaTopicReader(_settings(kafka_broker, topic)))
    got = _read(reader, 25)
    assert [orjson.loads(d.payload) for d in got] == values
    assert [d.stable_id for d in got] == [f"{topic}:0:{i}" for i in range(25)]
    assert [d.token for d in got] == [(0, i) for i in range(25)]
    first = got[0]
    assert first.headers["trace"] == "t-1"
    assert first.headers["bin"] == "\ufffd\ufffd"  # not UTF-8: replaced, not an error
    assert first.headers["kafka_key"] == "user-1"
    produced_ms = int(first.headers["kafka_timestamp"])
    assert abs(produced_ms - time.time() * 1000) < 3_600_000
    assert first.received_ms >= produced_ms
    assert first.value is None


def test_acknowledge_commits_exactly_what_was_given(kafka_broker: KafkaBroker, readers: list[KafkaTopicReader]) -> None:
    topic = _topic(kafka_broker)
    _produce(kafka_broker, topic, [{"n": i} for i in range(10)])
    settings = _settings(kafka_broker, topic)
    first = KafkaTopicReader(settings)
    got = _read(first, 10)
    first.acknowledge(got[:2])
    first.acknowledge(got[2:4])
    assert _committed(kafka_broker, topic, settings.consumer_group) == {0: 4}
    assert first.progress()["partitions"]["0"]["committed"] == 4
    first.close()  # six read, never acknowledged: nothing more is committed
    assert _committed(kafka_broker, topic, settings.consumer_group) == {0: 4}

    readers.append(second := KafkaTopicReader(settings))
    again = _read(second, 6)
    assert [d.stable_id for d in again] == [d.stable_id for d in got[4:]]
    assert [d.payload for d in again] == [d.payload for d in got[4:]]
    second.acknowledge(again)
    assert _committed(kafka_broker, topic, settings.consumer_group) == {0: 10}
    second.acknowledge(again[:3])  # an old acknowledgement never moves the group back
    assert _committed(kafka_broker, topic, settings.consumer_group) == {0: 10}


def test_rewind_reads_again_what_was_not_acknowledged(
    kafka_broker: KafkaBroker, readers: list[KafkaTopicReader]
) -> None:
    topic = _topic(kafka_broker, partitions=2)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for partition in (0, 1):
        for i in range(6):
            producer.produce(topic, orjson.dumps({"p": partition, "i": i}), partition=partition)
    assert producer.flush(30) == 0
    readers.append(reader := KafkaTopicReader(_settings(kafka_broker, topic)))
    got = _read(reader, 12)
    reader.rewind()  # a batch failed before its append: nothing acknowledged yet
    again = _read(reader, 12)
    assert sorted(d.stable_id for d in again) == sorted(d.stable_id for d in got)
    acked = [d for d in again if d.token in {(0, 0), (0, 1), (1, 0)}]
    reader.acknowledge(acked)
    reader.rewind()
    rest = _read(reader, 9)
    assert sorted(d.token for d in rest) == [(0, i) for i in range(2, 6)] + [(1, i) for i in range(1, 6)]
    reader.rewind()  # nothing more than the acknowledged ones is skipped, even twice
    assert sorted(d.token for d in _read(reader, 9)) == sorted(d.token for d in rest)


def test_start_latest_skips_existing_records_and_keeps_its_start(
    kafka_broker: KafkaBroker, readers: list[KafkaTopicReader]
) -> None:
    topic = _topic(kafka_broker)
    _produce(kafka_broker, topic, [{"old": i} for i in range(5)])
    settings = _settings(kafka_broker, topic, start="latest")
    first = KafkaTopicReader(settings)
    _wait_assigned(first, 1)
    assert _committed(kafka_broker, topic, settings.consumer_group) == {0: 5}  # where it starts, kept
    _produce(kafka_broker, topic, [{"new": i} for i in range(3)])
    assert [orjson.loads(d.payload) for d in _read(first, 3)] == [{"new": i} for i in range(3)]
    first.close()  # nothing acknowledged

    _produce(kafka_broker, topic, [{"new": i} for i in range(3, 5)])  # while no reader runs
    readers.append(second := KafkaTopicReader(settings))
    got = _read(second, 5)  # a restart does not skip what arrived meanwhile
    assert [orjson.loads(d.payload) for d in got] == [{"new": i} for i in range(5)]
    assert [d.stable_id for d in got] == [f"{topic}:0:{i}" for i in range(5, 10)]


@pytest.mark.parametrize("zone", ["utc", "naive", "paris"])
def test_start_at_a_time(kafka_broker: KafkaBroker, readers: list[KafkaTopicReader], zone: str) -> None:
    topic = _topic(kafka_broker, partitions=2)
    base_ms = (int(time.time()) - 3600) * 1000
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for partition in (0, 1):
        for i in range(10):
            value = orjson.dumps({"p": partition, "i": i})
            producer.produce(topic, value, partition=partition, timestamp=base_ms + i * 1000)
    assert producer.flush(30) == 0
    start = datetime.fromtimestamp(base_ms / 1000 + 6, UTC)
    text = {
        "utc": start.isoformat(),
        "naive": start.replace(tzinfo=None).isoformat(),  # naive times are UTC
        "paris": start.astimezone(timezone(timedelta(hours=2))).isoformat(),
    }[zone]
    readers.append(reader := KafkaTopicReader(_settings(kafka_broker, topic, start=text)))
    got = _read(reader, 8)
    assert sorted((v["p"], v["i"]) for v in (orjson.loads(d.payload) for d in got)) == [
        (p, i) for p in (0, 1) for i in range(6, 10)
    ]


def test_start_at_a_time_after_every_record_starts_at_the_end(
    kafka_broker: KafkaBroker, readers: list[KafkaTopicReader]
) -> None:
    topic = _topic(kafka_broker)
    _produce(kafka_broker, topic, [{"old": i} for i in range(4)])
    future = datetime.fromtimestamp(time.time() + 86_400, UTC).isoformat()
    readers.append(reader := KafkaTopicReader(_settings(kafka_broker, topic, start=future)))
    _wait_assigned(reader, 1)
    _produce(kafka_broker, topic, [{"new": 1}])
    assert [orjson.loads(d.payload) for d in _read(reader, 1)] == [{"new": 1}]


def test_partitions_lag_and_progress(kafka_broker: KafkaBroker, readers: list[KafkaTopicReader]) -> None:
    topic = _topic(kafka_broker, partitions=3)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for partition in range(3):
        for i in range(10 + partition):
            producer.produce(topic, orjson.dumps({"p": partition, "i": i}), partition=partition)
    assert producer.flush(30) == 0
    settings = _settings(kafka_broker, topic)
    readers.append(reader := KafkaTopicReader(settings))
    got = _read(reader, 33)
    assert len({d.stable_id for d in got}) == 33
    for partition in range(3):
        mine = [d for d in got if d.token[0] == partition]
        assert [d.token[1] for d in mine] == list(range(10 + partition))  # in order within a partition
        assert all(d.stable_id == f"{topic}:{partition}:{d.token[1]}" for d in mine)
    reader.acknowledge(got)
    assert _committed(kafka_broker, topic, settings.consumer_group, 3) == {0: 10, 1: 11, 2: 12}
    deadline = time.monotonic() + WAIT_S
    while reader.lag() != 0:  # lag is cached about a second
        assert time.monotonic() < deadline, reader.progress()
        time.sleep(0.2)
    progress = reader.progress()
    assert progress["topic"] == topic and progress["group"] == settings.consumer_group
    assert {p: (s["position"], s["high"]) for p, s in progress["partitions"].items()} == {
        "0": (10, 10), "1": (11, 11), "2": (12, 12),
    }  # fmt: skip

    _produce(kafka_broker, topic, [{"more": i} for i in range(7)], partition=1)
    while reader.lag() != 7:  # the high watermark moved, the position did not
        assert time.monotonic() < deadline, reader.progress()
        time.sleep(0.2)


def test_rebalance_commits_only_owned_partitions(kafka_broker: KafkaBroker, readers: list[KafkaTopicReader]) -> None:
    topic = _topic(kafka_broker, partitions=2)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for partition in (0, 1):
        for i in range(5):
            producer.produce(topic, orjson.dumps({"p": partition, "i": i}), partition=partition)
    assert producer.flush(30) == 0
    settings = _settings(kafka_broker, topic)
    readers.append(first := KafkaTopicReader(settings, client_id="first"))
    got = _read(first, 10)  # owns both partitions
    assert first.assignment() == [0, 1]

    readers.append(second := KafkaTopicReader(settings, client_id="second"))
    later: dict[str, list[Delivery]] = {"first": [], "second": []}
    deadline = time.monotonic() + WAIT_S
    while not (len(first.assignment()) == 1 and len(second.assignment()) == 1):
        assert time.monotonic() < deadline, (first.assignment(), second.assignment())
        later["first"] += first.read(100, 0.2)
        later["second"] += second.read(100, 0.2)
    kept, moved = first.assignment()[0], second.assignment()[0]

    first.acknowledge(got)  # deliveries of both partitions; only the one it still owns is committed
    assert _committed(kafka_broker, topic, settings.consumer_group, 2) == {kept: 5}
    # the new owner reads the moved partition again from its start, with the same stable ids
    moved_ids = [d.stable_id for d in got if d.token[0] == moved]
    again = later["second"] + _read(second, 5 - len(later["second"]))
    assert [d.stable_id for d in again] == moved_ids
    second.acknowledge(again)
    assert _committed(kafka_broker, topic, settings.consumer_group, 2) == {kept: 5, moved: 5}


def test_unknown_topic_is_a_source_error(kafka_broker: KafkaBroker, readers: list[KafkaTopicReader]) -> None:
    readers.append(reader := KafkaTopicReader(_settings(kafka_broker, f"missing-{uuid.uuid4().hex[:8]}")))
    deadline = time.monotonic() + WAIT_S
    with pytest.raises(SourceError, match="does not exist") as caught:
        while time.monotonic() < deadline:
            reader.read(10, 0.5)
    assert not isinstance(caught.value, SourceUnavailable)


def test_brokers_down_is_source_unavailable(readers: list[KafkaTopicReader]) -> None:
    (port,) = free_ports(1)  # nothing listens there
    readers.append(reader := KafkaTopicReader(_settings(f"127.0.0.1:{port}", "anything")))
    deadline = time.monotonic() + WAIT_S
    with pytest.raises(SourceUnavailable, match="unreachable"):
        while time.monotonic() < deadline:
            reader.read(10, 0.5)
    assert reader.lag() is None


def test_broker_restart_unavailable_then_continues(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka").start()  # its own broker: the shared one stays up
    reader: KafkaTopicReader | None = None
    try:
        topic = _topic(broker)
        settings = _settings(broker, topic)
        _produce(broker, topic, [{"n": i} for i in range(5)])
        reader = KafkaTopicReader(settings)
        reader.acknowledge(_read(reader, 5))
        broker.kill()
        deadline = time.monotonic() + WAIT_S
        with pytest.raises(SourceUnavailable):
            while time.monotonic() < deadline:
                assert reader.read(10, 0.5) == []
        broker.start()
        _produce(broker, topic, [{"n": i} for i in range(5, 8)])
        deadline = time.monotonic() + WAIT_S
        got: list[Delivery] = []
        while len(got) < 3:  # the same reader: librdkafka reconnected by itself
            assert time.monotonic() < deadline
            try:
                got += reader.read(10, 0.5)
            except SourceUnavailable:
                time.sleep(0.5)  # what the runner does: back off, read again
        assert [d.stable_id for d in got] == [f"{topic}:0:{i}" for i in range(5, 8)]
        reader.acknowledge(got)
        assert _committed(broker, topic, settings.consumer_group) == {0: 8}
    finally:
        if reader is not None:
            reader.close()
        broker.stop()


def test_runner_end_to_end_with_a_restart(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    """Through the SourceRunner onto a real embedded log: events, a quarantined record, committed offsets;
    a second runner on the same group finds nothing left to do."""
    topic = _topic(kafka_broker)
    _produce(kafka_broker, topic, [{"event": "order", "user": f"u{i}", "n": i} for i in range(20)])
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    producer.produce(topic, b"{not json")
    assert producer.flush(30) == 0
    group = f"g-{uuid.uuid4().hex[:10]}"
    source = {"kind": "kafka", "bootstrap_servers": kafka_broker.bootstrap, "topic": topic, "group": group}
    mapping = {"event": "event", "user_id": "user"}
    runner = make_runner(tmp_path, **source, mapping=mapping)
    handled, deadline = 0, time.monotonic() + WAIT_S
    try:
        while handled < 21:
            assert time.monotonic() < deadline, f"handled {handled} of 21"
            handled += runner.step(0.5)
        assert _committed(kafka_broker, topic, group) == {0: 21}
        envelopes = log_envelopes(runner.event_log)
        events = events_of(envelopes)
        assert sorted(e["n"] for e in events) == list(range(20))  # unmapped fields ride along
        assert {e["messageId"] for e in events} == {f"{topic}:0:{i}" for i in range(20)}  # the stable ids
        assert {e["userId"] for e in events} == {f"u{i}" for i in range(20)}
        assert len(quarantined(envelopes)) == 1
    finally:
        runner.close()
    again = make_runner(tmp_path, **source, mapping=mapping)
    try:
        _wait_assigned(again.reader, 1)  # type: ignore[arg-type]
        assert again.step(0.5) == 0
    finally:
        again.close()


def test_avro_records_with_a_schema_registry_through_the_runner_into_a_table(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Klarna's shape: Avro on a topic, schemas in a registry, a record holding several decisions (flattened),
    landed in a table of its own with exact decimals; a record of an unknown schema id is quarantined."""
    from tests.sources.test_avro import Registry, _wire

    schema = {
        "type": "record", "name": "Batch", "fields": [
            {"name": "customer", "type": "string"},
            {"name": "decisions", "type": {"type": "array", "items": {"type": "record", "name": "Decision", "fields": [
                {"name": "id", "type": "string"},
                {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
                {"name": "approved", "type": "boolean"}]}}}],
    }  # fmt: skip
    registry = Registry()
    registry.register(7, schema)
    registry.thread.start()
    try:
        topic = _topic(kafka_broker)
        producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
        for i in range(5):
            decisions = [
                {"id": f"d{i}-{j}", "amount": Decimal(f"{i}{j}.5{j}"), "approved": j % 2 == 0} for j in range(3)
            ]
            producer.produce(topic, _wire(7, schema, {"customer": f"c{i}", "decisions": decisions}))
        producer.produce(topic, b"\x00\x00\x00\x00\x63" + b"junk")  # schema id 99: unknown
        assert producer.flush(30) == 0
        runner = make_runner(
            tmp_path, kind="kafka", format="avro", bootstrap_servers=kafka_broker.bootstrap, topic=topic,
            schema_registry_url=registry.url, flatten="decisions", table="decisions",
        )  # fmt: skip
        handled, deadline = 0, time.monotonic() + WAIT_S
        while handled < 6:
            assert time.monotonic() < deadline, f"handled {handled} of 6"
            handled += runner.step(0.5)
        bad = quarantined(log_envelopes(runner.event_log))
        assert len(bad) == 1 and "unknown schema id" in bad[0]["q"] and bad[0]["raw"].startswith("base64:")
        lander = SourceLander(open_catalog(runner.settings), runner.event_log, runner.source)
        while lander.poll(timeout_s=0.2):
            pass
        lander.close()
        rows = open_catalog(runner.settings).load_table(("headwater", "decisions")).scan().to_arrow()
        assert rows.num_rows == 15 and registry.requests == {7: 1, 99: 1}
        by_id = {r["id"]: r for r in rows.to_pylist()}
        assert by_id["d3-1"]["amount"] == Decimal("31.51") and by_id["d3-1"]["customer"] == "c3"
        assert by_id["d3-1"]["approved"] is False and by_id["d3-1"]["_source_id"] == f"{topic}:0:3#1"
        runner.close()
    finally:
        registry.server.shutdown()
        registry.server.server_close()
