"""RabbitReader against a real rabbitmq-server: acks, prefetch, exchange copies, stable ids, broker restarts."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from headwater.core.errors import SourceError, SourceUnavailable
from headwater.core.source_settings import SourceSettings
from headwater.sources.base import Delivery
from headwater.sources.rabbitmq import RabbitReader
from tests.services import RabbitServer
from tests.sources.support import drain, events_of, log_envelopes, make_runner

pytestmark = pytest.mark.services


@contextlib.contextmanager
def admin(server: RabbitServer) -> Iterator[BlockingChannel]:
    """A channel of a connection of its own (the test's publisher and 'other consumer')."""
    conn = pika.BlockingConnection(server.parameters())
    try:
        yield conn.channel()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            conn.close()


def new_queue(server: RabbitServer) -> str:
    name = f"q-{uuid.uuid4().hex[:8]}"
    with admin(server) as channel:
        channel.queue_declare(name, durable=True)
    return name


def publish(
    server: RabbitServer, bodies: list[bytes], queue: str = "", exchange: str = "", ids: bool = True, key: str = ""
) -> list[str]:
    """Publish persistent messages (with message ids `m0`, `m1`...); returns the ids."""
    message_ids = [f"m{i}-{uuid.uuid4().hex[:6]}" for i in range(len(bodies))]
    with admin(server) as channel:
        channel.confirm_delivery()
        for body, message_id in zip(bodies, message_ids, strict=True):
            props = pika.BasicProperties(
                delivery_mode=2, message_id=message_id if ids else None, type="bet", content_type="application/json"
            )
            channel.basic_publish(exchange, key or queue, body, props)
    return message_ids


def ready(server: RabbitServer, queue: str) -> int:
    with admin(server) as channel:
        return channel.queue_declare(queue, passive=True).method.message_count


def reader_for(server: RabbitServer, queue: str, **options: Any) -> RabbitReader:
    settings = SourceSettings(name="bets", kind="rabbitmq", url=server.url, queue=queue, **options)
    return RabbitReader(settings)


def read_n(reader: RabbitReader, count: int, limit_s: float = 30) -> list[Delivery]:
    """Read until `count` deliveries arrived (fails after `limit_s`: something is wrong, not slow)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + limit_s
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} deliveries"
        got += reader.read(count - len(got), 1.0)
    return got


def test_unacked_messages_come_back_and_acked_ones_do_not(rabbitmq: RabbitServer) -> None:
    queue = new_queue(rabbitmq)
    ids = publish(rabbitmq, [f'{{"n": {i}}}'.encode() for i in range(10)], queue)
    first = reader_for(rabbitmq, queue)
    got = read_n(first, 10)
    assert [d.stable_id for d in got] == ids
    assert got[3].payload == b'{"n": 3}'
    assert got[0].headers["message_id"] == ids[0] and got[0].headers["type"] == "bet"
    assert got[0].headers["content_type"] == "application/json" and got[0].received_ms > 0
    first.acknowledge(got[:4])
    first.close()  # 6 read, never acknowledged

    second = reader_for(rabbitmq, queue)
    again: list[Delivery] = []
    worker = threading.Thread(target=lambda: again.extend(read_n(second, 6)))  # the runner's plain thread
    worker.start()
    worker.join()
    assert [d.stable_id for d in again] == ids[4:]
    assert all(d.headers.get("redelivered") == "true" for d in again)
    assert second.read(10, 0.3) == []
    second.acknowledge(again)
    second.close()
    assert ready(rabbitmq, queue) == 0


def test_prefetch_bounds_the_messages_in_flight(rabbitmq: RabbitServer) -> None:
    queue = new_queue(rabbitmq)
    ids = publish(rabbitmq, [b"x%d" % i for i in range(20)], queue)
    reader = reader_for(rabbitmq, queue, prefetch=5)
    try:
        batch = read_n(reader, 5)
        assert reader.read(100, 0.5) == []  # the broker sends no sixth before an ack
        progress = reader.progress()
        assert progress["in_flight"] == 5 and progress["messages_ready"] == 15 and progress["connected"]
        assert reader.lag() == 20
        reader.acknowledge(batch)
        seen = [d.stable_id for d in batch]
        while len(seen) < 20:
            batch = read_n(reader, 5)
            assert reader.read(100, 0.2) == []
            seen += [d.stable_id for d in batch]
            reader.acknowledge(batch)
        assert seen == ids
        assert ready(rabbitmq, queue) == 0
    finally:
        reader.close()


def test_exchange_copy_leaves_the_other_consumers_flow_alone(rabbitmq: RabbitServer) -> None:
    exchange, main = f"ex-{uuid.uuid4().hex[:8]}", f"main-{uuid.uuid4().hex[:8]}"
    copy = f"headwater-{uuid.uuid4().hex[:8]}"
    with admin(rabbitmq) as channel:
        channel.exchange_declare(exchange, "topic", durable=True)
        channel.queue_declare(main, durable=True)
        channel.queue_bind(main, exchange, routing_key="#")
    reader = reader_for(rabbitmq, copy, exchange=exchange, routing_key="bets.*")
    reader.connect()  # declares and binds the copy queue
    bets = publish(rabbitmq, [b"bet%d" % i for i in range(12)], exchange=exchange, key="bets.new")
    payments = publish(rabbitmq, [b"pay%d" % i for i in range(5)], exchange=exchange, key="payments.new")

    got = read_n(reader, 12)
    assert [d.stable_id for d in got] == bets
    assert got[0].headers["routing_key"] == "bets.new" and got[0].headers["exchange"] == exchange
    assert reader.read(10, 0.3) == []  # payments are not bound to the copy
    reader.acknowledge(got)
    reader.close()

    other: list[str] = []  # the production consumer of the original queue still gets every message
    with admin(rabbitmq) as channel:
        for method, props, _body in channel.consume(main, inactivity_timeout=1):
            if method is None:
                break
            other.append(props.message_id)
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
    assert other == bets + payments
    with admin(rabbitmq) as channel:  # the copy queue is durable and stays bound while Headwater is away
        assert channel.queue_declare(copy, passive=True).method.message_count == 0
    publish(rabbitmq, [b"late"], exchange=exchange, key="bets.late")
    assert ready(rabbitmq, copy) == 1


def test_stable_ids_are_equal_on_redelivery(rabbitmq: RabbitServer) -> None:
    queue = new_queue(rabbitmq)
    publish(rabbitmq, [b"a", b"b", b"c", b"a"], queue, ids=False)
    with_ids = publish(rabbitmq, [b"a", b"a"], queue)
    reader = reader_for(rabbitmq, queue)
    first = [d.stable_id for d in read_n(reader, 6)]
    reader.close()
    reader = reader_for(rabbitmq, queue)
    second = [d.stable_id for d in read_n(reader, 6)]
    reader.close()
    assert first == second
    assert first[0].startswith("sha1:") and first[0] == first[3]  # same body, no message id: one id (documented)
    assert len(set(first[:3])) == 3
    assert first[4:] == with_ids  # message ids win over the body


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_broker_restart_unavailable_then_recovery_with_nothing_lost(rabbitmq: RabbitServer, how: str) -> None:
    """A clean broker shutdown (SIGTERM) or a crash (SIGKILL): acked messages stay acked, the rest come back."""
    queue = new_queue(rabbitmq)
    ids = publish(rabbitmq, [b"r%d" % i for i in range(30)], queue)
    if how == "kill":
        # the broker keeps a new queue's definition in a log it writes lazily: one declared a second before a
        # SIGKILL can be gone afterwards (seen here). A production queue is older than that: restart cleanly first.
        rabbitmq.restart()
    reader = reader_for(rabbitmq, queue, prefetch=10)
    done: list[str] = []
    try:
        batch = read_n(reader, 10)
        reader.acknowledge(batch)
        done += [d.stable_id for d in batch]
        read_n(reader, 10)  # read, never acknowledged: the broker keeps them for the next connection

        if how == "stop":
            rabbitmq.stop()
        else:
            rabbitmq.kill()
        with pytest.raises(SourceUnavailable, match="RabbitMQ"):
            for _ in range(5):  # the loss shows on the first read that talks to the broker
                reader.read(10, 0.5)
        with pytest.raises(SourceUnavailable, match="RabbitMQ"):
            reader.read(10, 0.5)  # still down: the reconnection fails
        progress = reader.progress()
        assert progress["connected"] is False and progress["last_error"]

        rabbitmq.start()
        deadline = time.monotonic() + 60
        while len(set(done)) < 30:
            assert time.monotonic() < deadline, f"{len(set(done))} of 30 after the restart"
            try:
                batch = reader.read(50, 1.0)
            except SourceUnavailable:
                continue
            reader.acknowledge(batch)
            done += [d.stable_id for d in batch]
        assert set(done) == set(ids)
        assert reader.progress()["reconnects"] >= 1
        assert reader.read(10, 0.3) == []
        assert ready(rabbitmq, queue) == 0
    finally:
        reader.close()
        if not rabbitmq.running:  # the other tests need it
            rabbitmq.start()


def test_missing_queue_or_exchange_is_a_clear_error(rabbitmq: RabbitServer) -> None:
    reader = reader_for(rabbitmq, "no-such-queue")
    with pytest.raises(SourceError, match="queue 'no-such-queue' does not exist") as caught:
        reader.read(1, 0.1)
    assert not isinstance(caught.value, SourceUnavailable)
    reader.close()
    reader = reader_for(rabbitmq, "copy-of-nothing", exchange="no-such-exchange")
    with pytest.raises(SourceError, match="exchange 'no-such-exchange' does not exist") as caught:
        reader.read(1, 0.1)
    assert not isinstance(caught.value, SourceUnavailable)
    reader.close()


def test_deleted_queue_unavailable_then_error(rabbitmq: RabbitServer) -> None:
    queue = new_queue(rabbitmq)
    publish(rabbitmq, [b"one"], queue)
    reader = reader_for(rabbitmq, queue)
    try:
        read_n(reader, 1)
        with admin(rabbitmq) as channel:
            channel.queue_delete(queue)
        with pytest.raises(SourceUnavailable, match="cancelled"):
            for _ in range(10):
                reader.read(1, 0.5)
        with pytest.raises(SourceError, match="does not exist"):
            reader.read(1, 2.0)  # the next connection finds no queue
    finally:
        reader.close()


class Crash(Exception):
    pass


def test_runner_crash_between_append_and_ack_stores_each_message_once(rabbitmq: RabbitServer, data_dir: Path) -> None:
    """Through the SourceRunner and a real embedded log: a crash after the append, before the ack, repeats nothing."""
    queue = new_queue(rabbitmq)
    bodies = [orjson.dumps({"event": "bet", "userId": f"u{i % 7}", "n": i}) for i in range(300)]
    publish(rabbitmq, bodies[:150], queue)
    publish(rabbitmq, bodies[150:], queue, ids=False)  # content-hash ids
    options = {"kind": "rabbitmq", "url": rabbitmq.url, "queue": queue, "batch_size": 64, "prefetch": 100}
    runner = make_runner(data_dir, **options)
    acknowledge = runner.reader.acknowledge
    calls = 0

    def crash_on_third(deliveries: list[Delivery]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Crash
        acknowledge(deliveries)

    runner.reader.acknowledge = crash_on_third  # type: ignore[method-assign]
    with pytest.raises(Crash):
        drain(runner, timeout_s=0.5)
    runner.close()  # the connection closes: the broker re-queues everything not acknowledged

    again = make_runner(data_dir, **options)
    drain(again, timeout_s=0.5)
    events = events_of(log_envelopes(again.event_log))
    assert sorted(e["n"] for e in events) == list(range(300))
    assert again.status.duplicates > 0  # the third batch came back and was dropped as a repeat
    assert ready(rabbitmq, queue) == 0
    again.close()
