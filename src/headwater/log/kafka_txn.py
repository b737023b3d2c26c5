"""Stream-processor checkpoints on Kafka: one transaction per checkpoint (Kafka Streams' EOS v2).

A transaction holds the checkpoint's output records (to `<topic>.<stream>` topics), its state
changes (to the compacted changelog topic `<topic>.<run>-changelog`, partition = input
partition) and the input offsets (`send_offsets_to_transaction` with the consumer's group
metadata, so a member that lost its partitions in a rebalance is fenced and its transaction
aborted). Consumers read committed records only (librdkafka's default `read_committed`), so an
aborted checkpoint is invisible; the group's committed offsets are where the next owner resumes,
after restoring state from the changelog.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient, OffsetSpec

from headwater.core.errors import LogError
from headwater.log.base import OutputRecord

if TYPE_CHECKING:
    from headwater.log.kafka import KafkaConsumer, KafkaLog

log = logging.getLogger(__name__)
TRANSACTION_TIMEOUT_MS = 10_000  # a dead member's open transaction blocks readers at most this long
_TIMEOUT_S = 30.0


class KafkaCheckpointer:
    offsets_in_log = True
    changelog = True

    def __init__(self, log_: KafkaLog, name: str, consumer: KafkaConsumer) -> None:
        self._log, self.name, self._consumer = log_, name, consumer
        self.changelog_topic = log_.changelog(name.replace("/", "."))
        self._topics: dict[str, str] = {}
        self._producer = _Producer(
            {
                **log_.conf,
                "client.id": f"headwater-{name}",
                "transactional.id": f"headwater.{name}.{uuid.uuid4().hex[:8]}",
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
            }
        )
        self._lock = threading.Lock()
        try:
            self._producer.init_transactions(_TIMEOUT_S)
        except KafkaException as exc:
            raise LogError(f"Kafka transactions unavailable: {exc.args[0].str()}") from exc

    def _topic(self, stream: str) -> str:
        if stream not in self._topics:
            self._topics[stream] = self._log.stream(stream).topic  # created when missing
        return self._topics[stream]

    def write(
        self,
        outputs: dict[str, list[OutputRecord]],
        changes: dict[int, list[tuple[bytes, bytes | None]]],
        offsets: dict[int, int],
    ) -> dict[int, int]:
        if not outputs and not changes and not offsets:
            return {}
        ends: dict[int, int] = {}
        errors: list[str] = []

        def delivered(err: KafkaError | None, message: Any) -> None:
            if err is not None:
                errors.append(err.str())
            elif message.topic() == self.changelog_topic:
                ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)

        producer = self._producer
        with self._lock:
            try:
                producer.begin_transaction()
                for stream, items in outputs.items():
                    topic = self._topic(stream)
                    for item in items:
                        self._produce(topic, item.value, item.key, None, delivered)
                for partition, records in changes.items():
                    for key, value in records:
                        self._produce(self.changelog_topic, value, key, partition, delivered)
                if offsets:
                    positions = [TopicPartition(self._consumer.topic, p, o) for p, o in offsets.items()]
                    producer.send_offsets_to_transaction(positions, self._consumer.group_metadata(), _TIMEOUT_S)
                producer.flush(_TIMEOUT_S)
                if errors:
                    raise LogError(f"Kafka refused checkpoint records: {errors[0]}")
                producer.commit_transaction(_TIMEOUT_S)
            except (KafkaException, LogError) as exc:
                self._abort()
                message = exc.args[0].str() if isinstance(exc, KafkaException) else str(exc)
                raise LogError(f"checkpoint transaction failed (partitions may have moved): {message}") from exc
        return ends

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int | None, cb: Any) -> None:
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value, key, on_delivery=cb)
                else:
                    self._producer.produce(topic, value, key, partition=partition, on_delivery=cb)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(_TIMEOUT_S)
        except KafkaException as exc:
            log.warning("abort of checkpoint transaction: %s", exc.args[0].str())

    def restore(self, partition: int, start: int) -> Iterator[tuple[int, list[tuple[bytes, bytes | None]]]]:
        """Read the changelog partition from `start` up to its end (committed records only)."""
        reader = _Consumer(
            {
                **self._log.conf,
                "group.id": f"headwater-restore-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        try:
            tp = TopicPartition(self.changelog_topic, partition, max(start, 0))
            reader.assign([tp])
            deadline = time.monotonic() + _TIMEOUT_S + TRANSACTION_TIMEOUT_MS / 1000
            _, end = reader.get_watermark_offsets(tp, timeout=_TIMEOUT_S, cached=False)
            position = start
            while position < end:
                if time.monotonic() > deadline:
                    raise LogError(f"changelog {self.changelog_topic}[{partition}]: restore did not reach {end}")
                batch: list[tuple[bytes, bytes | None]] = []
                for message in reader.consume(10_000, 0.5):
                    if message.error() is not None:
                        continue
                    batch.append((message.key() or b"", message.value()))
                    position = int(message.offset() or 0) + 1
                current = reader.position([TopicPartition(self.changelog_topic, partition)])[0].offset
                position = max(position, current if current >= 0 else position)
                if batch or position >= end:
                    yield position, batch
                if not batch:  # only transaction markers or an open transaction ahead: ask again
                    _, end = reader.get_watermark_offsets(tp, timeout=_TIMEOUT_S, cached=False)
        finally:
            reader.close()

    def changelog_end(self, partition: int) -> int:
        admin = AdminClient({**self._log.conf, "client.id": "headwater-admin"})
        tp = TopicPartition(self.changelog_topic, partition)
        futures = admin.list_offsets({tp: OffsetSpec.latest()}, request_timeout=_TIMEOUT_S)
        return int(next(iter(futures.values())).result(_TIMEOUT_S).offset)

    def committed(self) -> dict[int, int]:
        return self._consumer.committed()

    def close(self) -> None:
        self._producer.flush(5)
