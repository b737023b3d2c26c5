"""What processors read: log records decoded to (key, value, event time, offset).

- The `events` stream (and streams that sources feed) hold the collector's envelopes: they are
  normalised exactly as the lake writer does (same event ids, same clock-skew correction), into a
  dict with the `events` table's columns; `properties`, `context` and `traits` as dicts and
  `timestamp` as ISO-8601. Invalid envelopes (quarantined ones) are not given to processors.
- Processor output streams hold `{"k": key, "v": value, "t": event time ms, "id": output id}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from headwater.core.events import RowBuilder
from headwater.log.base import Record

Decoded = tuple[str | None, Any, int, int]


def _loads(text: str | None) -> Any:
    return orjson.loads(text) if text else None


def decode_events(records: list[Record], log_id: str) -> Iterator[Decoded]:
    builder = RowBuilder()
    offsets: list[tuple[int, bytes | None]] = []
    for record in records:
        before = builder.event_count
        builder.add(orjson.loads(record.value), log_id, record.partition, record.offset)
        if builder.event_count > before:
            offsets.append((record.offset, record.key))
    cols = builder.events
    for i, (offset, _key) in enumerate(offsets):
        ts = cols["timestamp"][i]
        user_id, anonymous_id = cols["user_id"][i], cols["anonymous_id"][i]
        value = {
            "event_id": cols["event_id"][i],
            "type": cols["type"][i],
            "event": cols["event"][i],
            "user_id": user_id,
            "anonymous_id": anonymous_id,
            "timestamp": ts.isoformat(),
            "received_at": cols["received_at"][i].isoformat(),
            "source": cols["source"][i],
            "properties": _loads(cols["properties"][i]) or {},
            "context": _loads(cols["context"][i]),
            "traits": _loads(cols["traits"][i]),
        }
        yield user_id or anonymous_id, value, int(ts.timestamp() * 1000), offset


def decode_outputs(records: list[Record]) -> Iterator[Decoded]:
    for record in records:
        envelope = orjson.loads(record.value)
        yield envelope["k"], envelope["v"], int(envelope["t"]), record.offset


def encode_output(key: str | None, value: Any, ts: int, output_id: str) -> tuple[bytes | None, bytes]:
    """A record in the output-stream format (used by tests, examples and the test driver)."""
    body = {"k": key, "v": value, "t": ts, "id": output_id}
    return (None if key is None else key.encode(), orjson.dumps(body, default=str))
