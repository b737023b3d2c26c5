"""A cohort's size over time in one SQL statement: for each interval of the range, the number of members as of the
interval's end (the definition evaluated on the events before that moment, a rolling `days` window ending there;
the last, current interval ends now). Points are `[interval start (ISO), size]`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from headwater.cohorts.spec import CohortDefinition, CohortError
from headwater.cohorts.sql import Lookup, default_as_of, members_sql
from headwater.insights.engine import buckets
from headwater.insights.sql import NO_SHREDS, Shreds, ts

MAX_POINTS = 120
INTERVALS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


def size_points(days: int, interval: str, now: datetime | None = None) -> list[tuple[datetime, datetime]]:
    """(interval start, as-of) for the intervals covering the last `days` days up to `now`."""
    if interval not in INTERVALS:
        raise CohortError(f"interval: one of {', '.join(INTERVALS)}")
    if not 1 <= days <= 3650:
        raise CohortError("days: between 1 and 3650")
    end = now or default_as_of()
    end = end.astimezone(UTC).replace(tzinfo=None) if end.tzinfo else end
    starts = buckets(end - timedelta(days=days), end, interval)
    if len(starts) > MAX_POINTS:
        raise CohortError(f"days: at most {MAX_POINTS} {interval}s at a time, got {len(starts)}")
    return [(start, min(start + INTERVALS[interval], end)) for start in starts]


def sizes_sql(
    definition: CohortDefinition,
    actor: str,
    points: list[tuple[datetime, datetime]],
    lookup: Lookup | None = None,
    shred: Shreds = NO_SHREDS,
) -> str:
    """`SELECT point, size`: one row per point, in order."""
    parts = [
        f"SELECT {ts(start)} AS point, "
        f"(SELECT count(*) FROM ({members_sql(definition, actor, as_of, lookup, shred)})) AS size"
        for start, as_of in points
    ]
    return "\nUNION ALL ".join(parts) + "\nORDER BY point"
