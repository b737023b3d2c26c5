"""Tracking plans as code: loading a plan directory ($ref resolution, meta-validation, flattening), the linter,
SchemaVer compatibility between versions, and the version store on a real SQLite catalog database."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from headwater.auth.audit import AuditLog
from headwater.core.database import open_store
from headwater.plan.compat import ADDITION, MODEL, REVISION, bump, check_version, diff, parse_version, top_level
from headwater.plan.lint import check_files, sample_problems
from headwater.plan.load import PlanError, load_files, load_plan, read_files, read_samples, rows_table
from headwater.plan.model import Plan
from headwater.plan.store import PlanNotFound, PlanStore, publish
from tests.helpers import ROOT

EXAMPLE = ROOT / "examples" / "plan"
HEADER = {"name": "shop", "version": "1-0-0", "naming": "Title Case"}


def plan_files(events: dict[str, dict[str, Any]], defs: dict[str, Any] | None = None, **header: Any) -> dict[str, str]:
    """Plan files as `read_files` gives them (events keyed by file name under events/)."""
    files = {"plan.json": json.dumps({**HEADER, **header})}
    if defs is not None:
        files["definitions.json"] = json.dumps({"$defs": defs})
    for name, schema in events.items():
        files[f"events/{name}"] = json.dumps(schema)
    return files


def event(title: str, properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    doc = {"title": title, "description": f"{title}.", "type": "object", "properties": properties, **extra}
    if required:
        doc["required"] = required
    return doc


def plan_of(files: dict[str, str]) -> Plan:
    loaded = load_files(files)
    assert not loaded.errors, [p.text() for p in loaded.errors]
    assert loaded.plan is not None
    return loaded.plan


def rules(files: dict[str, str]) -> list[tuple[str, str, str | None, str | None]]:
    """(level, rule, event, path) of every problem of load + lint."""
    return [(p.level, p.rule, p.event, p.path) for p in check_files(files).problems]


# ---------------------------------------------------------------- loading


def test_the_example_plan_loads_with_every_reference_resolved() -> None:
    plan, files = load_plan(EXAMPLE)
    assert (plan.name, plan.version, plan.naming) == ("shop", "1-0-0", "Object Action")
    assert set(plan.events) == {"Product Viewed", "Product Added", "Order Completed", "Signed Up"}
    assert set(files) >= {"plan.json", "definitions.json", "events/order_completed.json"}
    order = plan.events["Order Completed"]
    assert order.mode == "quarantine" and order.file == "events/order_completed.json"
    assert plan.mode_of("Order Completed") == "quarantine" and plan.mode_of("Product Viewed") == "warn"
    assert plan.mode_of("Nobody Planned This") == "warn"  # plan.json unplanned
    currency = order.schema["properties"]["currency"]
    assert currency["enum"] == ["EUR", "USD", "GBP"] and "$ref" not in json.dumps(order.schema)
    props = {p.path: p for p in order.properties}
    assert props["email"].personal == "hash" and props["email"].types == ("string",)
    assert props["revenue"].required and not props["email"].required
    assert props["products[].product_id"].required and props["products[].quantity"].types == ("integer",)
    assert props["currency"].description == "ISO 4217 currency code."  # from definitions.json
    signup = {p.path: p for p in plan.events["Signed Up"].properties}
    assert signup["referral_code"].types == ("string", "null") and signup["phone"].personal == "mask"
    assert check_files(files).problems == []  # the example is lint-clean


def test_references_local_shared_relative_nested_and_overridden() -> None:
    defs = {
        "money": {"type": "number", "minimum": 0, "description": "An amount."},
        "price": {"$ref": "#/$defs/money", "description": "A price."},  # a definition referring to another
        "address": {"type": "object", "properties": {"city": {"type": "string", "x-personal": "mask"},
                                                     "zip": {"type": "string"}}, "required": ["city"]},
    }  # fmt: skip
    schema = event("Order Completed", {
        "total": {"$ref": "definitions.json#/$defs/price"},
        "tax": {"$ref": "../definitions.json#/$defs/money", "description": "Tax part."},  # relative to the file
        "local": {"$ref": "#/$defs/code"},
        "ship_to": {"$ref": "definitions.json#/$defs/address"},
    }, ["total"], **{"$defs": {"code": {"type": "string", "pattern": "^[A-Z]+$"}}})  # fmt: skip
    plan = plan_of(plan_files({"order.json": schema}, defs))
    props = plan.events["Order Completed"].schema["properties"]
    assert props["total"] == {"type": "number", "minimum": 0, "description": "A price."}
    assert props["tax"]["description"] == "Tax part." and props["tax"]["minimum"] == 0
    assert props["local"] == {"type": "string", "pattern": "^[A-Z]+$"}
    assert "$defs" not in plan.events["Order Completed"].schema
    flat = {p.path: p for p in plan.events["Order Completed"].properties}
    assert flat["ship_to.city"].personal == "mask" and flat["ship_to.city"].required
    assert not flat["ship_to.zip"].required and flat["ship_to"].types == ("object",)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"events/a.json": "{}"}, ("file", "plan.json", None)),
        ({"plan.json": "{not json"}, ("json", "plan.json", None)),
        ({"plan.json": json.dumps({**HEADER, "version": "1.0.0"})}, ("plan", "plan.json", "$.version")),
        ({"plan.json": json.dumps({**HEADER, "enforcment": "warn"})}, ("plan", "plan.json", "$.enforcment")),
        ({"plan.json": json.dumps({**HEADER, "enforcement": "block"})}, ("plan", "plan.json", "$.enforcement")),
        ({"plan.json": json.dumps(HEADER), "notes.txt": ""}, ("file", "notes.txt", None)),
        ({"plan.json": json.dumps(HEADER), "events/a.json": json.dumps({"type": "object"})},
         ("title", "events/a.json", "$.title")),
        ({"plan.json": json.dumps(HEADER), "events/a.json": json.dumps({"title": "A B", "type": "string"})},
         ("schema", "events/a.json", "$.type")),
        ({"plan.json": json.dumps(HEADER),
          "events/a.json": json.dumps({"title": "A B", "properties": {"n": {"type": "numbr"}}})},
         ("schema", "events/a.json", "$.properties.n.type")),
        ({"plan.json": json.dumps(HEADER),
          "events/a.json": json.dumps({"title": "A B", "properties": {"n": {"minimum": "zero"}}})},
         ("schema", "events/a.json", "$.properties.n.minimum")),
        ({"plan.json": json.dumps(HEADER), "definitions.json": json.dumps({"$defs": {"x": {"type": 3}}})},
         ("schema", "definitions.json", "$.$defs.x.type")),
    ],
)  # fmt: skip
def test_load_errors_name_the_file_and_path(files: dict[str, str], expected: tuple[str, str, str | None]) -> None:
    found = [(p.rule, p.file, p.path) for p in load_files(files).errors]
    assert expected in found, found


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("definitions.json#/$defs/nope", "is not in that file"),
        ("#/$defs/nope", "is not in that file"),
        ("https://example.com/schemas/x.json", "is not in a file of this plan"),
        ("other.json#/$defs/x", "is not in a file of this plan"),
        ("#/properties/loop", "refers to itself"),
    ],
)
def test_bad_references_are_errors(ref: str, message: str) -> None:
    schema = event("A B", {"loop": {"$ref": ref}, "ok": {"type": "string"}})
    problems = load_files(plan_files({"a.json": schema}, {"x": {"type": "string"}})).errors
    assert [(p.rule, p.event, p.path) for p in problems] == [("$ref", "A B", "$.properties.loop.$ref")]
    assert message in problems[0].message


def test_duplicate_event_titles_are_an_error() -> None:
    files = plan_files({"a.json": event("Order Completed", {}), "b.json": event("Order Completed", {})})
    problems = load_files(files).errors
    assert [(p.rule, p.file, p.event) for p in problems] == [("duplicate-event", "events/b.json", "Order Completed")]
    assert "events/a.json" in problems[0].message


def test_read_files_and_load_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not a directory"):
        read_files(tmp_path / "absent")
    (tmp_path / "events").mkdir()
    with pytest.raises(PlanError) as missing:
        read_files(tmp_path)
    assert missing.value.problems[0].file == "plan.json"
    shutil.copytree(EXAMPLE, tmp_path / "copy")
    (tmp_path / "copy" / "events" / "broken.json").write_text('{"title": 1}')
    (tmp_path / "copy" / "README.md").write_text("not part of the plan")
    with pytest.raises(PlanError) as broken:
        load_plan(tmp_path / "copy")
    assert {(p.file, p.rule) for p in broken.value.problems} >= {("events/broken.json", "title")}


# ---------------------------------------------------------------- lint


@pytest.mark.parametrize(
    ("naming", "good", "bad"),
    [
        ("Title Case", "Order Completed", "order completed"),
        ("snake_case", "order_completed", "orderCompleted"),
        ("camelCase", "orderCompleted", "Order_Completed"),
        ("Object Action", "Product Viewed", "Checkout"),
    ],
)
def test_event_naming_conventions(naming: str, good: str, bad: str) -> None:
    files = plan_files({"a.json": event(good, {}), "b.json": event(bad, {})}, naming=naming)
    assert rules(files) == [("error", "event-naming", bad, "$.title")]


def test_object_action_wants_a_past_tense() -> None:
    files = plan_files({"a.json": event("Cart View", {}), "b.json": event("Signed Up", {})}, naming="Object Action")
    assert rules(files) == [("warning", "event-naming", "Cart View", "$.title")]


def test_property_naming_declared_and_inferred() -> None:
    kinds = {"order_id": "string", "itemCount": "integer", "total_price": "number", "sku": "string"}
    props = {name: {"type": kind, "description": "."} for name, kind in kinds.items()}
    inferred = rules(plan_files({"a.json": event("Order Done", props)}))
    assert inferred == [("warning", "property-naming", "Order Done", "$.properties.itemCount")]
    declared = rules(plan_files({"a.json": event("Order Done", props)}, property_naming="camelCase"))
    assert {(lvl, r, p) for lvl, r, _, p in declared} == {
        ("error", "property-naming", "$.properties.order_id"), ("error", "property-naming", "$.properties.total_price")
    }  # fmt: skip


def test_unused_definitions_and_missing_descriptions_are_warnings() -> None:
    defs = {"used": {"type": "string", "description": "."}, "spare": {"type": "string"}}
    schema = {"title": "Order Done", "type": "object", "$defs": {"lonely": {"type": "integer"}},
              "properties": {"a": {"$ref": "definitions.json#/$defs/used"}, "b": {"type": "string"}}}  # fmt: skip
    found = rules(plan_files({"a.json": schema}, defs))
    assert sorted(found, key=str) == sorted([
        ("warning", "description", "Order Done", "$"),
        ("warning", "description", "Order Done", "$.properties.b"),
        ("warning", "unused-definition", None, "$.$defs.spare"),
        ("warning", "unused-definition", None, "$.$defs.lonely"),
    ], key=str)  # fmt: skip
    files = {p.path: p.file for p in check_files(plan_files({"a.json": schema}, defs)).problems}
    assert files["$.$defs.spare"] == "definitions.json" and files["$.$defs.lonely"] == "events/a.json"


def test_extension_values_and_unenforceable_keywords_are_errors() -> None:
    schema = event(
        "Order Done",
        {
            "email": {"type": "string", "description": ".", "x-personal": "encrypt"},
            "phone": {"type": "string", "description": ".", "x-consent": ""},
            "code": {"type": "string", "description": ".", "not": {"const": "x"}},
            "when": {"type": "string", "description": ".", "format": "hostname"},
        },
        **{"x-enforcement": "block"},
    )
    found = {(r, p) for _, r, _, p in rules(plan_files({"a.json": schema}))}
    assert found >= {
        ("x-personal", "$.properties.email.x-personal"), ("x-consent", "$.properties.phone.x-consent"),
        ("x-enforcement", "$.x-enforcement"), ("unsupported", "$.properties.code.not"),
        ("unsupported", "$.properties.when.format"),
    }  # fmt: skip
    assert all(level == "error" for level, rule, _, _ in rules(plan_files({"a.json": schema})) if rule != "description")


# ---------------------------------------------------------------- compatibility


BASE = {
    "order.json": event("Order Completed", {
        "revenue": {"type": "number", "minimum": 0},
        "count": {"type": "integer", "maximum": 100},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
        "coupon": {"type": "string"},
        "sku": {"type": "string"},
    }, ["revenue", "currency"]),
    "viewed.json": event("Product Viewed", {"sku": {"type": "string"}}),
}  # fmt: skip


def changed(edit: Any, version: str = "1-0-1") -> tuple[Plan, Plan, list[Any]]:
    old = plan_of(plan_files(BASE))
    events = json.loads(json.dumps(BASE))
    edit(events)
    new = plan_of(plan_files(events, version=version))
    return old, new, diff(old, new)


def props(events: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = events["order.json"]["properties"]
    return found


@pytest.mark.parametrize(
    ("edit", "level", "path"),
    [
        (lambda e: e.update({"signup.json": event("Signed Up", {})}), ADDITION, "$"),
        (lambda e: props(e).update(note={"type": "string"}), ADDITION, "$.properties.note"),
        (lambda e: props(e)["coupon"].update(description="A code."), ADDITION, "$.properties.coupon"),
        (lambda e: props(e)["coupon"].update({"x-personal": "hash"}), ADDITION, "$.properties.coupon"),
        (lambda e: props(e)["count"].update(type="number"), REVISION, "$.properties.count"),
        (lambda e: props(e)["coupon"].update(type=["string", "null"]), REVISION, "$.properties.coupon"),
        (lambda e: props(e)["currency"]["enum"].append("GBP"), REVISION, "$.properties.currency"),
        (lambda e: props(e)["currency"].pop("enum"), REVISION, "$.properties.currency"),
        (lambda e: e["order.json"]["required"].remove("currency"), REVISION, "$.properties.currency"),
        (lambda e: props(e)["count"].update(maximum=1000), REVISION, "$.properties.count"),
        (lambda e: e["order.json"].update({"x-enforcement": "quarantine"}), REVISION, "$"),
        (lambda e: e.pop("viewed.json"), MODEL, "$"),
        (lambda e: props(e).pop("sku"), MODEL, "$.properties.sku"),
        (lambda e: props(e)["revenue"].update(type="string"), MODEL, "$.properties.revenue"),
        (lambda e: props(e)["count"].update(type="string"), MODEL, "$.properties.count"),
        (lambda e: e["order.json"]["required"].append("coupon"), MODEL, "$.properties.coupon"),
        (lambda e: (props(e).update(code={"type": "string"}), e["order.json"]["required"].append("code")), MODEL,
         "$.properties.code"),
        (lambda e: props(e)["currency"].update(enum=["EUR"]), MODEL, "$.properties.currency"),
        (lambda e: props(e)["count"].update(maximum=10), MODEL, "$.properties.count"),
        (lambda e: props(e)["revenue"].update(minimum=1), MODEL, "$.properties.revenue"),
        (lambda e: props(e)["sku"].update(pattern="^[A-Z]+$"), MODEL, "$.properties.sku"),
        (lambda e: props(e)["coupon"].update(format="uuid"), MODEL, "$.properties.coupon"),
        (lambda e: e["order.json"].update(additionalProperties=False), MODEL, "$"),
    ],
)  # fmt: skip
def test_each_change_has_its_schemaver_class(edit: Any, level: str, path: str) -> None:
    _, _, changes = changed(edit)
    assert [(c.level, c.path) for c in changes] == [(level, path)], [c.text() for c in changes]


def test_the_version_must_fit_the_highest_change() -> None:
    old, new, changes = changed(lambda e: props(e).pop("sku"), version="1-1-0")
    assert top_level(changes) == MODEL
    message = check_version(old, new, changes)
    assert message is not None and "use version 2-0-0 or later" in message and "$.properties.sku" in message
    _, new, changes = changed(lambda e: props(e).pop("sku"), version="2-0-0")
    assert check_version(old, new, changes) is None
    _, new, changes = changed(lambda e: props(e)["count"].update(type="number"), version="1-0-5")
    assert "use version 1-1-0 or later" in (check_version(old, new, changes) or "")
    _, new, changes = changed(lambda e: props(e).update(note={"type": "string"}), version="1-0-0")
    assert "content differs" in (check_version(old, new, changes) or "")
    assert check_version(old, old, diff(old, old)) is None
    assert (bump("1-4-2", MODEL), bump("1-4-2", REVISION), bump("1-4-2", ADDITION)) == ("2-0-0", "1-5-0", "1-4-3")
    assert parse_version("10-0-0") > parse_version("9-9-9")
    with pytest.raises(ValueError, match="SchemaVer"):
        parse_version("1.0.0")


# ---------------------------------------------------------------- store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        engine = open_store(tmp_path / "catalog.db", sa.MetaData())
    else:
        uri = request.getfixturevalue("postgres_server").create_database(f"plans_{uuid.uuid4().hex[:8]}")
        engine = open_store(uri, sa.MetaData())
    yield PlanStore(engine)
    engine.dispose()


def test_store_keeps_versions_and_one_active_per_source(store: PlanStore) -> None:
    files = read_files(EXAMPLE)
    plan = plan_of(files)
    assert store.push(plan, files, actor="ana") == 1
    assert store.push(plan, files, actor="ana") == 0  # the same files again: nothing to do
    changed_files = {**files, "plan.json": files["plan.json"].replace("example shop", "shop")}
    with pytest.raises(PlanError, match="pushed before with other content"):
        store.push(plan_of(changed_files), changed_files)
    with pytest.raises(PlanNotFound):
        store.activate("*", "shop", "9-0-0")
    store.activate("*", "shop", "1-0-0", actor="ana")
    store.activate("*", "shop", "1-0-0", actor="ana")  # already active: no audit row
    later = {**files, "plan.json": files["plan.json"].replace("1-0-0", "10-0-0")}
    store.push(plan_of(later), later, actor="bob")
    store.activate("web", "shop", "10-0-0", actor="bob")
    active = store.active_plans()
    assert {s: p.version for s, p in active.items()} == {"*": "1-0-0", "web": "10-0-0"}
    assert store.get("shop", "1-0-0") is active["*"]  # parsed once
    assert [(v["version"], v["active_for"], v["pushed_by"]) for v in store.versions()] == [
        ("10-0-0", ["web"], "bob"), ("1-0-0", ["*"], "ana")
    ]  # fmt: skip
    assert store.predecessor("shop", "10-0-0") == "1-0-0" and store.predecessor("shop", "1-0-0") is None
    assert store.resolve("10-0-0") == ("shop", "10-0-0") and store.resolve("shop@1-0-0") == ("shop", "1-0-0")
    assert store.files("shop", "1-0-0") == files
    assert store.deactivate("web", actor="bob") and not store.deactivate("web")
    rows = AuditLog(store.engine).query(action="plan")
    assert [(r["actor"], r["details"]["change"], r["target"]) for r in reversed(rows)] == [
        ("ana", "pushed", "shop@1-0-0"), ("ana", "activated", "shop@1-0-0"), ("bob", "pushed", "shop@10-0-0"),
        ("bob", "activated", "shop@10-0-0"), ("bob", "deactivated", "shop@10-0-0"),
    ]  # fmt: skip
    assert rows[1]["details"] == {"change": "activated", "source": "web", "plan": "shop@10-0-0", "previous": None}


def test_a_second_store_on_the_same_database_sees_every_version(store: PlanStore) -> None:
    files = read_files(EXAMPLE)
    store.push(plan_of(files), files)
    store.activate("*", "shop", "1-0-0")
    other = PlanStore(store.engine)
    assert set(other.active_plans()["*"].events) == set(plan_of(files).events)


def test_publish_checks_lint_and_version_before_pushing(store: PlanStore) -> None:
    files = read_files(EXAMPLE)
    done = publish(store, files, activate="*", actor="ana")
    assert (done["plan"], done["stored"], done["activated"], done["compared_with"]) == ("shop@1-0-0", True, "*", None)
    order = json.loads(files["events/order_completed.json"])
    del order["properties"]["email"]
    breaking = {**files, "events/order_completed.json": json.dumps(order),
                "plan.json": files["plan.json"].replace("1-0-0", "1-1-0")}  # fmt: skip
    with pytest.raises(PlanError) as refused:
        publish(store, breaking)
    assert refused.value.problems[0].rule == "version" and "2-0-0" in str(refused.value)
    forced = publish(store, breaking, force=True)
    assert forced["stored"] and forced["changes"] == [
        {"level": "MODEL", "event": "Order Completed", "path": "$.properties.email", "change": "property removed"}
    ]
    bad = {**files, "events/x.json": json.dumps(event("bad name", {}))}
    with pytest.raises(PlanError) as linted:
        publish(store, {**bad, "plan.json": files["plan.json"].replace("1-0-0", "3-0-0")})
    assert [p.rule for p in linted.value.problems] == ["event-naming"]
    assert [v["version"] for v in store.versions()] == ["1-1-0", "1-0-0"]


# ---------------------------------------------------------------- samples


def test_samples_in_every_shape_are_checked_against_the_plan() -> None:
    plan, _ = load_plan(EXAMPLE)
    lines = [
        {"event": "Order Completed", "userId": "u1", "order_id": "o1", "revenue": 10, "currency": "EUR"},
        {"type": "track", "event": "Order Completed", "userId": "u1",
         "properties": {"order_id": "o2", "revenue": "12", "currency": "JPY"}},
        {"batch": [{"type": "track", "event": "Mystery Event", "anonymousId": "a"},
                   {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}]},
        {"type": "track", "userId": "u1"},
    ]  # fmt: skip
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json\n"
    events, labels, refused = read_samples(text, "s.ndjson")
    assert labels == ["s.ndjson:1", "s.ndjson:2", "s.ndjson:3[0]", "s.ndjson:3[1]"]
    assert [(p.file, p.rule) for p in refused] == [("s.ndjson:4", "sample"), ("s.ndjson:5", "sample")]
    found = [(p.level, p.file, p.event, p.path, p.rule) for p in sample_problems(plan, events, labels)]
    assert found == [
        ("error", "s.ndjson:2", "Order Completed", "$.properties.revenue", "type"),
        ("error", "s.ndjson:2", "Order Completed", "$.properties.currency", "enum"),
        ("error", "s.ndjson:3[0]", "Mystery Event", "$.event", "unplanned"),
    ]
    table, row_labels = rows_table(["event", "properties"], [["Signed Up", '{"method": "fax"}'], ["Signed Up", None]])
    found = [(p.file, p.path, p.rule) for p in sample_problems(plan, table, row_labels)]
    assert found == [("sql row 1", "$.properties.method", "enum"), ("sql row 2", "$.properties.method", "required")]
