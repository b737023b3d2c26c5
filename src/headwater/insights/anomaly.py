"""Expected bands and anomalies on trend lines (TrendQuery `anomalies: true`), and the trend post-processing hook.

The band is a seasonal baseline with a robust spread, computed per point from the same line's earlier values:
- reference values: the same slot in the previous K = 4 seasons: the same hour of the week in the 4 previous weeks
  (hourly lines), the same weekday in the 4 previous weeks (daily), the 4 previous points (weekly and monthly);
- expected = the median of the references; spread = 1.4826 · MAD (median absolute deviation from that median: the
  standard deviation for normal noise, unmoved by one earlier outlier), floored at √expected for counts (`count`,
  `users`: Poisson noise) and at 5 % of |expected| for other measures, so a flat history does not give a zero-width
  band;
- band = expected ± 3 · spread (the low edge of a count is at least 0). A point needs at least 3 references to have
  a band (its band entry is then None).
A point outside its band is an anomaly (`high` above, `low` below), unless its interval is not over yet (it ends
after `date_to` or after now) or began before `date_from` (a range starting mid-interval): a partial interval
would look low. Such a first partial point is not a reference for later points nor data for the forecast either.

The engine fetches the history the references need with a second trend query over the span just before
`date_from` (`history_sql` in the answer). Zero counts before a line's first non-zero value are taken as "no data
yet" rather than as references (a new event would otherwise look anomalous for four weeks). Breakdown lines are
matched by label; the history query keeps up to 100 labels, and the `(other)` line, whose members differ between
the two spans, is compared as it is.

Keys added to a trend line (only when asked): `band` [[iso, expected, low, high] per point, or [iso, None, None,
None]], `anomalies` [[iso, value, "high"|"low"]], and with `forecast: N`, `forecast` (insights/forecast.py).
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

from headwater.insights.from_rollups import shift
from headwater.insights.spec import TrendQuery

K = 4  # seasons of references
Z = 3.0  # band half-width in spreads
MAD_SCALE = 1.4826
MIN_REFERENCES = 3
RELATIVE_FLOOR = 0.05  # spread floor of non-count measures, a share of |expected|
SEASON_STEPS = {"hour": 168, "day": 7, "week": 1, "month": 1}
"""Intervals between a point and its first reference (a week for hours and days, one point otherwise)."""
BAND_HISTORY = {interval: K * steps for interval, steps in SEASON_STEPS.items()}
"""Intervals of history the band needs before the first point."""
COUNTS = ("count", "users")


def step(start: datetime, n: int, interval: str) -> datetime:
    """The bucket start `n` intervals after (negative: before) `start`."""
    if interval == "hour":
        return start + timedelta(hours=n)
    return shift(start, n, interval)


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=None)


def naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def band_point(references: list[float], counts: bool) -> tuple[float, float, float] | None:
    """(expected, low, high) from the reference values; None with fewer than MIN_REFERENCES."""
    if len(references) < MIN_REFERENCES:
        return None
    expected = statistics.median(references)
    spread = MAD_SCALE * statistics.median(abs(v - expected) for v in references)
    floor = expected**0.5 if counts and expected > 0 else RELATIVE_FLOOR * abs(expected)
    spread = max(spread, floor)
    low, high = expected - Z * spread, expected + Z * spread
    if counts:
        low = max(low, 0.0)
    return expected, low, high


def _known(values: dict[datetime, float | None], counts: bool) -> dict[datetime, float]:
    """The values usable as references: not None, and for counts not the zeros before the first non-zero value."""
    ordered = sorted(values.items())
    if counts:
        first = next((i for i, (_, v) in enumerate(ordered) if v), len(ordered))
        ordered = ordered[first:]
    return {at: float(v) for at, v in ordered if v is not None}


def band(
    points: list[list[Any]],
    history: list[list[Any]],
    interval: str,
    counts: bool,
    complete_before: datetime,
    complete_from: datetime | None = None,
) -> tuple[list[list[Any]], list[list[Any]]]:
    """(band, anomalies) of one line: `points` and `history` are [[iso, value]] (history: earlier buckets);
    points whose interval ends after `complete_before` or starts before `complete_from` (naive UTC: the range
    began inside it, so it holds part of the interval only) are never marked, nor taken as references."""
    values: dict[datetime, float | None] = {parse_iso(at): v for at, v in history}
    values.update({parse_iso(at): v for at, v in points})
    if complete_from is not None:
        values = {at: v for at, v in values.items() if at >= complete_from or step(at, 1, interval) <= complete_from}
    known = _known(values, counts)
    season = SEASON_STEPS[interval]
    out: list[list[Any]] = []
    marks: list[list[Any]] = []
    for at, value in points:
        start = parse_iso(at)
        refs = [known[r] for k in range(1, K + 1) if (r := step(start, -k * season, interval)) in known]
        found = band_point(refs, counts)
        if found is None:
            out.append([at, None, None, None])
            continue
        expected, low, high = found
        out.append([at, expected, low, high])
        if value is None or step(start, 1, interval) > complete_before:
            continue
        if complete_from is not None and start < complete_from:
            continue
        if value > high:
            marks.append([at, value, "high"])
        elif value < low:
            marks.append([at, value, "low"])
    return out, marks


# --- the engine's post-processing of trends


def wanted(query: Any) -> bool:
    return isinstance(query, TrendQuery) and (query.anomalies or query.forecast > 0)


def history_intervals(query: TrendQuery) -> int:
    """How many intervals of history before `date_from` the band and the forecast need."""
    from headwater.insights.forecast import HISTORY

    need = BAND_HISTORY[query.interval] if query.anomalies else 0
    return max(need, HISTORY[query.interval] if query.forecast else 0)


def grid_start(query: TrendQuery) -> datetime:
    """The first bucket start of the query's range (as the engine's grid has it)."""
    start = naive_utc(query.date_from).replace(microsecond=0, second=0, minute=0)
    if query.interval != "hour":
        start = start.replace(hour=0)
    if query.interval == "week":
        start -= timedelta(days=start.weekday())
    if query.interval == "month":
        start = start.replace(day=1)
    return start


def history_query(query: Any) -> TrendQuery | None:
    """The trend over the span just before `date_from` that bands and forecasts read; None when not asked."""
    if not wanted(query):
        return None
    end = grid_start(query)
    start = step(end, -history_intervals(query), query.interval)
    return query.model_copy(update={
        "date_from": start.replace(tzinfo=UTC), "date_to": end.replace(tzinfo=UTC), "anomalies": False,
        "forecast": 0, "compare": False, "top_n": max(query.top_n, 100),
    })  # fmt: skip


def signature(query: TrendQuery) -> str:
    """What the post-processing adds, for the result cache key (the SQL does not say it)."""
    return f"-- anomalies={query.anomalies} forecast={query.forecast}"


def annotate(query: TrendQuery, lines: list[dict[str, Any]], history: list[dict[str, Any]], now: datetime) -> None:
    """Add `band`/`anomalies` and `forecast` to the current-period lines of a shaped trend (in place)."""
    earlier = {(h["series"], h["breakdown"]): h["points"] for h in history if h["period"] == "current"}
    complete_before = min(naive_utc(query.date_to), naive_utc(now))
    complete_from = naive_utc(query.date_from)
    if query.breakdown is None:  # a count that fell to nothing in the range: its line of zeros, to compare
        present = {line["series"] for line in lines if line["period"] == "current"}
        grid = [at for at, _ in lines[0]["points"]] if lines else _grid(query)
        for (series, _), _points in sorted(earlier.items(), key=lambda item: item[0][0]):
            spec = query.series[series]
            if series not in present and spec.measure in COUNTS:
                lines.append({"series": series, "event": spec.event, "measure": spec.measure, "period": "current",
                              "breakdown": None, "points": [[at, 0.0] for at in grid], "total": 0.0})  # fmt: skip
        lines.sort(key=lambda line: (line["series"], line["period"]))
    forecasts = 0
    for line in lines:
        if line["period"] != "current":
            continue
        past = earlier.get((line["series"], line["breakdown"]), [])
        counts = line["measure"] in COUNTS
        if query.anomalies:
            line["band"], line["anomalies"] = band(
                line["points"], past, query.interval, counts, complete_before, complete_from
            )
        if query.forecast:
            forecasts += 1
            line["forecast"] = _forecast(
                query, past + line["points"], counts, complete_before, forecasts, complete_from
            )


MAX_FORECAST_LINES = 20


def _grid(query: TrendQuery) -> list[str]:
    """The bucket starts of the query's range, as the shaped points carry them."""
    from headwater.insights.engine import buckets

    return [at.isoformat() for at in buckets(query.date_from, query.date_to, query.interval)]


def _forecast(
    query: TrendQuery,
    points: list[list[Any]],
    counts: bool,
    complete_before: datetime,
    number: int,
    complete_from: datetime | None = None,
) -> dict[str, Any]:
    """The forecast of one line from its complete intervals (history and range; the interval the range began
    inside is a gap, filled as the model fills gaps)."""
    from headwater.insights.forecast import forecast

    if number > MAX_FORECAST_LINES:
        return {"error": f"forecasts are drawn for the first {MAX_FORECAST_LINES} lines only"}
    complete = [(parse_iso(at), v) for at, v in points if step(parse_iso(at), 1, query.interval) <= complete_before]
    if complete_from is not None:  # the range began inside this interval: part of it only
        complete = [(at, None if at < complete_from < step(at, 1, query.interval) else v) for at, v in complete]
    if counts:
        first = next((i for i, (_, v) in enumerate(complete) if v), len(complete))
        complete = complete[first:]  # before the first event: no data yet, not zeros
    start = step(complete[-1][0], 1, query.interval) if complete else grid_start(query)
    values = [float(v) if v is not None else None for _, v in complete]
    return forecast(values, start, query.interval, query.forecast, non_negative=counts)
