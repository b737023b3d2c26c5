"""Processors see events exactly as the lake stores them (ids, identities, times, properties)."""

from __future__ import annotations

from datetime import UTC

import orjson
import pytest

from headwater.core.events import RAW_TRACK, RowBuilder
from headwater.log.base import Record
from headwater.processing.records import EventDecoder

RECEIVED = 1_767_225_600_000
ENVELOPES = [
    {"m": {"ra": RECEIVED, "src": "web", "ep": RAW_TRACK}, "e": {"event": "view", "userId": "u1", "plan": "pro"}},
    {"m": {"ra": RECEIVED, "src": "web", "ep": RAW_TRACK},
     "e": {"event": "buy", "user_id": 7, "timestamp": "2026-01-01T00:00:05Z", "messageId": "m-1", "n": [1, 2]}},
    {"m": {"ra": RECEIVED, "src": "web", "ep": RAW_TRACK},
     "e": {"event": "x", "anonymousId": "a9", "time": 1767225601.5}},
    {"m": {"ra": RECEIVED, "src": "app", "ep": "track", "sa": "2026-01-01T00:00:10Z", "ctx": {"library": "js"}},
     "e": {"type": "track", "event": "open", "userId": "u2", "timestamp": "2026-01-01T00:00:08Z",
           "properties": {"a": 1}, "context": {"ip": "x"}, "extra": True}},
    {"m": {"ra": RECEIVED, "src": "app", "ep": "identify"},
     "e": {"userId": "u3", "traits": {"email": "e@x"}, "messageId": 42}},
    {"m": {"ra": RECEIVED, "src": "app", "ep": "page"},
     "e": {"type": "page", "name": "Home", "anonymousId": "a1", "originalTimestamp": "2026-01-01T00:00:01Z"}},
    {"m": {"ra": RECEIVED, "src": "web", "ep": RAW_TRACK}, "q": "bad", "raw": "{"},
]  # fmt: skip


@pytest.mark.parametrize("index", range(len(ENVELOPES) - 1))
def test_decoded_events_equal_the_lake_rows(index: int) -> None:
    envelope = ENVELOPES[index]
    builder = RowBuilder()
    builder.add(envelope, "log1", 2, 40 + index)
    row = builder.tables()[0].to_pylist()[0]
    record = Record(2, 40 + index, b"k", orjson.dumps(envelope), 0)
    ((key, value, ts, offset),) = list(EventDecoder("log1").decode([record]))
    assert offset == 40 + index
    assert key == (row["user_id"] or row["anonymous_id"])
    for column in ("event_id", "type", "event", "user_id", "anonymous_id", "source"):
        assert value[column] == row[column], column
    for column in ("properties", "context", "traits"):
        assert value[column] == (orjson.loads(row[column]) if row[column] else ({} if column == "properties" else None))
    stored = row["timestamp"].replace(tzinfo=UTC)
    assert ts == int(stored.timestamp() * 1000)
    assert value["timestamp"] == stored.isoformat()
    assert value["received_at"] == row["received_at"].replace(tzinfo=UTC).isoformat()


def test_quarantined_envelopes_are_not_given_to_processors() -> None:
    records = [Record(0, 0, None, orjson.dumps(ENVELOPES[-1]), 0)]
    assert list(EventDecoder("log1").decode(records)) == []
