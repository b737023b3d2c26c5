"""PlanStage on batches built as the lake writer builds them (RowBuilder with the stage inputs)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from headwater.core.events import RowBuilder
from headwater.core.stages import StageBatch
from headwater.plan.active import ActivePlans
from headwater.plan.enforce import PlanStage, reason_for, top_level_key
from headwater.plan.model import EventSpec, Plan
from headwater.plan.violations import ViolationCounts
from tests.helpers import make_settings

ORDER = {
    "type": "object",
    "properties": {"revenue": {"type": "number", "minimum": 0}, "currency": {"enum": ["EUR", "USD"]}},
    "required": ["revenue"],
}


def plan(mode: Any, unplanned: Any = "warn", version: str = "1-0-0") -> Plan:
    spec = EventSpec("Order Completed", ORDER, mode=mode)
    return Plan("shop", version, {"Order Completed": spec, "Signed Up": EventSpec("Signed Up", {})},
                unplanned=unplanned)  # fmt: skip


def events(*items: tuple[str, Any], source: str = "web") -> StageBatch:
    builder = RowBuilder(inputs=True)
    for offset, (name, props) in enumerate(items):
        envelope = {"m": {"src": source, "ep": "track-raw", "ra": 1_768_471_200_000 + offset},
                    "e": {"event": name, "userId": f"u{offset}", **props}}  # fmt: skip
        builder.add(envelope, "log", 0, offset)
    return StageBatch(builder.tables()[0])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """The catalog database: counts are upserted on SQLite and PostgreSQL alike."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        uri = request.getfixturevalue("postgres_server").create_database(f"plan_stage_{uuid.uuid4().hex[:8]}")
    created = sa.create_engine(uri)
    try:
        yield created
    finally:
        created.dispose()


def stage_for(engine: sa.Engine, plans: dict[str, Plan]) -> PlanStage:
    return PlanStage(make_settings(Path("/tmp")), engine, ActivePlans(lambda: plans, 60))


def column(batch: StageBatch, name: str) -> list[Any]:
    return batch.events.column(name).to_pylist()


def test_no_plan_no_columns(engine: sa.Engine) -> None:
    batch = events(("Order Completed", {"revenue": "x"}))
    out = stage_for(engine, {"other-source": plan("quarantine")}).apply(batch)
    assert "plan_version" not in out.events.column_names and not out.quarantined


def test_modes(engine: sa.Engine) -> None:
    rows = [
        ("Order Completed", {"revenue": 5, "currency": "EUR"}),
        ("Order Completed", {"revenue": "5", "currency": "GBP"}),
        ("Order Completed", {"revenue": 5, "coupon": "X"}),
        ("Mystery", {"a": 1}),
    ]
    allow = stage_for(engine, {"*": plan("allow", unplanned="allow")}).apply(events(*rows))
    assert column(allow, "plan_version") == ["shop@1-0-0"] * 4
    flags: list[Any] = [orjson.loads(f) if f else None for f in column(allow, "plan_violations")]
    assert flags[0] is None and flags[2] is None  # an undeclared property is not a violation
    assert [(v["path"], v["rule"]) for v in flags[1]] == [
        ("$.properties.revenue", "type"),
        ("$.properties.currency", "enum"),
    ]
    assert flags[1][0] == {"path": "$.properties.revenue", "rule": "type", "expected": "number", "got": "string"}
    assert flags[3] == [
        {"path": "$.event", "rule": "unplanned", "expected": "an event of plan shop@1-0-0", "got": "Mystery"}
    ]
    assert not allow.quarantined and ViolationCounts(engine).read() == []

    quarantine = stage_for(engine, {"web": plan("quarantine", unplanned="quarantine")}).apply(events(*rows))
    assert quarantine.quarantined == {
        1: "plan shop@1-0-0: $.properties.revenue: type: expected number, got string; "
        '$.properties.currency: enum: expected one of ["EUR","USD"], got "GBP"',
        3: "plan shop@1-0-0: $.event: unplanned: expected an event of plan shop@1-0-0, got Mystery",
    }
    assert column(quarantine, "plan_violations") == [None] * 4
    counted = {(r["event"], r["path"], r["rule"]): r["count"] for r in ViolationCounts(engine).read()}
    assert counted == {
        ("Order Completed", "$.properties.revenue", "type"): 1,
        ("Order Completed", "$.properties.currency", "enum"): 1,
        ("Order Completed", "$.properties.coupon", "undeclared"): 1,
        ("Mystery", "$.event", "unplanned"): 1,
    }


def test_drop_properties(engine: sa.Engine) -> None:
    rows = [
        ("Order Completed", {"revenue": 5, "coupon": "X", "odd key": [1]}),
        ("Order Completed", {"revenue": -1, "coupon": "Y"}),
        ("Order Completed", {"revenue": 1}),
        ("Signed Up", {"plan": "pro"}),
    ]
    out = stage_for(engine, {"web": plan("drop-properties")}).apply(events(*rows))
    assert [orjson.loads(p) if p else None for p in column(out, "properties")] == [
        {"revenue": 5}, {"revenue": -1}, {"revenue": 1}, {"plan": "pro"},
    ]  # fmt: skip
    flags = column(out, "plan_violations")
    assert flags[0] is None and [v["rule"] for v in orjson.loads(flags[1])] == ["minimum"]
    assert not out.quarantined
    rules = {(r["path"], r["rule"]): r["count"] for r in ViolationCounts(engine).read()}
    assert rules == {
        ("$.properties.coupon", "undeclared"): 2, ('$.properties["odd key"]', "undeclared"): 1,
        ("$.properties.revenue", "minimum"): 1, ("$.properties.plan", "undeclared"): 1,
    }  # fmt: skip


def test_counts_add_up_across_batches(engine: sa.Engine) -> None:
    stage = stage_for(engine, {"*": plan("warn")})
    for _ in range(3):
        stage.apply(events(("Order Completed", {"revenue": "x"}), ("Order Completed", {})))
    stage.apply(events(("Order Completed", {"revenue": "y"}), source="app"))
    found = ViolationCounts(engine).read()
    by_key = {(r["source"], r["path"], r["rule"]): r for r in found}
    assert by_key[("web", "$.properties.revenue", "type")]["count"] == 3
    assert by_key[("web", "$.properties.revenue", "required")]["count"] == 3
    assert by_key[("app", "$.properties.revenue", "type")]["count"] == 1
    row = by_key[("web", "$.properties.revenue", "type")]
    assert row["first_seen"] <= row["last_seen"] and row["plan_version"] == "shop@1-0-0"


def test_source_plan_beats_the_default(engine: sa.Engine) -> None:
    strict, loose = plan("quarantine", version="2-0-0"), plan("allow")
    batch = events(("Order Completed", {"revenue": "x"}), source="web")
    out = stage_for(engine, {"*": loose, "web": strict}).apply(batch)
    assert column(out, "plan_version") == ["shop@2-0-0"] and list(out.quarantined) == [0]


def test_helpers() -> None:
    assert top_level_key("$.properties.a") == "a"
    assert top_level_key('$.properties["a b"]') == "a b"
    assert top_level_key("$.properties.a.b") is None and top_level_key("$.properties.items[0]") is None
    many = [{"path": f"$.properties.p{i}", "rule": "type", "expected": "string", "got": "number"} for i in range(25)]
    assert reason_for("shop@1-0-0", many).endswith("; and 5 more")


def test_stored_examples_leave_out_personal_and_undeclared_values(engine: sa.Engine) -> None:
    schema = {"properties": {"email": {"type": "string", "format": "email", "x-personal": "hash"},
                             "tags": {"type": "array", "items": {"type": "object", "properties": {
                                 "owner": {"type": "string", "maxLength": 3, "x-personal": "mask"}}}}}}  # fmt: skip
    from headwater.plan.load import flatten

    spec = EventSpec("Signed Up", schema, properties=tuple(flatten(schema)))
    stage = stage_for(engine, {"*": Plan("shop", "1-0-0", {"Signed Up": spec})})
    stage.apply(events(("Signed Up", {"email": "not-an-email", "secret": "s3cr3t", "tags": [{"owner": "Annabel"}]})))
    got = {(r["path"], r["rule"]): r["got"] for r in ViolationCounts(engine).read()}
    # personal properties reach the writer hashed / masked by the collector: checked for presence only, so their
    # values are neither judged (a hash is no email) nor stored; undeclared values are never stored
    assert got == {("$.properties.secret", "undeclared"): ""}
