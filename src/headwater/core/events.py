"""The event model: validation at the collector, normalisation to lake rows at the writer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from headwater.core.stages import INPUT_COLUMNS

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


_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_MIN_US = (datetime.min - _EPOCH) // _MICRO
_MAX_US = (datetime.max - _EPOCH) // _MICRO


def parse_time(value: Any, field: str) -> datetime:
    """ISO-8601 / 'YYYY-MM-DD HH:MM:SS' (UTC when no offset) / epoch seconds or milliseconds."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(f"{field}: {value[:40]!r} is not an ISO-8601 date-time") from None
        try:
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except OverflowError:
            raise InvalidEvent(f"{field}: {value[:40]!r} is out of range for a timestamp") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) >= 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEvent(f"{field}: {value} is out of range for a timestamp") from None
    raise InvalidEvent(f"{field}: expected a date-time string or epoch number, got {type(value).__name__}")


def time_micros(value: Any, field: str) -> int:
    """parse_time() as microseconds since the epoch, UTC: what the lake stores, without a datetime.

    Strings skip parse_time's `replace(tzinfo=UTC)`, which costs six times the parse itself.
    """
    if value.__class__ is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(f"{field}: {value[:40]!r} is not an ISO-8601 date-time") from None
        delta = parsed - (_EPOCH if parsed.tzinfo is None else _EPOCH_UTC)
    else:
        delta = parse_time(value, field) - _EPOCH_UTC
    micros: int = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not _MIN_US <= micros <= _MAX_US:
        raise InvalidEvent(f"{field}: {value!r:.40} is out of range for a timestamp")
    return micros


def check_time(value: Any, field: str) -> None:
    """Raise InvalidEvent unless parse_time() accepts `value` (cheaper: builds no UTC datetime)."""
    if value.__class__ is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(f"{field}: {value[:40]!r} is not an ISO-8601 date-time") from None
        if parsed.tzinfo is None:
            return
    time_micros(value, field)


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
    get = obj.get
    event = get("event")
    if not isinstance(event, str) or not event:
        raise InvalidEvent("event: required, a non-empty string")
    key = get("userId")
    if key.__class__ is not str or not key:  # the common case is a string userId: checked first
        key = _ident(obj, "userId", "user_id") or _ident(obj, "anonymousId", "anonymous_id")
        if key is None:
            raise InvalidEvent("userId: required (or anonymousId)")
    for field in ("timestamp", "dateTime", "time"):
        value = get(field)
        if value is not None:
            check_time(value, field)
            break
    message_id = get("messageId")
    if message_id is None or (message_id.__class__ is str and message_id):
        return key, message_id
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
            check_time(obj[field], field)
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

    This is the lake writer's per-event hot loop (about a microsecond per lolscale event), so:
    - the eight columns every row sets are plain lists appended through bound methods;
    - the six that a lolscale `/track` row leaves at a constant (`type`, `group_id`, `previous_id`,
      `sent_at`, `context`, `traits`) are sparse {row: value} and filled in by tables();
    - times are kept as microseconds since the epoch (Arrow converts ints far faster than
      datetimes), event times are parsed once per distinct value.
    Rows keep their insertion order: callers refer to rows by index (`event_count` before add()).
    """

    def __init__(self, inputs: bool = False) -> None:
        self.inputs = inputs  # also collect the stage inputs (headwater.core.stages.INPUT_COLUMNS)
        self._inputs: dict[str, list[Any]] = {name: [] for name in _INPUTS}
        self._rows = 0
        self._dense: tuple[list[Any], ...] = tuple([] for _ in _DENSE)
        self._sparse: dict[str, dict[int, Any]] = {name: {} for name in _SPARSE}
        (
            self._event_id, self._event, self._user_id, self._anonymous_id,
            self._timestamp, self._received_at, self._source, self._properties,
        ) = (column.append for column in self._dense)  # fmt: skip
        self.quarantine: dict[str, list[Any]] = {f.name: [] for f in QUARANTINE_SCHEMA}
        self._times: dict[Any, int] = {}
        self._ids: dict[int, str] = {}
        self._ids_log: str | None = None

    @property
    def event_count(self) -> int:
        return self._rows

    @property
    def quarantine_count(self) -> int:
        return len(self.quarantine["raw"])

    def _time(self, value: Any, field: str) -> int:
        key = value if value.__class__ is str else (type(value), value)
        parsed = self._times.get(key)
        if parsed is None:
            if len(self._times) > 200_000:
                self._times.clear()
            parsed = self._times[key] = time_micros(value, field)
        return parsed

    def _id_prefix(self, log_id: str, partition: int) -> str:
        """event_id_for() without the offset; cached per partition for the last log_id seen."""
        if log_id is not self._ids_log:
            self._ids_log, self._ids = log_id, {}
        prefix = self._ids[partition] = event_id_for(log_id, partition, 0)[:-1]
        return prefix

    def _event_id_for(self, log_id: str, partition: int, offset: int) -> str:
        prefix = self._ids.get(partition) if log_id is self._ids_log else None
        return (prefix or self._id_prefix(log_id, partition)) + str(offset)

    def add(self, envelope: dict[str, Any], log_id: str, partition: int, offset: int) -> None:
        if "x" in envelope:
            return  # erased by a privacy deletion (headwater.core.erasure.ERASED)
        meta = envelope["m"]
        received = meta["ra"] * 1000
        if "q" in envelope:
            self.add_quarantine(received, meta, envelope["q"], envelope["raw"], partition, offset)
            return
        obj = envelope["e"]
        try:
            if meta["ep"] == RAW_TRACK:
                self._add_raw(obj, meta, received, log_id, partition, offset)
            else:
                self._add_segment(obj, meta, received, log_id, partition, offset)
        except (InvalidEvent, TypeError, ValueError, AttributeError) as exc:  # validated already
            self.add_quarantine(received, meta, f"normalisation failed: {exc}", _dumps(obj) or "", partition, offset)

    def add_quarantine(
        self, received_us: int, meta: dict[str, Any], reason: str, raw: str, partition: int, offset: int
    ) -> None:
        q = self.quarantine
        q["received_at"].append(received_us)
        q["source"].append(meta["src"])
        q["endpoint"].append(meta["ep"])
        q["reason"].append(reason)
        q["raw"].append(raw)
        q["log_partition"].append(partition)
        q["log_offset"].append(offset)

    def _add_raw(
        self, obj: dict[str, Any], meta: dict[str, Any], received: int, log_id: str, partition: int, offset: int
    ) -> None:
        # the fast paths test for the common shape first (string values, absent fields) and fall
        # back to the general helpers; every branch gives what _ident / message_id_of would
        get = obj.get
        event = obj["event"]
        if event.__class__ is not str:
            raise InvalidEvent("event: required, a non-empty string")
        ts = received
        for field in ("timestamp", "dateTime", "time"):
            value = get(field)
            if value is not None:
                cached = self._times.get(value) if value.__class__ is str else None
                ts = self._time(value, field) if cached is None else cached
                break
        message_id = get("messageId")
        if message_id is None:
            prefix = self._ids.get(partition) if log_id is self._ids_log else None
            message_id = (prefix or self._id_prefix(log_id, partition)) + str(offset)
        elif message_id.__class__ is not str or not message_id:
            message_id = message_id_of(obj) or self._event_id_for(log_id, partition, offset)
        user_id = get("userId")
        if user_id is None:
            user_id = get("user_id")
        if user_id is not None and (user_id.__class__ is not str or not user_id):
            user_id = _ident(obj, "userId", "user_id")
        anonymous_id = get("anonymousId")
        if anonymous_id is None:
            anonymous_id = get("anonymous_id")
        if anonymous_id is not None and (anonymous_id.__class__ is not str or not anonymous_id):
            anonymous_id = _ident(obj, "anonymousId", "anonymous_id")
        if RAW_MAPPED.issuperset(obj):
            properties = None
        else:
            properties = _dumps({k: v for k, v in obj.items() if k not in RAW_MAPPED})
        if "rp" in meta:  # replayed from quarantine: the id of its original log position
            message_id = self._replayed_id(obj, meta, log_id)
        if self.inputs:
            page = get("url")
            self._add_inputs(
                meta, partition, offset, get("ip"), get("userAgent") or get("user_agent"), page, get("referrer")
            )
        # everything that can fail is done: append (a row is added whole or not at all)
        self._event_id(message_id)
        self._event(event)
        self._user_id(user_id)
        self._anonymous_id(anonymous_id)
        self._timestamp(ts)
        self._received_at(received)
        self._source(meta["src"])
        self._properties(properties)
        self._rows += 1

    def _add_segment(
        self, obj: dict[str, Any], meta: dict[str, Any], received: int, log_id: str, partition: int, offset: int
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
        event_id = message_id_of(obj) or (
            self._replayed_id(obj, meta, log_id) if "rp" in meta else self._event_id_for(log_id, partition, offset)
        )
        user_id, anonymous_id = _ident(obj, "userId"), _ident(obj, "anonymousId")
        group_id, previous_id = _ident(obj, "groupId"), _ident(obj, "previousId")
        properties, context_text, traits = _dumps(obj.get("properties")), _dumps(context), _dumps(obj.get("traits"))
        if self.inputs:
            ctx = context if isinstance(context, dict) else {}
            page = ctx.get("page")
            page = page if isinstance(page, dict) else {}
            props = obj.get("properties") if etype == "page" else None
            props = props if isinstance(props, dict) else {}
            self._add_inputs(
                meta, partition, offset, ctx.get("ip"), ctx.get("userAgent"),
                page.get("url") or props.get("url"), page.get("referrer") or props.get("referrer"),
            )  # fmt: skip
        row = self._rows
        self._event_id(event_id)
        self._event(event if isinstance(event, str) else None)
        self._user_id(user_id)
        self._anonymous_id(anonymous_id)
        self._timestamp(ts)
        self._received_at(received)
        self._source(meta["src"])
        self._properties(properties)
        sparse = self._sparse
        if etype != "track":
            sparse["type"][row] = etype
        for name, value in (
            ("group_id", group_id), ("previous_id", previous_id), ("sent_at", sent),
            ("context", context_text), ("traits", traits),
        ):  # fmt: skip
            if value is not None:
                sparse[name][row] = value
        self._rows += 1

    def _replayed_id(self, obj: dict[str, Any], meta: dict[str, Any], log_id: str) -> str:
        """A replayed event keeps the id it would have had at its original log position (`rp`: "P:O")."""
        message_id = message_id_of(obj)
        if message_id:
            return message_id
        partition, _, offset = str(meta["rp"]).partition(":")
        return event_id_for(log_id, int(partition), int(offset))

    def _add_inputs(
        self, meta: dict[str, Any], partition: int, offset: int, ip: Any, agent: Any, url: Any, referrer: Any
    ) -> None:
        inputs = self._inputs
        inputs["_ip"].append(_text(ip) or meta.get("ip"))
        inputs["_user_agent"].append(_text(agent) or meta.get("ua"))
        inputs["_url"].append(_text(url))
        inputs["_referrer"].append(_text(referrer))
        inputs["_endpoint"].append(meta["ep"])
        inputs["_log_partition"].append(partition)
        inputs["_log_offset"].append(offset)

    def tables(self) -> tuple[pa.Table, pa.Table]:
        columns: dict[str, Any] = dict(zip(_DENSE, self._dense, strict=True))
        for name, values in self._sparse.items():
            column: list[Any] = [_SPARSE[name]] * self._rows
            for row, value in values.items():
                column[row] = value
            columns[name] = column
        arrays = [
            pa.array(columns[f.name], type=pa.int64()).cast(TS) if f.type == TS else pa.array(columns[f.name], f.type)
            for f in EVENTS_SCHEMA
        ]
        q = self.quarantine
        quarantine = [
            pa.array(q[f.name], type=pa.int64()).cast(TS) if f.type == TS else pa.array(q[f.name], f.type)
            for f in QUARANTINE_SCHEMA
        ]
        events = pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)
        if self.inputs:
            for name, kind in _INPUTS.items():
                events = events.append_column(pa.field(name, kind), pa.array(self._inputs[name], kind))
        return (
            events,
            pa.Table.from_arrays(quarantine, schema=QUARANTINE_SCHEMA),
        )


def _text(value: Any) -> str | None:
    return value if value.__class__ is str and value else None


_INPUTS = INPUT_COLUMNS
_DENSE = ("event_id", "event", "user_id", "anonymous_id", "timestamp", "received_at", "source", "properties")
_SPARSE: dict[str, Any] = {
    "type": "track", "group_id": None, "previous_id": None, "sent_at": None, "context": None, "traits": None,
}  # fmt: skip
