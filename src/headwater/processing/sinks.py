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

import hashlib
import inspect
import logging
import random
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from headwater.core import metrics as prometheus
from headwater.core.errors import PermanentSinkError, SinkError
from headwater.log.base import Consumer, Record

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


def _need(kind: str, field: str, value: Any, types: type | tuple[type, ...], what: str) -> None:
    """ValueError naming the field unless `value` is one of `types` (a bool is not a number here)."""
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ValueError(f"{kind} sink: field {field!r} must be {what}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Webhook


class WebhookSink:
    """HTTP POST of each record as JSON `{"id", "key", "value", "timestamp"}` (timestamp: event time in ms).

    2xx: delivered. 408, 429, 5xx, timeouts and connection errors: retried. Other statuses: PermanentSinkError.
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10,
        batch: bool = False,
        name: str | None = None,
    ) -> None:
        import httpx

        _need("webhook", "url", url, str, "an http(s) URL")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook sink: field 'url' must be an http(s) URL, got {url!r}")
        _need("webhook", "headers", headers or {}, Mapping, "a mapping of header names to values")
        _need("webhook", "timeout_s", timeout_s, (int, float), "a number of seconds")
        _need("webhook", "batch", batch, bool, "true or false")
        parts = urlsplit(url)  # names and messages show no credentials or query string
        self.url, self.batch = url, batch
        self.where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        self.name = name or f"webhook:{parts.hostname}{parts.path}"
        self._client = httpx.Client(timeout=timeout_s, headers=dict(headers or {}))

    @staticmethod
    def _body(record: SinkRecord) -> dict[str, Any]:
        return {"id": record.id, "key": record.key, "value": record.value, "timestamp": record.timestamp_ms}

    def write(self, records: list[SinkRecord]) -> None:
        if self.batch:
            digest = hashlib.sha256("\n".join(r.id for r in records).encode()).hexdigest()[:32]
            self._post(orjson.dumps([self._body(r) for r in records]), f"batch-{digest}")
        else:
            for record in records:
                self._post(orjson.dumps(self._body(record)), record.id)

    def _post(self, body: bytes, idempotency_key: str) -> None:
        import httpx

        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SinkError(f"webhook {self.where}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        message = f"webhook {self.where}: HTTP {status} {response.text[:200]!r}"
        if status in (408, 429) or status >= 500:
            retry_after = response.headers.get("Retry-After", "")
            raise SinkError(message, float(retry_after) if retry_after.isdigit() else None)
        raise PermanentSinkError(message)

    def close(self) -> None:
        self._client.close()


# ---------------------------------------------------------------------------------------------------------------------
# Redis

# KEYS: value key, event-time key. ARGV: event time, mode, ttl ms (0: none), JSON value (set), field/value pairs (hash)
_REDIS_UPSERT = """
local stored = redis.call('GET', KEYS[2])
if stored and tonumber(stored) > tonumber(ARGV[1]) then return 0 end
if ARGV[2] == 'set' then
  redis.call('SET', KEYS[1], ARGV[4])
else
  redis.call('DEL', KEYS[1])
  if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
end
redis.call('SET', KEYS[2], ARGV[1])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
"""


class RedisSink:
    """The latest value per key: `mode="set"` stores the value as JSON, `mode="hash"` replaces a hash with
    the value's fields (strings as they are, anything else as JSON; null empties it). The event time sits
    in `<key>:event_time`; an older record than the stored one is skipped (counted in `skipped_stale`)."""

    def __init__(
        self,
        url: str,
        key_template: str = "{key}",
        mode: str = "set",
        ttl_s: float | None = None,
        name: str | None = None,
    ) -> None:
        import redis

        _need("redis", "url", url, str, "a redis:// URL")
        _need("redis", "key_template", key_template, str, "a string such as 'prefix:{key}'")
        try:
            key_template.format(key="k")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"redis sink: field 'key_template' may only use {{key}}: {exc!r}") from None
        if mode not in ("set", "hash"):
            raise ValueError(f"redis sink: field 'mode' must be 'set' or 'hash', got {mode!r}")
        if ttl_s is not None:
            _need("redis", "ttl_s", ttl_s, (int, float), "a number of seconds or null")
            if ttl_s <= 0:
                raise ValueError(f"redis sink: field 'ttl_s' must be positive, got {ttl_s!r}")
        self.key_template, self.mode, self.name = key_template, mode, name or f"redis:{mode}"
        self._ttl_ms = round(ttl_s * 1000) if ttl_s else 0
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        except ValueError as exc:
            raise ValueError(f"redis sink: field 'url': {exc}") from None
        self._script = self._client.register_script(_REDIS_UPSERT)
        self.skipped_stale = 0

    def _args(self, record: SinkRecord) -> tuple[list[str], list[Any]]:
        if record.key is None:
            raise PermanentSinkError(f"redis sink: output {record.id} has no key")
        key = self.key_template.format(key=record.key)
        args: list[Any] = [record.timestamp_ms, self.mode, self._ttl_ms]
        if self.mode == "set":
            args.append(orjson.dumps(record.value))
        elif record.value is None:
            args.append("")
        elif isinstance(record.value, dict):
            args.append("")
            for field, value in record.value.items():
                args += [field, value if isinstance(value, str) else orjson.dumps(value)]
        else:
            raise PermanentSinkError(f"redis sink (hash): output {record.id} has a value that is not an object")
        return [key, f"{key}:event_time"], args

    def write(self, records: list[SinkRecord]) -> None:
        import redis

        calls = [self._args(record) for record in records]  # refuse bad records before writing any
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            self._script(keys=keys, args=args, client=pipe)
        try:
            results = pipe.execute()
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise PermanentSinkError(f"redis sink: {exc}") from exc
            raise SinkError(f"redis sink: {exc}") from exc
        except redis.RedisError as exc:
            raise SinkError(f"redis sink: {type(exc).__name__}: {exc}") from exc
        self.skipped_stale += sum(1 for result in results if result == 0)

    def close(self) -> None:
        self._client.close()


# ---------------------------------------------------------------------------------------------------------------------
# PostgreSQL

_PG_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]*(\(\d+(,\s*\d+)?\))?(\[\])?")


def _pg_text(value: Any) -> str | None:
    """A value as the text PostgreSQL's input function of the column type reads."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


class PostgresSink:
    """Upserts the latest value per key into `table`, created when missing.

    Default columns: `key text` (primary key), `value jsonb`, `event_time timestamptz`, `output_id text`.
    With `columns` ({column: PostgreSQL type}), each column takes the value field of the same name (a `key`
    column takes the record's key when the value has no `key` field) and `key_columns` is the primary key.
    """

    def __init__(
        self,
        dsn: str,
        table: str,
        key_columns: Sequence[str] = ("key",),
        columns: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        from psycopg import sql

        _need("postgres", "dsn", dsn, str, "a libpq connection string")
        _need("postgres", "table", table, str, "a table name (optionally schema.table)")
        if not table or not all(table.split(".")):
            raise ValueError(f"postgres sink: field 'table' must be a table name, got {table!r}")
        _need("postgres", "key_columns", key_columns, (list, tuple), "a list of column names")
        self.key_columns = tuple(key_columns)
        if not self.key_columns or not all(isinstance(c, str) and c for c in self.key_columns):
            raise ValueError(
                f"postgres sink: field 'key_columns' must be a non-empty list of names, got {key_columns!r}"
            )
        if columns is None:
            if self.key_columns != ("key",):
                raise ValueError("postgres sink: field 'key_columns' must be ['key'] unless 'columns' is given")
            types = {"key": "text", "value": "jsonb"}
        else:
            _need("postgres", "columns", columns, Mapping, "a mapping of column names to PostgreSQL types")
            types = {"key": "text"} if "key" in self.key_columns and "key" not in columns else {}
            for column, type_ in columns.items():
                if column in ("event_time", "output_id") or not isinstance(type_, str) or not _PG_TYPE.fullmatch(type_):
                    raise ValueError(f"postgres sink: field 'columns': bad column {column!r}: {type_!r}")
                types[column] = type_
            missing = [c for c in self.key_columns if c not in types]
            if missing:
                raise ValueError(f"postgres sink: field 'key_columns' names columns not in 'columns': {missing}")
        self.dsn, self.table, self.name = dsn, table, name or f"postgres:{table}"
        self._columns, self._mapped = list(types), columns is not None
        ident = sql.Identifier(*table.split("."))
        names = [*self._columns, "event_time", "output_id"]
        self._create = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ({}, event_time timestamptz NOT NULL, output_id text NOT NULL, "
            "PRIMARY KEY ({}))"
        ).format(
            ident,
            sql.SQL(", ").join(
                sql.SQL("{} {}{}").format(
                    sql.Identifier(c), sql.SQL(t), sql.SQL(" NOT NULL" if c in self.key_columns else "")
                )
                for c, t in types.items()
            ),
            sql.SQL(", ").join(map(sql.Identifier, self.key_columns)),
        )
        self._upsert = sql.SQL(
            "INSERT INTO {t} ({cols}) VALUES ({vals}, timestamptz 'epoch' + %s * interval '1 millisecond', %s) "
            "ON CONFLICT ({keys}) DO UPDATE SET {sets} WHERE {t}.event_time <= excluded.event_time"
        ).format(
            t=ident,
            cols=sql.SQL(", ").join(map(sql.Identifier, names)),
            vals=sql.SQL(", ").join(sql.SQL("CAST(%s AS {})").format(sql.SQL(types[c])) for c in self._columns),
            keys=sql.SQL(", ").join(map(sql.Identifier, self.key_columns)),
            sets=sql.SQL(", ").join(
                sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c)) for c in names if c not in self.key_columns
            ),
        )
        self._conn: Any = None

    def _row(self, record: SinkRecord) -> list[Any]:
        if not self._mapped:
            if record.key is None:
                raise PermanentSinkError(f"postgres sink: output {record.id} has no key")
            row: list[Any] = [record.key, orjson.dumps(record.value).decode()]
        else:
            value = record.value if isinstance(record.value, dict) else None
            if value is None:
                raise PermanentSinkError(f"postgres sink: output {record.id} has a value that is not an object")
            row = [record.key if c == "key" and c not in value else _pg_text(value.get(c)) for c in self._columns]
            if any(row[self._columns.index(c)] is None for c in self.key_columns):
                raise PermanentSinkError(f"postgres sink: output {record.id} lacks a key column {self.key_columns}")
        return [*row, record.timestamp_ms, record.id]

    def write(self, records: list[SinkRecord]) -> None:
        import psycopg

        rows = [self._row(record) for record in records]
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
                with self._conn.transaction():
                    self._conn.execute(self._create)
            with self._conn.transaction(), self._conn.cursor() as cur:
                cur.executemany(self._upsert, rows)
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
            raise PermanentSinkError(f"postgres sink {self.table}: {type(exc).__name__}: {exc}") from exc
        except psycopg.Error as exc:
            if self._conn is not None and self._conn.broken:
                self._conn = None
            raise SinkError(f"postgres sink {self.table}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ---------------------------------------------------------------------------------------------------------------------
# Kafka


class KafkaSink:
    """Produces each record to `topic`: key = record key, value = orjson of the value, timestamp = event time,
    header `idempotency-key`. Idempotent producer with acks=all; each batch is flushed, any failure raises."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        client_options: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        _need("kafka", "bootstrap_servers", bootstrap_servers, str, "'host:port[,host:port]'")
        _need("kafka", "topic", topic, str, "a topic name")
        _need("kafka", "client_options", client_options or {}, Mapping, "a mapping of librdkafka settings")
        self.topic, self.name = topic, name or f"kafka:{topic}"
        self._conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "message.timeout.ms": 30_000,
            **(client_options or {}),
            "enable.idempotence": True,
            "acks": "all",
        }
        self._flush_s = int(self._conf["message.timeout.ms"]) / 1000 + 5
        self._producer: Any = None

    def write(self, records: list[SinkRecord]) -> None:
        from confluent_kafka import KafkaError, KafkaException, Producer

        if self._producer is None:
            self._producer = Producer(self._conf)
        errors: list[KafkaError] = []

        def report(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        try:
            for record in records:
                while True:
                    try:
                        self._producer.produce(
                            self.topic,
                            key=None if record.key is None else record.key.encode(),
                            value=orjson.dumps(record.value),
                            headers=[("idempotency-key", record.id.encode())],
                            timestamp=record.timestamp_ms,
                            on_delivery=report,
                        )
                        break
                    except BufferError:  # the local queue is full: let deliveries drain
                        self._producer.poll(0.1)
        except KafkaException as exc:  # refused before sending (too large, ...)
            errors.append(exc.args[0])
        left = self._producer.flush(self._flush_s)
        if errors:
            if any(err.fatal() for err in errors):
                self._producer = None  # a fenced or failed idempotent producer cannot be reused
            permanent = {
                KafkaError.MSG_SIZE_TOO_LARGE,
                KafkaError.INVALID_RECORD,
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
            }
            kind = PermanentSinkError if any(err.code() in permanent for err in errors) else SinkError
            raise kind(f"kafka sink {self.topic}: {len(errors)} records failed: {errors[0].name()}: {errors[0].str()}")
        if left:
            raise SinkError(f"kafka sink {self.topic}: {left} records not acknowledged in {self._flush_s:.0f} s")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._flush_s)
            self._producer = None


# ---------------------------------------------------------------------------------------------------------------------
# Runner


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
