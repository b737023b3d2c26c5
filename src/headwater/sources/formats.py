"""Record formats: one upstream payload to records (dicts), and records to JSON for the log.

`json` takes one object (or an array of objects) per payload, `ndjson` one object per line; `avro`
and `cobol` are binary (their modules do the decoding); `csv` and `parquet` are read whole files at a
time by the files reader, which hands over decoded rows. `flatten` then replaces a record by the
items of one of its arrays (each item merged over the record's other fields).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from headwater.core.errors import RecordError
from headwater.core.source_settings import SourceSettings

Decoded = list[dict[str, Any]] | RecordError
"""What one payload decodes to: its records, or why it cannot be decoded."""


def json_default(value: Any) -> Any:
    """orjson `default` for what decoders produce."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value)) if value.is_finite() else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)  # anything else a decoder may give (intervals, UUIDs, ...) as its text


def to_json(value: Any) -> bytes:
    """orjson with the types decoders produce: Decimal as an exact JSON number, bytes as base64."""
    return orjson.dumps(value, default=json_default, option=orjson.OPT_NON_STR_KEYS)


def raw_text(payload: bytes, binary: bool) -> str:
    """A payload for the quarantine table's `raw` column: text as is, binary as `base64:...`."""
    if not binary:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return "base64:" + base64.b64encode(payload).decode()


def _objects(doc: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list) and all(isinstance(item, dict) for item in doc):
        return doc
    raise RecordError(f"{where}expected a JSON object (or an array of objects), got {type(doc).__name__}")


def decode_json(payload: bytes) -> list[dict[str, Any]]:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON: {exc}") from None
    return _objects(doc, "")


def decode_ndjson(payload: bytes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for number, line in enumerate(payload.split(b"\n"), start=1):
        if line.strip():
            try:
                out.extend(_objects(orjson.loads(line), f"line {number}: "))
            except orjson.JSONDecodeError as exc:
                raise RecordError(f"line {number}: invalid JSON: {exc}") from None
    return out


def lookup(record: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (`a.b.c`), or None."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def flatten(record: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The items of the array at `path`, each merged over the record's other top-level fields."""
    items = lookup(record, path)
    if items is None:
        raise RecordError(f"{path}: missing (flatten needs an array there)")
    if not isinstance(items, list):
        raise RecordError(f"{path}: expected an array to flatten, got {type(items).__name__}")
    head = path.split(".", maxsplit=1)[0]
    parent = {k: v for k, v in record.items() if k != head}
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise RecordError(f"{path}[{index}]: expected an object, got {type(item).__name__}")
        out.append({**parent, **item})
    return out


class RecordFormat:
    """Decodes payloads of one source's format, batch at a time (the COBOL decoder is vectorised)."""

    def __init__(self, settings: SourceSettings, base_dir: Path) -> None:
        self.settings = settings
        self.binary = settings.format in ("avro", "cobol")
        self._batch: Callable[[list[bytes]], list[Decoded]] | None = None
        self._one: Callable[[bytes], list[dict[str, Any]]] | None = None
        fmt = settings.format
        if fmt == "json":
            self._one = decode_json
        elif fmt == "ndjson":  # a file's lines reach here one by one; a message may hold several
            self._one = decode_json if settings.kind == "files" else decode_ndjson
        elif fmt == "avro":
            from headwater.sources.avro import AvroDecoder

            avro = AvroDecoder(settings.avro_schema, settings.schema_registry_url, base_dir=base_dir)
            self._one = lambda payload: [avro.decode(payload)]
        elif fmt == "cobol":
            from headwater.sources.cobol_format import cobol_batch_decoder

            self._batch = cobol_batch_decoder(settings.cobol, base_dir)
        # csv, parquet, grib: whole files, decoded by the files reader

    def decode(self, payloads: list[bytes]) -> list[Decoded]:
        """Per payload: its records (flattened when configured), or the RecordError saying why not."""
        if self._batch is not None:
            try:
                decoded = self._batch(payloads)
            except RecordError:  # one payload broke the whole batch: decode them one by one to find it
                decoded = []
                for payload in payloads:
                    try:
                        decoded.extend(self._batch([payload]))
                    except RecordError as exc:
                        decoded.append(exc)
        else:
            one = self._one
            if one is None:
                raise RecordError(f"format {self.settings.format} is read by the files reader, not per payload")
            decoded = []
            for payload in payloads:
                try:
                    decoded.append(one(payload))
                except RecordError as exc:
                    decoded.append(exc)
        path = self.settings.flatten
        if path is None:
            return decoded
        out: list[Decoded] = []
        for item in decoded:
            if isinstance(item, RecordError):
                out.append(item)
                continue
            try:
                out.append([row for record in item for row in flatten(record, path)])
            except RecordError as exc:
                out.append(exc)
        return out
