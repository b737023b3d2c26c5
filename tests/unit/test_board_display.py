"""Dashboard display options: number tiles (a trend's figure and its change vs the previous period), custom
and preset board ranges, and the validation of both."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from headwater.boards.render import apply_board, number_summary
from headwater.boards.store import BoardError, BoardStore

NOW = datetime(2026, 3, 10, 12, 30, 15, tzinfo=UTC)
TREND = {"kind": "trend", "series": [{"event": "Order Completed"}], "interval": "day",
         "date_from": "2026-01-01T00:00:00+00:00", "date_to": "2026-01-08T00:00:00+00:00"}  # fmt: skip


def series(period: str, values: list[float | None], breakdown: str | None = None, index: int = 0) -> dict[str, object]:
    points = [[f"2026-03-0{i + 1}T00:00:00", v] for i, v in enumerate(values)]
    return {"series": index, "period": period, "breakdown": breakdown, "points": points}


def test_a_number_tile_runs_its_trend_with_the_previous_period() -> None:
    assert apply_board(TREND, {}, NOW, display="number")["compare"] is True
    assert "compare" not in apply_board(TREND, {}, NOW)  # a chart stays as saved
    funnel = {"kind": "funnel", "steps": [{"event": "a"}, {"event": "b"}]}
    assert "compare" not in apply_board(funnel, {}, NOW, display="number")


def test_board_ranges_presets_and_custom() -> None:
    ranged = apply_board(TREND, {"last_days": 7}, NOW)
    # whole UTC days: today and the 6 before (answered from the rollups)
    assert (ranged["date_from"], ranged["date_to"]) == ("2026-03-04T00:00:00+00:00", "2026-03-11T00:00:00+00:00")
    day = apply_board(TREND, {"last_days": 1}, NOW)  # the last 24 h, to the end of the current minute
    assert (day["date_from"], day["date_to"]) == ("2026-03-09T12:31:00+00:00", "2026-03-10T12:31:00+00:00")
    custom = {"last_days": 7, "date_from": "2026-02-01T00:00:00+00:00", "date_to": "2026-02-15T00:00:00+00:00"}
    ranged = apply_board(TREND, custom, NOW)
    assert (ranged["date_from"], ranged["date_to"]) == (custom["date_from"], custom["date_to"])  # custom wins
    own = apply_board(TREND, {"last_days": None}, NOW)
    assert (own["date_from"], own["date_to"]) == (TREND["date_from"], TREND["date_to"])


def test_number_of_counts_is_the_total_with_its_change() -> None:
    result = [series("current", [3, 4, 5]), series("previous", [2, 2, 2]), series("current", [100], index=1)]
    got = number_summary({**TREND, "compare": True}, result)
    assert got["value"] == 12 and got["previous"] == 6 and got["change"] == pytest.approx(1.0)
    assert got["label"] == "total" and got["event"] == "Order Completed"


def test_number_of_a_breakdown_adds_counts_and_sums() -> None:
    query = {**TREND, "series": [{"event": "Order Completed", "measure": "sum", "property": "revenue"}]}
    result = [series("current", [10, None], "fr"), series("current", [5, 5], "de"), series("previous", [40], "fr")]
    got = number_summary(query, result)
    assert (got["value"], got["previous"], got["change"]) == (20, 40, -0.5)


def test_number_of_distinct_users_is_the_average_per_interval() -> None:
    query = {**TREND, "series": [{"event": "Page Viewed", "measure": "users"}]}
    got = number_summary(query, [series("current", [10, 20, 30]), series("previous", [0, 0, 0])])
    assert got["value"] == 20 and got["label"] == "average per day"
    assert got["previous"] == 0 and got["change"] is None  # nothing before: no percentage


def test_number_without_previous_period_or_values() -> None:
    got = number_summary(TREND, [series("current", [None, None])])
    assert got["value"] is None and got["previous"] is None and got["change"] is None
    got = number_summary({**TREND, "compare": True}, [series("current", [2, 3])])  # no events before: no line
    assert got["value"] == 5 and got["previous"] == 0 and got["change"] is None
    for measure, expected in (("min", 1.0), ("max", 9.0), ("avg", 5.0)):
        query = {**TREND, "series": [{"event": "x", "measure": measure, "property": "p"}]}
        assert number_summary(query, [series("current", [1, 5, 9])])["value"] == expected


def test_store_validates_display_and_ranges(tmp_path: Path) -> None:
    store = BoardStore(tmp_path / "app.db")
    try:
        insight = store.save_insight("Orders", TREND, "ana")
        tile = {"insight_id": insight["id"], "w": 4, "h": 3, "display": "number"}
        board = store.save_dashboard("Shop", {"tiles": [tile], "last_days": 30}, "ana")
        assert board["tiles"][0]["display"] == "number" and board["date_from"] is None
        live = {"live": {"title": "Live"}, "display": "number"}
        with pytest.raises(BoardError, match="display"):
            store.save_dashboard("Shop", {"tiles": [live]}, "ana", board["id"])
        with pytest.raises(BoardError, match="date_from and date_to"):
            store.save_dashboard("Shop", {"date_from": "2026-01-01T00:00:00Z"}, "ana", board["id"])
        with pytest.raises(BoardError, match="date_to: must be after"):
            store.save_dashboard("Shop", {"date_from": "2026-01-02T00:00:00Z", "date_to": "2026-01-01T00:00:00Z"},
                                 "ana", board["id"])  # fmt: skip
        with pytest.raises(BoardError, match=r"tiles\.0\.w"):
            store.save_dashboard("Shop", {"tiles": [{**tile, "w": 13}]}, "ana", board["id"])
        custom = {"tiles": [tile], "date_from": "2026-01-01T00:00:00Z", "date_to": "2026-01-31T00:00:00Z"}
        saved = store.save_dashboard("Shop", custom, "ana", board["id"])
        assert saved["date_from"].startswith("2026-01-01T00:00:00") and saved["tiles"][0]["w"] == 4
    finally:
        store.close()
