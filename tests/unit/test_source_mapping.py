"""Records to events (`sources.mapping`) and payloads to records (`sources.formats`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from headwater.core.errors import RecordError
from headwater.core.events import InvalidEvent
from headwater.core.source_settings import SourceSettings
from headwater.sources.formats import flatten, raw_text, to_json
from headwater.sources.mapping import EventMapper


def mapper(**fields: Any) -> EventMapper:
    return EventMapper(SourceSettings(name="feed", kind="files", path="/tmp", **fields))


def test_constants_templates_paths_and_formats() -> None:
    m = mapper(
        mapping={"event": "{kind}_{direction}", "user_id": "who.id", "timestamp": "{day}{ms:03d}"},
        timestamp_format="%Y%m%d%H%M%S%f",
    )
    key, message_id, event = m.event({"kind": "bet", "direction": "Q", "who": {"id": 42}, "day": 20260301130000,
                                      "ms": 7, "stake": Decimal("12.50")}, "f:1")  # fmt: skip
    assert key == "42" and message_id == "f:1"
    assert event["event"] == "bet_Q" and event["userId"] == "42"
    assert event["timestamp"] == "2026-03-01T13:00:00.007000+00:00"
    assert event["stake"] == Decimal("12.50") and event["who"] == {"id": 42}  # fields stay as properties
    assert orjson.loads(to_json(event))["stake"] == 12.5
    assert b'"stake":12.50' in to_json(event)  # exact: the decimal's own digits
    assert mapper(mapping={"event": "=visit"}).event({"userId": "u"}, "s")[2]["event"] == "visit"


def test_defaults_when_nothing_is_mapped() -> None:
    _, _, event = mapper().event({"x": 1}, "topic:0:7")
    assert event == {"x": 1, "event": "feed", "anonymousId": "feed", "messageId": "topic:0:7"}
    _, _, cobol = mapper().event({"_record_type": "T031", "user_id": "u1", "messageId": 5}, "s")
    assert cobol["event"] == "T031" and cobol["userId"] == "u1" and cobol["messageId"] == "5"


def test_fields_the_lake_would_read_as_columns_are_kept_as_properties() -> None:
    _, _, event = mapper(mapping={"timestamp": "at"}).event(
        {"event": "e", "userId": "u", "at": "2026-01-01T00:00:00Z", "time": 3, "user_id": "other"}, "s"
    )
    assert event["time_"] == 3 and event["user_id_"] == "other" and "time" not in event and "user_id" not in event


@pytest.mark.parametrize(
    ("mapping", "record", "message"),
    [
        ({"event": "kind"}, {"userId": "u"}, "mapping.event: the record has no value at 'kind'"),
        ({"user_id": "who"}, {"event": "e"}, "mapping.user_id ('who'): the record has no value there"),
        ({"timestamp": "at"}, {"event": "e", "userId": "u", "at": "yesterday"}, "timestamp: 'yesterday' is not"),
        ({"event": "kind"}, {"kind": ["a"], "userId": "u"}, "mapping.event: the record's value is list"),
    ],
)
def test_invalid_records_name_the_field(mapping: dict[str, str], record: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message.replace("(", r"\(").replace(")", r"\)")):
        mapper(mapping=mapping).event(record, "s")


def test_timestamp_format_mismatch_is_named() -> None:
    with pytest.raises(InvalidEvent, match="does not match timestamp_format"):
        mapper(mapping={"timestamp": "at"}, timestamp_format="%Y%m%d").event({"at": "2026-13-01"}, "s")


def test_flatten_merges_items_over_the_parent() -> None:
    record = {"meeting": "m1", "logs": [{"event": "join", "userId": "a"}, {"event": "leave", "userId": "b"}]}
    assert flatten(record, "logs") == [
        {"meeting": "m1", "event": "join", "userId": "a"},
        {"meeting": "m1", "event": "leave", "userId": "b"},
    ]
    with pytest.raises(RecordError, match="logs: expected an array to flatten, got str"):
        flatten({"logs": "x"}, "logs")
    with pytest.raises(RecordError, match=r"logs\[1\]: expected an object"):
        flatten({"logs": [{}, 3]}, "logs")


def test_raw_text_is_base64_for_binary() -> None:
    assert raw_text(b'{"a":1}', binary=False) == '{"a":1}'
    assert raw_text(b"\xc1\xc2", binary=True) == "base64:wcI="
    assert raw_text(b"\xff\xfe", binary=False) == "base64://4="
