"""Avro decoding: an inline schema, an .avsc file, and the Confluent wire format with a Schema Registry
(served by a small real HTTP server in a thread: `GET /schemas/ids/{id}` as the registry answers it)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from headwater.core.errors import RecordError, SourceError, SourceUnavailable
from headwater.sources.avro import AvroDecoder, needs_conversion
from tests.services import free_ports

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "user", "type": "string"},
        {"name": "total", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "extra", "type": {"type": "map", "values": "int"}},
    ],
}
TYPED = {
    "type": "record",
    "name": "Typed",
    "fields": [
        {"name": "raw", "type": "bytes"},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "clock", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "nested", "type": {"type": "array", "items": ["null", "bytes"]}},
    ],
}


def _order(i: int) -> dict[str, Any]:
    return {
        "id": i, "user": f"u{i} é€", "total": i * 1.5, "tags": ["a", "b"][: i % 3],
        "note": None if i % 2 else "gift", "status": "PAID" if i % 2 else "NEW", "extra": {"k": i},
    }  # fmt: skip


def _body(schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def _wire(schema_id: int, schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    """The Confluent wire format: magic byte 0, the schema id (4 bytes, big-endian), the Avro body."""
    return b"\x00" + schema_id.to_bytes(4, "big") + _body(schema, value)


class Registry:
    """A Schema Registry's `GET /schemas/ids/{id}` on a real port; counts the requests per id."""

    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, Any]] = {}
        self.requests: dict[int, int] = {}
        self.failing = False
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[:2] != ["schemas", "ids"] or not parts[2].isdigit():
                    return self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                schema_id = int(parts[2])
                registry.requests[schema_id] = registry.requests.get(schema_id, 0) + 1
                if registry.failing:
                    return self._answer(500, {"error_code": 50001, "message": "Error in the backend data store"})
                if schema_id not in registry.schemas:
                    return self._answer(404, {"error_code": 40403, "message": "Schema not found"})
                return self._answer(200, registry.schemas[schema_id])

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def register(self, schema_id: int, schema: dict[str, Any], kind: str | None = None) -> None:
        body: dict[str, Any] = {"schema": json.dumps(schema)}
        if kind is not None:
            body["schemaType"] = kind
        self.schemas[schema_id] = body


@pytest.fixture
def registry() -> Iterator[Registry]:
    running = Registry()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


def test_inline_schema() -> None:
    decoder = AvroDecoder(json.dumps(ORDER), None)
    for i in range(5):
        assert decoder.decode(_body(ORDER, _order(i))) == _order(i)


def test_avsc_path_with_a_named_type_in_a_sibling_file(tmp_path: Path) -> None:
    order = json.loads(json.dumps(ORDER))
    (tmp_path / "shop.Status.avsc").write_text(json.dumps(order["fields"][5]["type"] | {"namespace": "shop"}))
    order["fields"][5]["type"] = "shop.Status"  # defined in the file next to it
    path = tmp_path / "shop.Order.avsc"
    path.write_text(json.dumps(order))
    decoder = AvroDecoder(str(path), None)
    assert decoder.decode(_body(ORDER, _order(3))) == _order(3)
    relative = AvroDecoder("shop.Order.avsc", None, base_dir=tmp_path)  # next to headwater.toml
    assert relative.decode(_body(ORDER, _order(4))) == _order(4)


def test_values_become_json_able() -> None:
    uid = uuid.uuid4()
    at = dt.datetime(2026, 3, 1, 12, 30, 15, 123000, tzinfo=dt.UTC)
    value = {
        "raw": b"\x00\xff binary", "hash": b"\x01\x02\x03\x04", "day": dt.date(2026, 3, 1), "at": at,
        "at_us": at.replace(microsecond=123456), "local": dt.datetime(2026, 3, 1, 13, 30, 15),
        "clock": dt.time(7, 8, 9), "uid": uid, "amount": Decimal("1234567.89"), "nested": [None, b"\x10"],
    }  # fmt: skip
    got = AvroDecoder(json.dumps(TYPED), None).decode(_body(TYPED, value))
    assert got == {
        "raw": base64.b64encode(b"\x00\xff binary").decode(),
        "hash": base64.b64encode(b"\x01\x02\x03\x04").decode(),
        "day": "2026-03-01",
        "at": "2026-03-01T12:30:15.123000+00:00",
        "at_us": "2026-03-01T12:30:15.123456+00:00",
        "local": "2026-03-01T13:30:15",
        "clock": "07:08:09",
        "uid": str(uid),
        "amount": Decimal("1234567.89"),  # the runner encodes decimals itself
        "nested": [None, base64.b64encode(b"\x10").decode()],
    }
    orjson.dumps({k: v for k, v in got.items() if k != "amount"})  # the rest is plain JSON


def test_needs_conversion() -> None:
    assert not needs_conversion(fastavro.parse_schema(ORDER))
    assert needs_conversion(fastavro.parse_schema(TYPED))
    tree = {"type": "record", "name": "Node", "fields": [{"name": "kids", "type": {"type": "array", "items": "Node"}}]}
    assert not needs_conversion(fastavro.parse_schema(tree))  # a recursive type ends


def test_a_value_that_is_not_a_record() -> None:
    decoder = AvroDecoder('"string"', None)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "string", "hello")
    assert decoder.decode(out.getvalue()) == {"value": "hello"}


def test_inline_schema_errors() -> None:
    decoder = AvroDecoder(json.dumps(ORDER), None)
    body = _body(ORDER, _order(2))
    with pytest.raises(RecordError, match="truncated"):
        decoder.decode(body[:-3])
    with pytest.raises(RecordError, match="bytes left"):
        decoder.decode(body + b"\x00\x00")
    with pytest.raises(RecordError, match="does not decode"):
        decoder.decode(b"\x02\x04\xff\xfe" + body[4:])  # a string that is not UTF-8


def test_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a valid Avro schema"):
        AvroDecoder('{"type": "no-such-type"}', None)
    with pytest.raises(SourceError, match="not a valid Avro schema"):
        AvroDecoder('{"type": "record", ', None)
    with pytest.raises(SourceError, match="neither JSON nor an existing"):
        AvroDecoder(str(tmp_path / "missing.avsc"), None)
    with pytest.raises(SourceError):
        AvroDecoder(None, None)


def test_registry_wire_format_fetches_each_schema_once(registry: Registry) -> None:
    registry.register(7, ORDER)
    registry.register(8, TYPED, kind="AVRO")
    decoder = AvroDecoder(None, registry.url + "/")
    for i in range(20):
        assert decoder.decode(_wire(7, ORDER, _order(i))) == _order(i)
    typed = decoder.decode(_wire(8, TYPED, _typed()))
    assert typed["raw"] == base64.b64encode(b"r").decode() and typed["day"] == "2026-01-02"
    assert registry.requests == {7: 1, 8: 1}
    decoder.close()


def _typed() -> dict[str, Any]:
    at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    return {
        "raw": b"r", "hash": b"abcd", "day": at.date(), "at": at, "at_us": at, "local": at.replace(tzinfo=None),
        "clock": dt.time(0), "uid": uuid.UUID(int=1), "amount": Decimal("0.01"), "nested": [],
    }  # fmt: skip


def test_registry_with_a_reader_schema(registry: Registry) -> None:
    """With avro_schema too, records written with older schemas are resolved to it."""
    registry.register(1, ORDER)
    newer = json.loads(json.dumps(ORDER))
    newer["fields"] = [f for f in newer["fields"] if f["name"] != "extra"]
    newer["fields"].append({"name": "channel", "type": "string", "default": "web"})
    decoder = AvroDecoder(json.dumps(newer), registry.url)
    got = decoder.decode(_wire(1, ORDER, _order(4)))
    assert got == {k: v for k, v in _order(4).items() if k != "extra"} | {"channel": "web"}


def test_registry_errors(registry: Registry) -> None:
    registry.register(3, ORDER)
    registry.register(4, {"type": "object"}, kind="JSON")
    decoder = AvroDecoder(None, registry.url)
    good = _wire(3, ORDER, _order(1))
    with pytest.raises(RecordError, match="magic byte 1"):
        decoder.decode(b"\x01" + good[1:])
    with pytest.raises(RecordError, match="unknown schema id 99"):
        decoder.decode(good[:1] + (99).to_bytes(4, "big") + good[5:])
    with pytest.raises(RecordError, match="truncated"):
        decoder.decode(good[:-4])
    with pytest.raises(RecordError, match="shorter than the 5-byte"):
        decoder.decode(good[:3])
    with pytest.raises(RecordError, match="JSON schema, not Avro"):
        decoder.decode(good[:1] + (4).to_bytes(4, "big") + good[5:])
    assert decoder.decode(good) == _order(1)  # the decoder goes on after bad records
    registry.failing = True
    with pytest.raises(SourceUnavailable, match="500"):
        decoder.decode(good[:1] + (5).to_bytes(4, "big") + good[5:])
    assert decoder.decode(good) == _order(1)  # cached: no request


def test_registry_down_is_source_unavailable() -> None:
    (port,) = free_ports(1)  # nothing listens there
    decoder = AvroDecoder(None, f"http://127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(SourceUnavailable, match="unreachable"):
        decoder.decode(_wire(1, ORDER, _order(1)))
