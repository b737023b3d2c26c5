from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from headwater.core.events import (
    EVENTS_SCHEMA,
    InvalidEvent,
    RowBuilder,
    check_raw_track,
    check_segment,
    check_time,
    parse_time,
    time_micros,
)


def test_parse_time_forms() -> None:
    assert parse_time("2026-01-15 10:00:00", "t") == datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert parse_time("2026-01-15T12:00:00+02:00", "t") == datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert parse_time("2026-01-15T10:00:00Z", "t") == datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert parse_time(1768471200, "t") == datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert parse_time(1768471200000, "t") == datetime(2026, 1, 15, 10, tzinfo=UTC)
    with pytest.raises(InvalidEvent, match="dateTime"):
        parse_time("yesterday", "dateTime")
    with pytest.raises(InvalidEvent, match="t: expected"):
        parse_time(True, "t")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "expected a JSON object"),
        ({"userId": "a"}, "event: required"),
        ({"event": "", "userId": "a"}, "event: required"),
        ({"event": "X"}, "userId: required"),
        ({"event": "X", "userId": {"a": 1}}, "userId: expected a string"),
        ({"event": "X", "userId": "a", "dateTime": "nope"}, "dateTime"),
        ({"event": "X", "userId": "a", "messageId": ""}, "messageId"),
    ],
)
def test_raw_track_rejects(obj: object, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        check_raw_track(obj)


def test_raw_track_key_prefers_user_id() -> None:
    assert check_raw_track({"event": "X", "userId": "u", "anonymousId": "a"}) == ("u", None)
    assert check_raw_track({"event": "X", "anonymousId": "a", "messageId": "m"}) == ("a", "m")
    assert check_raw_track({"event": "X", "user_id": 42}) == ("42", None)


@pytest.mark.parametrize(
    ("obj", "endpoint", "message"),
    [
        ({"event": "X"}, "track", "userId or anonymousId"),
        ({"userId": "u"}, "track", "event: required"),
        ({"userId": "u"}, "group", "groupId"),
        ({"userId": "u"}, "alias", "previousId"),
        ({"anonymousId": "a", "previousId": "p"}, "alias", "userId: required"),
        ({"userId": "u", "traits": [1]}, "identify", "traits: expected an object"),
        ({"userId": "u", "type": "page"}, "track", "does not match"),
        ({"userId": "u", "type": "nope"}, None, "type: must be one of"),
        ({"userId": "u", "sentAt": "x"}, "identify", "sentAt"),
    ],
)
def test_segment_rejects(obj: object, endpoint: str | None, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        check_segment(obj, endpoint)


def _env(event: dict[str, object], ep: str = "track-raw", **meta: object) -> dict[str, object]:
    return {"m": {"src": "s", "ep": ep, "ra": 1_768_471_200_000, **meta}, "e": event}


def utc(*args: int) -> datetime:
    """Lake timestamps are naive UTC."""
    return datetime(*args)


def test_raw_track_normalisation_maps_columns_and_properties() -> None:
    builder = RowBuilder()
    event = {"event": "LOGIN", "userId": "joe1", "dateTime": "2026-01-15 09:00:00", "plan": "pro", "n": 3}
    builder.add(_env(event), "log", 0, 7)
    events, quarantine = builder.tables()
    row = events.to_pylist()[0]
    assert quarantine.num_rows == 0
    assert row["event"] == "LOGIN" and row["user_id"] == "joe1" and row["type"] == "track"
    assert row["timestamp"] == utc(2026, 1, 15, 9)
    assert row["received_at"] == utc(2026, 1, 15, 10)
    assert orjson.loads(row["properties"]) == {"plan": "pro", "n": 3}
    assert row["source"] == "s"
    again = RowBuilder()
    again.add(_env(event), "log", 0, 7)
    assert again.tables()[0].to_pylist()[0]["event_id"] == row["event_id"]  # stable per log position


def test_segment_clock_skew_correction() -> None:
    builder = RowBuilder()
    # device clock is 1 hour ahead: sent 10:00:05 (device), happened 10:00:00 (device), received 10:00 real
    event = {
        "type": "track", "event": "Signed Up", "userId": "u", "messageId": "m1",
        "timestamp": "2026-01-15T11:00:00Z", "sentAt": "2026-01-15T11:00:05Z",
        "properties": {"plan": "pro"}, "context": {"ip": "1.2.3.4"}, "integrations": {"All": True},
    }  # fmt: skip
    builder.add(_env(event, "batch"), "log", 0, 1)
    row = builder.tables()[0].to_pylist()[0]
    assert row["timestamp"] == utc(2026, 1, 15, 9, 59, 55)
    assert row["sent_at"] == utc(2026, 1, 15, 11, 0, 5)
    assert row["event_id"] == "m1"
    assert orjson.loads(row["properties"]) == {"plan": "pro"}
    assert orjson.loads(row["context"]) == {"ip": "1.2.3.4", "integrations": {"All": True}}


def test_segment_batch_context_and_identify_traits() -> None:
    builder = RowBuilder()
    event = {"type": "identify", "userId": "u", "traits": {"email": "a@b.c"}, "context": {"app": "x"}}
    builder.add(_env(event, "batch", ctx={"library": "y", "app": "batch"}), "log", 0, 1)
    row = builder.tables()[0].to_pylist()[0]
    assert row["type"] == "identify"
    assert orjson.loads(row["traits"]) == {"email": "a@b.c"}
    assert orjson.loads(row["context"]) == {"library": "y", "app": "x"}


def test_quarantine_envelope() -> None:
    builder = RowBuilder()
    builder.add({"m": {"src": "s", "ep": "track-raw", "ra": 0}, "q": "bad", "raw": "xx"}, "log", 2, 9)
    events, quarantine = builder.tables()
    assert events.num_rows == 0
    row = quarantine.to_pylist()[0]
    assert (row["reason"], row["raw"], row["log_partition"], row["log_offset"]) == ("bad", "xx", 2, 9)


@pytest.mark.parametrize(
    "value",
    ["2026-01-15 10:00:00", "2026-01-15T12:00:00.123456+02:00", "2026-01-15T10:00:00Z", "2026-01-15",
     1768471200, 1768471200000, 1768471200.5, "9999-12-31T23:59:59", "1969-12-31T23:59:59.999999"],
)  # fmt: skip
def test_time_micros_and_check_time_agree_with_parse_time(value: object) -> None:
    expected = parse_time(value, "t")
    assert time_micros(value, "t") == (expected - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    check_time(value, "t")


def test_times_out_of_range_are_invalid_not_a_crash() -> None:
    for value in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        with pytest.raises(InvalidEvent, match="out of range"):
            parse_time(value, "timestamp")
        with pytest.raises(InvalidEvent, match="out of range"):
            check_raw_track({"event": "X", "userId": "u", "timestamp": value})


def test_raw_identifiers_of_every_shape() -> None:
    builder = RowBuilder()
    events = [
        {"event": "A", "user_id": 42, "anonymous_id": "a", "messageId": 7},
        {"event": "B", "userId": "", "user_id": "u2", "anonymousId": 3.5},
        {"event": "C", "anonymousId": "a3", "time": 1768471200000, "plan": None},
    ]
    for offset, event in enumerate(events):
        builder.add(_env(event), "log", 1, offset)
    rows = builder.tables()[0].to_pylist()
    assert [(r["user_id"], r["anonymous_id"], r["event_id"]) for r in rows] == [
        ("42", "a", "7"), ("u2", "3.5", "hw-log-1-1"), (None, "a3", "hw-log-1-2"),
    ]  # fmt: skip
    assert rows[2]["timestamp"] == utc(2026, 1, 15, 10) and orjson.loads(rows[2]["properties"]) == {"plan": None}
    assert rows[0]["properties"] is None


def test_mixed_rows_keep_their_columns_aligned() -> None:
    """Lolscale rows leave six columns to defaults filled in at tables(): Segment rows between them
    keep their own values at their own row (callers refer to rows by index)."""
    builder = RowBuilder()
    builder.add(_env({"event": "A", "userId": "u"}), "log", 0, 0)
    builder.add(_env({"type": "group", "userId": "u", "groupId": "g", "traits": {"n": 1}}, "group"), "log", 0, 1)
    builder.add({"m": {"src": "s", "ep": "track-raw", "ra": 0}, "q": "bad", "raw": "x"}, "log", 0, 2)
    builder.add(_env({"event": "B", "userId": "v"}), "other-log", 3, 3)
    builder.add(
        _env({"type": "alias", "userId": "u", "previousId": "p"}, "alias", sa="2026-01-15T10:00:00Z"), "log", 0, 4
    )
    events, quarantine = builder.tables()
    assert builder.event_count == 4 and quarantine.num_rows == 1
    got = [
        (r["type"], r["event"], r["group_id"], r["previous_id"], r["traits"], r["event_id"]) for r in events.to_pylist()
    ]
    assert got == [
        ("track", "A", None, None, None, "hw-log-0-0"),
        ("group", None, "g", None, '{"n":1}', "hw-log-0-1"),
        ("track", "B", None, None, None, "hw-other-log-3-3"),
        ("alias", None, None, "p", None, "hw-log-0-4"),
    ]
    assert [r["sent_at"] for r in events.to_pylist()] == [None, None, None, utc(2026, 1, 15, 10)]
    assert events.schema == EVENTS_SCHEMA
