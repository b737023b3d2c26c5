"""Cohort members SQL and `$cohort` filters/breakdowns in every insight, on a real lake (Iceberg + DuckDB).

Ground truth: members computed in plain Python; an insight filtered by a cohort must equal the same insight run
on a second lake holding only the members' events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from headwater.alerts.trends import TrendCondition
from headwater.boards.store import BoardStore
from headwater.cohorts.spec import CohortError, parse_definition
from headwater.cohorts.sql import members_sql
from headwater.cohorts.store import CohortStore
from headwater.insights.engine import InsightEngine, InsightError
from headwater.insights.sql import PERSON
from headwater.lake.tables import close_catalog, ensure_tables, open_catalog
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings
from tests.insights.test_insights import generate, to_table

D0, D1 = datetime(2026, 3, 2), datetime(2026, 3, 23)
AS_OF = datetime(2026, 4, 2)
RANGE = {"date_from": D0.isoformat(), "date_to": D1.isoformat()}
PERFORMED_A3 = {"type": "performed", "event": "A", "min_count": 3, **RANGE}


def _lake(data_dir: Path, rows: list[dict[str, Any]]) -> QueryEngine:
    settings = make_settings(data_dir, query_max_rows=500_000)
    catalog = open_catalog(settings)
    ensure_tables(catalog)["events"].append(to_table(rows))
    close_catalog(catalog)
    return QueryEngine(settings)


def did(rows: list[dict[str, Any]], event: str, at_least: int = 1) -> set[str]:
    counts = Counter(r["user_id"] for r in rows if r["event"] == event and D0 <= r["timestamp"] < D1)
    return {u for u, n in counts.items() if n >= at_least}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The full lake with a cohort store, and a lake of only the members of cohort 1 (did A 3+ times)."""
    rows = generate()
    base = tmp_path_factory.mktemp("cohorts")
    store = CohortStore(base / "app.db")
    a3 = store.save({"name": "A fans", "conditions": [PERFORMED_A3]}, "test")
    pro = store.save({"name": "Pro", "conditions": [{"type": "property", "property": "plan", "value": "pro"}]}, "t")
    members = did(rows, "A", 3)
    full = _lake(base / "full", rows)
    only = _lake(base / "only", [r for r in rows if r["user_id"] in members])
    try:
        yield {"rows": rows, "store": store, "a3": a3["id"], "pro": pro["id"], "members": members,
               "full": InsightEngine(full, cohorts=store.resolver), "only": InsightEngine(only)}  # fmt: skip
    finally:
        full.close()
        only.close()
        store.close()


def people(world: dict[str, Any], conditions: list[dict[str, Any]], match: str = "all", actor: str = PERSON) -> set:
    definition = parse_definition({"name": "x", "match": match, "conditions": conditions})
    sql = members_sql(definition, actor, AS_OF, world["store"].definition)
    result = world["full"].query.execute(sql, max_rows=100_000)
    assert result.columns == ["member"]
    found = [r[0] for r in result.rows]
    assert len(found) == len(set(found))  # each person once
    return set(found)


def test_performed_counts_negation_and_combinations(world: dict[str, Any]) -> None:
    rows = world["rows"]
    everyone = {r["user_id"] for r in rows}
    assert people(world, [PERFORMED_A3]) == world["members"] and world["members"]
    assert people(world, [PERFORMED_A3], actor="person_id") == world["members"]
    at_most = {"type": "performed", "event": "A", "min_count": 1, "max_count": 2, **RANGE}
    assert people(world, [at_most]) == did(rows, "A") - did(rows, "A", 3)
    no_x = {"type": "performed", "event": "X", "negate": True, **RANGE}
    assert people(world, [no_x]) == everyone - did(rows, "X")
    assert people(world, [PERFORMED_A3, no_x]) == world["members"] - did(rows, "X")
    assert people(world, [PERFORMED_A3, no_x], match="any") == world["members"] | (everyone - did(rows, "X"))
    rolling = {"type": "performed", "event": "C", "days": 7}  # the 7 days before AS_OF
    week = {r["user_id"] for r in rows if r["event"] == "C" and AS_OF - timedelta(days=7) <= r["timestamp"] < AS_OF}
    assert people(world, [rolling]) == week and week


def test_property_latest_value(world: dict[str, Any]) -> None:
    rows = world["rows"]
    plan = {r["user_id"]: r["plan"] for r in rows}
    pro = {u for u, p in plan.items() if p == "pro"}
    assert people(world, [{"type": "property", "property": "plan", "value": "pro"}]) == pro
    assert people(world, [{"type": "property", "property": "plan", "op": "neq", "value": "pro"}]) == set(plan) - pro
    assert people(world, [{"type": "property", "property": "plan", "op": "is_not_set"}]) == set()
    big = {r["user_id"] for r in rows if r["amount"] > 90}  # latest amount (by event time) above 90
    latest = {u: max((r for r in rows if r["user_id"] == u), key=lambda r: r["timestamp"])["amount"] for u in plan}
    got = people(world, [{"type": "property", "property": "amount", "op": "gt", "value": 90}])
    assert got == {u for u, a in latest.items() if a > 90} and got <= big


def test_funnel_step_and_drop_off(world: dict[str, Any]) -> None:
    funnel = {"kind": "funnel", "steps": [{"event": "A"}, {"event": "B"}, {"event": "C"}], "window_seconds": 86400,
              "count_by": "ids", **RANGE}  # fmt: skip
    counts = [s["count"] for s in world["full"].run(funnel)["result"][0]["steps"]]
    reached = people(world, [{"type": "funnel", "funnel": funnel, "step": 1}])
    dropped = people(world, [{"type": "funnel", "funnel": funnel, "step": 2, "dropped": True}])
    assert len(reached) == counts[1] and len(dropped) == counts[1] - counts[2]
    assert dropped <= reached
    # as of a moment in the range, only the steps done before it count (the window must not run past it)
    as_of = D0 + timedelta(days=3)
    definition = parse_definition({"name": "x", "conditions": [{"type": "funnel", "funnel": funnel, "step": 1}]})
    early = world["full"].query.execute(members_sql(definition, PERSON, as_of), max_rows=100_000).rows
    assert {r[0] for r in early} == _converted(world["rows"], as_of, as_of) != _converted(world["rows"], as_of, D1)


def _converted(rows: list[dict[str, Any]], starts_before: datetime, steps_before: datetime) -> set[str]:
    """Who did A in [D0, starts_before) and B within a day after it, before `steps_before`."""
    a = [(r["user_id"], r["timestamp"]) for r in rows if r["event"] == "A" and D0 <= r["timestamp"] < starts_before]
    b = [(r["user_id"], r["timestamp"]) for r in rows if r["event"] == "B" and r["timestamp"] < steps_before]
    return {u for u, t in a if any(v == u and t <= s <= t + timedelta(days=1) for v, s in b)}


def test_cohort_of_cohorts_and_store_rules(world: dict[str, Any]) -> None:
    store: CohortStore = world["store"]
    nested = [{"type": "cohort", "cohort_id": world["a3"]}, {"type": "cohort", "cohort_id": world["pro"]}]
    pro = {r["user_id"] for r in world["rows"] if r["plan"] == "pro"}
    assert people(world, nested) == world["members"] & pro
    outer = store.save({"name": "A fans not pro", "conditions": [nested[0], {**nested[1], "negate": True}]}, "t")
    with pytest.raises(CohortError, match=r"refers back|itself"):
        store.save({"name": "loop", "conditions": [{"type": "cohort", "cohort_id": outer["id"]}]}, "t", world["a3"])
    with pytest.raises(CohortError, match="used by"):
        store.delete(world["a3"])
    with pytest.raises(CohortError, match="no cohort 999"):
        store.save({"name": "x", "conditions": [{"type": "cohort", "cohort_id": 999}]}, "t")
    with pytest.raises(CohortError, match=r"conditions\.0\.performed\.min_count"):
        parse_definition({"name": "x", "conditions": [{"type": "performed", "event": "A", "min_count": 0}]})
    store.delete(outer["id"])


def cohort_filter(world: dict[str, Any], op: str = "eq") -> list[dict[str, Any]]:
    return [{"property": "$cohort", "op": op, "value": world["a3"]}]


INSIGHTS = {
    "trend": {"kind": "trend", "series": [{"event": "B"}, {"event": "B", "measure": "users"}], **RANGE},
    "funnel": {"kind": "funnel", "steps": [{"event": "A"}, {"event": "B"}], "window_seconds": 86400, **RANGE},
    "retention": {"kind": "retention", "start_event": "A", "return_event": "B", "period": "week", "periods": 2,
                  "date_from": "2026-03-02T00:00:00", "date_to": "2026-03-16T00:00:00"},
    "journey": {"kind": "journey", "event": "A", "depth": 2, **RANGE},
    "experiment": {"kind": "experiment", "exposure_event": "A", "variant_property": "plan", "goal_event": "C",
                   "window_seconds": 86400 * 3, **RANGE},
}  # fmt: skip


@pytest.mark.parametrize("kind", list(INSIGHTS))
def test_cohort_filter_in_every_insight(world: dict[str, Any], kind: str) -> None:
    """Filtered by the cohort == the same insight on a lake of only the members' events (never ignored: the
    unfiltered answer differs; the rollup fast paths of trend and retention are bypassed)."""
    spec = INSIGHTS[kind]
    answer = world["full"].run({**spec, "filters": cohort_filter(world)})
    assert answer["result"] == world["only"].run(spec)["result"]
    assert answer["result"] != world["full"].run(spec)["result"]
    assert "cohort_" in answer["sql"] and "count(*) >= 3" in answer["sql"]  # "view SQL" shows the members SQL
    assert answer["answered_by"] != "rollup"


def test_cohort_filter_on_a_series_and_a_step(world: dict[str, Any]) -> None:
    trend = {"kind": "trend", "series": [{"event": "B", "filters": cohort_filter(world)}], **RANGE}
    assert world["full"].run(trend)["result"][0]["total"] == world["only"].run(INSIGHTS["trend"])["result"][0]["total"]
    outside = world["full"].run({**INSIGHTS["trend"], "filters": cohort_filter(world, "neq")})["result"][0]["total"]
    inside = world["full"].run(trend)["result"][0]["total"]
    assert inside + outside == world["full"].run(INSIGHTS["trend"])["result"][0]["total"]
    funnel = INSIGHTS["funnel"]
    first_step = {**funnel, "steps": [{"event": "A", "filters": cohort_filter(world)}, {"event": "B"}]}
    got = [s["count"] for s in world["full"].run(first_step)["result"][0]["steps"]]
    assert got == [s["count"] for s in world["only"].run(funnel)["result"][0]["steps"]]


def test_breakdown_by_cohorts_in_trend_and_funnel(world: dict[str, Any]) -> None:
    ids = [world["a3"], world["pro"]]
    by = {"breakdown": "$cohort", "breakdown_cohorts": ids}
    trend = world["full"].run({**INSIGHTS["trend"], **by})["result"]
    funnel = world["full"].run({**INSIGHTS["funnel"], **by})["result"]
    assert {r["breakdown"] for r in trend} == {r["breakdown"] for r in funnel} == {"A fans", "Pro"}
    for cohort_id, name in zip(ids, ["A fans", "Pro"], strict=True):
        one = [{"property": "$cohort", "value": cohort_id}]
        alone = world["full"].run({**INSIGHTS["trend"], "filters": one})["result"]
        assert [r["points"] for r in trend if r["breakdown"] == name] == [r["points"] for r in alone]
        steps = world["full"].run({**INSIGHTS["funnel"], "filters": one})["result"][0]["steps"]
        assert [s["count"] for r in funnel if r["breakdown"] == name for s in r["steps"]] == [s["count"] for s in steps]


def test_unknown_cohort_and_invalid_specs(world: dict[str, Any]) -> None:
    with pytest.raises(InsightError, match="no cohort 424242"):
        world["full"].run({**INSIGHTS["trend"], "filters": [{"property": "$cohort", "value": 424242}]})
    with pytest.raises(InsightError, match="eq or neq"):
        world["full"].run({**INSIGHTS["trend"], "filters": [{"property": "$cohort", "op": "gt", "value": 1}]})
    with pytest.raises(InsightError, match="breakdown_cohorts"):
        world["full"].run({**INSIGHTS["trend"], "breakdown": "$cohort"})
    with pytest.raises(InsightError, match="cohorts are not available"):
        world["only"].run({**INSIGHTS["trend"], "filters": cohort_filter(world)})


def test_trend_alert_on_one_cohort_line(world: dict[str, Any], tmp_path: Path) -> None:
    """A trend alert on the "A fans" line of a trend broken down by cohort judges that line (it was turned into a
    `$cohort` filter with the cohort's name as its value, which every evaluation refused)."""
    boards = BoardStore(tmp_path / "app.db")
    by = {
        "breakdown": "$cohort",
        "breakdown_cohorts": [world["a3"], world["pro"]],
        "interval": "day",
        "count_by": "ids",
    }
    saved = boards.save_insight("B by cohort", {**INSIGHTS["trend"], "series": [{"event": "B"}], **by}, "t")
    rule = {"id": 1, "name": "fans", "insight_id": saved["id"], "series": 0, "breakdown": "A fans", "webhook": "",
            "mode": "threshold", "op": ">", "threshold": 0.0, "interval": None, "severity": "warning"}  # fmt: skip
    try:
        seen = TrendCondition(rule, boards.insight, world["full"].run).check(
            (D0 + timedelta(days=10, hours=1)).replace(tzinfo=UTC).timestamp()
        )
    finally:
        boards.close()
    day = D0 + timedelta(days=9)
    fans = [r for r in world["rows"] if r["event"] == "B" and r["user_id"] in world["members"]]
    expected = sum(1 for r in fans if day <= r["timestamp"] < day + timedelta(days=1))
    assert [(line["breakdown"], line["value"]) for line in seen["lines"]] == [("A fans", expected)] and expected
