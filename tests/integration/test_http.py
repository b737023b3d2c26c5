"""The collector and query API over real HTTP against a real `headwater up`."""

from __future__ import annotations

import gzip
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson

from tests.helpers import RunningHeadwater


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_track_ndjson_lands_in_lake_with_mapping(headwater: RunningHeadwater) -> None:
    user = unique("joe")
    body = (
        f'{{"event":"LOGIN","userId":"{user}","dateTime":"2026-01-15 10:00:00","plan":"pro"}}\n'
        f'{{"event":"LOGOUT","user_id":"{user}","time":1768471260,"messageId":"{user}-m2"}}\n'
    )
    response = headwater.post("/track", body, headwater.keys["write"])
    assert response.status_code == 200 and response.json() == {"success": True, "accepted": 2}
    rows = headwater.wait_rows(
        f"SELECT event, timestamp::VARCHAR, properties->>'plan', source FROM events "
        f"WHERE user_id = '{user}' ORDER BY timestamp",
        [
            ["LOGIN", "2026-01-15 10:00:00", "pro", "test-write"],
            ["LOGOUT", "2026-01-15 10:01:00", None, "test-write"],
        ],
    )
    assert rows
    assert headwater.sql(f"SELECT event_id FROM events WHERE user_id = '{user}' AND event = 'LOGOUT'") == [
        [f"{user}-m2"]
    ]


def test_mixed_batch_keeps_valid_items_and_quarantines_the_rest(headwater: RunningHeadwater) -> None:
    user = unique("mix")
    body = f'{{"event":"A","userId":"{user}"}}\n{{"event":"B"}}\n{{broken\n{{"event":"C","userId":"{user}"}}\n'
    response = headwater.post("/track", body, headwater.keys["write"])
    assert response.status_code == 200
    payload = response.json()
    assert payload["accepted"] == 2 and payload["quarantined"] == 2
    assert [r["line"] for r in payload["rejected"]] == [2, 3]
    assert "userId" in payload["rejected"][0]["error"]
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{user}'", [[2]])
    headwater.wait_rows("SELECT count(*) FROM quarantine WHERE raw = '{broken'", [[1]])
    rows = headwater.sql("SELECT source, endpoint, reason FROM quarantine WHERE raw = '{broken'")
    assert rows[0][0] == "test-write" and rows[0][1] == "track-raw" and "invalid JSON" in rows[0][2]


def test_all_invalid_is_400_but_still_quarantined(headwater: RunningHeadwater) -> None:
    marker = unique("allbad")
    response = headwater.post("/track", f'{{"event":"{marker}"}}', headwater.keys["write"])
    assert response.status_code == 400 and response.json()["rejected"][0]["line"] == 1
    headwater.wait_rows(f"SELECT count(*) FROM quarantine WHERE raw LIKE '%{marker}%'", [[1]])


def test_auth_roles(headwater: RunningHeadwater) -> None:
    body = '{"event":"A","userId":"u"}'
    assert headwater.post("/track", body).status_code == 401
    assert headwater.post("/track", body, "hw_w_unknown").status_code == 401
    assert headwater.post("/track", body, headwater.keys["read"]).status_code == 403
    assert headwater.post("/track", body, headwater.keys["admin"]).status_code == 200
    query = {"sql": "SELECT 1"}
    url = headwater.url + "/api/query"
    assert httpx.post(url, json=query).status_code == 401
    bearer = {"Authorization": f"Bearer {headwater.keys['write']}"}
    assert httpx.post(url, json=query, headers=bearer).status_code == 403
    for role in ("read", "admin"):
        ok = httpx.post(url, json=query, headers={"Authorization": f"Bearer {headwater.keys[role]}"})
        assert ok.status_code == 200 and ok.json()["rows"] == [[1]]


def test_segment_endpoints_basic_auth_and_write_key_in_body(headwater: RunningHeadwater) -> None:
    user = unique("seg")
    auth = (headwater.keys["write"], "")
    calls = {
        "track": {"userId": user, "event": "Signed Up", "properties": {"plan": "pro"}, "messageId": f"{user}-1"},
        "identify": {"userId": user, "traits": {"email": "a@example.com"}},
        "page": {"userId": user, "name": "Home", "properties": {"path": "/"}},
        "screen": {"userId": user, "name": "Dashboard"},
        "group": {"userId": user, "groupId": "acme", "traits": {"plan": "enterprise"}},
        "alias": {"userId": user, "previousId": f"anon-{user}"},
    }
    for endpoint, call in calls.items():
        response = httpx.post(f"{headwater.url}/v1/{endpoint}", json=call, auth=auth)
        assert response.status_code == 200, response.text
        assert response.json()["success"] is True
    batch = {
        "writeKey": headwater.keys["write"],
        "batch": [{"type": "track", "userId": user, "event": "Batched", "messageId": f"{user}-b"}],
        "sentAt": "2026-01-01T00:00:00Z",
    }
    assert httpx.post(f"{headwater.url}/v1/batch", json=batch).status_code == 200
    rows = headwater.wait_rows(
        f"SELECT type, count(*) FROM events WHERE user_id = '{user}' GROUP BY type ORDER BY type",
        [["alias", 1], ["group", 1], ["identify", 1], ["page", 1], ["screen", 1], ["track", 2]],
    )
    assert rows
    details = headwater.sql(
        f"SELECT event, group_id, previous_id, traits->>'email' FROM events "
        f"WHERE user_id = '{user}' AND type IN ('identify', 'page', 'group', 'alias') ORDER BY type"
    )
    assert details == [
        [None, None, f"anon-{user}", None],
        [None, "acme", None, None],
        [None, None, None, "a@example.com"],
        ["Home", None, None, None],
    ]


def test_gzip_body_and_size_limits(headwater: RunningHeadwater) -> None:
    user = unique("gz")
    body = "\n".join(f'{{"event":"E","userId":"{user}"}}' for _ in range(50)).encode()
    response = headwater.post(
        "/track", gzip.compress(body), headwater.keys["write"], headers={"content-encoding": "gzip"}
    )
    assert response.json()["accepted"] == 50
    bomb = gzip.compress(b'{"event":"E","userId":"u","p":"' + b"a" * 40_000_000 + b'"}')
    refused = headwater.post("/track", bomb, headwater.keys["write"], headers={"content-encoding": "gzip"})
    assert refused.status_code == 413 and "limit" in refused.json()["error"]
    huge = headwater.post("/track", b"x" * 20_000_000, headwater.keys["write"])
    assert huge.status_code == 413
    too_many = "\n".join('{"event":"E","userId":"u"}' for _ in range(2501))
    assert headwater.post("/track", too_many, headwater.keys["write"]).status_code == 413
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{user}'", [[50]])


def test_retried_message_ids_are_stored_once(headwater: RunningHeadwater) -> None:
    user = unique("dup")
    body = "\n".join(f'{{"event":"E","userId":"{user}","messageId":"{user}-{i}"}}' for i in range(10))
    first = headwater.post("/track", body, headwater.keys["write"]).json()
    second = headwater.post("/track", body, headwater.keys["write"]).json()
    assert first == {"success": True, "accepted": 10}
    if not headwater.settings:  # the embedded log drops repeats at append and says so
        assert second["duplicates"] == 10
    # on Kafka the lake writer drops them (claims in the catalog database): the response can't know yet
    time.sleep(1)
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{user}'", [[10]])
    time.sleep(1)  # a later retry too, after the first copies are in the lake
    headwater.post("/track", body, headwater.keys["write"])
    time.sleep(1.5)
    headwater.wait_rows(f"SELECT count(*), count(DISTINCT event_id) FROM events WHERE user_id = '{user}'", [[10, 10]])


def test_cors_preflight_for_browser_sdks(headwater: RunningHeadwater) -> None:
    response = httpx.options(
        headwater.url + "/v1/batch",
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "https://shop.example.com")


def test_query_api_errors_are_readable(headwater: RunningHeadwater) -> None:
    bearer = {"Authorization": f"Bearer {headwater.keys['read']}"}
    url = headwater.url + "/api/query"
    bad = httpx.post(url, json={"sql": "SELECT nope FROM events"}, headers=bearer)
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    refused = httpx.post(url, json={"sql": "COPY events TO '/tmp/x.csv'"}, headers=bearer)
    assert refused.status_code == 403
    assert httpx.post(url, content=b"{", headers=bearer).status_code == 400
    assert httpx.post(url, json={"query": "x"}, headers=bearer).json()["error"].startswith("sql:")


def test_health_and_metrics(headwater: RunningHeadwater) -> None:
    headwater.post("/track", '{"event":"M","userId":"m"}', headwater.keys["write"])
    health = httpx.get(headwater.url + "/healthz").json()
    assert health["status"] == "ok" and "lake_lag_events" in health
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(headwater.url + "/metrics").text
        if "headwater_lake_commits_total" in text:
            break
        time.sleep(0.2)
    for name in (
        "headwater_http_requests_total",
        "headwater_events_accepted_total",
        "headwater_log_up{",
        "headwater_log_producer_in_flight",
        'headwater_consumer_lag{group="lake"}',
        'headwater_consumer_partition_lag{group="lake",partition="0"}',
        "headwater_lake_commits_total",
        "headwater_lake_commit_seconds_bucket",
        "headwater_query_seconds_bucket",
    ):
        assert name in text, name
    assert ("headwater_log_size_bytes" in text) == (not headwater.settings)  # Kafka keeps its own retention
    assert health["log"]["backend"] == headwater.settings.get("log_backend", "embedded")
    assert health["log"]["reachable"] is True


def test_event_visible_within_seconds(headwater: RunningHeadwater) -> None:
    user = unique("fresh")
    started = time.monotonic()
    assert headwater.post("/track", f'{{"event":"F","userId":"{user}"}}', headwater.keys["write"]).status_code == 200
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{user}'", [[1]], timeout=10)
    assert time.monotonic() - started < 10  # generous: the benchmark measures the real p95


def test_insights_api(headwater: RunningHeadwater) -> None:
    user = unique("funnel")
    body = "\n".join(
        f'{{"event":"{e}","userId":"{user}","timestamp":"2026-02-01T10:0{i}:00Z"}}' for i, e in enumerate("ABC")
    )
    assert headwater.post("/track", body, headwater.keys["write"]).json()["accepted"] == 3
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{user}'", [[3]])
    spec = {
        "kind": "funnel",
        "steps": [{"event": "A"}, {"event": "B"}, {"event": "C", "filters": [{"property": "user_id", "value": user}]}],
        "date_from": "2026-02-01T00:00:00Z",
        "date_to": "2026-02-02T00:00:00Z",
    }
    url = headwater.url + "/api/insights"
    bearer = {"Authorization": f"Bearer {headwater.keys['read']}"}
    answer = httpx.post(url, json=spec, headers=bearer).json()
    assert [s["count"] for s in answer["result"][0]["steps"]][-1] >= 1
    assert answer["sql"].startswith("WITH")
    bad = httpx.post(url, json={"kind": "funnel", "steps": []}, headers=bearer)
    assert bad.status_code == 400 and "steps" in bad.json()["error"]
    assert httpx.post(url, json=spec).status_code == 401


def test_live_tail_polling_filters_and_stream(headwater: RunningHeadwater) -> None:
    user = unique("live")
    bearer = {"Authorization": f"Bearer {headwater.keys['read']}"}
    url = headwater.url + "/api/live"
    start = httpx.get(url, params={"limit": 1}, headers=bearer).json()["cursor"]
    body = f'{{"event":"L1","userId":"{user}","plan":"pro"}}\n{{"event":"L2","userId":"{user}"}}\n{{"event":"L3"}}'
    assert headwater.post("/track", body, headwater.keys["write"]).json()["accepted"] == 2
    page = httpx.get(url, params={"cursor": start}, headers=bearer).json()
    mine = [e for e in page["events"] if e["user_id"] == user]
    assert [e["event"] for e in mine] == ["L1", "L2"]  # since a cursor: oldest first
    assert mine[0]["properties"] == {"plan": "pro"} and mine[0]["source"] == "test-write"
    assert any(e["rejected"] and "userId" in e["rejected"] for e in page["events"])
    assert httpx.get(url, params={"cursor": page["cursor"]}, headers=bearer).json()["events"] == []
    latest = httpx.get(url, params={"user": user, "limit": 50}, headers=bearer).json()["events"]
    assert [e["event"] for e in latest] == ["L2", "L1"]  # newest first
    assert httpx.get(url, params={"cursor": "nonsense"}, headers=bearer).status_code == 400
    assert httpx.get(url).status_code == 401

    with httpx.stream("GET", url + "/stream", params={"user": user}, headers=bearer, timeout=20) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        headwater.post("/track", f'{{"event":"L4","userId":"{user}"}}', headwater.keys["write"])
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = orjson.loads(line[6:])
                assert event["event"] == "L4" and event["user_id"] == user
                break


def test_web_users_sessions_roles_and_csrf(headwater: RunningHeadwater) -> None:
    admin_key = {"Authorization": f"Bearer {headwater.keys['admin']}"}
    for name, role in (("vera", "viewer"), ("andy", "analyst"), ("ada", "admin")):
        created = httpx.post(headwater.url + "/api/users", json={"name": name, "role": role,
                             "password": f"{name}-password-123"}, headers=admin_key)  # fmt: skip
        assert created.status_code == 201, created.text
    read_key = {"Authorization": f"Bearer {headwater.keys['read']}"}
    assert httpx.get(headwater.url + "/api/users", headers=read_key).status_code == 403

    def sign_in(name: str) -> tuple[httpx.Client, str]:
        client = httpx.Client(base_url=headwater.url)
        response = client.post("/api/login", json={"name": name, "password": f"{name}-password-123"})
        assert response.status_code == 200 and "hw_session" in response.cookies
        assert "httponly" in response.headers["set-cookie"].lower()
        return client, response.json()["csrf"]

    assert httpx.post(headwater.url + "/api/login", json={"name": "vera", "password": "nope"}).status_code == 401
    sql = {"sql": "SELECT 1"}
    viewer, viewer_csrf = sign_in("vera")
    assert viewer.get("/api/me").json()["permissions"] == ["view"]
    assert viewer.post("/api/query", json=sql, headers={"x-csrf-token": viewer_csrf}).status_code == 403
    catalog = viewer.post("/api/insights", json={"kind": "catalog"}, headers={"x-csrf-token": viewer_csrf})
    assert catalog.status_code == 200
    assert (
        viewer.post("/api/keys", json={"name": "x", "role": "write"}, headers={"x-csrf-token": viewer_csrf}).status_code
        == 403
    )

    analyst, analyst_csrf = sign_in("andy")
    assert analyst.post("/api/query", json=sql).status_code == 403  # no CSRF header
    assert analyst.post("/api/query", json=sql, headers={"x-csrf-token": "forged"}).status_code == 403
    assert analyst.post("/api/query", json=sql, headers={"x-csrf-token": analyst_csrf}).json()["rows"] == [[1]]
    assert analyst.get("/api/keys").status_code == 403

    admin, admin_csrf = sign_in("ada")
    made = admin.post("/api/keys", json={"name": "from-web", "role": "write"}, headers={"x-csrf-token": admin_csrf})
    assert made.status_code == 201 and made.json()["key"].startswith("hw_w_")
    assert any(k["name"] == "from-web" for k in admin.get("/api/keys").json())
    assert admin.delete("/api/keys/from-web", headers={"x-csrf-token": admin_csrf}).status_code == 200
    assert admin.post("/api/logout", headers={"x-csrf-token": admin_csrf}).status_code == 200
    assert admin.get("/api/me").status_code == 401
    for client in (viewer, analyst, admin):
        client.close()


def test_saved_insights_dashboards_and_share_links(headwater: RunningHeadwater) -> None:
    user = unique("board")
    now = datetime.now(UTC)
    body = "\n".join(
        f'{{"event":"{e}","userId":"{user}","timestamp":"{(now - timedelta(seconds=3 - i)).isoformat()}"}}'
        for i, e in enumerate(("S1", "S2", "S3"))
    )
    assert headwater.post("/track", body, headwater.keys["write"]).json()["accepted"] == 3
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{user}'", [[3]])
    analyst = {"Authorization": f"Bearer {headwater.keys['read']}"}
    api = headwater.url + "/api"
    mine = [{"property": "user_id", "value": user}]
    funnel = {"kind": "funnel", "steps": [{"event": "S1"}, {"event": "S2"}, {"event": "S3"}], "filters": mine,
              "date_from": "2020-01-01T00:00:00Z", "date_to": "2020-01-02T00:00:00Z"}  # fmt: skip
    saved = httpx.post(api + "/saved-insights", json={"name": "Signup funnel", "query": funnel}, headers=analyst)
    assert saved.status_code == 201, saved.text
    bad = httpx.post(api + "/saved-insights", json={"name": "x", "query": {"kind": "funnel"}}, headers=analyst)
    assert bad.status_code == 400 and "steps" in bad.json()["error"]
    board = {
        "name": "Growth",
        "tiles": [{"insight_id": saved.json()["id"], "w": 12}],
        "last_days": 2,
        "refresh_seconds": 30,
    }
    created = httpx.post(api + "/dashboards", json=board, headers=analyst)
    assert created.status_code == 201, created.text
    board_id = created.json()["id"]
    missing = httpx.post(api + "/dashboards", json={"name": "x", "tiles": [{"insight_id": 999999}]}, headers=analyst)
    assert missing.status_code == 404
    # the shared range (last 2 days) replaces the saved 2020 range, so today's events count
    shown = httpx.get(f"{api}/dashboards/{board_id}", headers=analyst).json()
    assert [s["count"] for s in shown["tiles"][0]["result"][0]["steps"]] == [1, 1, 1]
    link = httpx.post(f"{api}/dashboards/{board_id}/shares", headers=analyst).json()
    public = httpx.get(headwater.url + link["api"])  # no credentials at all
    assert public.status_code == 200 and "frame-ancestors" in public.headers["content-security-policy"]
    assert public.json()["tiles"][0]["result"] == shown["tiles"][0]["result"]
    assert "sql" not in public.json()["tiles"][0]
    prefix = httpx.get(f"{api}/dashboards/{board_id}/shares", headers=analyst).json()[0]["prefix"]
    assert httpx.delete(f"{api}/dashboards/{board_id}/shares/{prefix}", headers=analyst).status_code == 200
    assert httpx.get(headwater.url + link["api"]).status_code == 404
    assert httpx.get(headwater.url + "/api/shared/guessed-token").status_code == 404
    neither = httpx.post(api + "/dashboards", json={"name": "x", "tiles": [{"w": 3}]}, headers=analyst)
    assert neither.status_code == 400 and "insight_id or live" in neither.json()["error"]
    live_board = {"name": "Live", "tiles": [{"live": {"event": "S2", "limit": 5}}, {"insight_id": saved.json()["id"]}]}
    live_id = httpx.post(api + "/dashboards", json=live_board, headers=analyst).json()["id"]
    token = httpx.post(f"{api}/dashboards/{live_id}/shares", headers=analyst).json()["token"]
    feed = httpx.get(f"{headwater.url}/api/shared/{token}/live/0", timeout=60).json()["events"]  # Kafka: a reader
    assert (
        feed
        and all(e["event"] == "S2" for e in feed)
        and set(feed[0]) <= {"received_at", "event", "user_id", "anonymous_id", "properties"}
    )
    assert httpx.get(f"{headwater.url}/api/shared/{token}/live/1").status_code == 404  # not a live tile
    # viewers read boards but cannot change them
    admin = {"Authorization": f"Bearer {headwater.keys['admin']}"}
    viewer_user = {"name": unique("viewer"), "role": "viewer", "password": "viewer-password-1"}
    assert httpx.post(api + "/users", json=viewer_user, headers=admin).status_code == 201
    viewer = httpx.Client(base_url=headwater.url)
    csrf = viewer.post("/api/login", json={"name": viewer_user["name"], "password": viewer_user["password"]}).json()[
        "csrf"
    ]
    assert viewer.get(f"/api/dashboards/{board_id}").status_code == 200
    assert viewer.post("/api/dashboards", json=board, headers={"x-csrf-token": csrf}).status_code == 403
    viewer.close()
