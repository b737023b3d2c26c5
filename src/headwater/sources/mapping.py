"""Records to events: the `mapping` of a source, then the collector's own validation.

A record becomes a lolscale `/track` event (the format the lake writer and processors already
read): mapped columns first, every other field a property. Defaults, when a column is not mapped:
- `event`: the record's `event` field, else its COBOL record type, else the source name;
- `user_id` / `anonymous_id`: the record's `userId`/`user_id`/`anonymousId`/`anonymous_id`, else the
  source name as the anonymous id (a feed with no people in it);
- `timestamp`: the record's `timestamp`, else the time it was received;
- `message_id`: the record's `messageId`, else the delivery's stable id (which is what makes
  re-deliveries collapse).
A mapped `event` or `timestamp` that the record lacks, or mapped user ids that are both missing, make
the record invalid (quarantined with the reason). Templates take Python format specs
(`'{ts_millis:03d}'`). A field that the lake would read as a column but that is not used as one
(`time`, `dateTime`, a second user id) is kept as a property with a trailing underscore (`time_`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from headwater.core.events import RAW_MAPPED, InvalidEvent, check_raw_track
from headwater.core.source_settings import SourceSettings
from headwater.sources.formats import lookup

_TEMPLATE = re.compile(r"\{([^{}]+)\}")
_COLUMNS = {
    "event": "event",
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "timestamp": "timestamp",
    "message_id": "messageId",
}


_DEFAULT_COLUMNS = {
    "event": "event", "messageId": "messageId", "timestamp": "timestamp",
    "userId": "userId", "user_id": "userId", "anonymousId": "anonymousId", "anonymous_id": "anonymousId",
}  # fmt: skip
"""Record fields taken as event columns when the mapping does not say otherwise."""


class Extractor:
    """One mapping value: '=constant', a template with {field} parts, or a dotted field path."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.constant = spec[1:] if spec.startswith("=") else None
        self.template = spec if self.constant is None and _TEMPLATE.search(spec) else None
        self.root = None if self.constant is not None or self.template else spec.split(".", maxsplit=1)[0]

    def __call__(self, record: dict[str, Any]) -> Any:
        if self.constant is not None:
            return self.constant
        if self.template is not None:
            return _TEMPLATE.sub(lambda m: _fill(record, m.group(1)), self.template)
        return lookup(record, self.spec)

    def consumes(self) -> str | None:
        """The top-level field this extractor takes (not repeated among the properties)."""
        return self.root if self.root is not None and "." not in self.spec else None


class EventMapper:
    """Builds event objects from records, validated as the collector validates `/track` events."""

    def __init__(self, settings: SourceSettings) -> None:
        self.source = settings.name
        self.extract = {column: Extractor(spec) for column, spec in settings.mapping.items()}
        if settings.id_field and "message_id" not in self.extract:
            self.extract["message_id"] = Extractor(settings.id_field)
        self.consumed = {e.consumes() for e in self.extract.values()} - {None}
        self.timestamp_format = settings.timestamp_format

    def event(self, record: dict[str, Any], stable_id: str, suffix: str = "") -> tuple[str, str, dict[str, Any]]:
        """(partition key, message id, event object); raises InvalidEvent naming the field.

        `suffix` (`#i`) is added to a message id taken from the record when one payload holds several
        records (flattened), which would otherwise share their parent's id and collapse into one."""
        obj: dict[str, Any] = {}
        for column, extract in self.extract.items():
            value = extract(record)
            if value is not None and value != "":
                if column == "timestamp":
                    obj["timestamp"] = self._time(value) if self.timestamp_format else value
                else:
                    obj[_COLUMNS[column]] = _text(value, column)
            elif column in ("event", "timestamp"):
                raise InvalidEvent(f"mapping.{column}: the record has no value at {extract.spec!r}")
        for name, value in record.items():
            if name in self.consumed:
                continue
            default = _DEFAULT_COLUMNS.get(name)
            if default is not None and default not in obj and value is not None:
                obj[default] = value
            elif name in RAW_MAPPED or name in obj:
                obj[f"{name}_"] = value  # a field the lake would read as a column: kept as a property
            else:
                obj[name] = value
        obj.setdefault("event", record.get("_record_type") or self.source)
        if not any(obj.get(k) for k in ("userId", "user_id", "anonymousId", "anonymous_id")):
            mapped = [
                f"mapping.{c} ({self.extract[c].spec!r})" for c in ("user_id", "anonymous_id") if c in self.extract
            ]
            if mapped:
                raise InvalidEvent(f"{' and '.join(mapped)}: the record has no value there")
            obj["anonymousId"] = self.source
        message_id = obj.get("messageId")
        if message_id is None or message_id == "":
            obj["messageId"] = stable_id
        else:
            obj["messageId"] = f"{message_id}{suffix}"
        key, _ = check_raw_track(obj)
        return key, obj["messageId"], obj

    def _time(self, value: Any) -> str:
        """The mapped timestamp parsed with `timestamp_format`, as ISO-8601 (UTC unless it has an offset)."""
        assert self.timestamp_format is not None
        try:
            moment = datetime.strptime(str(value), self.timestamp_format)
        except ValueError:
            raise InvalidEvent(
                f"mapping.timestamp: {str(value)[:40]!r} does not match timestamp_format {self.timestamp_format!r}"
            ) from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _fill(record: dict[str, Any], part: str) -> str:
    """One `{path}` or `{path:format spec}` of a template (`{ts_millis:03d}`); empty when missing."""
    path, _, spec = part.partition(":")
    value = lookup(record, path)
    if value is None:
        return ""
    try:
        return format(value, spec) if spec else str(value)
    except (ValueError, TypeError):
        raise InvalidEvent(f"mapping: {{{part}}} cannot format {value!r:.40}") from None


def _text(value: Any, column: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if hasattr(value, "is_finite"):  # Decimal
        return str(value)
    raise InvalidEvent(f"mapping.{column}: the record's value is {type(value).__name__}, expected text or a number")
