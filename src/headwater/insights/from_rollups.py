"""Trends and retention from rollups: the same rows the compiled SQL returns, without reading events.

Eligible when the insight has no property filters or breakdowns and its dates fall on day boundaries (UTC);
then everything the SQL computes is a function of the rows and the exact set of people per (day, event),
which rollups hold (`headwater.lake.rollups`). People are `coalesce(user_id, anonymous_id)` (`count_by: ids`), or
persons when the engine has mapped those keys through the identities (`QueryEngine.day_buckets(persons=True)`),
as `person_id` in the SQL. Anything else runs the SQL.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from pyroaring import BitMap

from headwater.insights.spec import RetentionQuery, TrendQuery
from headwater.query.fast_path import Bucket

EPOCH = datetime(1970, 1, 1)
TREND_COLUMNS = ["series", "period", "bucket", "breakdown", "value"]
RETENTION_COLUMNS = ["cohort", "size", "period", "returned"]
Days = dict[tuple[int, object], Bucket]


def _naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def _day_number(value: datetime) -> int | None:
    """Days since 1970-01-01 when `value` is a UTC midnight, else None."""
    value = _naive(value)
    if value != datetime(value.year, value.month, value.day):
        return None
    return (value - EPOCH).days


def truncate(day: int, unit: str) -> datetime:
    """DuckDB's date_trunc(unit, day) for a day number (weeks start on Monday)."""
    start = EPOCH + timedelta(days=day)
    if unit == "week":
        return start - timedelta(days=start.weekday())
    if unit == "month":
        return start.replace(day=1)
    return start


def shift(start: datetime, n: int, unit: str) -> datetime:
    """The start of the period `n` periods after the one starting at `start`."""
    if unit == "day":
        return start + timedelta(days=n)
    if unit == "week":
        return start + timedelta(weeks=n)
    month = start.month - 1 + n
    return start.replace(year=start.year + month // 12, month=month % 12 + 1)


def events_of(query: Any) -> set[str] | None:
    """The event names an eligible trend or retention reads; None when it is not eligible."""
    if isinstance(query, TrendQuery):
        if query.filters or query.breakdown or query.interval == "hour":
            return None
        if any(s.filters or s.property or s.measure not in ("count", "users") for s in query.series):
            return None
        if _day_number(query.date_from) is None or _day_number(query.date_to) is None:
            return None
        return {s.event for s in query.series}
    if isinstance(query, RetentionQuery):
        if query.filters or _day_number(query.date_from) is None or _day_number(query.date_to) is None:
            return None
        return {query.start_event, query.return_event}
    return None


def counts_people(query: Any) -> bool:
    """Whether the answer depends on who the people are (not only on row counts)."""
    if isinstance(query, TrendQuery):
        return any(s.measure == "users" for s in query.series)
    return True


def trend_rows(query: TrendQuery, days: Days) -> list[list[Any]]:
    first, last = _day_number(query.date_from), _day_number(query.date_to)
    assert first is not None and last is not None
    span = last - first
    periods = [("current", 0), ("previous", span)] if query.compare else [("current", 0)]
    rows: list[list[Any]] = []
    for index, series in enumerate(query.series):
        for period, offset in periods:
            counts: dict[datetime, int] = defaultdict(int)
            people: dict[datetime, list[BitMap]] = defaultdict(list)
            for day in range(first - offset, last - offset):
                bucket = days.get((day, series.event))
                if bucket is None or not bucket.count:
                    continue
                key = truncate(day + offset, query.interval)
                counts[key] += bucket.count
                people[key].extend(bucket.persons)
            for key, count in counts.items():
                value = float(count) if series.measure == "count" else float(len(BitMap.union(*people[key])))
                rows.append([index, period, key, None, value])
    return rows


def retention_rows(query: RetentionQuery, days: Days) -> list[list[Any]]:
    first, last = _day_number(query.date_from), _day_number(query.date_to)
    assert first is not None and last is not None
    unit = query.period
    starts = sorted((day, b) for (day, event), b in days.items() if event == query.start_event and b.persons)
    cohorts: dict[datetime, BitMap] = defaultdict(BitMap)
    seen = BitMap()
    for day, bucket in starts:
        today = BitMap.union(*bucket.persons)
        if first <= day < last:
            cohorts[truncate(day, unit)] |= today - seen
        seen |= today
    returns: dict[datetime, BitMap] = defaultdict(BitMap)
    for (day, event), bucket in days.items():
        if event == query.return_event and bucket.persons:
            returns[truncate(day, unit)] |= BitMap.union(*bucket.persons)
    rows: list[list[Any]] = []
    for cohort in sorted(cohorts):
        members = cohorts[cohort]
        if not members:
            continue
        found = []
        for n in range(1, query.periods + 1):
            back = returns.get(shift(cohort, n, unit))
            returned = members.intersection_cardinality(back) if back is not None else 0
            if returned:
                found.append([cohort, len(members), n, returned])
        rows.extend(found or [[cohort, len(members), None, 0]])
    return rows
