"""The plan validator against the `jsonschema` library's errors on the same events (ground truth)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from headwater.plan.model import EventSpec, Plan
from headwater.plan.validate import INFORMATIONAL, SUPPORTED_KEYWORDS, Validator, shown_key, unsupported

CHECKER = Draft202012Validator.FORMAT_CHECKER  # checks date, email, ipv4, uuid here (not date-time, uri)


def plan_of(schemas: dict[str, dict[str, Any]]) -> Plan:
    return Plan("shop", "1-0-0", {name: EventSpec(name, schema) for name, schema in schemas.items()})


def batch(rows: Sequence[tuple[str | None, Any]], types: list[str] | None = None) -> pa.Table:
    columns: dict[str, Any] = {
        "event": pa.array([e for e, _ in rows], pa.string()),
        "properties": pa.array([None if p is None else orjson.dumps(p).decode() for _, p in rows], pa.string()),
    }
    if types is not None:
        columns["type"] = pa.array(types, pa.string())
    return pa.table(columns)


def found(validator: Validator, rows: Sequence[tuple[str | None, Any]]) -> list[tuple[int, str, str]]:
    out = validator.check(batch(rows))
    return [(r["row"], r["path"], r["rule"]) for r in out.to_pylist()]


def _path(parts: Any) -> str:
    text = "$.properties"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else shown_key(part)
    return text


def truth(schema: dict[str, Any], props: dict[str, Any], formats: bool = True) -> set[tuple[str, str]]:
    """(path, rule) of every error `jsonschema` reports, one per property as the validator reports them."""
    checker = Draft202012Validator(schema, format_checker=CHECKER if formats else None)
    out: set[tuple[str, str]] = set()
    for error in checker.iter_errors(props):
        errors = [error]
        while errors:
            e = errors.pop()
            if e.validator == "allOf" or e.context:
                errors += e.context or []
                continue
            where = list(e.absolute_path)
            if e.validator == "required":
                out.add((_path([*where, e.message.split("'")[1]]), "required"))
            elif e.validator == "additionalProperties":
                declared = e.schema.get("properties", {})
                out |= {(_path([*where, key]), "additionalProperties") for key in e.instance if key not in declared}
            else:
                out.add((_path(where), str(e.validator)))
    return out


def mine(validator: Validator, props: dict[str, Any], event: str = "E") -> set[tuple[str, str]]:
    rows = found(validator, [(event, props)])
    return {(path, rule) for _, path, rule in rows if rule not in INFORMATIONAL}


ORDER = {
    "type": "object",
    "properties": {
        "revenue": {"type": "number", "minimum": 0, "exclusiveMaximum": 1e6},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 99, "multipleOf": 1},
        "coupon": {"type": ["string", "null"], "minLength": 3, "maxLength": 8, "pattern": "^[A-Z][A-Z0-9]*$"},
        "email": {"type": "string", "format": "email"},
        "day": {"type": "string", "format": "date"},
        "ip": {"type": "string", "format": "ipv4"},
        "order_id": {"type": "string", "format": "uuid"},
        "gift": {"type": "boolean"},
        "channel": {"const": "web"},
        "step": {"type": "number", "multipleOf": 0.5, "exclusiveMinimum": 0},
        "shipping": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "geo": {"type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}},
                        "required": ["lat"]},
            },
            "required": ["city"],
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 3,
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                "required": ["sku"],
            },
        },
        "tags": {"type": "array", "items": {"type": "string", "enum": ["new", "sale"]}, "uniqueItems": True},
        "scores": {"type": "array", "items": {"type": "integer"}},
        "extra": {"allOf": [{"type": "string"}, {"maxLength": 2}]},
        "nothing": {"type": "null"},
    },
    "required": ["revenue", "currency"],
}  # fmt: skip


@pytest.fixture(scope="module")
def order() -> Validator:
    return Validator(plan_of({"E": ORDER}))


CASES: list[dict[str, Any]] = [
    {"revenue": 10, "currency": "EUR"},
    {"revenue": "10", "currency": "GBP"},
    {"currency": "EUR"},
    {"revenue": -1, "currency": "USD", "quantity": 0},
    {"revenue": 1e7, "currency": "USD", "quantity": 100},
    {"revenue": 1, "currency": "USD", "quantity": 2.0, "step": 1.5},
    {"revenue": 1, "currency": "USD", "quantity": 2.5, "step": 0.3},
    {"revenue": 1, "currency": "USD", "quantity": True, "step": 0},
    {"revenue": 1, "currency": "USD", "coupon": None},
    {"revenue": 1, "currency": "USD", "coupon": "ab"},
    {"revenue": 1, "currency": "USD", "coupon": "abcdefghij"},
    {"revenue": 1, "currency": "USD", "coupon": "AB1"},
    {"revenue": 1, "currency": "USD", "coupon": 42},
    {"revenue": 1, "currency": "USD", "email": "ann@example.com", "day": "2024-02-29", "ip": "10.0.0.1"},
    {"revenue": 1, "currency": "USD", "email": "nobody", "day": "2023-02-29", "ip": "256.1.1.1"},
    {"revenue": 1, "currency": "USD", "day": "2024-1-5", "ip": "01.2.3.4", "order_id": "not-a-uuid"},
    {"revenue": 1, "currency": "USD", "order_id": "3f2b8e0c-5d7a-4c1e-9f3a-2b6d8e0c5d7a"},
    {"revenue": 1, "currency": "USD", "gift": "yes", "channel": "app"},
    {"revenue": 1, "currency": "USD", "channel": "web", "gift": False},
    {"revenue": 1, "currency": "USD", "shipping": {"city": "Paris", "zip": "75001"}},
    {"revenue": 1, "currency": "USD", "shipping": {"zip": "7500", "floor": 3}},
    {"revenue": 1, "currency": "USD", "shipping": {}},
    {"revenue": 1, "currency": "USD", "shipping": {"city": "", "zip": "1", "geo": {"lat": 91}, "x": 1}},
    {"revenue": 1, "currency": "USD", "shipping": {"city": "A", "geo": {"lon": 2}}},
    {"revenue": 1, "currency": "USD", "shipping": {"city": "A", "geo": "here"}},
    {"revenue": 1, "currency": "USD", "shipping": "Paris"},
    {"revenue": 1, "currency": "USD", "items": []},
    {"revenue": 1, "currency": "USD", "items": [{"sku": "a", "qty": 1}, {"qty": 0}, "x", {"sku": 5}]},
    {"revenue": 1, "currency": "USD", "items": [{"sku": "a"}] * 5},
    {"revenue": 1, "currency": "USD", "items": {"sku": "a"}},
    {"revenue": 1, "currency": "USD", "tags": ["new", "sale"], "scores": [1, 2, 3]},
    {"revenue": 1, "currency": "USD", "tags": ["new", "new", "old"], "scores": [1, 2.5, "3", None]},
    {"revenue": 1, "currency": "USD", "extra": "abc", "nothing": 0},
    {"revenue": 1, "currency": "USD", "extra": 7, "nothing": None},
    {"revenue": None, "currency": None},
]


def test_each_keyword_like_jsonschema(order: Validator) -> None:
    rows = found(order, [("E", props) for props in CASES])
    for index, props in enumerate(CASES):
        got = {(path, rule) for row, path, rule in rows if row == index and rule not in INFORMATIONAL}
        assert got == truth(ORDER, props), (index, props)
    assert any(rule == "additionalProperties" for _, _, rule in rows)


def test_messages_name_path_rule_expected_and_got(order: Validator) -> None:
    out = order.check(batch([("E", {"revenue": "10", "currency": "GBP", "items": [{"qty": 0}]})])).to_pylist()
    by_path = {(r["path"], r["rule"]): (r["expected"], r["got"]) for r in out}
    assert by_path[("$.properties.revenue", "type")] == ("number", "string")
    assert by_path[("$.properties.currency", "enum")] == ('one of ["EUR","USD"]', '"GBP"')
    assert by_path[("$.properties.items[0].sku", "required")] == ("present", "missing")
    assert by_path[("$.properties.items[0].qty", "minimum")] == (">= 1", "0")
    assert all(r["event"] == "E" and r["row"] == 0 for r in out)


def test_unplanned_undeclared_and_non_track_rows(order: Validator) -> None:
    rows = [
        ("E", {"revenue": 1, "currency": "EUR", "utm": "x", "ünï cödé": 1}),
        ("Nope", {}),
        (None, None),
        ("E", None),
    ]
    out = order.check(batch(rows, types=["track", "track", "identify", "track"])).to_pylist()
    summary = [(r["row"], r["path"], r["rule"], r["got"]) for r in out]
    assert summary == [
        (0, "$.properties.utm", "undeclared", None),
        (0, '$.properties["ünï cödé"]', "undeclared", None),
        (1, "$.event", "unplanned", "Nope"),
        (3, "$.properties.revenue", "required", "missing"),
        (3, "$.properties.currency", "required", "missing"),
    ]
    quiet = Validator(plan_of({"E": ORDER}), undeclared=False)
    assert [r["rule"] for r in quiet.check(batch(rows[:1])).to_pylist()] == []


def test_many_events_and_order_of_rows() -> None:
    schemas = {
        f"Event {i}": {"properties": {"n": {"type": "integer", "maximum": i}}, "required": ["n"]} for i in range(30)
    }
    validator = Validator(plan_of(schemas))
    rows = [(f"Event {i % 30}", {"n": i}) for i in range(300)] + [("Other", {"n": 1})]
    out = validator.check(batch(rows)).to_pylist()
    expected = [(i, "$.properties.n", "maximum") for i in range(300) if i > i % 30] + [(300, "$.event", "unplanned")]
    assert [(r["row"], r["path"], r["rule"]) for r in out] == expected
    assert all(r["event"] == rows[r["row"]][0] for r in out)


def test_statements_stay_right_across_batches() -> None:
    """Statements are prepared once: a batch with other events, values and sizes is checked like a fresh one."""
    schemas: dict[str, dict[str, Any]] = {
        "A": {"properties": {"x": {"type": "string"}}},
        "B": {"properties": {"y": {"minimum": 5}}},
    }
    validator = Validator(plan_of(schemas))
    first = [("A", {"x": 1})] * 3
    second = [("B", {"y": 1}), ("A", {"x": "ok"}), ("A", {"x": 2}), ("B", {"y": 9})] * 50
    third: list[tuple[str | None, Any]] = [("C", {})]
    for rows in (first, second, third, second, first):
        assert validator.check(batch(rows)).equals(Validator(plan_of(schemas)).check(batch(rows)))
    assert validator.check(batch([])).num_rows == 0


def test_odd_property_names_and_values() -> None:
    odd = {'we"ird\\key': {"type": "string"}, "it's": {"enum": [1, "1", True, None, {"a": [1]}]}}
    schema: dict[str, Any] = {"properties": odd, "additionalProperties": False}
    validator = Validator(plan_of({"E": schema}))
    cases: list[dict[str, Any]] = [
        {'we"ird\\key': 1, "it's": 1.0},
        {'we"ird\\key': "s", "it's": {"a": [1]}, "o'ther": 1},
        {"it's": False},
        {"it's": None},
        {"it's": "2"},
    ]
    for props in cases:
        assert mine(validator, props) == truth(schema, props), props


def test_got_is_cut_short() -> None:
    validator = Validator(plan_of({"E": {"properties": {"s": {"maxLength": 2, "pattern": "^a"}}}}))
    out = validator.check(batch([("E", {"s": "b" * 500})])).to_pylist()
    assert [r["rule"] for r in out] == ["maxLength", "pattern"]
    assert out[0]["got"] == "500" and len(out[1]["got"]) == 80 and out[1]["got"].endswith("…")


def test_date_time_and_uri_formats() -> None:
    validator = Validator(plan_of({"E": {"properties": {"t": {"format": "date-time"}, "u": {"format": "uri"}}}}))
    good = ["2024-02-29T10:00:00Z", "2024-01-01T23:59:60.123+02:00", "2024-01-01t00:00:00z"]
    bad = ["2023-02-29T10:00:00Z", "2024-01-01 10:00:00Z", "2024-01-01T10:00:00", "2024-13-01T00:00:00Z", "now"]
    rows = [("E", {"t": t}) for t in good + bad] + [
        ("E", {"u": u}) for u in ("https://x.org/a?b", "mailto:a@b", "/rel", "a b:c")
    ]
    out = found(validator, rows)
    assert [row for row, _, _ in out] == [3, 4, 5, 6, 7, 10, 11]


def test_unsupported_keywords_are_listed() -> None:
    schema = {
        "properties": {
            "a": {"anyOf": [{"type": "string"}], "x-personal": "hash", "description": "ok"},
            "b": {"format": "hostname", "pattern": "(?=x)"},
            "c": {"type": "array", "items": [{"type": "string"}], "contains": {}},
            "d": {"type": "date"},
        },
        "patternProperties": {"^x": {}},
        "additionalProperties": {"type": "string"},
    }
    problems = unsupported(schema)
    assert any("#/properties/a/anyOf" in p for p in problems)
    assert any("#/properties/b/format" in p for p in problems)
    assert any("#/properties/b/pattern" in p and "RE2" in p for p in problems)
    assert any("#/properties/c/items" in p for p in problems)
    assert any("#/properties/c/contains" in p for p in problems)
    assert any("#/properties/d/type" in p for p in problems)
    assert any("#/patternProperties" in p for p in problems)
    assert any("#/additionalProperties" in p for p in problems)
    assert len(problems) == 8
    assert unsupported(ORDER) == []
    assert {"type", "required", "enum", "pattern", "format", "additionalProperties"} <= SUPPORTED_KEYWORDS


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
    st.sampled_from(["EUR", "USD", "web", "new", "sale", "AB1", "ab", "x" * 9, "2024-02-29", "10.0.0.1"]),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
)
keys = st.sampled_from(["city", "zip", "geo", "lat", "sku", "qty", "x"])
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=4), max_leaves=12
)
KEYS = [k for k in ORDER["properties"] if k != "email"]  # email: stricter here (something@domain) than jsonschema


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*KEYS, "other"]), values, max_size=8))
def test_random_events_like_jsonschema(order: Validator, props: dict[str, Any]) -> None:
    tags = props.get("tags")
    if isinstance(tags, list) and len({orjson.dumps(t) for t in tags}) != len({repr(t) for t in tags}):
        return  # uniqueItems compares JSON texts: 1 and 1.0 (or True and 1) differ here, not in Python
    assert mine(order, props) == truth(ORDER, props)


def test_what_cannot_be_checked_does_not_stop_the_rest() -> None:
    schemas: dict[str, dict[str, Any]] = {
        "A": {"properties": {"x": {"type": "string", "pattern": "(?=x)y", "maxLength": 2}}},
        "B": {"properties": {"y": {"type": "date"}}},
    }
    validator = Validator(plan_of(schemas))
    out = found(validator, [("A", {"x": "long"}), ("B", {"y": "2024-01-01"}), ("A", {"x": 1})])
    assert out == [(0, "$.properties.x", "maxLength"), (1, "$.properties.y", "type"), (2, "$.properties.x", "type")]


def test_personal_properties_after_the_collector_are_checked_for_presence_only() -> None:
    """The collector hashes / masks / drops `x-personal` properties before the log: the lake writer and the live
    view must not call a hashed email a bad email, nor a dropped property missing (every such event was
    quarantined before this)."""
    plan = plan_of({"Signed Up": {
        "type": "object",
        "properties": {"email": {"type": "string", "format": "email", "x-personal": "hash"},
                       "phone": {"type": "string", "pattern": "^[+][0-9]+$", "x-personal": "mask"},
                       "ssn": {"type": "string", "x-personal": "drop"},
                       "plan": {"enum": ["free", "pro"]}},
        "required": ["email", "phone", "ssn", "plan"],
    }})  # fmt: skip
    ingested = {"email": "9f86d081884c7d659a2feaa0c55ad015", "phone": "+33*******", "plan": "pro"}
    assert found(Validator(plan, ingested=True), [("Signed Up", ingested)]) == []
    # still checked: presence of hashed ones, and every property that is not personal
    missing = found(Validator(plan, ingested=True), [("Signed Up", {"phone": "x", "plan": "gold"})])
    assert sorted(missing) == [(0, "$.properties.email", "required"), (0, "$.properties.plan", "enum")]
    # events as sent (plan check's samples): every rule applies
    raw = found(Validator(plan), [("Signed Up", ingested)])
    assert {(p, r) for _, p, r in raw} >= {("$.properties.email", "format"), ("$.properties.ssn", "required")}
