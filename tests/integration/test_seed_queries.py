"""The lolscale seed's three Athena queries give the ground truth on generated data."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import orjson

from headwater.query import seed_queries
from tests.helpers import RunningHeadwater


def test_three_athena_queries_match_ground_truth(headwater: RunningHeadwater) -> None:
    rng = random.Random(7)
    start = datetime(2025, 11, 1, tzinfo=UTC)
    events = []
    for _ in range(30_000):
        when = start + timedelta(seconds=rng.randrange(0, 92 * 86400))
        events.append(
            {"event": "LOGIN", "userId": f"user{rng.randrange(5000)}", "dateTime": when.strftime("%Y-%m-%d %H:%M:%S")}
        )
    for offset in range(0, len(events), 2500):
        body = b"\n".join(orjson.dumps(e) for e in events[offset : offset + 2500])
        assert headwater.post("/track", body, headwater.keys["write"]).json()["accepted"] == 2500
    headwater.wait_rows("SELECT count(*) FROM events", [[30_000]])

    month_users: dict[tuple[int, int], set[str]] = defaultdict(set)
    day_counts: dict[date, int] = defaultdict(int)
    for event in events:
        when = datetime.fromisoformat(event["dateTime"])
        month_users[(when.year, when.month)].add(event["userId"])
        day_counts[when.date()] += 1

    december = headwater.sql(seed_queries.DISTINCT_USERS_IN_MONTH.format(month="2025-12"))
    assert december == [[len(month_users[(2025, 12)])]]
    by_day = headwater.sql(seed_queries.EVENTS_BY_DAY)
    assert [[date.fromisoformat(d), n] for d, n in by_day] == [[d, day_counts[d]] for d in sorted(day_counts)]
    by_month = headwater.sql(seed_queries.DISTINCT_USERS_BY_MONTH)
    assert by_month == [[y, m, len(month_users[(y, m)])] for (y, m) in sorted(month_users)]
