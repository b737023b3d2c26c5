"""PostgreSQL protocol 3.0 messages: framing, backend messages, and values in text or binary format."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import struct
import uuid
from collections.abc import Callable
from typing import Any

import orjson

SSL_REQUEST = 80877103
GSS_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3 = 196608
TEXT_OID = 25
EPOCH_2000 = dt.datetime(2000, 1, 1)
EPOCH_2000_TZ = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

# DuckDB type name (as a result's description gives it) -> PostgreSQL type OID
_OIDS = {
    "BOOLEAN": 16, "TINYINT": 21, "SMALLINT": 21, "UTINYINT": 21, "INTEGER": 23, "USMALLINT": 23,
    "BIGINT": 20, "UINTEGER": 20, "UBIGINT": 1700, "HUGEINT": 1700, "UHUGEINT": 1700, "FLOAT": 700,
    "DOUBLE": 701, "VARCHAR": TEXT_OID, "JSON": 114, "DATE": 1082, "TIME": 1083, "TIMESTAMP": 1114,
    "TIMESTAMP_NS": 1114, "TIMESTAMP_MS": 1114, "TIMESTAMP_S": 1114, "TIMESTAMP WITH TIME ZONE": 1184,
    "INTERVAL": 1186, "BLOB": 17, "UUID": 2950, "VARCHAR[]": 1009, "INTEGER[]": 1007, "BIGINT[]": 1016,
}  # fmt: skip
_ARRAYS = {1009, 1007, 1016}
_SIZES = {16: 1, 21: 2, 23: 4, 20: 8, 700: 4, 701: 8, 1082: 4, 1114: 8, 1184: 8, 2950: 16}
_BINARY: dict[int, Callable[[Any], bytes]] = {
    16: lambda v: b"\x01" if v else b"\x00",
    21: lambda v: struct.pack("!h", v),
    23: lambda v: struct.pack("!i", v),
    20: lambda v: struct.pack("!q", v),
    700: lambda v: struct.pack("!f", v),
    701: lambda v: struct.pack("!d", v),
    TEXT_OID: lambda v: str(v).encode(),
    1082: lambda v: struct.pack("!i", v.toordinal() - EPOCH_2000.toordinal()),
    1114: lambda v: struct.pack("!q", _micros(v - EPOCH_2000)),
    1184: lambda v: struct.pack("!q", _micros(v - EPOCH_2000_TZ)),
}


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def type_oid(duck_type: str) -> int:
    """The PostgreSQL type OID for a DuckDB type name (text for anything without a close match)."""
    name = duck_type.upper()
    if name.startswith("DECIMAL"):
        return 1700
    return _OIDS.get(name, TEXT_OID)


def binary_ok(oid: int) -> bool:
    return oid in _BINARY


def _array_item(value: Any) -> str:
    if value is None:
        return "NULL"
    text = text_value(value, TEXT_OID)
    if text == "" or re.search(r'[{},"\\\s]', text) or text.upper() == "NULL":
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def text_value(value: Any, oid: int) -> str:
    """`value` in PostgreSQL's text output format for type `oid`."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int | decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        text = value.isoformat(sep=" ")
        return text[:-3] if value.tzinfo is not None and text.endswith(":00") else text
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        seconds = value.seconds + value.microseconds / 1e6
        hours, rest = divmod(seconds, 3600)
        minutes, secs = divmod(rest, 60)
        return f"{value.days} days {int(hours):02d}:{int(minutes):02d}:{secs:09.6f}"
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, list | tuple) and oid in _ARRAYS:
        return "{" + ",".join(_array_item(v) for v in value) + "}"
    if isinstance(value, list | tuple | dict):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def encode_value(value: Any, oid: int, binary: bool) -> bytes:
    if binary:
        return _BINARY[oid](value)
    return text_value(value, oid).encode()


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def authentication(code: int) -> bytes:
    return message(b"R", struct.pack("!i", code))


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!iI", pid, secret))


def ready(status: bytes) -> bytes:
    return message(b"Z", status)


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


def row_description(columns: list[str], oids: list[int], formats: list[int]) -> bytes:
    body = struct.pack("!h", len(columns))
    for name, oid, fmt in zip(columns, oids, formats, strict=True):
        body += cstr(name) + struct.pack("!ihihih", 0, 0, oid, _SIZES.get(oid, -1), -1, fmt)
    return message(b"T", body)


def data_row(values: list[Any], oids: list[int], formats: list[int]) -> bytes:
    body = struct.pack("!h", len(values))
    for value, oid, fmt in zip(values, oids, formats, strict=True):
        if value is None:
            body += struct.pack("!i", -1)
        else:
            data = encode_value(value, oid, fmt == 1)
            body += struct.pack("!i", len(data)) + data
    return message(b"D", body)


def parameter_description(oids: list[int]) -> bytes:
    return message(b"t", struct.pack(f"!h{len(oids)}i", len(oids), *oids))


def error(code: str, text: str, severity: str = "ERROR", hint: str = "") -> bytes:
    """ErrorResponse (or, with severity NOTICE/WARNING, what `notice` sends) with SQLSTATE `code`."""
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(code) + b"M" + cstr(text)
    if hint:
        body += b"H" + cstr(hint)
    return message(b"N" if severity in ("NOTICE", "WARNING") else b"E", body + b"\x00")


def notice(text: str) -> bytes:
    return error("01000", text, "NOTICE")


PARSE_COMPLETE = message(b"1")
BIND_COMPLETE = message(b"2")
CLOSE_COMPLETE = message(b"3")
NO_DATA = message(b"n")
EMPTY_QUERY = message(b"I")
PORTAL_SUSPENDED = message(b"s")


class Reader:
    """Fields of one frontend message body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int16(self) -> int:
        (value,) = struct.unpack_from("!h", self.data, self.pos)
        self.pos += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from("!i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def cstr(self) -> str:
        end = self.data.index(b"\x00", self.pos)
        text = self.data[self.pos : end].decode()
        self.pos = end + 1
        return text

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def decode_param(raw: bytes | None, oid: int, binary: bool) -> Any:
    """A bound parameter's value: str for text format, a number (or str) for the binary formats we read."""
    if raw is None:
        return None
    if not binary:
        return raw.decode()
    if oid in (20, 21, 23):
        return int.from_bytes(raw, "big", signed=True)
    if oid == 700:
        return struct.unpack("!f", raw)[0]
    if oid == 701:
        return struct.unpack("!d", raw)[0]
    if oid == 16:
        return raw != b"\x00"
    if oid in (0, TEXT_OID, 1043, 19, 114, 705):
        return raw.decode()
    raise ValueError(f"parameter of type OID {oid} sent in binary format; send it as text")
