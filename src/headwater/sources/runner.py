"""Runs one source: read, decode, map, append durably, then acknowledge upstream.

The commit order (each step starts only once the one before it is durable):
1. `reader.read()` returns deliveries; nothing is acknowledged upstream yet.
2. Each payload is decoded (`formats`) and each record mapped (`mapping`) into an envelope for the
   target: an event for `events` or a stream, a record for the feed stream of a table of its own.
   A payload or record that cannot be decoded or mapped becomes a quarantine envelope (raw bytes,
   base64 when binary, and the reason) for the main log, which the lake writer lands in `quarantine`.
3. Target and quarantine envelopes are appended with idempotency keys (source name, stable id) and
   the runner waits until the log has made them durable.
4. `reader.acknowledge(deliveries)`: Kafka offsets committed, AMQP acks sent, file progress saved.
kill -9 between 3 and 4: upstream delivers the same records again with the same stable ids, and the
log drops them as repeats (on the Kafka log, the lake writer's claims drop repeated events).
A table-bound source also runs its lander (`lander`) in this process.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson

from headwater.core.errors import LogError, RecordError, SourceError, SourceUnavailable
from headwater.core.events import RAW_TRACK, InvalidEvent, check_raw_track
from headwater.core.settings import Settings
from headwater.core.source_settings import SourceSettings
from headwater.log.base import AppendResult, EventLog, Producer
from headwater.sources.base import Delivery, SourceReader
from headwater.sources.formats import Decoded, RecordFormat, lookup, raw_text, to_json
from headwater.sources.lander import feed_json
from headwater.sources.mapping import EventMapper
from headwater.sources.status import SourceStatus

log = logging.getLogger(__name__)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0
STATUS_EVERY_S = 5.0

Envelope = tuple[bytes | None, bytes]


def open_reader(source: SourceSettings, settings: Settings) -> SourceReader:
    """The reader for `source.kind` (each kind's client library is loaded only when used)."""
    if source.kind == "kafka":
        from headwater.sources.kafka import KafkaTopicReader

        return KafkaTopicReader(source)
    if source.kind == "rabbitmq":
        from headwater.sources.rabbitmq import RabbitReader

        return RabbitReader(source)
    from headwater.sources.files import FilesReader

    return FilesReader(source, settings)


class Batch:
    """The envelopes one batch of deliveries produced, per log."""

    def __init__(self) -> None:
        self.target: list[Envelope] = []
        self.target_keys: list[tuple[str, str] | None] = []
        self.quarantine: list[Envelope] = []
        self.quarantine_keys: list[tuple[str, str] | None] = []


class SourceRunner:
    """One source's loop; `step()` handles one batch (tests drive it directly)."""

    def __init__(
        self,
        settings: Settings,
        source: SourceSettings,
        event_log: EventLog,
        reader: SourceReader | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.settings, self.source, self.event_log = settings, source, event_log
        self.base_dir = base_dir or (Settings.config_file.parent if Settings.config_file else Path.cwd())
        self.status = SourceStatus(settings, source)
        self.reader = reader if reader is not None else open_reader(source, settings)
        self.format = RecordFormat(source, self.base_dir) if source.format not in ("csv", "parquet", "grib") else None
        self.mapper = EventMapper(source)
        self._passthrough = not source.mapping and not source.id_field and source.format in ("json", "ndjson")
        self.quarantine: Producer = event_log.producer()
        if source.feed_stream is not None:
            self.target = event_log.stream(source.feed_stream).producer()
        elif source.stream == "events":
            self.target = self.quarantine
        else:
            self.target = event_log.stream(source.stream).producer()
        self._backoff = BACKOFF_MIN_S
        self._unfinished: list[Delivery] = []
        self._retries = 0
        self._count_rejections = True
        self.grib = None
        if source.format == "grib":
            from headwater.sources.grib_loader import grib_loader

            self.grib = grib_loader(settings, source, self.reader, self.quarantine, self.status)

    # --- one batch
    def step(self, timeout_s: float | None = None) -> int:
        """Read one batch, make it durable, acknowledge it; return the deliveries handled."""
        wait = self.source.max_wait_ms / 1000 if timeout_s is None else timeout_s
        if self.grib is not None:
            return self.grib.step(wait)
        # a batch that failed after it was read is retried as it is, before anything newer: acknowledging
        # a later batch would acknowledge it too (Kafka offsets, AMQP `multiple` acks, file progress)
        deliveries = self._unfinished or self.reader.read(self.source.batch_size, wait)
        if not deliveries:
            return 0
        self._unfinished = deliveries
        retry = self._retries > 0
        self._retries += 1
        batch = self._envelopes(deliveries, count_rejections=not retry)
        appended, duplicates = self._append(batch)
        self.reader.acknowledge(deliveries)
        self._unfinished, self._retries = [], 0
        self.status.count(len(deliveries), appended, duplicates)
        return len(deliveries)

    def _meta(self, received_ms: int, endpoint: str) -> bytes:
        return orjson.dumps({"src": self.source.name, "ep": endpoint, "ra": received_ms})

    def _envelopes(self, deliveries: list[Delivery], count_rejections: bool = True) -> Batch:
        batch = Batch()
        self._count_rejections = count_rejections
        pending = [d for d in deliveries if d.value is None and d.error is None]
        decoded: dict[int, Decoded] = {}
        if pending and self.format is not None:
            for delivery, outcome in zip(pending, self.format.decode([d.payload for d in pending]), strict=True):
                decoded[id(delivery)] = outcome
        for delivery in deliveries:
            if delivery.error is not None:
                self._quarantine(batch, delivery, delivery.error, delivery.payload.decode("utf-8", "replace"))
                continue
            result: Decoded | None = [delivery.value] if delivery.value is not None else decoded.get(id(delivery))
            if isinstance(result, RecordError) or result is None:
                reason = str(result) if result is not None else f"format {self.source.format} gave nothing"
                self._quarantine(batch, delivery, reason, raw_text(delivery.payload, self._binary))
                continue
            many = len(result) > 1
            for index, record in enumerate(result):
                suffix = f"#{index}" if many else ""
                self._add(batch, delivery, record, delivery.stable_id + suffix, suffix)
        return batch

    @property
    def _binary(self) -> bool:
        return self.format is not None and self.format.binary

    def _add(self, batch: Batch, delivery: Delivery, record: dict[str, Any], stable_id: str, suffix: str) -> None:
        """One record's envelope for the target; `suffix` (`#i`) tells the items of one payload apart."""
        name = self.source.name
        try:
            if self.source.feed_stream is not None:
                record_id = lookup(record, self.source.id_field) if self.source.id_field else None
                if record_id is not None and record_id != "":  # the record's own id: re-sent copies collapse
                    stable_id = f"{record_id}{suffix}"
                meta = self._meta(delivery.received_ms, "source")
                body = b'{"m":' + meta + b',"id":' + orjson.dumps(stable_id) + b',"r":' + feed_json(record) + b"}"
                batch.target.append((stable_id.encode(), body))
                batch.target_keys.append((name, stable_id))
                return
            if self._passthrough and delivery.value is None and not suffix:
                fast = self._as_is(delivery, record, stable_id)
                if fast is not None:
                    batch.target.append(fast[0])
                    batch.target_keys.append((name, fast[1]))
                    return
            key, message_id, event = self.mapper.event(record, stable_id, suffix)
            body = b'{"m":' + self._meta(delivery.received_ms, RAW_TRACK) + b',"e":' + to_json(event) + b"}"
        except (InvalidEvent, TypeError, ValueError) as exc:
            self._quarantine(batch, delivery, str(exc), self._raw_record(delivery, record), stable_id)
            return
        batch.target.append((key.encode(), body))
        batch.target_keys.append((name, message_id))

    def _raw_record(self, delivery: Delivery, record: dict[str, Any]) -> str:
        """The quarantine `raw` of a record that decoded but cannot be used: its payload when that is text."""
        if delivery.value is None and not self._binary:
            return raw_text(delivery.payload, False)
        try:
            return to_json(record).decode()
        except (TypeError, ValueError):  # (an integer over 64 bits, say)
            return repr(record)

    def _as_is(self, delivery: Delivery, record: dict[str, Any], stable_id: str) -> tuple[Envelope, str] | None:
        """A record that is already a valid `/track` event goes to the log as the bytes it came in (the
        collector's way: no re-serialising), with the stable id spliced in as its messageId when it has
        none. None: let the mapper build the event (its defaults apply)."""
        if "messageId" in record and record["messageId"] is None:
            return None  # a null messageId: the mapper replaces it (splicing would repeat the key)
        try:
            key, message_id = check_raw_track(record)
        except InvalidEvent:
            return None
        payload = delivery.payload.strip()
        if payload[:1] != b"{":
            return None
        if message_id is None:
            message_id = stable_id
            payload = b'{"messageId":' + orjson.dumps(stable_id) + (b"," if len(record) else b"") + payload[1:]
        meta = self._meta(delivery.received_ms, RAW_TRACK)
        return (key.encode(), b'{"m":' + meta + b',"e":' + payload + b"}"), message_id

    def _quarantine(
        self, batch: Batch, delivery: Delivery, reason: str, raw: str, stable_id: str | None = None
    ) -> None:
        stable_id = stable_id or delivery.stable_id
        describe = getattr(self.reader, "describe", None)
        if describe is not None and delivery.error is None:
            reason = f"{describe(delivery)}: {reason}"
        if delivery.value is not None and not delivery.payload:
            raw = self._raw_record(delivery, delivery.value)
        meta = self._meta(delivery.received_ms, f"source.{self.source.kind}")
        body = b'{"m":' + meta + b',"q":' + orjson.dumps(reason) + b',"raw":' + orjson.dumps(raw) + b"}"
        batch.quarantine.append((None, body))
        batch.quarantine_keys.append((self.source.name, f"{stable_id}#quarantine"))
        if not self._count_rejections:
            return  # the same batch again, after a failure: counted the first time
        self.status.reject(stable_id, reason, raw)
        note = getattr(self.reader, "add_rejected", None)
        if note is not None and isinstance(delivery.token, tuple):
            note(delivery.token[0], 1)

    def _append(self, batch: Batch) -> tuple[int, int]:
        futures: list[Future[AppendResult]] = []
        if batch.target:
            futures.append(self.target.append(batch.target, batch.target_keys))
        if batch.quarantine:
            futures.append(self.quarantine.append(batch.quarantine, batch.quarantine_keys))
        results = [f.result() for f in futures]  # durable (fsynced) once these return
        duplicates = len(results[0].duplicates) if batch.target else 0
        return len(batch.target) - duplicates, duplicates

    # --- the loop
    def run(self, stop: threading.Event) -> None:
        """Until `stop`: batches, reconnecting with back-off; status written about once a second."""
        lander = self._start_lander(stop)
        self.status.state = "running"
        try:
            while not stop.is_set():
                try:
                    self.step()
                    self._backoff = BACKOFF_MIN_S
                    self.status.state = "running"
                except (SourceUnavailable, LogError) as exc:  # upstream, or Headwater's own log (full, down)
                    self._failed("reconnecting", exc, stop, self._backoff)
                    self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
                except SourceError as exc:
                    self._failed("failed", exc, stop, BACKOFF_MAX_S)
                self._refresh(lander)
        finally:
            if lander is not None:
                lander.finish()
            self.status.state = "stopped"
            self._refresh(lander, force=True)
            self.close()

    def _failed(self, state: str, exc: Exception, stop: threading.Event, wait_s: float) -> None:
        self.status.state = state
        self.status.error(str(exc))
        log.warning("source %s: %s; retrying in %.1f s", self.source.name, exc, wait_s)
        until = time.monotonic() + wait_s
        while not stop.is_set() and (left := until - time.monotonic()) > 0:
            self.status.write(force=True)  # a fresh status: the page does not take the wait for a dead process
            stop.wait(min(left, STATUS_EVERY_S))

    def _refresh(self, lander: Any, force: bool = False) -> None:
        if not force and time.time() - self.status.written_at < 1.0:
            return
        try:
            self.status.lag = self.reader.lag()
            self.status.progress = self.reader.progress()
        except (SourceError, OSError) as exc:
            self.status.progress = {"error": str(exc)}
        landing = lander if lander is not None else self.grib
        if landing is not None:
            self.status.table_rows = landing.rows
        self.status.write(force=force)

    def _start_lander(self, stop: threading.Event) -> Any:
        if self.source.feed_stream is None:
            return None
        from headwater.sources.lander import start_lander

        return start_lander(self.settings, self.source, self.event_log, stop)

    def close(self) -> None:
        self.reader.close()
        for producer in {id(p): p for p in (self.target, self.quarantine)}.values():
            producer.close()
