"""Personal data and consent rules at the collector (IngestTransform on parsed requests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.collector.parsing import BatchParser, Limits
from headwater.plan.active import ActivePlans
from headwater.plan.ingest import IngestTransform, hash_value, mask_value
from headwater.plan.load import plan_from_files
from headwater.plan.model import Plan
from tests.helpers import make_settings

SALT = "s" * 64


def shop() -> Plan:
    schema = {
        "title": "Signed Up",
        "type": "object",
        "properties": {
            "email": {"type": "string", "x-personal": "hash"},
            "phone": {"type": "string", "x-personal": "mask"},
            "card": {"type": "string", "x-personal": "mask"},
            "name": {"type": "string", "x-personal": "drop"},
            "address": {"type": "object", "properties": {"street": {"type": "string", "x-personal": "drop"}}},
            "friends": {"type": "array", "items": {"type": "object",
                                                   "properties": {"email": {"type": "string", "x-personal": "mask"}}}},
            "utm": {"type": "string", "x-consent": "marketing"},
            "plan": {"type": "string"},
        },
    }  # fmt: skip
    files = {"plan.json": orjson.dumps({"name": "shop", "version": "1-0-0"}).decode(),
             "events/signed_up.json": orjson.dumps(schema).decode()}  # fmt: skip
    return plan_from_files(files)


def transform(tmp_path: Path, **settings: Any) -> IngestTransform:
    plans = ActivePlans(lambda: {"web": shop()}, 60)
    return IngestTransform(plans, make_settings(tmp_path, **settings), SALT)


def parse(body: list[dict[str, Any]], source: str = "web", segment: bool = False) -> Any:
    parser = BatchParser(Limits(), source, 1_768_471_200_000)
    if segment:
        return parser.parse_segment(orjson.dumps({"batch": body}), "batch")
    return parser.parse_track(b"\n".join(orjson.dumps(e) for e in body))


def events_of(parsed: Any) -> list[dict[str, Any]]:
    return [orjson.loads(value)["e"] for _, value in parsed.records]


def test_masks_keep_the_shape() -> None:
    assert mask_value("john.doe@example.com") == "j***@e***.com"
    assert mask_value("+33 6 12 34 56 78") == "***5678"
    assert mask_value("4111-1111-1111-1234") == "***1234"
    assert mask_value(33612345678) == "***5678"
    assert mask_value("Jean Dupont") == "***"
    assert hash_value("a@b.c", SALT) == hash_value("a@b.c", SALT) != hash_value("a@b.c", "other")
    assert len(hash_value(42, SALT)) == 64


def test_personal_properties_raw_track(tmp_path: Path) -> None:
    sent = {"event": "Signed Up", "userId": "u1", "email": "ann@example.com", "phone": "0612345678",
            "name": "Ann", "address": {"street": "1 rue X", "city": "Paris"}, "plan": "pro",
            "friends": [{"email": "bob@example.org"}, {"name": "x"}]}  # fmt: skip
    parsed = parse([sent, {"event": "Other", "userId": "u2", "email": "keep@example.com"}])
    before = list(parsed.records)
    assert transform(tmp_path)(parsed, "web") == 0
    first, second = events_of(parsed)
    assert first == {
        "event": "Signed Up", "userId": "u1", "email": hash_value("ann@example.com", SALT), "phone": "***5678",
        "address": {"city": "Paris"}, "plan": "pro", "friends": [{"email": "b***@e***.org"}, {"name": "x"}],
    }  # fmt: skip
    assert parsed.records[1] is before[1]  # unchanged events are not re-serialised
    assert second["email"] == "keep@example.com"
    other = parse([sent])
    assert transform(tmp_path)(other, "app") == 0 and events_of(other) == [sent]  # no plan for that source


def test_segment_track_and_other_calls(tmp_path: Path) -> None:
    calls = [
        {"type": "track", "event": "Signed Up", "userId": "u", "properties": {"email": "a@b.co", "card": "4111 1111"}},
        {"type": "identify", "userId": "u", "traits": {"email": "a@b.co"}},
    ]
    parsed = parse(calls, segment=True)
    transform(tmp_path)(parsed, "web")
    track, identify = events_of(parsed)
    assert track["properties"] == {"email": hash_value("a@b.co", SALT), "card": "***1111"}
    assert identify["traits"] == {"email": "a@b.co"}


def test_consent(tmp_path: Path) -> None:
    t = transform(tmp_path, consent_field="context.consent", consent_required="analytics")
    calls = [
        {"type": "track", "event": "Signed Up", "userId": "a", "properties": {"utm": "x", "plan": "p"},
         "context": {"consent": {"analytics": True, "marketing": False}}},
        {"type": "track", "event": "Signed Up", "userId": "b", "properties": {"utm": "x"},
         "context": {"consent": {"analytics": True, "marketing": True}}},
        {"type": "track", "event": "Anything", "userId": "c", "context": {"consent": {"analytics": False}}},
        {"type": "track", "event": "Signed Up", "userId": "d", "properties": {"utm": "x"}},
    ]  # fmt: skip
    parsed = parse(calls, segment=True)
    parsed.idempotency = [("web", f"m{i}") for i in range(4)]
    assert t(parsed, "web") == 1
    assert [e["userId"] for e in events_of(parsed)] == ["a", "b", "d"]
    assert [e["properties"] for e in events_of(parsed)] == [{"plan": "p"}, {"utm": "x"}, {"utm": "x"}]
    assert parsed.idempotency == [("web", "m0"), ("web", "m1"), ("web", "m3")]
    assert t.dropped["web"] == 1
    nothing = parse([{"event": "X", "userId": "z", "consent": {"analytics": False}}])
    assert transform(tmp_path, consent_field="consent", consent_required="analytics")(nothing, "other") == 1


@pytest.mark.parametrize("value", [None, 3.5, True, ["a"], {"k": "v"}])
def test_odd_values(tmp_path: Path, value: Any) -> None:
    parsed = parse([{"event": "Signed Up", "userId": "u", "email": value, "phone": value}])
    transform(tmp_path)(parsed, "web")
    (event,) = events_of(parsed)
    assert event["email"] == (None if value is None else hash_value(value, SALT))
    assert event["phone"] == (None if value is None else mask_value(value))


def test_personal_properties_listed_for_deletions() -> None:
    from headwater.plan.ingest import personal_properties

    assert personal_properties([shop()]) == ["card", "email", "name", "phone"]  # top-level ones only


def test_escaped_event_names_are_still_transformed(tmp_path: Path) -> None:
    """A sender may escape any character of the event name (PHP's json_encode, Python's json.dumps with non-ASCII):
    the rules must apply to the raw NDJSON line all the same."""
    lines = [
        b'{"event":"Signed\\u0020Up","userId":"u1","email":"ann@example.com","name":"Ann"}',
        b'{"event":"Signed Up","userId":"u2","email":"bob@example.com","note":"a\\/b"}',
    ]
    parsed = BatchParser(Limits(), "web", 1_768_471_200_000).parse_track(b"\n".join(lines))
    assert transform(tmp_path)(parsed, "web") == 0
    first, second = events_of(parsed)
    assert first == {"event": "Signed Up", "userId": "u1", "email": hash_value("ann@example.com", SALT)}
    assert second["email"] == hash_value("bob@example.com", SALT)
