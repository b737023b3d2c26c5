"""Request bodies to log records: bounded decompression, NDJSON / JSON / Segment batch, validation.

Per-event work here is deliberately small: one `orjson.loads` and a few field checks. Mapping to
lake columns happens in the lake writer, off the request path. The raw bytes of each valid event
go to the log untouched, wrapped in a small envelope with the request's metadata.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from headwater.core.errors import CollectorError
from headwater.core.events import RAW_TRACK, InvalidEvent, check_raw_track, check_segment


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int = 5_000_000
    max_event_bytes: int = 65_536
    max_batch_events: int = 2_500


@dataclass(slots=True)
class ParsedBatch:
    """Valid records for the log, their idempotency keys, and the rejected items."""

    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    idempotency: list[tuple[str, str] | None] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return len(self.records)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding gzip/deflate without ever inflating past `limit` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise CollectorError(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none", 415)
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise CollectorError(f"body is not valid {encoding}: {exc}", 400) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise CollectorError(f"decompressed body is over the {limit}-byte limit; send smaller batches", 413)
    return out


def peek_write_key(body: bytes) -> str | None:
    """The `writeKey` field of a Segment body, for SDKs that send the key there."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    key = doc.get("writeKey") if isinstance(doc, dict) else None
    return key if isinstance(key, str) and key else None


def _raw_text(raw: bytes, cap: int) -> str:
    return raw[:cap].decode("utf-8", "backslashreplace")


class BatchParser:
    """Turns one request body into a ParsedBatch for one source (the key's name)."""

    def __init__(self, limits: Limits, source: str, received_ms: int, client: dict[str, str] | None = None) -> None:
        self.limits = limits
        self.source = source
        self.received_ms = received_ms
        self.client = client or {}  # "ip" (client address), "ua" (User-Agent of browser requests): enrichment inputs
        self.out = ParsedBatch()

    def _meta(self, endpoint: str, sent_at: Any = None, context: Any = None) -> bytes:
        meta: dict[str, Any] = {"src": self.source, "ep": endpoint, "ra": self.received_ms, **self.client}
        if sent_at is not None:
            meta["sa"] = sent_at
        if isinstance(context, dict) and context:
            meta["ctx"] = context
        return orjson.dumps(meta)

    def _reject(self, where: dict[str, Any], reason: str, raw: bytes, meta: bytes) -> None:
        self.out.rejected.append({**where, "error": reason})
        envelope = b'{"m":' + meta + b',"q":' + orjson.dumps(reason) + b',"raw":'
        envelope += orjson.dumps(_raw_text(raw, self.limits.max_request_bytes)) + b"}"
        self.out.quarantine.append((None, envelope))

    def _accept(self, key: str, message_id: str | None, raw: bytes, meta: bytes) -> None:
        self.out.records.append((key.encode(), b'{"m":' + meta + b',"e":' + raw + b"}"))
        self.out.idempotency.append((self.source, message_id) if message_id else None)

    def _check_count(self, count: int) -> None:
        if count > self.limits.max_batch_events:
            raise CollectorError(
                f"batch has {count} events; the limit is {self.limits.max_batch_events}: split it",
                413,
            )

    def parse_track(self, body: bytes) -> ParsedBatch:
        """The lolscale format: NDJSON, or a JSON array, or one JSON object."""
        meta = self._meta(RAW_TRACK)
        stripped = body.strip()
        if not stripped:
            raise CollectorError("empty body: send newline-delimited JSON events", 400)
        array = None
        if stripped[:1] == b"[":
            try:
                array = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                array = None  # not one JSON array: maybe NDJSON whose first line is junk
        if isinstance(array, list):
            self._check_count(len(array))
            for index, obj in enumerate(array):
                self._track_item({"index": index}, obj, None, meta)
            return self.out
        lines = stripped.split(b"\n")
        if len(lines) > 1 and stripped[:1] == b"{":
            try:  # one pretty-printed object
                single = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                single = None
            if single is not None:
                self._track_item({"line": 1}, single, None, meta)
                return self.out
        self._check_count(len(lines))
        self._track_lines(lines, meta)
        self.out.rejected.sort(key=lambda item: item.get("line", 0))
        return self.out

    def _track_lines(self, lines: list[bytes], meta: bytes) -> None:
        """The NDJSON hot loop: one orjson.loads and one check per line, the envelope built inline."""
        max_bytes = self.limits.max_event_bytes
        loads, check, source = orjson.loads, check_raw_track, self.source
        prefix = b'{"m":' + meta + b',"e":'
        append_record, append_idem = self.out.records.append, self.out.idempotency.append
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line:
                continue
            if len(line) > max_bytes:
                self._reject({"line": number}, self._too_big(len(line)), line, meta)
                continue
            try:
                obj = loads(line)
                key, message_id = check(obj)
            except orjson.JSONDecodeError as exc:
                self._reject({"line": number}, f"invalid JSON: {exc}", line, meta)
                continue
            except InvalidEvent as exc:
                self._reject({"line": number}, str(exc), line, meta)
                continue
            append_record((key.encode(), prefix + line + b"}"))
            append_idem((source, message_id) if message_id else None)

    def _track_item(self, where: dict[str, Any], obj: Any, raw: bytes | None, meta: bytes) -> None:
        raw_bytes = raw if raw is not None else orjson.dumps(obj)
        if raw is None and len(raw_bytes) > self.limits.max_event_bytes:
            self._reject(where, self._too_big(len(raw_bytes)), raw_bytes, meta)
            return
        try:
            key, message_id = check_raw_track(obj)
        except InvalidEvent as exc:
            self._reject(where, str(exc), raw_bytes, meta)
            return
        self._accept(key, message_id, raw_bytes, meta)

    def _too_big(self, size: int) -> str:
        return f"event is {size} bytes; the limit is {self.limits.max_event_bytes}"

    def parse_segment(self, body: bytes, endpoint: str) -> ParsedBatch:
        """Segment tracking API: one call (`/v1/track` …) or `/v1/batch`."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise CollectorError(f"body is not valid JSON: {exc}", 400) from None
        if not isinstance(doc, dict):
            raise CollectorError("body: expected a JSON object", 400)
        if endpoint == "batch":
            batch = doc.get("batch")
            if not isinstance(batch, list):
                raise CollectorError("batch: required, an array of calls", 400)
            self._check_count(len(batch))
            meta = self._meta("batch", doc.get("sentAt"), doc.get("context"))
            for index, obj in enumerate(batch):
                self._segment_item({"index": index}, obj, None, meta)
        else:
            meta = self._meta(endpoint)
            self._segment_item({"index": 0}, doc, endpoint, meta)
        return self.out

    def _segment_item(self, where: dict[str, Any], obj: Any, endpoint: str | None, meta: bytes) -> None:
        raw = orjson.dumps(obj)
        if len(raw) > self.limits.max_event_bytes:
            self._reject(where, self._too_big(len(raw)), raw, meta)
            return
        try:
            key, message_id = check_segment(obj, endpoint)
        except InvalidEvent as exc:
            self._reject(where, str(exc), raw, meta)
            return
        if endpoint is not None and "type" not in obj:
            raw = orjson.dumps({**obj, "type": endpoint})
        self._accept(key, message_id, raw, meta)
