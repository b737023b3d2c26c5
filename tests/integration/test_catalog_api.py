"""The pickers' catalog through a real `headwater up`: event names, properties (keys and enrichment columns) and
values with counts, from events sent over HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.helpers import RunningHeadwater


def get(hw: RunningHeadwater, path: str, key: str = "read", **params: Any) -> Any:
    response = httpx.get(hw.url + path, params=params, headers={"Authorization": f"Bearer {hw.keys[key]}"},
                         timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def test_events_properties_and_values(headwater: RunningHeadwater) -> None:
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    url = f"https://shop.example/?utm_source=news-{tag}&utm_medium=email"
    calls = []
    for i in range(30):
        calls.append({"type": "track", "event": f"Opened {tag}", "userId": f"p{i % 10}-{tag}",
                      "timestamp": (now - timedelta(hours=i)).isoformat(),
                      "properties": {f"plan_{tag}": ["free", "pro", "team"][i % 3], f"price_{tag}": i,
                                     f"trial_{tag}": i % 2 == 0},
                      "context": {"page": {"url": url}}})  # fmt: skip
    calls += [{"type": "track", "event": f"Closed {tag}", "userId": f"p0-{tag}", "timestamp": now.isoformat()}]
    response = httpx.post(f"{headwater.url}/v1/batch", json={"writeKey": headwater.keys["write"], "batch": calls})
    assert response.status_code == 200, response.text
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE event LIKE '%{tag}'", [[31]], timeout=60)

    events = {e["event"]: e for e in get(headwater, "/api/catalog/events", q=tag)["events"]}
    assert list(events) == [f"Opened {tag}", f"Closed {tag}"]  # most frequent first
    assert (events[f"Opened {tag}"]["events"], events[f"Opened {tag}"]["users"]) == (30, 10)
    assert events[f"Closed {tag}"]["last_seen"]

    found = get(headwater, "/api/catalog/properties", event=f"Opened {tag}")
    props = {p["property"]: p for p in found["properties"]}
    assert found["sampled"] == 30
    assert (props[f"plan_{tag}"]["type"], props[f"plan_{tag}"]["events"]) == ("string", 30)
    assert props[f"price_{tag}"]["type"] == "number" and props[f"trial_{tag}"]["type"] == "boolean"
    assert props[f"plan_{tag}"]["kind"] == "property"
    assert props["utm_source"]["kind"] == "column" and props["utm_source"]["events"] == 30
    searched = get(headwater, "/api/catalog/properties", event=f"Opened {tag}", q="PRICE")["properties"]
    assert [p["property"] for p in searched] == [f"price_{tag}"]

    values = get(headwater, "/api/catalog/values", property=f"plan_{tag}", event=f"Opened {tag}")["values"]
    assert values == [{"value": "free", "events": 10}, {"value": "pro", "events": 10}, {"value": "team", "events": 10}]
    assert get(headwater, "/api/catalog/values", property=f"plan_{tag}", q="T", limit=5)["values"] == [
        {"value": "team", "events": 10}
    ]
    assert get(headwater, "/api/catalog/values", property="utm_source", q=tag)["values"] == [
        {"value": f"news-{tag}", "events": 30}
    ]
    bad = httpx.get(
        headwater.url + "/api/catalog/values", headers={"Authorization": f"Bearer {headwater.keys['read']}"}
    )
    assert bad.status_code == 400
    assert httpx.get(headwater.url + "/api/catalog/events").status_code == 401
