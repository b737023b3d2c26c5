"""Avro records: with a schema from the configuration, or in the Confluent wire format with a Schema Registry.

- `avro_schema` only: each payload is one schemaless Avro body written with that schema.
- `schema_registry_url`: each payload is magic byte 0, a 4-byte big-endian schema id, then the Avro body
  (what Confluent's serializers write); the writer schema is fetched once per id from
  `GET {url}/schemas/ids/{id}`. With `avro_schema` too, that schema is the reader schema: records are
  resolved to it (Avro schema resolution: renamed, added and removed fields).

Decoded values are made JSON-able: bytes and fixed as base64 text, dates, times, timestamps and UUIDs as
ISO text; decimals stay `Decimal`. A payload that does not decode raises `RecordError` with the reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import fastavro
import httpx
from fastavro.schema import load_schema

from headwater.core.errors import RecordError, SourceError, SourceUnavailable

MAGIC = 0
HEADER = 5  # magic byte + schema id
_CONVERTED_LOGICAL = {
    "date", "time-millis", "time-micros", "timestamp-millis", "timestamp-micros", "timestamp-nanos",
    "local-timestamp-millis", "local-timestamp-micros", "local-timestamp-nanos", "uuid",
}  # fmt: skip
_REGISTRY_TIMEOUT_S = 10.0


def load_avro_schema(schema: str, base_dir: Path | None = None) -> Any:
    """A parsed schema from JSON text or from the path of an .avsc file (relative to `base_dir`)."""
    text = schema.strip()
    if text[:1] in ("{", "[", '"'):
        try:
            return fastavro.parse_schema(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError and fastavro's SchemaParseException
            raise SourceError(f"avro_schema is not a valid Avro schema: {exc}") from exc
    path = Path(text).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise SourceError(f"avro_schema {schema!r} is neither JSON nor an existing .avsc file")
    try:
        return load_schema(str(path))  # also resolves named types kept in sibling .avsc files
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise SourceError(f"avro_schema {path}: not a valid Avro schema: {exc}") from exc


def needs_conversion(schema: Any, named: dict[str, Any] | None = None, seen: set[str] | None = None) -> bool:
    """Can a value of `schema` hold something JSON cannot (bytes, fixed, dates, times, UUIDs)?"""
    if named is None:
        named = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}
    seen = set() if seen is None else seen
    if isinstance(schema, list):  # a union
        return any(needs_conversion(branch, named, seen) for branch in schema)
    if isinstance(schema, str):
        if schema in ("bytes", "fixed"):
            return True
        if schema in named and schema not in seen:
            seen.add(schema)
            return needs_conversion(named[schema], named, seen)
        return False
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if schema.get("logicalType") in _CONVERTED_LOGICAL or kind in ("bytes", "fixed"):
        return True
    if kind in ("record", "error"):
        name = schema.get("name")
        if name is not None:
            seen.add(name)
        return any(needs_conversion(field["type"], named, seen) for field in schema.get("fields", []))
    if kind == "array":
        return needs_conversion(schema["items"], named, seen)
    if kind == "map":
        return needs_conversion(schema["values"], named, seen)
    return needs_conversion(kind, named, seen) if isinstance(kind, (str, list, dict)) else False


def jsonable(value: Any) -> Any:
    """`value` as read by fastavro, with bytes as base64 and dates, times and UUIDs as ISO text."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value  # str, int, float, bool, None, Decimal


class AvroDecoder:
    """Decodes one Avro payload into a dict; thread-safe (the schema cache is locked)."""

    def __init__(
        self,
        schema: str | None = None,
        registry_url: str | None = None,
        *,
        base_dir: Path | None = None,
        timeout_s: float = _REGISTRY_TIMEOUT_S,
    ) -> None:
        if not schema and not registry_url:
            raise SourceError("avro needs a schema (avro_schema) or a Schema Registry URL (schema_registry_url)")
        self.schema = load_avro_schema(schema, base_dir) if schema else None
        self.registry_url = registry_url.rstrip("/") if registry_url else None
        self._convert = needs_conversion(self.schema) if self.schema is not None else False
        self._by_id: dict[int, tuple[Any, bool]] = {}
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._timeout_s = timeout_s

    def decode(self, payload: bytes) -> dict[str, Any]:
        """The record in `payload`; RecordError when it does not decode, SourceUnavailable when the registry
        cannot be reached."""
        if self.registry_url is None:
            return self._read(payload, self.schema, None, self._convert)
        if len(payload) < HEADER:
            raise RecordError(f"avro: {len(payload)} bytes, shorter than the 5-byte Confluent header")
        if payload[0] != MAGIC:
            raise RecordError(f"avro: magic byte {payload[0]}, expected 0 (Confluent wire format)")
        schema_id = int.from_bytes(payload[1:HEADER], "big")
        writer, convert = self._writer_schema(schema_id)
        return self._read(memoryview(payload)[HEADER:], writer, self.schema, convert, schema_id)

    def _read(
        self, body: bytes | memoryview, writer: Any, reader: Any, convert: bool, schema_id: int | None = None
    ) -> dict[str, Any]:
        where = f" (schema id {schema_id})" if schema_id is not None else ""
        stream = io.BytesIO(body)
        try:
            value = fastavro.schemaless_reader(stream, writer, reader)
        except EOFError as exc:
            raise RecordError(f"avro: truncated record{where}: {exc}") from exc
        except Exception as exc:  # fastavro raises many kinds (ValueError, IndexError, UnicodeDecodeError, ...)
            raise RecordError(f"avro: record does not decode{where}: {type(exc).__name__}: {exc}") from exc
        left = len(body) - stream.tell()
        if left:
            raise RecordError(f"avro: {left} bytes left after the record{where}: not written with this schema?")
        if convert:
            value = jsonable(value)
        return value if isinstance(value, dict) else {"value": value}

    def _writer_schema(self, schema_id: int) -> tuple[Any, bool]:
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._by_id.get(schema_id)
            if cached is None:
                schema = self._fetch(schema_id)
                convert = self._convert if self.schema is not None else needs_conversion(schema)  # reader's shape
                cached = self._by_id[schema_id] = (schema, convert)
        return cached

    def _fetch(self, schema_id: int) -> Any:
        url = f"{self.registry_url}/schemas/ids/{schema_id}"
        if self._client is None:
            self._client = httpx.Client(timeout=self._timeout_s)
        try:
            response = self._client.get(url)
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"Schema Registry {self.registry_url} unreachable: {exc}") from exc
        if response.status_code == 404:
            raise RecordError(f"avro: unknown schema id {schema_id} (not in the Schema Registry)")
        if response.status_code >= 500 or response.status_code == 429:
            raise SourceUnavailable(f"Schema Registry answered {response.status_code} for schema id {schema_id}")
        if response.status_code != 200:
            raise SourceError(
                f"Schema Registry answered {response.status_code} to GET {url}: {response.text[:200]}"
                " (check schema_registry_url and its credentials)"
            )
        try:
            body = response.json()
            kind = body.get("schemaType", "AVRO")
            if kind != "AVRO":
                raise RecordError(f"avro: schema id {schema_id} is a {kind} schema, not Avro")
            return fastavro.parse_schema(json.loads(body["schema"]))
        except RecordError:
            raise
        except Exception as exc:  # not JSON, no `schema`, or not a valid Avro schema
            raise RecordError(f"avro: schema id {schema_id} from the registry is unusable: {exc}") from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
