"""The event model: validation at the collector, normalisation to lake rows at the writer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

SEGMENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
RAW_TRACK = "track-raw"  # endpoint tag of the lolscale `POST /track` format

RAW_MAPPED = frozenset(
    {
        "event",
        "userId",
        "user_id",
        "anonymousId",
        "anonymous_id",
        "timestamp",
        "dateTime",
        "time",
        "messageId",
    }
)
SEGMENT_MAPPED = frozenset(
    {
        "type", "event", "name", "userId", "anonymousId", "groupId", "previousId", "messageId",
        "timestamp", "originalTimestamp", "sentAt", "receivedAt", "context", "properties", "traits",
        "writeKey",
    }
)  # fmt: skip

TS = pa.timestamp("us")  # UTC; naive in Parquet so that date functions need no time-zone rules
EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("event", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("anonymous_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("previous_id", pa.string()),
        pa.field("timestamp", TS, nullable=False),
        pa.field("received_at", TS, nullable=False),
        pa.field("sent_at", TS),
        pa.field("source", pa.string(), nullable=False),
        pa.field("properties", pa.string()),
        pa.field("context", pa.string()),
        pa.field("traits", pa.string()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("received_at", TS, nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("endpoint", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),
        pa.field("log_partition", pa.int32(), nullable=False),
        pa.field("log_offset", pa.int64(), nullable=False),
    ]
)


class InvalidEvent(ValueError):
    """One event is invalid; the message names the field and the problem."""


def parse_time(value: Any, field: str) -> datetime:
    """ISO-8601 / 'YYYY-MM-DD HH:MM:SS' (UTC when no offset) / epoch seconds or milliseconds."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(f"{field}: {value[:40]!r} is not an ISO-8601 date-time") from None
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) >= 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEvent(f"{field}: {value} is out of range for a timestamp") from None
    raise InvalidEvent(f"{field}: expected a date-time string or epoch number, got {type(value).__name__}")


def _ident(obj: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = obj.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise InvalidEvent(f"{name}: expected a string or number, got {type(value).__name__}")
    return None


def message_id_of(obj: dict[str, Any]) -> str | None:
    value = obj.get("messageId")
    if value is None:
        return None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidEvent("messageId: expected a non-empty string")


def check_raw_track(obj: Any) -> tuple[str, str | None]:
    """Validate one lolscale `/track` event; return (partition key, messageId)."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(obj).__name__}")
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        raise InvalidEvent("event: required, a non-empty string")
    key = _ident(obj, "userId", "user_id") or _ident(obj, "anonymousId", "anonymous_id")
    if key is None:
        raise InvalidEvent("userId: required (or anonymousId)")
    for field in ("timestamp", "dateTime", "time"):
        if obj.get(field) is not None:
            parse_time(obj[field], field)
            break
    return key, message_id_of(obj)


def check_segment(obj: Any, endpoint_type: str | None) -> tuple[str, str | None]:
    """Validate one Segment-spec call; return (partition key, messageId)."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(obj).__name__}")
    etype = obj.get("type", endpoint_type)
    if etype not in SEGMENT_TYPES:
        raise InvalidEvent(f"type: must be one of {', '.join(SEGMENT_TYPES)}, got {etype!r:.40}")
    if endpoint_type is not None and obj.get("type") not in (None, endpoint_type):
        raise InvalidEvent(f"type: {obj.get('type')!r:.40} does not match the endpoint /v1/{endpoint_type}")
    user_id = _ident(obj, "userId")
    key = user_id or _ident(obj, "anonymousId")
    if key is None:
        raise InvalidEvent("userId or anonymousId: one is required")
    if etype == "track":
        event = obj.get("event")
        if not isinstance(event, str) or not event:
            raise InvalidEvent("event: required for track, a non-empty string")
    elif etype == "group" and _ident(obj, "groupId") is None:
        raise InvalidEvent("groupId: required for group")
    elif etype == "alias":
        if _ident(obj, "previousId") is None:
            raise InvalidEvent("previousId: required for alias")
        if user_id is None:
            raise InvalidEvent("userId: required for alias")
    for field in ("properties", "traits", "context"):
        value = obj.get(field)
        if value is not None and not isinstance(value, dict):
            raise InvalidEvent(f"{field}: expected an object, got {type(value).__name__}")
    for field in ("timestamp", "originalTimestamp", "sentAt"):
        if obj.get(field) is not None:
            parse_time(obj[field], field)
    return key, message_id_of(obj)


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value).decode()


def event_id_for(log_id: str, partition: int, offset: int) -> str:
    """Stable id for an event that came without messageId, derived from its log position."""
    return f"hw-{log_id}-{partition}-{offset}"


class RowBuilder:
    """Accumulates normalised rows column by column (cheaper than a dict per row).

    This is the lake writer's per-event hot loop, so it avoids per-row allocations where it can:
    columns are plain lists, receive times and event times are parsed once per distinct value.
    """

    def __init__(self) -> None:
        self.events: dict[str, list[Any]] = {f.name: [] for f in EVENTS_SCHEMA}
        self.quarantine: dict[str, list[Any]] = {f.name: [] for f in QUARANTINE_SCHEMA}
        self._columns = tuple(self.events[f.name] for f in EVENTS_SCHEMA)
        self._received: dict[int, datetime] = {}
        self._times: dict[Any, datetime] = {}

    @property
    def event_count(self) -> int:
        return len(self.events["event_id"])

    @property
    def quarantine_count(self) -> int:
        return len(self.quarantine["raw"])

    def _received_at(self, ms: int) -> datetime:
        received = self._received.get(ms)
        if received is None:
            received = self._received[ms] = datetime.fromtimestamp(ms / 1000, tz=UTC)
        return received

    def _time(self, value: Any, field: str) -> datetime:
        key = value if isinstance(value, str) else (type(value), value)
        parsed = self._times.get(key)
        if parsed is None:
            if len(self._times) > 200_000:
                self._times.clear()
            parsed = self._times[key] = parse_time(value, field)
        return parsed

    def add(self, envelope: dict[str, Any], log_id: str, partition: int, offset: int) -> None:
        meta = envelope["m"]
        received = self._received_at(meta["ra"])
        if "q" in envelope:
            self.add_quarantine(received, meta, envelope["q"], envelope["raw"], partition, offset)
            return
        obj = envelope["e"]
        try:
            if meta["ep"] == RAW_TRACK:
                self._add_raw(obj, meta, received, log_id, partition, offset)
            else:
                self._add_segment(obj, meta, received, log_id, partition, offset)
        except (InvalidEvent, TypeError, ValueError) as exc:  # validated already; belt and braces
            self.add_quarantine(received, meta, f"normalisation failed: {exc}", _dumps(obj) or "", partition, offset)

    def add_quarantine(
        self, received: datetime, meta: dict[str, Any], reason: str, raw: str, partition: int, offset: int
    ) -> None:
        q = self.quarantine
        q["received_at"].append(received)
        q["source"].append(meta["src"])
        q["endpoint"].append(meta["ep"])
        q["reason"].append(reason)
        q["raw"].append(raw)
        q["log_partition"].append(partition)
        q["log_offset"].append(offset)

    def _append(
        self, event_id: str, etype: str, event: str | None, user_id: str | None, anonymous_id: str | None,
        group_id: str | None, previous_id: str | None, timestamp: datetime, received_at: datetime,
        sent_at: datetime | None, source: str, properties: str | None, context: str | None, traits: str | None,
    ) -> None:  # fmt: skip
        c = self._columns  # same order as EVENTS_SCHEMA
        c[0].append(event_id)
        c[1].append(etype)
        c[2].append(event)
        c[3].append(user_id)
        c[4].append(anonymous_id)
        c[5].append(group_id)
        c[6].append(previous_id)
        c[7].append(timestamp)
        c[8].append(received_at)
        c[9].append(sent_at)
        c[10].append(source)
        c[11].append(properties)
        c[12].append(context)
        c[13].append(traits)

    def _add_raw(
        self, obj: dict[str, Any], meta: dict[str, Any], received: datetime, log_id: str, partition: int, offset: int
    ) -> None:
        ts = received
        for field in ("timestamp", "dateTime", "time"):
            value = obj.get(field)
            if value is not None:
                ts = self._time(value, field)
                break
        extra = obj.keys() - RAW_MAPPED
        props = _dumps({k: obj[k] for k in obj if k in extra}) if extra else None
        message_id = obj.get("messageId")
        user_id = obj.get("userId", obj.get("user_id"))
        anonymous_id = obj.get("anonymousId", obj.get("anonymous_id"))
        self._append(
            message_id
            if isinstance(message_id, str) and message_id
            else (message_id_of(obj) or event_id_for(log_id, partition, offset)),
            "track",
            obj["event"],
            user_id if isinstance(user_id, str) and user_id else _ident(obj, "userId", "user_id"),
            anonymous_id
            if isinstance(anonymous_id, str) and anonymous_id
            else _ident(obj, "anonymousId", "anonymous_id"),
            None,
            None,
            ts,
            received,
            None,
            meta["src"],
            props,
            None,
            None,
        )

    def _add_segment(
        self, obj: dict[str, Any], meta: dict[str, Any], received: datetime, log_id: str, partition: int, offset: int
    ) -> None:
        etype = obj.get("type") or meta["ep"]
        original = obj.get("timestamp", obj.get("originalTimestamp"))
        sent_raw = obj.get("sentAt", meta.get("sa"))
        sent = self._time(sent_raw, "sentAt") if sent_raw is not None else None
        if original is None:
            ts = received
        else:
            ts = self._time(original, "timestamp")
            if sent is not None:  # Segment's clock-skew correction
                ts = received - (sent - ts)
        context = obj.get("context")
        batch_context = meta.get("ctx")
        if batch_context:
            context = {**batch_context, **(context or {})}
        extra = {k: v for k, v in obj.items() if k not in SEGMENT_MAPPED}
        if extra:
            context = {**(context or {}), **extra}
        event = obj.get("event") if etype == "track" else obj.get("name")
        self._append(
            message_id_of(obj) or event_id_for(log_id, partition, offset),
            etype,
            event if isinstance(event, str) else None,
            _ident(obj, "userId"),
            _ident(obj, "anonymousId"),
            _ident(obj, "groupId"),
            _ident(obj, "previousId"),
            ts,
            received,
            sent,
            meta["src"],
            _dumps(obj.get("properties")),
            _dumps(context),
            _dumps(obj.get("traits")),
        )

    def tables(self) -> tuple[pa.Table, pa.Table]:
        return (
            pa.Table.from_pydict(self.events, schema=EVENTS_SCHEMA),
            pa.Table.from_pydict(self.quarantine, schema=QUARANTINE_SCHEMA),
        )
