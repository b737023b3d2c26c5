"""The event model: validation at the collector, normalisation to lake rows at the writer."""

from __future__ import annotations

import uuid
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

TS = pa.timestamp("us", tz="UTC")
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
JSON_COLUMNS = ("properties", "context", "traits")
EVENT_ID_NAMESPACE = uuid.UUID("6f1c1f8e-3f7a-4b8e-9a57-0c1f0e0d4a11")


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


def _message_id(obj: dict[str, Any]) -> str | None:
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
    return key, _message_id(obj)


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
    return key, _message_id(obj)


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value).decode()


def event_id_for(log_id: str, partition: int, offset: int) -> str:
    """Stable id for an event that came without messageId, derived from its log position."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{log_id}/{partition}/{offset}"))


class RowBuilder:
    """Accumulates normalised rows column by column (cheaper than dicts per row)."""

    def __init__(self) -> None:
        self.events: dict[str, list[Any]] = {f.name: [] for f in EVENTS_SCHEMA}
        self.quarantine: dict[str, list[Any]] = {f.name: [] for f in QUARANTINE_SCHEMA}

    @property
    def event_count(self) -> int:
        return len(self.events["event_id"])

    @property
    def quarantine_count(self) -> int:
        return len(self.quarantine["raw"])

    def add(self, envelope: dict[str, Any], log_id: str, partition: int, offset: int) -> None:
        meta = envelope["m"]
        received = datetime.fromtimestamp(meta["ra"] / 1000, tz=UTC)
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
        self,
        received: datetime,
        meta: dict[str, Any],
        reason: str,
        raw: str,
        partition: int,
        offset: int,
    ) -> None:
        q = self.quarantine
        q["received_at"].append(received)
        q["source"].append(meta["src"])
        q["endpoint"].append(meta["ep"])
        q["reason"].append(reason)
        q["raw"].append(raw)
        q["log_partition"].append(partition)
        q["log_offset"].append(offset)

    def _append(self, **values: Any) -> None:
        for name, column in self.events.items():
            column.append(values.get(name))

    def _add_raw(
        self,
        obj: dict[str, Any],
        meta: dict[str, Any],
        received: datetime,
        log_id: str,
        partition: int,
        offset: int,
    ) -> None:
        ts = received
        for field in ("timestamp", "dateTime", "time"):
            if obj.get(field) is not None:
                ts = parse_time(obj[field], field)
                break
        props = {k: v for k, v in obj.items() if k not in RAW_MAPPED}
        self._append(
            event_id=_message_id(obj) or event_id_for(log_id, partition, offset),
            type="track",
            event=obj["event"],
            user_id=_ident(obj, "userId", "user_id"),
            anonymous_id=_ident(obj, "anonymousId", "anonymous_id"),
            timestamp=ts,
            received_at=received,
            source=meta["src"],
            properties=_dumps(props) if props else None,
        )

    def _add_segment(
        self,
        obj: dict[str, Any],
        meta: dict[str, Any],
        received: datetime,
        log_id: str,
        partition: int,
        offset: int,
    ) -> None:
        etype = obj.get("type") or meta["ep"]
        original = obj.get("timestamp", obj.get("originalTimestamp"))
        sent_raw = obj.get("sentAt", meta.get("sa"))
        sent = parse_time(sent_raw, "sentAt") if sent_raw is not None else None
        if original is None:
            ts = received
        else:
            ts = parse_time(original, "timestamp")
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
            event_id=_message_id(obj) or event_id_for(log_id, partition, offset),
            type=etype,
            event=event if isinstance(event, str) else None,
            user_id=_ident(obj, "userId"),
            anonymous_id=_ident(obj, "anonymousId"),
            group_id=_ident(obj, "groupId"),
            previous_id=_ident(obj, "previousId"),
            timestamp=ts,
            received_at=received,
            sent_at=sent,
            source=meta["src"],
            properties=_dumps(obj.get("properties")),
            context=_dumps(context),
            traits=_dumps(obj.get("traits")),
        )

    def tables(self) -> tuple[pa.Table, pa.Table]:
        return (
            pa.Table.from_pydict(self.events, schema=EVENTS_SCHEMA),
            pa.Table.from_pydict(self.quarantine, schema=QUARANTINE_SCHEMA),
        )
