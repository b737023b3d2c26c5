"""Identity stitching through a real `headwater up`: Segment calls over HTTP from two devices, then `person_id` in SQL,
a funnel that counts the person once, and the person's timeline across devices."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.helpers import RunningHeadwater

T0 = datetime(2026, 2, 2, 9)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat() + "Z"


def insight(hw: RunningHeadwater, spec: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {hw.keys['read']}"}
    response = httpx.post(hw.url + "/api/insights", json=spec, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_two_devices_one_person(headwater: RunningHeadwater) -> None:
    tag = uuid.uuid4().hex[:8]
    user, phone, laptop = f"user-{tag}", f"phone-{tag}", f"laptop-{tag}"
    pricing, bought = f"Pricing {tag}", f"Purchased {tag}"
    calls = [
        {"type": "page", "name": pricing, "anonymousId": phone, "timestamp": at(0)},
        {"type": "page", "name": pricing, "anonymousId": laptop, "timestamp": at(5)},
        {"type": "identify", "userId": user, "anonymousId": phone, "timestamp": at(10), "traits": {"plan": "pro"}},
        {"type": "identify", "userId": user, "anonymousId": laptop, "timestamp": at(20)},
        {"type": "track", "event": bought, "userId": user, "anonymousId": laptop, "timestamp": at(30)},
    ]
    body = {"writeKey": headwater.keys["write"], "batch": calls}
    response = httpx.post(f"{headwater.url}/v1/batch", json=body, timeout=30)
    assert response.status_code == 200, response.text
    mine = f"(anonymous_id IN ('{phone}', '{laptop}') OR user_id = '{user}')"
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE {mine}", [[5]], timeout=60)
    headwater.wait_rows(f"SELECT count(DISTINCT person_id), min(person_id) FROM events WHERE {mine}", [[1, user]])
    assert headwater.sql(f"SELECT count(DISTINCT coalesce(user_id, anonymous_id)) FROM events WHERE {mine}") == [[3]]
    assert sorted(headwater.sql(f"SELECT id, reason FROM persons WHERE person_id = '{user}'")) == [
        [laptop, "identify"], [phone, "identify"], [user, "identify"],
    ]  # fmt: skip

    funnel = {"kind": "funnel", "steps": [{"event": pricing}, {"event": bought}], "window_seconds": 3600,
              "date_from": "2026-02-02T00:00:00Z", "date_to": "2026-02-03T00:00:00Z"}  # fmt: skip
    deadline = time.monotonic() + 30
    while True:  # the insight cache follows the identities (checked at most every second)
        steps = [s["count"] for s in insight(headwater, funnel)["result"][0]["steps"]]
        if steps == [1, 1] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert steps == [1, 1]  # one person, started anonymous on two devices, bought identified
    raw = insight(headwater, {**funnel, "count_by": "ids"})["result"][0]["steps"]
    assert [s["count"] for s in raw] == [2, 0]

    timeline = insight(headwater, {"kind": "timeline", "person": phone})["result"]
    assert timeline["person"] == user
    assert len(timeline["rows"]) == 5  # both devices, before and after identify
    assert {i["id"] for i in timeline["identities"]} == {user, phone, laptop}
