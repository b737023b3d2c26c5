"""Kafka topic source: a consumer group of its own on an existing topic; offsets committed only on acknowledge.

- Offsets are never stored or committed by the client (`enable.auto.commit` and `enable.auto.offset.store`
  are off): `acknowledge()` commits offset + 1 of the last given delivery of each partition, synchronously.
- Where a group without a committed offset starts (`start`): earliest, latest, or the first record at or
  after an ISO-8601 time (naive times are UTC). For latest and a time, the offset found is committed at
  once, so a restart before the first acknowledgement starts from the same place instead of skipping
  what arrived meanwhile.
- A record's stable id is `topic:partition:offset`: the same on every re-delivery.
- Rebalances: partitions are forgotten when revoked; acknowledged deliveries of a partition this member
  no longer owns are not committed (their new owner re-reads them; the log drops the repeats).
- Brokers down: `read()` raises SourceUnavailable and librdkafka reconnects by itself; an unknown topic,
  a refused authorization or a fatal client error raises SourceError.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from headwater.core.errors import SourceError, SourceUnavailable
from headwater.core.source_settings import SourceSettings
from headwater.log.kafka import seek_when_ready
from headwater.sources.base import Delivery

log = logging.getLogger(__name__)
_TIMEOUT_S = 10.0
_LAG_CACHE_S = 1.0
_MAX_BATCH = 100_000
_CONFIG_ERRORS = {
    KafkaError.UNKNOWN_TOPIC_OR_PART: "topic {topic} does not exist",
    KafkaError._UNKNOWN_TOPIC: "topic {topic} does not exist",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "not authorized to read topic {topic}",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "not authorized to use consumer group {group}",
    KafkaError._AUTHENTICATION: "authentication refused (check client_options: sasl.*, ssl.*)",
    KafkaError._INVALID_ARG: "invalid client option",
}
_REFUSED_COMMIT = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._STATE,
}


def start_timestamp_ms(start: str) -> int | None:
    """`start` as epoch milliseconds when it is a time (naive means UTC), None for earliest and latest."""
    if start in ("earliest", "latest"):
        return None
    moment = datetime.fromisoformat(start)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class KafkaTopicReader:
    """Reads `settings.topic` as the consumer group `settings.consumer_group` (SourceReader)."""

    def __init__(self, settings: SourceSettings, *, client_id: str | None = None) -> None:
        self.topic = settings.topic
        self.group = settings.consumer_group
        self.bootstrap_servers = settings.bootstrap_servers
        self.start = settings.start
        self._start_ms = start_timestamp_ms(settings.start)
        self._lock = threading.Lock()
        self._assigned: set[int] = set()
        self._positions: dict[int, int] = {}  # next offset to read, from what read() returned
        self._first_read: dict[int, int] = {}  # first offset read since the partition was assigned
        self._committed: dict[int, int] = {}  # last committed offset while this member owns the partition
        self._pending: dict[int, int] = {}  # acknowledged offsets whose commit failed: retried with the next one
        self._unresolved: set[int] = set()  # assigned, paused: where they start could not be found yet
        self._error: SourceError | None = None  # raised by the next read()
        self._down: str | None = None  # why the brokers look unreachable
        self._progress: dict[int, dict[str, int]] = {}
        self._progress_at = 0.0
        self._closed = False
        options = settings.client_options
        self._cooperative = "cooperative" in options.get("partition.assignment.strategy", "") or (
            options.get("group.protocol") == "consumer"
        )  # incremental rebalances: on_assign adds partitions instead of replacing them
        self._consumer = Consumer(
            {
                "client.id": client_id or f"headwater-source-{settings.name}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 30_000,
                "max.poll.interval.ms": 300_000,
                "logger": log,
                "error_cb": self._on_error,
                **settings.client_options,
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": self.group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        self._consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    # --- callbacks (they run inside consume(), on the reading thread)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._error = SourceError(f"Kafka source {self.topic}: fatal client error: {error.str()}")
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down = error.str()
        elif error.code() in _CONFIG_ERRORS:
            self._error = self._config_error(error)
        elif error.code() in (KafkaError._TRANSPORT, KafkaError._RESOLVE):
            log.info("Kafka source %s: %s", self.topic, error.str())  # one broker; all down is reported above
        else:
            log.warning("Kafka source %s: %s", self.topic, error.str())

    def _config_error(self, error: KafkaError) -> SourceError:
        what = _CONFIG_ERRORS[error.code()].format(topic=self.topic, group=self.group)
        return SourceError(f"Kafka source at {self.bootstrap_servers}: {what}: {error.str()}")

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ids = sorted(tp.partition for tp in partitions)
        with self._lock:
            self._assigned |= set(ids)
        try:
            starts = self._resolve(ids)
        except SourceUnavailable as exc:  # resolved later by read(); meanwhile these partitions wait, paused
            log.warning("Kafka source %s: start of partitions %s unknown yet: %s", self.topic, ids, exc)
            starts, self._unresolved = {}, self._unresolved | set(ids)
        targets = [TopicPartition(self.topic, p, starts.get(p, OFFSET_INVALID)) for p in ids]
        if self._cooperative:
            consumer.incremental_assign(targets)
        else:
            consumer.assign(targets)
        if self._unresolved:
            consumer.pause([TopicPartition(self.topic, p) for p in sorted(self._unresolved)])
        log.info("Kafka source %s: assigned partitions %s", self.topic, ids)

    def _resolve(self, partitions: list[int]) -> dict[int, int]:
        """Committed offsets of `partitions` (remembered) and where those without one start (committed)."""
        try:
            got = self._consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=_TIMEOUT_S)
        except KafkaException as exc:
            if self.start == "earliest":  # librdkafka finds the committed offsets itself
                return {}
            raise SourceUnavailable(f"Kafka source {self.topic}: committed offsets: {exc.args[0].str()}") from exc
        known = {tp.partition: tp.offset for tp in got if tp.offset >= 0}
        starts = self._start_offsets([p for p in partitions if p not in known])
        if starts:
            self._commit_start(starts)
        with self._lock:
            self._committed.update(known)
            self._committed.update(starts)
        return starts

    def _resume(self) -> None:
        """Seek and resume the partitions whose start was unknown when they were assigned."""
        with self._lock:
            waiting = sorted(self._unresolved & self._assigned)
            self._unresolved.intersection_update(self._assigned)
        if not waiting:
            return
        self._resolve(waiting)  # SourceUnavailable: the runner backs off and reads again
        with self._lock:
            offsets = {p: self._committed[p] for p in waiting if p in self._committed}
        for partition, offset in offsets.items():
            self._seek(partition, offset)
        self._consumer.resume([TopicPartition(self.topic, p) for p in waiting])
        self._unresolved.difference_update(waiting)

    def _seek(self, partition: int, offset: int) -> None:
        try:
            seek_when_ready(self._consumer, TopicPartition(self.topic, partition, offset))
        except KafkaException as exc:
            raise SourceUnavailable(f"Kafka source {self.topic}: seek {partition}: {exc}") from exc

    def _start_offsets(self, partitions: list[int]) -> dict[int, int]:
        """Where partitions without a committed offset start, for latest or a time (earliest: librdkafka)."""
        if not partitions or self.start == "earliest":
            return {}
        if self._start_ms is None:  # latest
            return {p: self._high_watermark(p) for p in partitions}
        wanted = [TopicPartition(self.topic, p, self._start_ms) for p in partitions]
        try:
            found = self._consumer.offsets_for_times(wanted, timeout=_TIMEOUT_S)
        except KafkaException as exc:
            raise SourceUnavailable(
                f"Kafka source {self.topic}: offsets for {self.start}: {exc.args[0].str()}"
            ) from exc
        # offset -1: no record at or after that time yet, so start at the end
        return {tp.partition: tp.offset if tp.offset >= 0 else self._high_watermark(tp.partition) for tp in found}

    def _high_watermark(self, partition: int) -> int:
        tp = TopicPartition(self.topic, partition)
        try:
            return int(self._consumer.get_watermark_offsets(tp, timeout=_TIMEOUT_S, cached=False)[1])
        except KafkaException as exc:
            raise SourceUnavailable(f"Kafka source {self.topic}: end offset unknown: {exc.args[0].str()}") from exc

    def _commit_start(self, starts: dict[int, int]) -> None:
        tps = [TopicPartition(self.topic, p, offset) for p, offset in starts.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:  # the next assignment finds the start again
            log.warning("Kafka source %s: start offsets not committed: %s", self.topic, exc.args[0].str())

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        self._commit_pending(revoked)  # still owned during the callback: last chance for a failed commit
        self._forget(revoked)
        log.info("Kafka source %s: partitions %s revoked", self.topic, sorted(revoked))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp.partition for tp in partitions}
        self._forget(lost)
        log.warning("Kafka source %s: partitions %s lost (session expired)", self.topic, sorted(lost))

    def _forget(self, partitions: set[int]) -> None:
        with self._lock:
            self._assigned -= partitions
            for partition in partitions:
                self._positions.pop(partition, None)
                self._first_read.pop(partition, None)
                self._committed.pop(partition, None)
                self._pending.pop(partition, None)
            self._unresolved -= partitions

    # --- SourceReader

    def read(self, max_records: int, timeout_s: float) -> list[Delivery]:
        if self._closed:
            raise SourceError(f"Kafka source {self.topic}: the reader is closed")
        self._raise_error()
        if self._unresolved:
            self._resume()
        try:
            messages = self._consumer.consume(max(1, min(max_records, _MAX_BATCH)), max(0.0, timeout_s))
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal() or error.code() in _CONFIG_ERRORS:
                raise SourceError(f"Kafka source {self.topic}: {error.str()}") from exc
            raise SourceUnavailable(f"Kafka source {self.topic}: {error.str()}") from exc
        now_ms = int(time.time() * 1000)
        out: list[Delivery] = []
        with self._lock:
            assigned = set(self._assigned)
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_message_error(error)
                continue
            partition, offset = message.partition(), message.offset()
            if partition is None or offset is None or partition not in assigned:
                continue  # fetched before a revocation
            out.append(self._delivery(message, partition, offset, now_ms))
            self._positions[partition] = offset + 1
            self._first_read.setdefault(partition, offset)
        if out:
            self._down = None
        else:
            self._raise_error()
            self._check_down()
        return out

    def _delivery(self, message: Message, partition: int, offset: int, now_ms: int) -> Delivery:
        headers: dict[str, str] = {}
        raw_headers = message.headers() or []
        for name, raw in raw_headers.items() if isinstance(raw_headers, dict) else raw_headers:
            headers[name] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
        kind, timestamp = message.timestamp()
        if kind != 0:  # 0: TIMESTAMP_NOT_AVAILABLE
            headers["kafka_timestamp"] = str(timestamp)
        key = message.key()
        if key is not None:
            headers["kafka_key"] = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        return Delivery(
            payload=message.value() or b"",
            stable_id=f"{self.topic}:{partition}:{offset}",
            token=(partition, offset),
            received_ms=now_ms,
            headers=headers,
        )

    def _on_message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            self._error = SourceError(f"Kafka source {self.topic}: fatal client error: {error.str()}")
        elif error.code() in _CONFIG_ERRORS:
            self._error = self._config_error(error)
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down = error.str()
        else:
            log.warning("Kafka source %s: %s", self.topic, error.str())

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _check_down(self) -> None:
        """SourceUnavailable while the brokers said they are all down and still do not answer."""
        if self._down is None:
            return
        try:
            self._consumer.list_topics(self.topic, timeout=1.0)
        except KafkaException as exc:
            raise SourceUnavailable(
                f"Kafka brokers {self.bootstrap_servers} unreachable: {self._down} ({exc.args[0].str()})"
            ) from exc
        self._down = None

    def acknowledge(self, deliveries: list[Delivery]) -> None:
        """Commit offset + 1 of the last given delivery of each partition this member still owns."""
        offsets: dict[int, int] = {}
        for delivery in deliveries:
            partition, offset = delivery.token
            if offset + 1 > offsets.get(partition, -1):
                offsets[partition] = offset + 1
        with self._lock:
            for partition, offset in offsets.items():
                if partition not in self._assigned:
                    log.info(
                        "Kafka source %s: partition %d moved away; not committing %d", self.topic, partition, offset
                    )
                elif offset > max(self._committed.get(partition, -1), self._pending.get(partition, -1)):
                    self._pending[partition] = offset
        self._commit_pending()

    def _commit_pending(self, only: set[int] | None = None) -> None:
        with self._lock:
            todo = {
                p: o for p, o in self._pending.items() if p in self._assigned and (only is None or p in only)
            }  # fmt: skip
        if not todo:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in sorted(todo.items())], asynchronous=False
            )
        except KafkaException as exc:
            error = exc.args[0]
            reason = "a rebalance is under way" if error.code() in _REFUSED_COMMIT else error.str()
            log.warning("Kafka source %s: commit of %s deferred: %s", self.topic, todo, reason)
            return
        with self._lock:
            for partition, offset in todo.items():
                if self._pending.get(partition) == offset:
                    del self._pending[partition]
                if partition in self._assigned:
                    self._committed[partition] = max(offset, self._committed.get(partition, -1))

    def rewind(self) -> None:
        """Read again everything read and not acknowledged: for a runner whose batch failed between read()
        and acknowledge() (the consumer's position is past it; a later commit would skip it)."""
        with self._lock:
            targets: dict[int, int] = {}
            for partition in self._assigned:
                position = self._positions.get(partition)
                if position is None:
                    continue
                acked = max(self._committed.get(partition, -1), self._pending.get(partition, -1))
                target = acked if acked >= 0 else self._first_read.get(partition, position)
                if target < position:
                    targets[partition] = target
        for partition, offset in sorted(targets.items()):
            self._seek(partition, offset)
            self._positions[partition] = offset
        if targets:
            log.info("Kafka source %s: rewound to %s", self.topic, targets)

    def assignment(self) -> list[int]:
        """The partitions this member owns now."""
        with self._lock:
            return sorted(self._assigned)

    def lag(self) -> int | None:
        """Records after this member's position on its partitions (None before it has any)."""
        partitions = self._partition_state()
        if not partitions:
            return None
        return sum(max(0, state["high"] - state["position"]) for state in partitions.values())

    def progress(self) -> dict[str, Any]:
        partitions = self._partition_state()
        return {
            "topic": self.topic,
            "group": self.group,
            "partitions": {str(p): dict(state) for p, state in sorted(partitions.items())},
            "waiting_commit": dict(self._pending),
        }

    def _partition_state(self) -> dict[int, dict[str, int]]:
        """Position, committed offset and high watermark of each owned partition, at most ~1 s old."""
        if time.monotonic() - self._progress_at < _LAG_CACHE_S or self._closed:
            return self._progress
        with self._lock:
            assigned = sorted(self._assigned)
            positions, committed = dict(self._positions), dict(self._committed)
        state: dict[int, dict[str, int]] = {}
        for partition in assigned:
            tp = TopicPartition(self.topic, partition)
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:  # nothing fetched yet: ask the broker
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
            except KafkaException:
                return self._progress  # brokers away: the last figures stand
            position = positions.get(partition, max(committed.get(partition, low), low))
            state[partition] = {"position": position, "committed": committed.get(partition, -1), "high": high}
        self._progress, self._progress_at = state, time.monotonic()
        return state

    def close(self) -> None:
        """Leave the group; nothing more is committed."""
        if not self._closed:
            self._closed = True
            self._consumer.close()
