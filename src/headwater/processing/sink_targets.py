"""External systems a sink delivers to: webhook, Redis, PostgreSQL, Kafka (see `sinks` for the
runner, retries and the at-least-once contract; each class documents how it uses the id)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from headwater.core.errors import PermanentSinkError, SinkError

if TYPE_CHECKING:
    from headwater.processing.sinks import SinkRecord

log = logging.getLogger(__name__)


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
