"""Insight results against ground truth computed in plain Python on generated data."""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from headwater.core.events import EVENTS_SCHEMA
from headwater.insights.engine import InsightEngine, InsightError, buckets
from headwater.lake.tables import close_catalog, ensure_tables, open_catalog
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings

START = datetime(2026, 3, 2)  # a Monday
EVENTS = ["A", "B", "C", "X", "noise"]


def generate(seed: int = 11, users: int = 250) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        person = f"user{u}"
        plan = rng.choice(["free", "pro", "team"])
        for _ in range(rng.randrange(1, 14)):
            # seconds resolution over 30 days: conversions cross day and week boundaries
            when = START + timedelta(seconds=rng.randrange(0, 30 * 86400))
            event = rng.choices(EVENTS, weights=[5, 4, 3, 1, 3])[0]
            rows.append(
                {"user_id": person, "event": event, "timestamp": when, "plan": plan, "amount": rng.randrange(1, 100)}
            )
        if rng.random() < 0.3:  # a burst: repeated and out-of-order steps within minutes
            base = START + timedelta(seconds=rng.randrange(0, 29 * 86400))
            for offset, event in enumerate(rng.sample(["A", "B", "C", "A", "B"], 5)):
                rows.append({"user_id": person, "event": event, "timestamp": base + timedelta(minutes=offset * 7),
                             "plan": plan, "amount": 1})  # fmt: skip
    for i, row in enumerate(rows):
        row["event_id"] = f"e{i:06d}"
    return rows


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, list[Any]] = {f.name: [] for f in EVENTS_SCHEMA}
    for row in rows:
        values = {
            "event_id": row["event_id"], "type": "track", "event": row["event"], "user_id": row["user_id"],
            "timestamp": row["timestamp"], "received_at": row["timestamp"], "source": "test",
            "properties": orjson.dumps({"plan": row["plan"], "amount": row["amount"]}).decode(),
        }  # fmt: skip
        for name, column in columns.items():
            column.append(values.get(name))
    return pa.Table.from_pydict(columns, schema=EVENTS_SCHEMA)


@pytest.fixture(scope="module")
def lake(
    tmp_path_factory: pytest.TempPathFactory, deployment: dict[str, str]
) -> Iterator[tuple[InsightEngine, list[Any]]]:
    data_dir = tmp_path_factory.mktemp("insights")
    settings = make_settings(data_dir, query_max_rows=500_000, **deployment)
    rows = generate()
    catalog = open_catalog(settings)
    ensure_tables(catalog)["events"].append(to_table(rows))
    close_catalog(catalog)
    query = QueryEngine(settings)
    try:
        yield InsightEngine(query), rows
    finally:
        query.close()


def by_user(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["timestamp"], r["event_id"])):
        out[row["user_id"]].append(row)
    return out


def funnel_truth(rows, steps, window, order, exclusions, date_from, date_to):  # type: ignore[no-untyped-def]
    """Greedy earliest matching per start event; each user counted at their deepest attempt."""
    w = timedelta(seconds=window)
    best: dict[str, tuple[int, datetime, list[datetime]]] = {}
    for person, events in by_user(rows).items():
        events = [e for e in events if date_from <= e["timestamp"] < date_to + w]
        for start in events:
            if start["event"] != steps[0] or start["timestamp"] >= date_to:
                continue
            t0 = start["timestamp"]
            times = [t0]
            for step in steps[1:]:
                later = [e for e in events if times[-1] < e["timestamp"] <= t0 + w]
                if order == "strict":
                    nxt = later[0] if later and later[0]["event"] == step else None
                else:
                    nxt = next((e for e in later if e["event"] == step), None)
                if nxt is None:
                    break
                times.append(nxt["timestamp"])
            excluded = False
            for x_event, from_step, to_step in exclusions:
                if from_step >= len(times):
                    continue
                upper = times[to_step] if to_step < len(times) else t0 + w
                if any(e["event"] == x_event and times[from_step] < e["timestamp"] < upper for e in events):
                    excluded = True
            if excluded:
                continue
            depth = len(times)
            current = best.get(person)
            if current is None or depth > current[0] or (depth == current[0] and t0 < current[1]):
                best[person] = (depth, t0, times)
    counts = [sum(1 for d, _, _ in best.values() if d > k) for k in range(len(steps))]
    medians = []
    for k in range(1, len(steps)):
        gaps = [(t[k] - t[k - 1]).total_seconds() for d, _, t in best.values() if d > k]
        medians.append(statistics.median(gaps) if gaps else None)
    return counts, medians


RANGE = {"date_from": "2026-03-02T00:00:00", "date_to": "2026-03-23T00:00:00"}
D0, D1 = datetime(2026, 3, 2), datetime(2026, 3, 23)


@pytest.mark.parametrize("order", ["ordered", "strict"])
@pytest.mark.parametrize("window", [3600, 86400 * 3])
def test_funnel_matches_ground_truth(lake: tuple[InsightEngine, list[dict[str, Any]]], order: str, window: int) -> None:
    engine, rows = lake
    spec = {"kind": "funnel", "steps": [{"event": "A"}, {"event": "B"}, {"event": "C"}], "window_seconds": window,
            "order": order, **RANGE}  # fmt: skip
    answer = engine.run(spec)
    counts, medians = funnel_truth(rows, ["A", "B", "C"], window, order, [], D0, D1)
    steps = answer["result"][0]["steps"]
    assert [s["count"] for s in steps] == counts
    assert counts[2] > 0 and counts[0] > counts[2]
    for got, want in zip([s["median_seconds"] for s in steps[1:]], medians, strict=True):
        assert got == pytest.approx(want)
    assert steps[1]["drop_off"] == counts[0] - counts[1]
    assert "SELECT" in answer["sql"]


def test_funnel_exclusions(lake: tuple[InsightEngine, list[dict[str, Any]]]) -> None:
    engine, rows = lake
    spec = {"kind": "funnel", "steps": [{"event": "A"}, {"event": "B"}, {"event": "C"}], "window_seconds": 86400 * 7,
            "exclusions": [{"event": "X", "from_step": 0, "to_step": 1}], **RANGE}  # fmt: skip
    counts, _ = funnel_truth(rows, ["A", "B", "C"], 86400 * 7, "ordered", [("X", 0, 1)], D0, D1)
    assert [s["count"] for s in engine.run(spec)["result"][0]["steps"]] == counts
    plain = engine.run({**spec, "exclusions": []})["result"][0]["steps"]
    assert plain[0]["count"] > counts[0]  # the exclusion removed someone


def test_funnel_breakdown_and_filters(lake: tuple[InsightEngine, list[dict[str, Any]]]) -> None:
    engine, rows = lake
    spec = {
        "kind": "funnel",
        "steps": [{"event": "A"}, {"event": "B"}],
        "window_seconds": 86400,
        "breakdown": "plan",
        **RANGE,
    }
    result = {r["breakdown"]: [s["count"] for s in r["steps"]] for r in engine.run(spec)["result"]}
    for plan in ("free", "pro", "team"):
        subset = [r for r in rows if r["plan"] == plan]
        assert result[plan] == funnel_truth(subset, ["A", "B"], 86400, "ordered", [], D0, D1)[0]
    pro = [{"property": "plan", "op": "eq", "value": "pro"}]
    filtered = {
        "kind": "funnel",
        "steps": [{"event": "A", "filters": pro}, {"event": "B"}],
        "window_seconds": 86400,
        **RANGE,
    }
    counts = [s["count"] for s in engine.run(filtered)["result"][0]["steps"]]
    assert counts == result["pro"]


def test_funnel_any_order(lake: tuple[InsightEngine, list[dict[str, Any]]]) -> None:
    engine, rows = lake
    steps = ["A", "B", "C"]
    w = timedelta(days=1)
    best: dict[str, int] = {}
    for person, events in by_user(rows).items():
        events = [e for e in events if datetime(2026, 3, 2) <= e["timestamp"] < datetime(2026, 3, 23) + w]
        for start in events:
            if start["event"] in steps and start["timestamp"] < datetime(2026, 3, 23):
                t0 = start["timestamp"]
                done = {e["event"] for e in events if e["event"] in steps and t0 <= e["timestamp"] <= t0 + w}
                best[person] = max(best.get(person, 0), len(done))
    truth = [sum(1 for d in best.values() if d > k) for k in range(3)]
    spec = {"kind": "funnel", "steps": [{"event": s} for s in steps], "window_seconds": 86400, "order": "any", **RANGE}
    assert [s["count"] for s in engine.run(spec)["result"][0]["steps"]] == truth


@pytest.mark.parametrize("period", ["day", "week"])
def test_retention_matches_ground_truth(lake: tuple[InsightEngine, list[dict[str, Any]]], period: str) -> None:
    engine, rows = lake
    periods = 6 if period == "day" else 3

    def trunc(t: datetime) -> datetime:
        day = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return day - timedelta(days=day.weekday()) if period == "week" else day

    step = timedelta(days=1 if period == "day" else 7)
    first: dict[str, datetime] = {}
    for row in rows:
        if row["event"] == "A":
            first[row["user_id"]] = min(first.get(row["user_id"], row["timestamp"]), row["timestamp"])
    cohorts: dict[datetime, set[str]] = defaultdict(set)
    for person, ts in first.items():
        if datetime(2026, 3, 2) <= ts < datetime(2026, 3, 16):
            cohorts[trunc(ts)].add(person)
    truth = {}
    for cohort, people in cohorts.items():
        values = [len(people)] + [0] * periods
        for n in range(1, periods + 1):
            values[n] = len({r["user_id"] for r in rows if r["user_id"] in people and r["event"] == "B"
                             and trunc(r["timestamp"]) == cohort + n * step})  # fmt: skip
        truth[cohort.isoformat()] = values
    spec = {"kind": "retention", "start_event": "A", "return_event": "B", "period": period, "periods": periods,
            "date_from": "2026-03-02T00:00:00", "date_to": "2026-03-16T00:00:00"}  # fmt: skip
    result = engine.run(spec)["result"]
    assert {c["cohort"]: c["values"] for c in result["cohorts"]} == truth
    assert result["curve"][0]["rate"] == 1.0


def test_trend_counts_users_breakdown_and_compare(lake: tuple[InsightEngine, list[dict[str, Any]]]) -> None:
    engine, rows = lake
    spec = {"kind": "trend", "series": [{"event": "A"}, {"event": "A", "measure": "users"},
            {"event": "B", "measure": "sum", "property": "amount"}], "interval": "day",
            "date_from": "2026-03-09T00:00:00", "date_to": "2026-03-16T00:00:00", "compare": True}  # fmt: skip
    result = engine.run(spec)["result"]
    lines = {(r["series"], r["period"]): dict(r["points"]) for r in result}
    for day_offset in range(7):
        day = datetime(2026, 3, 9) + timedelta(days=day_offset)
        prev = day - timedelta(days=7)
        in_day = [r for r in rows if day <= r["timestamp"] < day + timedelta(days=1)]
        in_prev = [r for r in rows if prev <= r["timestamp"] < prev + timedelta(days=1)]
        key = day.isoformat()
        assert lines[(0, "current")][key] == sum(1 for r in in_day if r["event"] == "A")
        assert lines[(1, "current")][key] == len({r["user_id"] for r in in_day if r["event"] == "A"})
        assert lines[(2, "current")][key] == pytest.approx(
            sum(r["amount"] for r in in_day if r["event"] == "B") or None
        )
        assert lines[(0, "previous")][key] == sum(1 for r in in_prev if r["event"] == "A")
    spec = {"kind": "trend", "series": [{"event": "C"}], "interval": "week", "breakdown": "plan", "top_n": 2, **RANGE}
    broken = engine.run(spec)["result"]
    totals = {r["breakdown"]: r["total"] for r in broken}
    assert len(totals) == 3 and "(other)" in totals
    in_range = sum(1 for r in rows if r["event"] == "C" and D0 <= r["timestamp"] < D1)
    assert sum(totals.values()) == in_range
    # a column the writer's stages add, on a lake they never wrote (no GeoIP database): one line, no value
    (line,) = engine.run({**spec, "breakdown": "country"})["result"]
    assert line["breakdown"] == "(none)" and line["total"] == in_range, line


def test_journeys_timeline_catalog_and_cache(lake: tuple[InsightEngine, list[dict[str, Any]]]) -> None:
    engine, rows = lake
    spec = {"kind": "journey", "event": "A", "depth": 2, **RANGE}
    first = engine.run(spec)
    assert first["cached"] is False and engine.run(spec)["cached"] is True
    truth: dict[tuple[str, str], int] = defaultdict(int)
    for events in by_user([r for r in rows if datetime(2026, 3, 2) <= r["timestamp"] < datetime(2026, 3, 23)]).values():
        names = [e["event"] for e in events]
        if "A" in names:
            i = names.index("A")
            if i + 1 < len(names):
                truth[("A", names[i + 1])] += 1
    step1 = {(e["source"], e["target"]): e["users"] for e in first["result"]["edges"] if e["step"] == 1}
    assert step1 == dict(truth)
    timeline = engine.run({"kind": "timeline", "person": "user7", "limit": 5})["result"]["rows"]
    mine = sorted(
        (r for r in rows if r["user_id"] == "user7"), key=lambda r: (r["timestamp"], r["event_id"]), reverse=True
    )
    assert [r[0] for r in timeline] == [r["timestamp"] for r in mine[:5]]
    catalog = engine.run({"kind": "catalog"})["result"]
    assert {e["event"]: e["events"] for e in catalog["events"]} == {
        n: sum(1 for r in rows if r["event"] == n) for n in EVENTS
    }
    assert {(p["property"], p["type"]) for p in catalog["properties"] if p["event"] == "A"} == {
        ("plan", "VARCHAR"),
        ("amount", "UBIGINT"),
    }


def test_invalid_specs_name_the_field(lake: tuple[InsightEngine, list[dict[str, Any]]]) -> None:
    engine, _ = lake
    with pytest.raises(InsightError, match="steps"):
        engine.run({"kind": "funnel", "steps": [{"event": "A"}], **RANGE})
    with pytest.raises(InsightError, match="date_to"):
        engine.run(
            {
                "kind": "trend",
                "series": [{"event": "A"}],
                "date_from": "2026-03-02T00:00:00",
                "date_to": "2026-03-01T00:00:00",
            }
        )
    with pytest.raises(InsightError, match="property"):
        engine.run({"kind": "trend", "series": [{"event": "A", "measure": "sum"}], **RANGE})
    with pytest.raises(InsightError, match="breakdown"):
        engine.run({"kind": "trend", "series": [{"event": "A"}], "breakdown": "x'; DROP", **RANGE})


def test_buckets_follow_date_trunc() -> None:
    assert buckets(datetime(2026, 3, 4, 5), datetime(2026, 3, 17), "week") == [
        datetime(2026, 3, 2),
        datetime(2026, 3, 9),
        datetime(2026, 3, 16),
    ]
    assert buckets(datetime(2026, 11, 15), datetime(2027, 2, 1), "month")[-1] == datetime(2027, 1, 1)


def test_experiment_conversion_and_significance(tmp_path: Path) -> None:
    from scipy.stats import chi2_contingency

    rng = random.Random(5)
    rows: list[dict[str, Any]] = []
    truth: dict[str, list[int]] = {"control": [0, 0], "test": [0, 0]}
    for u in range(800):
        variant = "control" if u % 2 else "test"
        exposed_at = START + timedelta(seconds=rng.randrange(0, 10 * 86400))
        rows.append({"user_id": f"p{u}", "event": "Exposed", "timestamp": exposed_at, "plan": variant, "amount": 0})
        truth[variant][0] += 1
        rate = 0.1 if variant == "control" else 0.3
        if rng.random() < rate:  # converts inside the window
            rows.append({"user_id": f"p{u}", "event": "Paid", "plan": "-", "amount": 1,
                         "timestamp": exposed_at + timedelta(hours=rng.randrange(1, 100))})  # fmt: skip
            truth[variant][1] += 1
        elif rng.random() < 0.2:  # converts too late, or paid before being exposed: not counted
            late = exposed_at + timedelta(days=rng.choice([8, -1]))
            rows.append({"user_id": f"p{u}", "event": "Paid", "plan": "-", "amount": 1, "timestamp": late})
    for i, row in enumerate(rows):
        row["event_id"] = f"x{i:06d}"
    settings = make_settings(tmp_path / "exp")
    ensure_tables(open_catalog(settings))["events"].append(to_table(rows))
    engine = InsightEngine(QueryEngine(settings))
    spec = {"kind": "experiment", "exposure_event": "Exposed", "variant_property": "plan", "goal_event": "Paid",
            "window_seconds": 7 * 86400, "date_from": "2026-03-01T00:00:00",
            "date_to": "2026-04-01T00:00:00"}  # fmt: skip
    result = engine.run(spec)["result"]
    variants = {v["variant"]: v for v in result["variants"]}
    assert {k: [v["exposed"], v["converted"]] for k, v in variants.items()} == truth
    test = variants["test"]
    (n1, c1), (n0, c0) = truth["test"], truth["control"]
    expected_p = chi2_contingency([[c1, n1 - c1], [c0, n0 - c0]], correction=False)[1]
    assert test["p_value"] == pytest.approx(expected_p) and test["significant"]
    assert test["ci_low"] < test["rate"] < test["ci_high"]
    assert result["control"] == "control" and variants["control"]["control"]
