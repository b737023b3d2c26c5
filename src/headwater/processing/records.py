"""What processors read: log records decoded to (key, value, event time, offset).

- The `events` stream (and streams that sources feed) hold the collector's envelopes: they are
  normalised exactly as the lake writer does (same event ids, same clock-skew correction), into a
  dict with the `events` table's columns; `properties`, `context` and `traits` as dicts and
  `timestamp` as ISO-8601. Invalid envelopes (quarantined ones) are not given to processors.
- Processor output streams hold `{"k": key, "v": value, "t": event time ms, "id": output id}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from headwater.core.erasure import is_erased
from headwater.core.events import (
    RAW_MAPPED,
    RAW_TRACK,
    SEGMENT_MAPPED,
    InvalidEvent,
    _ident,
    event_id_for,
    message_id_of,
    parse_time,
)
from headwater.log.base import Record

Decoded = tuple[str | None, Any, int, int]


class EventDecoder:
    """Collector envelopes to event dicts, as `RowBuilder` normalises them for the lake (same event
    ids, identities and clock-skew correction; `tests/processing/test_records.py` holds them equal),
    without RowBuilder's detour through columns and JSON text: properties stay the parsed objects.
    Times are parsed once per distinct value."""

    def __init__(self, log_id: str) -> None:
        self.log_id = log_id
        self._times: dict[Any, datetime] = {}
        self._received: dict[int, tuple[datetime, str]] = {}

    def _time(self, value: Any, field: str) -> datetime:
        key = value if type(value) is str else (type(value), value)
        parsed = self._times.get(key)
        if parsed is None:
            if len(self._times) > 50_000:
                self._times.clear()
            parsed = self._times[key] = parse_time(value, field)
        return parsed

    def _received_at(self, ms: int) -> tuple[datetime, str]:
        found = self._received.get(ms)
        if found is None:
            if len(self._received) > 10_000:
                self._received.clear()
            moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
            found = self._received[ms] = (moment, moment.isoformat())
        return found

    def decode(self, records: list[Record]) -> Iterator[Decoded]:
        for record in records:
            envelope = orjson.loads(record.value)
            if "q" in envelope or is_erased(envelope):
                continue  # quarantined at the collector, or erased (a privacy deletion): never given to processors
            try:
                value, ts = self._event(envelope, record.partition, record.offset)
            except (InvalidEvent, TypeError, ValueError):
                continue  # the lake writer quarantines it ("normalisation failed")
            yield value["user_id"] or value["anonymous_id"], value, ts, record.offset

    def _event(self, envelope: dict[str, Any], partition: int, offset: int) -> tuple[dict[str, Any], int]:
        meta, obj = envelope["m"], envelope["e"]
        at = self._received_at(meta["ra"])
        if meta["ep"] == RAW_TRACK:
            return self._raw(obj, meta, at, partition, offset)
        return self._segment(obj, meta, at, partition, offset)

    def _raw(
        self, obj: dict[str, Any], meta: dict[str, Any], at: tuple[datetime, str], partition: int, offset: int
    ) -> tuple[dict[str, Any], int]:
        received, received_iso = at
        ts = received
        for field in ("timestamp", "dateTime", "time"):
            if obj.get(field) is not None:
                ts = self._time(obj[field], field)
                break
        message_id = obj.get("messageId")
        user_id = obj.get("userId", obj.get("user_id"))
        anonymous_id = obj.get("anonymousId", obj.get("anonymous_id"))
        value = {
            "event_id": message_id
            if isinstance(message_id, str) and message_id
            else (message_id_of(obj) or event_id_for(self.log_id, partition, offset)),
            "type": "track",
            "event": obj["event"],
            "user_id": user_id if isinstance(user_id, str) and user_id else _ident(obj, "userId", "user_id"),
            "anonymous_id": anonymous_id
            if isinstance(anonymous_id, str) and anonymous_id
            else _ident(obj, "anonymousId", "anonymous_id"),
            "timestamp": received_iso if ts is received else ts.isoformat(),
            "received_at": received_iso,
            "source": meta["src"],
            "properties": {k: v for k, v in obj.items() if k not in RAW_MAPPED},
            "context": None,
            "traits": None,
        }
        return value, int(ts.timestamp() * 1000)

    def _segment(
        self, obj: dict[str, Any], meta: dict[str, Any], at: tuple[datetime, str], partition: int, offset: int
    ) -> tuple[dict[str, Any], int]:
        received, received_iso = at
        etype = obj.get("type") or meta["ep"]
        original = obj.get("timestamp", obj.get("originalTimestamp"))
        sent_raw = obj.get("sentAt", meta.get("sa"))
        if original is None:
            ts = received
        else:
            ts = self._time(original, "timestamp")
            if sent_raw is not None:  # Segment's clock-skew correction
                ts = received - (self._time(sent_raw, "sentAt") - ts)
        context = obj.get("context")
        batch_context = meta.get("ctx")
        if batch_context:
            context = {**batch_context, **(context or {})}
        if obj.keys() - SEGMENT_MAPPED:  # a set difference in C: usually empty
            context = {**(context or {}), **{k: v for k, v in obj.items() if k not in SEGMENT_MAPPED}}
        event = obj.get("event") if etype == "track" else obj.get("name")
        user_id, anonymous_id, message_id = obj.get("userId"), obj.get("anonymousId"), obj.get("messageId")
        value = {
            "event_id": message_id
            if type(message_id) is str and message_id
            else (message_id_of(obj) or event_id_for(self.log_id, partition, offset)),
            "type": etype,
            "event": event if isinstance(event, str) else None,
            "user_id": user_id if type(user_id) is str and user_id else _ident(obj, "userId"),
            "anonymous_id": anonymous_id if type(anonymous_id) is str and anonymous_id else _ident(obj, "anonymousId"),
            "timestamp": received_iso if ts is received else ts.isoformat(),
            "received_at": received_iso,
            "source": meta["src"],
            "properties": obj.get("properties") or {},
            "context": context,
            "traits": obj.get("traits"),
        }
        return value, int(ts.timestamp() * 1000)


def to_millis(value: Any) -> int:
    """Epoch milliseconds of a number (taken as ms), a datetime, or an ISO-8601 string (UTC when it
    has no offset, as the collector reads event times); ValueError when it is none of these."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    moment = value if isinstance(value, datetime) else parse_time(str(value), "time")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def decode_events(records: list[Record], log_id: str) -> Iterator[Decoded]:
    """Decode with a fresh decoder (the runner keeps one, to reuse its caches)."""
    return EventDecoder(log_id).decode(records)


def decode_outputs(records: list[Record]) -> Iterator[Decoded]:
    """Output-stream records decoded; erased ones (a privacy deletion) are skipped."""
    for record in records:
        envelope = orjson.loads(record.value)
        if is_erased(envelope):
            continue
        yield envelope["k"], envelope["v"], int(envelope["t"]), record.offset


def encode_output(key: str | None, value: Any, ts: int, output_id: str) -> tuple[bytes | None, bytes]:
    """A record in the output-stream format (used by tests, examples and the test driver)."""
    body = {"k": key, "v": value, "t": ts, "id": output_id}
    return (None if key is None else key.encode(), orjson.dumps(body, default=str))
