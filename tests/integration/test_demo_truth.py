"""The demo shop's ground truth, recovered by the insights: the backfill (importer + the lake writer's stages) into
a fresh lake, then the experiment, the funnel and identity stitching read back through InsightEngine."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from headwater.insights.engine import InsightEngine
from headwater.loadgen.scenarios.backfill import backfill
from headwater.loadgen.scenarios.base import GroundTruth
from headwater.query.engine import QueryEngine
from headwater.runtime.stages import build_stages
from tests.helpers import make_settings

END_US = 1_795_000_000 * 1_000_000  # a fixed end: the same data on every run
USERS = 20_000


@dataclass
class Demo:
    truth: GroundTruth
    query: QueryEngine
    insights: InsightEngine
    report: dict[str, Any]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    settings = make_settings(Path(tmp_path_factory.mktemp("demo")))
    scenario, report = backfill(settings, "shop", 7, USERS, 30, build_stages, end_us=END_US)
    query = QueryEngine(settings)
    try:
        yield Demo(scenario.truth, query, InsightEngine(query, cache_entries=0), report)
    finally:
        query.close()


def test_every_event_is_imported_and_enriched(demo: Demo) -> None:
    assert demo.report["events"] == demo.truth.events and demo.report["quarantined"] == 0
    rows = demo.query.execute(
        "SELECT count(*), count(browser), count(device_type), count(channel), count(session_id) FROM events"
    ).rows[0]
    assert rows[0] == demo.truth.events
    assert rows[1] == rows[2] == rows[0]  # every event has a known user agent
    assert rows[3] == rows[4] == rows[0]  # every event has a page URL (identify calls: the signup page)


def _ci_contains(variant: dict[str, Any], rate: float) -> bool:
    return variant["ci_low"] <= rate <= variant["ci_high"]


def test_experiment_recovers_the_true_lift(demo: Demo) -> None:
    truth = demo.truth.experiment
    start, end = truth["range"]
    answer = demo.insights.run(
        {"kind": "experiment", "exposure_event": truth["exposure_event"], "variant_property": "variant",
         "goal_event": truth["goal_event"], "window_seconds": truth["window_days"] * 86400, "control": "control",
         "date_from": start, "date_to": end}
    )["result"]  # fmt: skip
    variants = {v["variant"]: v for v in answer["variants"]}
    assert set(variants) == set(truth["variants"])
    for name, expected in truth["variants"].items():
        got = variants[name]
        # exactly the people the generator exposed, and converted, in the range
        assert (got["exposed"], got["converted"]) == (expected["exposed"], expected["converted"])
        assert _ci_contains(got, expected["true_rate"]), (name, got, expected)
    control, treated = variants["control"], variants["new-button"]
    # the difference's interval from the two Wilson intervals (Newcombe's method 10) holds the true difference
    low = treated["difference"] - math.hypot(treated["rate"] - treated["ci_low"], control["ci_high"] - control["rate"])
    high = treated["difference"] + math.hypot(treated["ci_high"] - treated["rate"], control["rate"] - control["ci_low"])
    assert low <= truth["true_difference"] <= high, (low, truth["true_difference"], high)
    assert treated["lift"] > 0


def test_funnel_rates_match_the_design(demo: Demo) -> None:
    truth = demo.truth.funnel
    start, end = truth["range"]
    answer = demo.insights.run(
        {"kind": "funnel", "steps": [{"event": step} for step in truth["steps"]],
         "window_seconds": truth["window_days"] * 86400, "date_from": start, "date_to": end}
    )["result"]  # fmt: skip
    steps = answer[0]["steps"]
    assert [s["count"] for s in steps] == truth["reached"]
    for step, designed in zip(steps[1:], truth["rates_from_previous"][1:], strict=True):
        rate, n = step["conversion_from_previous"], step["count"] + step["drop_off"]
        assert abs(rate - designed) <= 4 * math.sqrt(designed * (1 - designed) / n), (step, designed)


def test_anonymous_visitors_are_stitched_to_their_accounts(demo: Demo) -> None:
    stitched = demo.query.execute(
        "SELECT count(DISTINCT anonymous_id) FROM events WHERE user_id IS NULL AND person_id LIKE 'user-%'"
    ).rows[0][0]
    assert stitched > 0  # anonymous browsing before the sign-up counts for the person who signed up
    people = demo.query.execute("SELECT count(DISTINCT person_id) FROM events").rows[0][0]
    assert people == demo.truth.identified_people + demo.truth.anonymous_people


def test_retention_is_a_decaying_curve(demo: Demo) -> None:
    start, end = demo.truth.start, demo.truth.end
    curve = demo.insights.run(
        {"kind": "retention", "start_event": "Signed Up", "return_event": "Page Viewed", "period": "week",
         "periods": 3, "date_from": start, "date_to": end}
    )["result"]["curve"]  # fmt: skip
    rates = [point["rate"] for point in curve]
    assert rates[0] == 1.0
    assert 0 < rates[3] < rates[1] < 1
