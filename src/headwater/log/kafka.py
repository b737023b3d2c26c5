"""The event log on Apache Kafka (confluent-kafka), behind the same interfaces as the embedded log.

- Producer: idempotent (`enable.idempotence`, `acks=all`). `append_async` resolves only once Kafka
  acknowledged every record of the request; when it did not within `kafka_ack_timeout_ms` the
  caller gets `BackPressureError` (HTTP 503 + Retry-After) and nothing is reported as accepted.
  Keys are partitioned with murmur2, as Java clients do, so other Kafka apps agree where a user lands.
- Consumer: Kafka's own group protocol, so N lake writers share the partitions; `generation` changes
  on every rebalance and `assignment()` says what this member owns.
- No de-duplication at append (Kafka keeps no index of message ids): `deduplicates = False` tells the
  lake writer to drop repeated messageIds itself (see `headwater.lake.claims`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from headwater.core.errors import BackPressureError, LogError
from headwater.core.settings import Settings
from headwater.log.base import AppendResult, Record

if TYPE_CHECKING:
    from headwater.core.erasure import ErasureSet

log = logging.getLogger(__name__)
RETRY_AFTER_S = 2
T = TypeVar("T")
_TIMEOUT_S = 10.0


def seek_when_ready(consumer: _Consumer, where: TopicPartition) -> None:
    """Seek, retrying for a few seconds: a partition just assigned may not be fetching yet (_STATE).

    Never poll or consume between attempts: a message it returned would be lost. Raises the last
    KafkaException when the partition never becomes ready."""
    for attempt in range(50):
        try:
            consumer.seek(where)
            return
        except KafkaException:
            if attempt == 49:
                raise
            time.sleep(0.05)


class KafkaLog:
    """A Kafka topic as Headwater's event log; creates the topic when it is missing."""

    backend = "kafka"
    deduplicates = False
    erasable = False

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaLog:
        if not settings.kafka_bootstrap_servers:
            raise LogError("log_backend = 'kafka' needs kafka_bootstrap_servers (e.g. 'broker1:9092,broker2:9092')")
        return cls(
            settings.kafka_bootstrap_servers,
            settings.kafka_topic,
            partitions=settings.kafka_partitions,
            replication_factor=settings.kafka_replication_factor,
            options=settings.kafka_client_options,
            ack_timeout_ms=settings.kafka_ack_timeout_ms,
        )

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int = 12,
        replication_factor: int = -1,
        options: dict[str, str] | None = None,
        ack_timeout_ms: int = 10_000,
        topic_config: dict[str, str] | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._topic_config = topic_config
        self.topic = topic
        self.log_id = f"kafka.{topic}"
        self.offsets_key = f"headwater.log-offsets.{self.log_id}"
        self.ack_timeout_ms = ack_timeout_ms
        # librdkafka's own log lines go through Python logging (and so json_logs) instead of stderr
        self.conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": log, **(options or {})}
        self._options, self._replication_factor = options, replication_factor
        self.partitions = self._ensure_topic(partitions, replication_factor)

    def partition_for(self, key: bytes) -> int:
        """What librdkafka's `murmur2_random` partitioner (Java's default) picks for `key`."""
        return (murmur2(key) & 0x7FFFFFFF) % self.partitions

    def checkpointer(self, name: str, consumer: Any) -> Any:
        """Transactional checkpoints (see `kafka_txn`): outputs, changelog and offsets at once."""
        from headwater.log.kafka_txn import KafkaCheckpointer

        return KafkaCheckpointer(self, name, consumer)

    def changelog(self, name: str) -> str:
        """The compacted topic `<topic>.<name>-changelog` (created when missing); its name."""
        topic = f"{self.topic}.{name}-changelog"
        KafkaLog(
            self.bootstrap_servers, topic, self.partitions, self._replication_factor, self._options,
            self.ack_timeout_ms, topic_config={"cleanup.policy": "compact"},
        )  # fmt: skip
        return topic

    def erase(self, ids: ErasureSet) -> dict[str, int]:
        """Nothing: Kafka topics are immutable, no record can be rewritten. An erased person's records stay
        in the topics until retention removes them (`retention.ms`; in a compacted changelog, until a
        tombstone of the key is compacted): a consumer that reads them again before then (a replay from
        the start) sees them. Deployments that must erase faster keep the topics' retention short."""
        return {}

    def stream(self, name: str) -> KafkaLog:
        """The stream `name` as the topic `<topic>.<name>`, with this topic's partition count."""
        return KafkaLog(
            self.bootstrap_servers, f"{self.topic}.{name}", self.partitions, self._replication_factor,
            self._options, self.ack_timeout_ms,
        )  # fmt: skip

    def _ensure_topic(self, partitions: int, replication_factor: int) -> int:
        """Create the topic when missing; return its partition count (an existing topic's wins)."""
        admin = AdminClient({**self.conf, "client.id": "headwater-admin"})
        try:
            existing = self._partition_count(admin)
            if existing is None:
                new = NewTopic(self.topic, partitions, replication_factor, config=self._topic_config or {})
                future = admin.create_topics([new])[self.topic]
                try:
                    future.result(_TIMEOUT_S)
                    log.info("created Kafka topic %s with %d partitions", self.topic, partitions)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise LogError(f"cannot create Kafka topic {self.topic}: {exc.args[0].str()}") from exc
                deadline = time.monotonic() + _TIMEOUT_S
                while (existing := self._partition_count(admin)) is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                if existing is None:
                    raise LogError(f"Kafka topic {self.topic} was created but does not show in metadata")
            elif existing != partitions:
                log.info("Kafka topic %s has %d partitions (kafka_partitions=%d applies to new topics)",
                         self.topic, existing, partitions)  # fmt: skip
            return existing
        finally:
            del admin

    def _partition_count(self, admin: AdminClient) -> int | None:
        try:
            metadata = admin.list_topics(topic=self.topic, timeout=_TIMEOUT_S)
        except KafkaException as exc:
            raise LogError(
                f"cannot reach Kafka at {self.bootstrap_servers}: {exc.args[0].str()} "
                "(check kafka_bootstrap_servers and kafka_client_options)"
            ) from exc
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return None
        if any(meta.leader < 0 for meta in topic.partitions.values()):
            return None  # just created: not every partition has a leader yet
        return len(topic.partitions)

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self)

    def consumer(self, group: str) -> KafkaConsumer:
        return KafkaConsumer(self, group)

    def admin(self) -> KafkaAdmin:
        return KafkaAdmin(self)

    def reader(self) -> KafkaReader:
        return KafkaReader(self)


class _Pending:
    """Delivery reports of one append; completes `done` once every record has one."""

    __slots__ = ("done", "errors", "remaining")

    def __init__(self, count: int, done: Any) -> None:
        self.remaining = count
        self.errors: list[str] = []
        self.done = done

    def report(self, err: KafkaError | None, _msg: Any) -> None:  # runs on the poll thread
        if err is not None:
            self.errors.append(err.str())
        self.remaining -= 1
        if self.remaining == 0:
            self.done(self)


class KafkaProducer:
    """Idempotent producer; a background thread serves delivery reports."""

    def __init__(self, log_: KafkaLog) -> None:
        self.partitions = log_.partitions
        self.topic = log_.topic
        self._log = log_
        self._closed = False
        self._producer = self._new_producer()
        self._lock = threading.Lock()  # produce() from the event loop and the sync API
        self._thread = threading.Thread(target=self._serve, name="kafka-delivery", daemon=True)
        self._thread.start()

    def _new_producer(self) -> _Producer:
        return _Producer(
            {
                "client.id": "headwater-collector",
                "linger.ms": 2,
                "compression.type": "lz4",
                "partitioner": "murmur2_random",
                "queue.buffering.max.messages": 1_000_000,
                "error_cb": self._on_error,
                **self._log.conf,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": self._log.ack_timeout_ms,
            }
        )

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("Kafka producer fatal error, replacing the producer: %s", err.str())
            self._fatal = True
        else:
            log.warning("Kafka producer: %s", err.str())

    _fatal = False

    def _serve(self) -> None:
        while not self._closed:
            self._producer.poll(0.05)
            if self._fatal:
                with self._lock:
                    old, self._producer = self._producer, self._new_producer()
                    self._fatal = False
                old.flush(1.0)  # reports arrive (as errors) for what it still held

    def _produce(self, records: list[tuple[bytes | None, bytes]], pending: _Pending) -> None:
        deadline = time.monotonic() + self._log.ack_timeout_ms / 1000
        with self._lock:
            for index, (key, value) in enumerate(records):
                while True:
                    try:
                        self._producer.produce(self.topic, value, key, on_delivery=pending.report)
                        break
                    except BufferError:  # local queue full: Kafka is slow or away
                        if time.monotonic() > deadline:
                            for _ in range(len(records) - index):
                                pending.report(KafkaError(KafkaError._QUEUE_FULL), None)
                            return
                        time.sleep(0.01)
                    except KafkaException as exc:
                        for _ in range(len(records) - index):
                            pending.report(exc.args[0], None)
                        return

    @staticmethod
    def _check(pending: _Pending) -> None:
        if pending.errors:
            raise BackPressureError(
                f"Kafka did not acknowledge {len(pending.errors)} event(s): {pending.errors[0]}", RETRY_AFTER_S
            )

    def append(
        self,
        records: list[tuple[bytes | None, bytes]],
        idempotency_keys: list[tuple[str, str] | None] | None = None,
    ) -> Future[AppendResult]:
        future: Future[AppendResult] = Future()
        if self._closed:
            future.set_exception(LogError("the log is closed"))
            return future
        count = len(records)

        def done(pending: _Pending) -> None:
            try:
                self._check(pending)
            except BackPressureError as exc:
                future.set_exception(exc)
            else:
                future.set_result(AppendResult(written=count))

        if not records:
            future.set_result(AppendResult())
            return future
        self._produce(records, _Pending(count, done))
        return future

    def append_fenced(
        self,
        records: list[tuple[bytes | None, bytes]],
        fence: str | list[str | None],
        positions: list[int],
        idempotency_keys: list[tuple[str, str] | None] | None = None,
    ) -> Future[AppendResult]:
        """Kafka keeps no fence across producer sessions: everything is appended, and consumers
        drop repeats by the id each record carries (`deduplicates = False`)."""
        return self.append(records, idempotency_keys)

    async def append_async(
        self, records: list[tuple[bytes | None, bytes]], idempotency_keys: list[tuple[str, str] | None] | None = None
    ) -> AppendResult:
        if self._closed:
            raise LogError("the log is closed")
        if not records:
            return AppendResult()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Pending] = loop.create_future()

        def done(pending: _Pending) -> None:
            loop.call_soon_threadsafe(_settle, waiter, pending)

        self._produce(records, _Pending(len(records), done))
        self._check(await waiter)
        return AppendResult(written=len(records))

    def in_flight(self) -> int:
        """Records handed to the client and not yet acknowledged."""
        return len(self._producer)

    def close(self) -> None:
        if not self._closed:
            remaining = self._producer.flush(_TIMEOUT_S)
            if remaining:
                log.error("%d records were not acknowledged by Kafka at shutdown", remaining)
            self._closed = True
            self._thread.join()


_TRANSIENT = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
}


def _retrying(call: Callable[..., T], *args: Any, within_s: float = _TIMEOUT_S) -> T:
    """`call(*args)`, asked again while the cluster answers that it is moving leaders or loading
    offsets, for at most `within_s` seconds in all; then LogError."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call(*args)
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.code() in _TRANSIENT) or time.monotonic() > deadline:
                raise LogError(f"Kafka: {error.str()}") from exc
        except TimeoutError as exc:  # a future's result() timed out
            if time.monotonic() > deadline:
                raise LogError("Kafka did not answer in time") from exc
        time.sleep(0.2)


def _end_offsets(admin: AdminClient, topic: str, partitions: int) -> dict[int, int]:
    """High watermark of each partition, in one request per broker."""
    wanted = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)}
    futures = admin.list_offsets(wanted, request_timeout=_TIMEOUT_S / 2)
    return {tp.partition: int(future.result(_TIMEOUT_S).offset) for tp, future in futures.items()}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as a signed 32-bit int.

    Written out because confluent-kafka does not expose librdkafka's partitioner to Python; the
    tests check it against where Kafka put keyed records.
    """
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def _record(message: Any) -> Record:
    return Record(message.partition(), message.offset(), message.key(), message.value() or b"", message.timestamp()[1])


def _settle(waiter: asyncio.Future[_Pending], pending: _Pending) -> None:
    if not waiter.done():
        waiter.set_result(pending)


class KafkaConsumer:
    """A member of a Kafka consumer group on the log's topic (commits are manual and synchronous)."""

    def __init__(self, log_: KafkaLog, group: str) -> None:
        self.group = group
        self.topic = log_.topic
        self.partitions = log_.partitions
        self.generation = 0
        self._assigned: set[int] = set()
        self._positions: dict[int, int] = {}
        self._consumer = _Consumer(
            {
                "client.id": f"headwater-{group}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 2_000,
                # also the rebalance timeout: how long a rebalance waits for members that died
                # (kill -9) to rejoin; the lake writer polls at least every few seconds
                "max.poll.interval.ms": 30_000,
                "partition.assignment.strategy": "roundrobin",
                **log_.conf,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        self._consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._assigned = {tp.partition for tp in partitions}
        self.generation += 1
        log.info("group %s: assigned partitions %s", self.group, sorted(self._assigned))

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        self._assigned -= revoked
        for partition in revoked:
            self._positions.pop(partition, None)
        self.generation += 1
        log.info("group %s: partitions %s revoked", self.group, sorted(revoked))

    def assignment(self) -> list[int]:
        return sorted(self._assigned)

    def group_metadata(self) -> Any:
        """This member's group metadata (generation included), for transactional offset commits."""
        return self._consumer.consumer_group_metadata()

    def committed(self) -> dict[int, int]:
        if not self._assigned:
            return {}
        tps = [TopicPartition(self.topic, p) for p in sorted(self._assigned)]
        try:
            got = self._consumer.committed(tps, timeout=_TIMEOUT_S)
        except KafkaException as exc:
            raise LogError(f"cannot read committed offsets of group {self.group}: {exc.args[0].str()}") from exc
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}

    def seek(self, partition: int, offset: int) -> None:
        if partition not in self._assigned:
            return
        self._positions[partition] = offset
        try:
            seek_when_ready(self._consumer, TopicPartition(self.topic, partition, offset))
        except KafkaException as exc:
            raise LogError(f"cannot seek partition {partition}: {exc.args[0].str()}") from exc

    def positions(self) -> dict[int, int]:
        """Next offset to read for each owned partition this member has read from or sought."""
        return {p: o for p, o in self._positions.items() if p in self._assigned}

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        out: list[Record] = []
        for message in self._consumer.consume(max(1, min(max_records, 100_000)), timeout_s):
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise LogError(f"Kafka consumer failed: {error.str()}")
                log.warning("Kafka consumer: %s", error.str())
                continue
            record = _record(message)
            if record.partition not in self._assigned:
                continue
            out.append(record)
            self._positions[record.partition] = record.offset + 1
        return out

    def commit(self, offsets: dict[int, int] | None = None) -> None:
        """Commit offsets of owned partitions. A refused commit (rebalance under way) is logged, not
        raised: the lake's snapshots, not these offsets, decide what was written."""
        offsets = self.positions() if offsets is None else offsets
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items() if p in self._assigned]
        if not tps:
            return
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            log.warning("group %s: offset commit refused: %s", self.group, exc.args[0].str())

    def close(self) -> None:
        self._consumer.close()


class KafkaAdmin:
    """End offsets, group offsets and lag read from the cluster.

    An admin client whose requests were outstanding while the brokers were away can keep timing out
    after they came back (seen with librdkafka 2.16 for minutes), so a failed call replaces it.
    """

    def __init__(self, log_: KafkaLog) -> None:
        self.partitions = log_.partitions
        self.topic = log_.topic
        self.bootstrap_servers = log_.bootstrap_servers
        self._conf = {**log_.conf, "client.id": "headwater-admin"}
        self._admin = AdminClient(self._conf)

    def _ask(self, call: Callable[..., T], *args: Any) -> T:
        try:
            return _retrying(call, *args)
        except LogError:
            self._admin = AdminClient(self._conf)
            raise

    def end_offsets(self) -> dict[int, int]:
        return self._ask(_end_offsets, self._admin, self.topic, self.partitions)

    def _group_offsets(self, request: ConsumerGroupTopicPartitions) -> Any:
        futures = self._admin.list_consumer_group_offsets([request], request_timeout=_TIMEOUT_S / 2)
        return futures[request.group_id].result(_TIMEOUT_S)

    def _list_groups(self) -> Any:
        return self._admin.list_consumer_groups(request_timeout=_TIMEOUT_S / 2).result(_TIMEOUT_S)

    def _offsets_of(self, groups: list[str]) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        for group in groups:
            answer = self._ask(self._group_offsets, ConsumerGroupTopicPartitions(group, tps))
            committed = {tp.partition: tp.offset for tp in answer.topic_partitions if tp.offset >= 0}
            if committed:
                out[group] = committed
        return out

    def group_offsets(self) -> dict[str, dict[int, int]]:
        """Committed offsets on this topic of every group that has some."""
        groups = sorted(g.group_id for g in self._ask(self._list_groups).valid)
        return self._offsets_of(groups)

    def lag(self, group: str) -> int:
        ends = self.end_offsets()
        committed = self._offsets_of([group]).get(group, {})
        return sum(max(0, end - committed.get(p, 0)) for p, end in ends.items())

    def size_bytes(self) -> int | None:
        return None  # Kafka's own retention (retention.ms / retention.bytes) governs the topic

    def problem(self) -> str | None:
        try:
            metadata = self._admin.list_topics(topic=self.topic, timeout=2)
        except KafkaException as exc:
            # a client that failed while the brokers were away may keep failing after they are back (see above):
            # the next check asks with a new one, or intake would stay refused (503) after Kafka's return
            self._admin = AdminClient(self._conf)
            return f"Kafka unreachable at {self.bootstrap_servers}: {exc.args[0].str()}"
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            return f"Kafka topic {self.topic} is missing"
        leaderless = [p for p, meta in topic.partitions.items() if meta.leader < 0]
        if leaderless:
            return f"Kafka topic {self.topic}: partitions {sorted(leaderless)} have no leader"
        return None

    def close(self) -> None:
        pass  # the admin client has no connections to close explicitly


class KafkaReader:
    """Reads a partition from a position by assignment (no group membership, nothing committed)."""

    def __init__(self, log_: KafkaLog) -> None:
        self.topic = log_.topic
        self.partitions = log_.partitions
        self._consumer = _Consumer(
            {
                **log_.conf,
                "group.id": "headwater-tail",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "client.id": "headwater-tail",
            }
        )
        self._admin_conf = {**log_.conf, "client.id": "headwater-tail"}
        self._admin = AdminClient(self._admin_conf)
        self._ends: dict[int, int] = {}

    def end_offsets(self) -> dict[int, int]:
        try:
            self._ends = _retrying(_end_offsets, self._admin, self.topic, self.partitions)
        except LogError:
            self._admin = AdminClient(self._admin_conf)  # see KafkaAdmin
            raise
        return self._ends

    def read(self, partition: int, position: int, max_records: int) -> list[Record]:
        end = self._ends.get(partition)
        if end is None:
            end = self.end_offsets()[partition]
        if position >= end:
            return []
        self._consumer.assign([TopicPartition(self.topic, partition, position)])
        out: list[Record] = []
        wanted = min(max_records, end - position)
        deadline = time.monotonic() + 2.0
        while len(out) < wanted and time.monotonic() < deadline:
            for message in self._consumer.consume(wanted - len(out), 0.2):
                if message.error() is None and message.partition() == partition:
                    out.append(_record(message))
            if out and out[-1].offset + 1 >= end:
                break
        self._consumer.unassign()
        return out

    def close(self) -> None:
        self._consumer.close()
