"""Late events through a real `headwater up`: stored in their own day, counted by age, invalidating cached
insights of that day, and de-duplicated by messageId over the whole lateness bound."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from headwater.lake.coordination import CLAIMS, ClaimStore, open_engine
from tests.helpers import RunningHeadwater, child_env, make_keys, make_settings, serving

HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def headwater(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    """Embedded log (the dedupe test edits its database), default lateness bound and dedupe window (72 h)."""
    data_dir = tmp_path_factory.mktemp("late")
    keys = make_keys(data_dir)
    env = child_env(data_dir, flush_interval_ms=200)
    with serving(RunningHeadwater(data_dir, env, keys=keys)) as running:
        yield running


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def at(moment: datetime) -> str:
    """ISO-8601 UTC, whole seconds."""
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def late_counts(headwater: RunningHeadwater) -> dict[str, float]:
    """headwater_late_events_total{table="events"} by age, from /metrics."""
    text = httpx.get(headwater.url + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "headwater_late_events_total" and sample.labels.get("table") == "events":
                counts[sample.labels["age"]] = sample.value
    return counts


def wait_counts(headwater: RunningHeadwater, expected: dict[str, float], timeout: float = 20) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    counts = late_counts(headwater)
    while counts != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = late_counts(headwater)
    return counts


def test_late_events_land_in_their_own_day_and_are_counted_by_age(headwater: RunningHeadwater) -> None:
    user = unique("late")
    now = datetime.now(UTC)
    before = late_counts(headwater)
    ages = {"fresh": 10 / 60, "2h": 2, "30h": 30, "100h": 100}
    sent = {name: now - hours * HOUR for name, hours in ages.items()}
    body = "\n".join(f'{{"event":"{name}","userId":"{user}","timestamp":"{at(t)}"}}' for name, t in sent.items())
    assert headwater.post("/track", body, headwater.keys["write"]).json()["accepted"] == 4
    # a Segment SDK that queued an event offline for 30 h: sentAt is now, clock-skew correction keeps the time
    offline = now - 30 * HOUR
    batch = {"batch": [{"type": "track", "event": "offline", "userId": user, "timestamp": at(offline)}],
             "sentAt": at(now)}  # fmt: skip
    response = httpx.post(
        headwater.url + "/v1/batch", content=orjson.dumps(batch), auth=(headwater.keys["write"], ""), timeout=30
    )
    assert response.status_code == 200, response.text
    expected = [[name, at(t).replace("T", " ").removesuffix("Z")] for name, t in sorted(sent.items())]
    headwater.wait_rows(  # exactly the times sent: nothing clamps an old event time
        f"SELECT event, timestamp::VARCHAR FROM events WHERE user_id = '{user}' AND event <> 'offline' ORDER BY event",
        expected,
    )
    sent["offline"] = offline
    rows = headwater.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{user}'", [[5]])
    assert rows
    stored = dict(headwater.sql(f"SELECT event, epoch_ms(timestamp) FROM events WHERE user_id = '{user}'"))
    assert abs(stored["offline"] / 1000 - offline.timestamp()) < 60  # received - (sentAt - timestamp)
    days = headwater.sql(f"SELECT event, CAST(timestamp AS DATE)::VARCHAR FROM events WHERE user_id = '{user}'")
    assert dict(days) == {n: t.date().isoformat() for n, t in sent.items()}
    want = dict(before)
    for age, n in (("1h-6h", 1), ("24h-72h", 2), ("beyond", 1)):  # the 10-minute-old event is not late
        want[age] = want.get(age, 0) + n
    assert wait_counts(headwater, want) == want


def test_a_late_event_invalidates_cached_insights_of_its_day(headwater: RunningHeadwater) -> None:
    event = unique("cached")
    day = (datetime.now(UTC) - timedelta(days=4)).replace(hour=0, minute=0, second=0, microsecond=0)
    post = "\n".join(
        f'{{"event":"{event}","userId":"u{i}","timestamp":"{at(day + (i + 1) * HOUR)}"}}' for i in range(2)
    )
    assert headwater.post("/track", post, headwater.keys["write"]).json()["accepted"] == 2
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE event = '{event}'", [[2]])
    naive = day.replace(tzinfo=None)
    spec = {
        "kind": "trend",
        "series": [{"event": event}],
        "interval": "day",
        "date_from": (naive - timedelta(days=1)).isoformat(),
        "date_to": (naive + timedelta(days=2)).isoformat(),
    }
    url = headwater.url + "/api/insights"
    bearer = {"Authorization": f"Bearer {headwater.keys['read']}"}

    def run() -> dict[str, object]:
        response = httpx.post(url, json=spec, headers=bearer, timeout=30)
        assert response.status_code == 200, response.text
        answer: dict[str, object] = response.json()
        return answer

    def day_count(answer: dict[str, object]) -> float:
        points = dict(answer["result"][0]["points"])  # type: ignore[index]
        return float(points[naive.isoformat()])

    first = run()
    assert day_count(first) == 2 and first["cached"] is False
    again = run()
    assert day_count(again) == 2 and again["cached"] is True  # nothing committed since: served from the cache
    late = f'{{"event":"{event}","userId":"u9","timestamp":"{at(day + 20 * HOUR)}"}}'
    assert headwater.post("/track", late, headwater.keys["write"]).json()["accepted"] == 1
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE event = '{event}'", [[3]])
    after = run()
    assert after["cached"] is False and day_count(after) == 3


def backdate_dedupe(data_dir: Path, message_id: str, hours: float) -> None:
    """Move the embedded log's record of `message_id` `hours` into the past (as if it arrived then)."""
    with sqlite3.connect(data_dir / "log" / "events.db", timeout=30) as conn:
        changed = conn.execute(
            "UPDATE dedupe SET seen_ms = seen_ms - ? WHERE message_id = ?", (int(hours * 3_600_000), message_id)
        ).rowcount
    assert changed == 1


def test_a_retry_30h_later_is_stored_once_and_one_beyond_the_window_again(headwater: RunningHeadwater) -> None:
    user = unique("retry")
    message_id = f"{user}-m"
    when = at(datetime.now(UTC) - 31 * HOUR)
    body = f'{{"event":"E","userId":"{user}","messageId":"{message_id}","timestamp":"{when}"}}'
    assert headwater.post("/track", body, headwater.keys["write"]).json() == {"success": True, "accepted": 1}
    backdate_dedupe(headwater.data_dir, message_id, 30)  # the retry comes 30 h after the original
    retry = headwater.post("/track", body, headwater.keys["write"]).json()
    assert retry["duplicates"] == 1
    headwater.wait_rows(f"SELECT count(*), count(DISTINCT event_id) FROM events WHERE user_id = '{user}'", [[1, 1]])
    # documented: a retry later than dedupe_window_hours (72) after the first copy is stored again
    backdate_dedupe(headwater.data_dir, message_id, 43)
    assert headwater.post("/track", body, headwater.keys["write"]).json() == {"success": True, "accepted": 1}
    headwater.wait_rows(f"SELECT count(*), count(DISTINCT event_id) FROM events WHERE user_id = '{user}'", [[2, 1]])


def test_kafka_claims_cover_the_lateness_bound_too(tmp_path: Path) -> None:
    """Deployments on Kafka de-duplicate in the lake writer with claims kept for the same window (72 h)."""
    settings = make_settings(tmp_path / "data")
    assert settings.dedupe_window_hours >= settings.lateness_bound_hours == 72
    engine = open_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    store = ClaimStore(engine, settings.dedupe_window_hours * 3600, log_id="kafka")  # as LakeWriter makes it
    assert store.duplicates([("s", "m", 0, 1)]) == set()
    with engine.begin() as conn:  # the retry comes 30 h later; maintenance purges old claims meanwhile
        conn.execute(CLAIMS.update().values(claimed_ms=CLAIMS.c.claimed_ms - 30 * 3_600_000))
    assert store.purge() == 0
    assert store.duplicates([("s", "m", 2, 7)]) == {0}
    with engine.begin() as conn:
        conn.execute(CLAIMS.update().values(claimed_ms=CLAIMS.c.claimed_ms - 43 * 3_600_000))
    assert store.purge() == 1
    assert store.duplicates([("s", "m", 3, 9)]) == set()  # beyond the window: stored again (documented)
    engine.dispose()
