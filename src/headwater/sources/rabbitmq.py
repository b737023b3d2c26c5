"""RabbitMQ queue source (AMQP 0-9-1 through pika): manual acks only after the durable append.

- Consumes `queue` with manual acknowledgements and `prefetch` unacknowledged messages in flight.
  With `exchange`, `queue` is first declared durable (not exclusive, not auto-delete) and bound to that
  existing exchange with `routing_key`: Headwater gets a copy of the exchange's flow and the queues of
  the other consumers are untouched. Without it the queue must exist (nothing is declared).
- A delivery's stable id is the AMQP `message_id` when the publisher sets one, else `sha1:` + the SHA-1
  of the body. Without message ids, two messages with identical bodies get the same id and the log keeps
  only one of them: have publishers set message ids, or configure `id_field` (a field of the record).
- `acknowledge()` acks up to the last given delivery in one `basic.ack(multiple)` when the deliveries are
  the oldest unacknowledged ones (the runner's order), one by one otherwise. Delivery tags belong to a
  channel: deliveries read before a reconnect are not acked (the broker re-delivers them, the log drops
  the repeats).
- Connection lost (broker restart, network): `read()` raises SourceUnavailable with the reason, and a
  later `read()` reconnects once the back-off (0.5 s doubling to 30 s) has passed. A missing queue or
  exchange, or refused credentials, raise SourceError.
- pika's BlockingConnection is not thread-safe: every call takes the reader's lock. Use it from one
  plain thread (the runner's); `lag()`/`progress()` from another thread answer from a cache while a
  `read()` is waiting.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPChannelError, AMQPError, AuthenticationError, ChannelClosedByBroker
from pika.spec import Basic, BasicProperties

from headwater.core.errors import SourceError, SourceUnavailable
from headwater.core.source_settings import SourceSettings
from headwater.sources.base import Delivery

log = logging.getLogger(__name__)
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
_LAG_CACHE_S = 1.0
_NOT_FOUND = 404


class RabbitReader:
    """One queue of a RabbitMQ broker (or a durable copy queue bound to an exchange), read in batches."""

    def __init__(self, settings: SourceSettings, *, socket_timeout_s: float = 10.0) -> None:
        if settings.kind != "rabbitmq":
            raise SourceError(f"source {settings.name!r} is kind {settings.kind}, not rabbitmq")
        self.settings = settings
        self.queue = settings.queue
        self.exchange = settings.exchange or None
        self.socket_timeout_s = socket_timeout_s
        self._lock = threading.RLock()
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._admin: BlockingChannel | None = None  # passive declares for lag(): a 404 there spares the consumer
        self._generation = 0  # delivery tags are per channel: tokens carry the channel they came from
        self._buffer: deque[Delivery] = deque()  # received, not yet returned by read()
        self._unacked: deque[int] = deque()  # tags returned or buffered on this channel, not acknowledged
        self._cancelled: str | None = None
        self._backoff = BACKOFF_MIN_S
        self._retry_at = 0.0
        self._last_error: str | None = None
        self._reconnects = 0
        self._ready: int | None = None
        self._ready_at = float("-inf")
        self._closed = False

    # --- connection
    def _parameters(self) -> pika.URLParameters:
        try:
            params = pika.URLParameters(self.settings.url)
        except (ValueError, TypeError) as exc:
            raise SourceError(f"source {self.settings.name!r}: bad url: {exc}") from None
        params.connection_attempts = 1
        params.socket_timeout = self.socket_timeout_s
        params.blocked_connection_timeout = None
        return params

    def connect(self) -> None:
        """Connect, declare and start consuming now (read() does it when needed): the copy queue exists after it."""
        with self._lock:
            if self._channel is None:
                self._open(time.monotonic())

    def _open(self, deadline: float) -> None:
        if self._closed:
            raise SourceError(f"source {self.settings.name!r}: reader closed")
        now = time.monotonic()
        if now < self._retry_at:  # back-off: wait for it within this read's time, else report why
            if self._retry_at > deadline:
                time.sleep(max(0.0, deadline - now))
                wait = self._retry_at - time.monotonic()
                raise SourceUnavailable(f"RabbitMQ unavailable ({self._last_error}); reconnecting in {wait:.1f} s")
            time.sleep(self._retry_at - now)
        try:
            conn = pika.BlockingConnection(self._parameters())
        except AuthenticationError as exc:
            raise SourceError(f"RabbitMQ refused the credentials of {self._safe_url()}: {exc}") from None
        except (AMQPError, OSError) as exc:
            raise self._unavailable(exc) from None
        try:
            channel = conn.channel()
            self._declare(channel)
            channel.basic_qos(prefetch_count=self.settings.prefetch)
            channel.add_on_cancel_callback(self._on_cancel)
            channel.basic_consume(self.queue, self._on_message, auto_ack=False)
        except SourceError:
            _close_quietly(conn)
            raise
        except (AMQPError, OSError) as exc:
            _close_quietly(conn)
            raise self._unavailable(exc) from None
        if self._generation:
            self._reconnects += 1
            log.info("RabbitMQ source %s: reconnected to queue %s", self.settings.name, self.queue)
        self._conn, self._channel, self._admin = conn, channel, None
        self._generation += 1
        self._buffer.clear()
        self._unacked.clear()
        self._cancelled = None
        self._backoff = BACKOFF_MIN_S
        self._retry_at = 0.0

    def _declare(self, channel: BlockingChannel) -> None:
        """Passive checks (and the copy queue): raise SourceError for what is missing or refused."""
        if self.exchange is not None:
            try:
                channel.exchange_declare(self.exchange, passive=True)
            except ChannelClosedByBroker as exc:
                if exc.reply_code == _NOT_FOUND:
                    raise SourceError(f"exchange {self.exchange!r} does not exist") from None
                raise SourceError(f"exchange {self.exchange!r}: {exc.reply_text}") from None
            try:
                channel.queue_declare(self.queue, durable=True, exclusive=False, auto_delete=False)
                channel.queue_bind(self.queue, self.exchange, routing_key=self.settings.routing_key)
            except ChannelClosedByBroker as exc:  # 406: exists with other settings; 403: not allowed
                raise SourceError(
                    f"cannot declare queue {self.queue!r} bound to {self.exchange!r}: {exc.reply_text}"
                ) from None
            return
        try:
            channel.queue_declare(self.queue, passive=True)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == _NOT_FOUND:
                raise SourceError(
                    f"queue {self.queue!r} does not exist (set `exchange` to declare a queue bound to one)"
                ) from None
            raise SourceError(f"queue {self.queue!r}: {exc.reply_text}") from None

    def _safe_url(self) -> str:
        params = self._parameters()
        return f"amqp://{params.host}:{params.port}/{params.virtual_host}"

    def _unavailable(self, exc: BaseException) -> SourceUnavailable:
        """Drop the connection (its delivery tags die with it) and schedule the next attempt."""
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._conn is not None:
            _close_quietly(self._conn)
        self._conn = self._channel = self._admin = None
        self._buffer.clear()
        self._unacked.clear()
        self._last_error = reason
        self._retry_at = time.monotonic() + self._backoff
        log.warning(
            "RabbitMQ source %s (%s): %s; reconnecting in %.1f s", self.settings.name, self.queue, reason, self._backoff
        )
        self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
        return SourceUnavailable(f"RabbitMQ {self._safe_url()} queue {self.queue!r}: {reason}")

    # --- consuming
    def _on_message(
        self, channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        tag = method.delivery_tag
        message_id = properties.message_id
        stable_id = str(message_id) if message_id else "sha1:" + hashlib.sha1(body).hexdigest()
        headers = {"routing_key": method.routing_key, "exchange": method.exchange}
        if method.redelivered:
            headers["redelivered"] = "true"
        for name in ("message_id", "type", "timestamp", "content_type", "content_encoding", "correlation_id"):
            value = getattr(properties, name)
            if value is not None:
                headers[name] = str(value)
        if properties.headers:
            for name, value in properties.headers.items():
                if name not in headers and value is not None:
                    headers[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        self._buffer.append(
            Delivery(
                payload=body,
                stable_id=stable_id,
                token=(self._generation, tag),
                received_ms=time.time_ns() // 1_000_000,
                headers=headers,
            )
        )
        self._unacked.append(tag)

    def _on_cancel(self, frame: Any) -> None:
        """The broker cancelled the consumer (queue deleted): reconnecting tells whether it still exists."""
        self._cancelled = f"the broker cancelled the consumer of queue {self.queue!r} (deleted?)"

    def read(self, max_records: int, timeout_s: float) -> list[Delivery]:
        """Up to `max_records` deliveries, waiting at most `timeout_s` for the first one."""
        with self._lock:
            deadline = time.monotonic() + max(0.0, timeout_s)
            if self._channel is None:
                self._open(deadline)
            conn = self._conn
            assert conn is not None
            try:
                while not self._buffer and self._cancelled is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    conn.process_data_events(time_limit=remaining)
                while len(self._buffer) < max_records and self._cancelled is None:  # what has already arrived
                    before = len(self._buffer)
                    conn.process_data_events(time_limit=0)
                    if len(self._buffer) == before:
                        break
            except (AMQPError, OSError) as exc:
                raise self._unavailable(exc) from None
            if self._cancelled is not None and not self._buffer:
                raise self._unavailable(ConsumerCancelledByBroker(self._cancelled))
            count = min(max_records, len(self._buffer))
            return [self._buffer.popleft() for _ in range(count)]

    def acknowledge(self, deliveries: list[Delivery]) -> None:
        """Ack these deliveries (durable in the log); those of an earlier connection are dropped silently."""
        with self._lock:
            channel = self._channel
            if channel is None or not deliveries:
                return
            tags = [tag for generation, tag in (d.token for d in deliveries) if generation == self._generation]
            if not tags:
                return
            try:
                if len(tags) <= len(self._unacked) and all(
                    tag == self._unacked[i] for i, tag in enumerate(tags)
                ):  # the oldest unacknowledged ones, in order: one ack for all
                    channel.basic_ack(tags[-1], multiple=True)
                    for _ in tags:
                        self._unacked.popleft()
                else:
                    done = set(tags)
                    for tag in tags:
                        channel.basic_ack(tag)
                    self._unacked = deque(tag for tag in self._unacked if tag not in done)
            except (AMQPError, OSError) as exc:
                # not raised: the deliveries are durable already; the broker re-delivers them to the new connection
                self._unavailable(exc)

    # --- status
    def lag(self) -> int | None:
        """Messages ready in the queue (refreshed at most once a second) plus delivered ones not yet acknowledged."""
        if self._lock.acquire(timeout=0.05):
            try:
                self._refresh_ready()
            finally:
                self._lock.release()
        if self._ready is None:
            return None
        return self._ready + len(self._unacked)

    def _refresh_ready(self) -> None:
        if self._conn is None or time.monotonic() - self._ready_at < _LAG_CACHE_S:
            return
        try:
            if self._admin is None or not self._admin.is_open:
                self._admin = self._conn.channel()
            self._ready = self._admin.queue_declare(self.queue, passive=True).method.message_count
            self._ready_at = time.monotonic()
        except AMQPChannelError:  # the queue is gone: the consumer's cancellation says so on the next read
            self._admin = None
            self._ready = None
        except (AMQPError, OSError) as exc:
            self._unavailable(exc)

    def progress(self) -> dict[str, Any]:
        self.lag()
        return {
            "queue": self.queue,
            "exchange": self.exchange,
            "messages_ready": self._ready,
            "in_flight": len(self._unacked),
            "connected": self._channel is not None,
            "reconnects": self._reconnects,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        """Close the connection: the broker re-queues every delivery not acknowledged."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                _close_quietly(self._conn)
            self._conn = self._channel = self._admin = None
            self._buffer.clear()
            self._unacked.clear()


class ConsumerCancelledByBroker(AMQPError):
    """The broker sent basic.cancel (the queue was deleted, or its node went away)."""


def _close_quietly(conn: pika.BlockingConnection) -> None:
    try:
        if conn.is_open:
            conn.close()
    except (AMQPError, OSError) as exc:
        log.debug("closing a RabbitMQ connection: %s", exc)
