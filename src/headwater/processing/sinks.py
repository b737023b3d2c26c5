"""External sinks: deliver a processor's output stream to a webhook, Redis, PostgreSQL or Kafka.

Delivery guarantee: external sinks are **at-least-once**. Exactly-once holds only inside Headwater (input
offsets, state and output records commit together); from an output stream outwards, a `SinkRunner` reads as
a consumer group, writes a batch, and commits the group's offsets only once every record of the batch was
delivered or handed to the dead-letter callback. A crash between the write and the commit delivers the batch
again. So every output carries an **idempotency key** (`id`, unique per output and stable across replays),
and each sink makes a repeated delivery harmless:

- `WebhookSink`: header `Idempotency-Key: <id>` (and `"id"` in the body); the receiver drops ids it has seen.
  With `batch=True` the body is a JSON array, its header key is a digest of the ids: receivers should
  dedupe on each element's `id`, as batch boundaries may differ after a replay.
- `RedisSink`: SET (or DEL + HSET) of the latest value per key is idempotent by nature; the record's event
  time is stored beside it in `<key>:event_time` and a Lua script skips a write older than what is stored,
  so a replay never puts an older value back.
- `PostgresSink`: `INSERT … ON CONFLICT (key) DO UPDATE … WHERE table.event_time <= excluded.event_time`;
  `output_id` keeps the id of the row's last output.
- `KafkaSink`: an idempotent producer (`acks=all`: no duplicates from the producer's own retries); header
  `idempotency-key: <id>` for consumers to drop redeliveries.

Retries and back-pressure: a batch that fails with a retryable error is written again after an exponential
backoff with jitter, and the runner does not poll meanwhile (the output stream, not memory, holds the
backlog). After `max_attempts`, or at once on `PermanentSinkError`, records are written one by one and each
one that still fails goes to `dead_letter(record, reason, attempts)`. On Kafka, a member that blocks longer
than `max.poll.interval.ms` loses its partitions and another member delivers the batch again.

Output record format: `value` is orjson of `{"k": key, "v": value, "t": event time in ms, "id": idempotency id}`.
"""

from __future__ import annotations

import inspect
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from headwater.core import metrics as prometheus
from headwater.core.erasure import ERASED
from headwater.core.errors import PermanentSinkError
from headwater.log.base import Consumer, Record
from headwater.processing.sink_targets import KafkaSink, PostgresSink, RedisSink, WebhookSink

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SinkRecord:
    """One output record, decoded: what a sink writes."""

    key: str | None
    value: Any
    timestamp_ms: int
    """Event time of the output (`t`), in milliseconds since the epoch."""
    id: str
    """Idempotency key: unique per output, stable across replays."""
    partition: int
    offset: int


def decode_output(record: Record) -> SinkRecord:
    """Decode an output-stream record; PermanentSinkError when it is not in the output format."""
    where = f"output record {record.partition}/{record.offset}"
    try:
        data = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise PermanentSinkError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PermanentSinkError(f"{where}: expected a JSON object with k, v, t, id")
    key, event_time, output_id = data.get("k"), data.get("t"), data.get("id")
    if key is not None and not isinstance(key, str):
        raise PermanentSinkError(f"{where}: field 'k' must be a string or null")
    if not isinstance(event_time, int) or isinstance(event_time, bool):
        raise PermanentSinkError(f"{where}: field 't' must be an integer (event time in ms)")
    if not isinstance(output_id, str) or not output_id:
        raise PermanentSinkError(f"{where}: field 'id' must be a non-empty string")
    return SinkRecord(key, data.get("v"), event_time, output_id, record.partition, record.offset)


class Sink(Protocol):
    name: str

    def write(self, records: list[SinkRecord]) -> None:
        """Deliver every record or raise (SinkError: retry; PermanentSinkError: do not). Idempotent per `id`."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class SinkMetrics:
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    lag: int | None = None
    """Records of the output stream not yet committed by the runner's group (None when unknown)."""


class _Stopped(Exception):
    pass


class SinkRunner:
    """Consumes one output stream and delivers it to `sink` (see the module docstring for the guarantees).

    Order per batch: poll → decode (undecodable records: dead letter, 0 attempts) → write, retried with
    backoff → one by one → dead letters → commit the batch's offsets. Stopped mid-batch: nothing is
    committed and the consumer is sought back to the batch's start.
    """

    def __init__(
        self,
        sink: Sink,
        consumer: Consumer,
        dead_letter: Callable[[SinkRecord, str, int], None],
        max_attempts: int = 8,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30,
        batch_size: int = 500,
        metrics: SinkMetrics | None = None,
        poll_timeout_s: float = 1.0,
    ) -> None:
        if max_attempts < 1 or batch_size < 1:
            raise ValueError("SinkRunner: max_attempts and batch_size must be at least 1")
        self.sink, self.consumer, self.dead_letter = sink, consumer, dead_letter
        self.max_attempts, self.batch_size, self.poll_timeout_s = max_attempts, batch_size, poll_timeout_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.metrics = metrics if metrics is not None else SinkMetrics()
        self._stop = threading.Event()

    delivered = property(lambda self: self.metrics.delivered)
    retried = property(lambda self: self.metrics.retried)
    dead_lettered = property(lambda self: self.metrics.dead_lettered)
    last_error = property(lambda self: self.metrics.last_error)
    lag = property(lambda self: self.metrics.lag)

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set (also cuts a backoff short; the batch then stays uncommitted)."""
        self._stop = stop
        failures = 0
        while not stop.is_set():
            try:
                self.run_once()
                failures = 0
            except Exception as exc:  # the consumer or the dead-letter callback failed: wait, then again
                failures += 1
                self.metrics.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("sink %s: batch failed; retrying", self.sink.name)
                stop.wait(self._delay(failures))

    def run_once(self, timeout_s: float | None = None) -> int:
        """Poll once and deliver what came, committing after each batch; returns the records committed.

        A poll may return more than `batch_size` records (the embedded log reads whole stored batches):
        they are written and committed `batch_size` at a time.
        """
        records = self.consumer.poll(self.batch_size, self.poll_timeout_s if timeout_s is None else timeout_s)
        done = 0
        while done < len(records):
            batch = records[done : done + self.batch_size]
            try:
                self._deliver(batch)
            except BaseException as exc:
                starts: dict[int, int] = {}  # nothing from here on is committed: read it again
                for record in records[done:]:
                    starts[record.partition] = min(record.offset, starts.get(record.partition, record.offset))
                for partition, offset in starts.items():
                    self.consumer.seek(partition, offset)
                if isinstance(exc, _Stopped):
                    break
                raise
            ends: dict[int, int] = {}
            for record in batch:
                ends[record.partition] = max(record.offset + 1, ends.get(record.partition, 0))
            self.consumer.commit(ends)
            done += len(batch)
        self._update_lag()
        return done

    def close(self) -> None:
        """Close the sink and the consumer (`run()` leaves both open)."""
        self.sink.close()
        self.consumer.close()

    def _deliver(self, records: list[Record]) -> None:
        batch: list[SinkRecord] = []
        for record in records:
            if record.value == ERASED:
                continue  # a privacy deletion erased it: nothing to deliver
            try:
                batch.append(decode_output(record))
            except PermanentSinkError as exc:
                key = None if record.key is None else record.key.decode(errors="replace")
                raw_id = f"undecodable:{record.partition}:{record.offset}"
                raw = SinkRecord(key, record.value.decode(errors="replace"), record.timestamp_ms, raw_id,
                                 record.partition, record.offset)  # fmt: skip
                self._dead(raw, exc, 0)
        if not batch:
            return
        attempts, error = self._attempt(batch, 0)
        if error is not None and len(batch) == 1:
            self._dead(batch[0], error, attempts)
        elif error is not None:
            for one in batch:  # isolate what fails: one by one (one try each when the batch ran out of attempts)
                tries, failure = self._attempt([one], attempts)
                if failure is not None:
                    self._dead(one, failure, tries)

    def _attempt(self, records: list[SinkRecord], attempts: int) -> tuple[int, Exception | None]:
        """Write, retrying retryable errors up to `max_attempts` in all; (attempts, None) once delivered."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            attempts += 1
            try:
                self.sink.write(records)
            except PermanentSinkError as exc:
                return attempts, exc
            except Exception as exc:
                if attempts >= self.max_attempts:
                    return attempts, exc
                self._retry(exc, attempts)
            else:
                self.metrics.delivered += len(records)
                prometheus.SINK_DELIVERED.labels(self.sink.name).inc(len(records))
                return attempts, None

    def _delay(self, attempts: int, exc: Exception | None = None) -> float:
        base = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempts - 1))
        delay = base / 2 + random.uniform(0, base / 2)  # jitter: runners that failed together retry apart
        asked = getattr(exc, "retry_after", None)
        return max(delay, min(float(asked), self.backoff_max_s)) if asked else delay

    def _retry(self, exc: Exception, attempts: int) -> None:
        self.metrics.retried += 1
        self.metrics.last_error = f"{type(exc).__name__}: {exc}"
        prometheus.SINK_RETRIES.labels(self.sink.name).inc()
        log.warning("sink %s: attempt %d failed (%s); retrying", self.sink.name, attempts, exc)
        if self._stop.wait(self._delay(attempts, exc)):
            raise _Stopped

    def _dead(self, record: SinkRecord, exc: Exception, attempts: int) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self.metrics.last_error = reason
        log.warning(
            "sink %s: output %s dead-lettered after %d attempts: %s", self.sink.name, record.id, attempts, reason
        )
        self.dead_letter(record, reason, attempts)
        self.metrics.dead_lettered += 1
        prometheus.SINK_DEAD_LETTERS.labels(self.sink.name).inc()

    def _update_lag(self) -> None:
        end_offsets = getattr(self.consumer, "end_offsets", None)  # the embedded consumer knows them
        if end_offsets is None:
            return
        try:
            ends, positions = end_offsets(), self.consumer.positions()
            self.metrics.lag = sum(max(0, ends.get(p, 0) - positions.get(p, 0)) for p in self.consumer.assignment())
        except Exception:
            self.metrics.lag = None


# ---------------------------------------------------------------------------------------------------------------------
# Configuration

_KINDS: dict[str, type] = {"webhook": WebhookSink, "redis": RedisSink, "postgres": PostgresSink, "kafka": KafkaSink}


def sink_from_config(spec: Mapping[str, Any]) -> Sink:
    """A sink from `{"kind": "webhook"|"redis"|"postgres"|"kafka", ...constructor arguments}`.

    Nothing connects here: a sink connects on its first write.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"sink config must be a mapping with a 'kind' field, got {type(spec).__name__}")
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind is None:
        raise ValueError(f"sink config: missing field 'kind' (one of {', '.join(_KINDS)})")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"sink config: field 'kind' is {kind!r}; use one of {', '.join(_KINDS)}")
    params = inspect.signature(cls).parameters
    for field in options:
        if field not in params:
            raise ValueError(f"{kind} sink: unknown field {field!r} (fields: kind, {', '.join(params)})")
    for field, param in params.items():
        if param.default is inspect.Parameter.empty and field not in options:
            raise ValueError(f"{kind} sink: missing field {field!r}")
    sink: Sink = cls(**options)
    return sink
