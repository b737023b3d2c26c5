"""Demo scenarios: deterministic, valid Segment events, rows equal to what the importer makes of them, truth."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest

from headwater.core.events import SEGMENT_TYPES, RowBuilder, check_segment
from headwater.loadgen.scenarios import SCENARIOS
from headwater.loadgen.scenarios.base import DAY_US, US, lake_rows, render
from headwater.loadgen.scenarios.demo_board import create_demo_board, insights
from headwater.loadgen.scenarios.live import LiveQueue
from tests.helpers import make_settings

END = 1_795_000_000 * US
SHOP_NAMES = {"Page Viewed", "Product Viewed", "Added to Cart", "Signed Up", "Activated", "$experiment_started",
              "Order Completed"}  # fmt: skip


def lines_of(name: str, seed: int, users: int = 800, days: int = 14) -> list[dict]:
    made = SCENARIOS[name].generate(seed, users, END - days * DAY_US, END)
    events = made.events.sorted()
    return [orjson.loads(line) for line in render(events, made.people, made.names, made.site, "t").to_pylist()]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_same_seed_gives_the_same_events(name: str) -> None:
    assert lines_of(name, 3) == lines_of(name, 3)
    assert lines_of(name, 3) != lines_of(name, 4)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_events_are_valid_segment_calls_in_the_range(name: str) -> None:
    events = lines_of(name, 5)
    assert len(events) > 1000
    for event in events:
        assert event["type"] in SEGMENT_TYPES
        check_segment(event, None)  # raises on an invalid call
        assert END - 14 * DAY_US <= _micros(event["timestamp"]) < END
        context = event["context"]
        assert context["userAgent"] and context["ip"] and context["page"]["url"].startswith("https://")
        traits = event.get("properties") or event.get("traits")
        assert {"country", "device"} <= set(traits)
    assert len({e["messageId"] for e in events}) == len(events)


def _micros(stamp: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * US)


def test_shop_events_carry_the_funnel_experiment_and_identities() -> None:
    events = lines_of("shop", 7, users=3000, days=30)
    names = Counter(e.get("event") for e in events if e["type"] == "track")
    assert set(names) == SHOP_NAMES
    assert names["Page Viewed"] > names["Signed Up"] > names["Activated"] > names["Order Completed"] > 0
    orders = [e["properties"] for e in events if e.get("event") == "Order Completed"]
    assert all(o["revenue"] > 0 and o["items"] >= 1 and len(o["currency"]) == 3 for o in orders)
    exposures = [e["properties"] for e in events if e.get("event") == "$experiment_started"]
    assert {x["experiment"] for x in exposures} == {"checkout-button"}
    assert {x["variant"] for x in exposures} == {"control", "new-button"}
    identifies = [e for e in events if e["type"] == "identify"]
    assert identifies and all(e["userId"] and e["anonymousId"] for e in identifies)
    # some of the people who identify browsed anonymously first (a later visit's sign-up)
    first_seen: dict[str, str] = {}
    for event in events:
        first_seen.setdefault(event["anonymousId"], event["timestamp"])
    earlier = [e for e in identifies if first_seen[e["anonymousId"]] < e["timestamp"]]
    assert earlier
    assert {e["properties"]["plan"] for e in events if e["type"] == "track"} == {"free", "pro", "team"}
    assert any("utm_source=" in e["context"]["page"]["url"] for e in events)


def test_truth_matches_the_design() -> None:
    made = SCENARIOS["shop"].generate(7, 5000, END - 30 * DAY_US, END)
    truth = made.truth.as_dict()
    assert truth["events"] == len(made.events)
    experiment = truth["experiment"]
    rates = {name: v["true_rate"] for name, v in experiment["variants"].items()}
    assert rates["new-button"] - rates["control"] == pytest.approx(experiment["true_difference"])
    assert experiment["true_lift"] == pytest.approx(experiment["true_difference"] / rates["control"])
    reached = truth["funnel"]["reached"]
    assert reached[0] > reached[1] > reached[2] > 0
    orjson.dumps(truth)  # JSON as is


def test_lake_rows_equal_what_the_importer_makes_of_the_lines() -> None:
    made = SCENARIOS["shop"].generate(9, 400, END - 7 * DAY_US, END)
    events = made.events.sorted()
    received = END + 5 * US
    rows = lake_rows(events, made.people, made.names, made.site, "p", "demo", received, 1)
    builder = RowBuilder(inputs=True)
    meta = {"src": "demo", "ep": "batch", "ra": received // 1000}
    for offset, line in enumerate(render(events, made.people, made.names, made.site, "p").to_pylist(), start=1):
        builder.add({"m": meta, "e": orjson.loads(line)}, "log", 0, offset)
    parsed, quarantine = builder.tables()
    assert quarantine.num_rows == 0
    assert rows.schema.names == parsed.schema.names
    for name in rows.schema.names:
        assert rows.column(name).to_pylist() == parsed.column(name).cast(rows.schema.field(name).type).to_pylist(), name


def test_live_visits_continue_the_people_in_time_order() -> None:
    made = SCENARIOS["shop"].generate(7, 2000, END - 30 * DAY_US, END)
    people = made.people.size
    signed = int((made.state["signed_at"] < np.iinfo(np.int64).max).sum())
    queue = LiveQueue(made, 7)
    count = sum(queue.add_block(END + i * 10 * US, 50.0) for i in range(30))
    assert count > 1000
    lines = queue.due(END + 3600 * US)
    assert len(lines) == count and not queue.lines
    times = [orjson.loads(line)["timestamp"] for line in lines]
    assert times == sorted(times) and times[0] >= "2026-11-17"
    assert made.people.size > people  # newcomers arrived
    assert int((made.state["signed_at"] < np.iinfo(np.int64).max).sum()) > signed  # and some signed up
    assert pa.array(times).null_count == 0


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_live_visits_at_a_low_rate(name: str) -> None:
    """`demo_rate` 1 (or 0): blocks of one visit, which brought 0 newcomers and made the shop fail every second."""
    made = SCENARIOS[name].generate(7, 300, END - 7 * DAY_US, END)
    for rate in (1.0, 0.0):
        queue = LiveQueue(made, 7)
        count = sum(queue.add_block(END + i * 10 * US, rate) for i in range(20))
        assert count > 0 and len(queue.due(END + 3600 * US)) == count


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_demo_board_saves_runnable_insights(name: str, tmp_path: Path) -> None:
    board = create_demo_board(make_settings(tmp_path), name, 30)
    assert board["last_days"] == 30 and len(board["tiles"]) >= 6
    events = set(SCENARIOS[name].generate(1, 300, END - 7 * DAY_US, END).names)
    for _, query, _ in insights(30, scenario=name):
        named = [s["event"] for s in query.get("series", [])] + [s["event"] for s in query.get("steps", [])]
        named += [query[k] for k in ("start_event", "return_event", "exposure_event", "goal_event") if k in query]
        assert set(named) <= events, (name, query)


def test_a_backfill_run_again_imports_nothing_twice(tmp_path: Path) -> None:
    from headwater.loadgen.scenarios.backfill import import_scenario, simulate
    from headwater.query.engine import QueryEngine
    from headwater.runtime.stages import build_stages

    settings = make_settings(tmp_path)
    made = simulate("shop", 2, 300, 3, END)
    first = import_scenario(settings, made, build_stages, compact=False)
    again = import_scenario(settings, made, build_stages, compact=False)
    assert first["events"] == len(made.events) and again["events"] == 0 and again["skipped"] == len(made.events)
    query = QueryEngine(settings)
    try:
        assert (
            query.execute("SELECT count(*), count(DISTINCT event_id), count(browser) FROM events").rows[0]
            == [len(made.events)] * 3
        )
    finally:
        query.close()
