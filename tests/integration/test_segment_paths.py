"""analytics-next's wire protocol over HTTP: the settings endpoint and the short `/v1/<letter>` paths."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import orjson

from tests.helpers import RunningHeadwater

ORIGIN = "https://shop.example.com"


def _settings(headwater: RunningHeadwater, key: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{headwater.url}/v1/projects/{key}/settings", headers=headers, timeout=10)


def test_settings_point_the_sdk_at_this_server(headwater: RunningHeadwater) -> None:
    key = headwater.keys["write"]
    response = _settings(headwater, key, origin=ORIGIN)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    doc = response.json()
    segment = doc["integrations"]["Segment.io"]
    host = headwater.url.removeprefix("http://")
    assert segment == {**segment, "apiKey": key, "apiHost": f"{host}/v1", "protocol": "http"}
    assert doc["metrics"]["sampleRate"] == 0  # the SDK sends no telemetry anywhere
    assert doc["remotePlugins"] == [] and doc["analyticsNextEnabled"] is True
    # the Host the browser used (a proxy's name) is where it is told to send events
    proxied = _settings(headwater, key, host="analytics.example.com").json()
    assert proxied["integrations"]["Segment.io"]["apiHost"] == "analytics.example.com/v1"


def test_settings_refuse_unknown_read_and_revoked_keys(headwater: RunningHeadwater) -> None:
    for key in ("hw_nonsense", headwater.keys["read"]):
        response = _settings(headwater, key)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert "no such write key" in response.json()["error"]
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    created = subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "keys", "create", name, "-q"],
        env=headwater.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = created.stdout.strip()
    assert _settings(headwater, key).status_code == 200
    subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "keys", "revoke", name],
        env=headwater.env, capture_output=True, check=True,
    )  # fmt: skip
    for _ in range(100):  # the server caches a key's lookup for 2 s
        if _settings(headwater, key).status_code == 404:
            break
        time.sleep(0.1)
    assert _settings(headwater, key).status_code == 404


def test_short_paths_take_text_plain_bodies_with_the_key_inside(headwater: RunningHeadwater) -> None:
    """What analytics-next sends: `text/plain`, writeKey in the body (and as the Basic user)."""
    key = headwater.keys["write"]
    user = f"short-{uuid.uuid4().hex[:8]}"
    calls: dict[str, dict[str, Any]] = {
        "t": {"type": "track", "event": "Clicked", "properties": {"n": 1}},
        "p": {"type": "page", "name": "Home", "properties": {"path": "/"}},
        "i": {"type": "identify", "traits": {"plan": "pro"}},
        "g": {"type": "group", "groupId": "acme"},
        "s": {"type": "screen", "name": "Main"},
        "a": {"type": "alias", "previousId": f"anon-{user}"},
    }
    for letter, call in calls.items():
        body = {**call, "userId": user, "messageId": f"{user}-{letter}", "writeKey": key}
        # no Authorization header: the key comes from the body, as the SDK's text/plain beacon sends it
        response = headwater.post(f"/v1/{letter}", orjson.dumps(body), headers={"content-type": "text/plain"})
        assert response.status_code == 200, (letter, response.text)
        assert response.json()["accepted"] == 1
    batch = {
        "writeKey": key,
        "batch": [{"type": "track", "event": "Batched", "userId": user, "messageId": f"{user}-b{i}"} for i in range(3)],
    }
    basic = base64.b64encode(f"{key}:".encode()).decode()
    response = headwater.post(
        "/v1/b", orjson.dumps(batch), headers={"content-type": "text/plain", "authorization": f"Basic {basic}"}
    )
    assert response.status_code == 200 and response.json()["accepted"] == 3, response.text
    headwater.wait_rows(
        f"SELECT type, count(*) FROM events WHERE user_id = '{user}' GROUP BY type ORDER BY type",
        [["alias", 1], ["group", 1], ["identify", 1], ["page", 1], ["screen", 1], ["track", 4]],
    )
    # a retried call (same messageId) is stored once
    again = {**calls["t"], "userId": user, "messageId": f"{user}-t", "writeKey": key}
    assert headwater.post("/v1/t", orjson.dumps(again)).status_code == 200
    # (the embedded log answers `duplicates`; on Kafka the lake writers drop the copy: the lake is what counts)
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{user}' AND type = 'track'", [[4]])
    # the write key never reaches the lake
    rows = headwater.sql(f"SELECT count(*) FROM events WHERE user_id = '{user}' AND context LIKE '%{key}%'")
    assert rows == [[0]]


def test_short_paths_refuse_what_the_long_ones_refuse(headwater: RunningHeadwater) -> None:
    body = orjson.dumps({"type": "track", "event": "x", "userId": "u", "writeKey": headwater.keys["read"]})
    assert headwater.post("/v1/t", body).status_code == 403
    assert headwater.post("/v1/t", orjson.dumps({"type": "track", "event": "x", "userId": "u"})).status_code == 401
    wrong = orjson.dumps({"type": "page", "userId": "u", "writeKey": headwater.keys["write"]})
    response = headwater.post("/v1/t", wrong)
    assert response.status_code == 400 and "does not match the endpoint /v1/track" in response.text
    assert httpx.get(f"{headwater.url}/v1/t", timeout=10).status_code == 405
