"""Expected bands and anomaly marks (insights/anomaly.py): the band arithmetic, seasonal slots, and a trend with
`anomalies: true` run by the InsightEngine over a small real lake (the history query included)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from headwater.core.events import EVENTS_SCHEMA
from headwater.insights import anomaly
from headwater.insights.engine import InsightEngine
from headwater.lake.tables import close_catalog, ensure_tables, open_catalog
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings

WEEKDAY = [100, 120, 115, 110, 105, 60, 40]  # Monday first: a weekly shape
START = datetime(2026, 1, 5)  # a Monday


def test_band_point_median_mad_and_floors() -> None:
    # counts: MAD 1.0 gives a spread of 1.48, below √11.5 = 3.39, which is used
    expected, low, high = anomaly.band_point([10, 12, 11, 13], counts=True)  # type: ignore[misc]
    assert expected == 11.5
    assert high == pytest.approx(11.5 + 3 * math.sqrt(11.5))
    assert low == pytest.approx(11.5 - 3 * math.sqrt(11.5))
    # other measures: 1.4826 · MAD (deviations 5, 15, 25, 5: MAD 10), above the 5 % floor
    expected, low, high = anomaly.band_point([100, 120, 80, 110], counts=False)  # type: ignore[misc]
    assert expected == 105
    assert (low, high) == (pytest.approx(105 - 3 * 14.826), pytest.approx(105 + 3 * 14.826))
    # a flat history: the floor keeps the band open; counts never go below 0
    assert anomaly.band_point([50, 50, 50, 50], counts=False) == (50, pytest.approx(42.5), pytest.approx(57.5))
    assert anomaly.band_point([1, 1, 1, 1], counts=True) == (1, 0.0, 4.0)
    # one wild reference does not move it (a mean and a standard deviation would)
    expected, low, high = anomaly.band_point([100, 102, 98, 1000], counts=True)  # type: ignore[misc]
    assert expected == 101 and high < 140
    assert anomaly.band_point([10, 12], counts=True) is None  # fewer than 3 references


def daily(days: int, start: datetime, spike: dict[int, float] | None = None) -> list[list[Any]]:
    """A weekly-seasonal daily series with a small deterministic wobble; `spike` replaces values by day index."""
    out = []
    for i in range(days):
        at = start + timedelta(days=i)
        value = WEEKDAY[at.weekday()] + (i * 7) % 5 - 2
        out.append([at.isoformat(), float((spike or {}).get(i, value))])
    return out


def test_daily_band_uses_the_same_weekday_and_marks_spikes_and_dips() -> None:
    history = daily(28, START)
    first = START + timedelta(days=28)
    points = daily(14, first, spike={3: 400.0, 9: 5.0})
    bands, marks = anomaly.band(points, history, "day", True, datetime(2030, 1, 1))
    assert len(bands) == 14
    for (at, _), (band_at, expected, low, high) in zip(points, bands, strict=True):
        assert band_at == at
        assert expected == pytest.approx(WEEKDAY[datetime.fromisoformat(at).weekday()], abs=2)
        assert low < expected < high
    assert marks == [[points[3][0], 400.0, "high"], [points[9][0], 5.0, "low"]]
    # a day is compared with the same weekday only: a Sunday at a Monday's level is an anomaly
    sunday = next(i for i, (at, _) in enumerate(points) if datetime.fromisoformat(at).weekday() == 6)
    raised = [list(p) for p in points]
    raised[sunday][1] = 100.0
    _, marks = anomaly.band(raised, history, "day", True, datetime(2030, 1, 1))
    assert [raised[sunday][0], 100.0, "high"] in marks


def test_partial_interval_and_missing_history() -> None:
    history = daily(28, START)
    first = START + timedelta(days=28)
    points = daily(3, first, spike={2: 1.0})  # the last day has barely started
    _, marks = anomaly.band(points, history, "day", True, first + timedelta(days=2, hours=1))
    assert marks == []
    _, marks = anomaly.band(points, history, "day", True, first + timedelta(days=3))
    assert marks == [[points[2][0], 1.0, "low"]]
    # no history: no band (None entries) and no marks
    bands, marks = anomaly.band(points, [], "day", True, datetime(2030, 1, 1))
    assert all(b[1:] == [None, None, None] for b in bands) and marks == []
    # zeros before a count's first event are "no data yet", not references
    zeros = [[at, 0.0] for at, _ in history[:21]] + history[21:]
    bands, _ = anomaly.band(points, zeros, "day", True, datetime(2030, 1, 1))
    assert all(b[1] is None for b in bands)  # only one week of real references


def test_a_range_starting_inside_an_interval_is_not_a_dip() -> None:
    """A trend from noon (a board's "last 24 h" by hour, an API caller's date_from) holds half its first day."""
    history = daily(28, START)
    first = START + timedelta(days=28)
    points = daily(3, first)
    points[0][1] = points[0][1] / 2  # only from noon on
    _, marks = anomaly.band(points, history, "day", True, datetime(2030, 1, 1))
    assert marks == [[points[0][0], points[0][1], "low"]]  # what it looked like before
    bands, marks = anomaly.band(points, history, "day", True, datetime(2030, 1, 1), first + timedelta(hours=12))
    assert marks == [] and bands[0][1] is not None  # still drawn with its band, not marked
    later = daily(36, first)  # the half day is no reference for the same weekday a week on
    later[0][1] = 1.0
    bands, _ = anomaly.band(later, history, "day", True, datetime(2030, 1, 1), first + timedelta(hours=12))
    assert bands[7][1] == pytest.approx(WEEKDAY[first.weekday()], abs=2)


def test_hourly_band_reads_the_hour_of_the_week() -> None:
    start = datetime(2026, 2, 2)
    history = [[(start + timedelta(hours=h)).isoformat(), float(10 + (h % 24))] for h in range(28 * 24)]
    at = start + timedelta(days=28, hours=15)
    bands, marks = anomaly.band([[at.isoformat(), 25.0], [(at + timedelta(hours=1)).isoformat(), 90.0]], history,
                                "hour", True, datetime(2030, 1, 1))  # fmt: skip
    assert bands[0][1] == 25.0 and bands[1][1] == 26.0
    assert marks == [[(at + timedelta(hours=1)).isoformat(), 90.0, "high"]]


def test_weekly_and_monthly_read_the_previous_points() -> None:
    history = [[(START + timedelta(weeks=i)).isoformat(), v] for i, v in enumerate([100.0, 110.0, 90.0, 105.0])]
    at = (START + timedelta(weeks=4)).isoformat()
    bands, marks = anomaly.band([[at, 300.0]], history, "week", True, datetime(2030, 1, 1))
    assert bands[0][1] == 102.5 and marks == [[at, 300.0, "high"]]
    months = [[datetime(2025, m, 1).isoformat(), 1000.0 + m] for m in range(8, 12)]
    bands, marks = anomaly.band([[datetime(2025, 12, 1).isoformat(), 1010.0]], months, "month", True,
                                datetime(2030, 1, 1))  # fmt: skip
    assert bands[0][1] == 1009.5 and marks == []


def to_table(rows: list[tuple[str, datetime]]) -> pa.Table:
    columns: dict[str, list[Any]] = {f.name: [] for f in EVENTS_SCHEMA}
    for i, (event, at) in enumerate(rows):
        values = {"event_id": f"e{i:07d}", "type": "track", "event": event, "user_id": f"u{i % 50}", "timestamp": at,
                  "received_at": at, "source": "test", "properties": "{}"}  # fmt: skip
        for name, column in columns.items():
            column.append(values.get(name))
    return pa.Table.from_pydict(columns, schema=EVENTS_SCHEMA)


DAYS = 56
SPIKE_DAY = 50  # 8 weeks of "Visit"; day 50 has four times the usual; "Gone" stops after day 40


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InsightEngine]:
    settings = make_settings(tmp_path_factory.mktemp("anomaly"))
    rows = []
    for day in range(DAYS):
        at = START + timedelta(days=day)
        visits = WEEKDAY[at.weekday()] * (4 if day == SPIKE_DAY else 1)
        rows += [("Visit", at + timedelta(minutes=n)) for n in range(visits)]
        if day < 40:
            rows += [("Gone", at + timedelta(hours=n)) for n in range(20)]
    catalog = open_catalog(settings)
    ensure_tables(catalog)["events"].append(to_table(rows))
    close_catalog(catalog)
    query = QueryEngine(settings)
    try:
        yield InsightEngine(query)
    finally:
        query.close()


def spec(**extra: Any) -> dict[str, Any]:
    return {"kind": "trend", "series": [{"event": "Visit"}, {"event": "Gone"}], "interval": "day",
            "date_from": (START + timedelta(days=42)).isoformat() + "Z",
            "date_to": (START + timedelta(days=DAYS)).isoformat() + "Z", **extra}  # fmt: skip


def test_engine_adds_band_and_marks_from_a_history_query(engine: InsightEngine) -> None:
    plain = engine.run(spec())
    assert "band" not in plain["result"][0] and "history_sql" not in plain
    assert [line["event"] for line in plain["result"]] == ["Visit"]  # no Gone in the range
    answer = engine.run(spec(anomalies=True))
    assert not answer["cached"]  # the cache tells the two apart
    assert "history_sql" in answer and answer["history_sql"] != answer["sql"]
    visit, gone = answer["result"]
    spike = (START + timedelta(days=SPIKE_DAY)).isoformat()
    assert visit["anomalies"] == [[spike, 4.0 * WEEKDAY[1], "high"]]  # day 50 is a Tuesday
    for at, expected, low, high in visit["band"]:
        assert expected == WEEKDAY[datetime.fromisoformat(at).weekday()] and low < expected < high
    # a count that stopped after day 39: its line of zeros is added and is below its band, until two of the four
    # references are zeros too (days 54 and 55: median 10, MAD 10, so the low edge is 0)
    assert gone["event"] == "Gone" and {v for _, v in gone["points"]} == {0.0}
    assert [m[0] for m in gone["anomalies"]] == [at for at, _ in gone["points"][:12]]
    assert {m[2] for m in gone["anomalies"]} == {"low"}
    assert engine.run(spec(anomalies=True))["cached"]


def test_engine_forecast_extends_the_line(engine: InsightEngine) -> None:
    end = START + timedelta(days=SPIKE_DAY)  # before the spike (Holt-Winters would carry it into next Tuesday)
    answer = engine.run(spec(forecast=7, series=[{"event": "Visit"}], date_to=end.isoformat() + "Z"))
    (line,) = answer["result"]
    fc = line["forecast"]
    assert len(fc["points"]) == 7 and "Holt-Winters" in fc["model"]
    assert fc["points"][0][0] == end.isoformat()
    assert fc["history"] == SPIKE_DAY  # every complete day from the first event
    for at, yhat, low, high in fc["points"]:
        assert low <= yhat <= high
        assert yhat == pytest.approx(WEEKDAY[datetime.fromisoformat(at).weekday()], rel=0.2)
    assert fc["backtest"]["origins"] >= 1 and fc["backtest"]["horizon"] == 7
    # too little history: a clear error instead of a line
    short = engine.run(spec(forecast=3, series=[{"event": "Visit"}], interval="month"))
    assert "needs at least 8 intervals" in short["result"][0]["forecast"]["error"]


def test_history_query_span() -> None:
    from headwater.insights.engine import parse

    query = parse(spec(anomalies=True, date_from="2026-03-04T15:30:00Z", date_to="2026-03-10T00:00:00Z"))
    history = anomaly.history_query(query)
    assert history is not None
    assert history.date_to == datetime(2026, 3, 4, tzinfo=UTC)
    assert history.date_from == datetime(2026, 3, 4, tzinfo=UTC) - timedelta(days=28)
    assert anomaly.history_query(parse(spec())) is None


def test_every_field_is_validated() -> None:
    from headwater.insights.engine import InsightError, parse

    with pytest.raises(InsightError, match="forecast"):
        parse(spec(forecast=400))
    with pytest.raises(InsightError, match="anomalies"):
        parse(spec(anomalies="maybe"))
