"""Cohorts through a real `headwater up`: events sent over the Segment API, cohorts saved, previewed, sized and
listed over HTTP, then used as a filter and a breakdown by `/api/insights`; changes audited; permissions."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.helpers import RunningHeadwater

NOW = datetime.now(UTC).replace(microsecond=0)


def api(hw: RunningHeadwater, method: str, path: str, key: str = "read", **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {hw.keys[key]}"}
    return httpx.request(method, hw.url + path, headers=headers, timeout=60, **kwargs)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture(scope="module")
def shop(headwater: RunningHeadwater) -> dict[str, Any]:
    """Twelve users over the last three days: buyers bought 1..3 times; half are on plan pro (latest value)."""
    tag = uuid.uuid4().hex[:8]
    calls = []
    for u in range(12):
        user = f"u{u}-{tag}"
        for day in range(3):
            when = (NOW - timedelta(days=2 - day, hours=1)).isoformat()
            plan = "pro" if u % 2 and day == 2 else "free"  # odd users upgraded on the last day
            calls.append({"type": "track", "event": f"Viewed {tag}", "userId": user, "timestamp": when,
                          "properties": {"plan": plan}})  # fmt: skip
        for n in range(u % 4):  # 0..3 purchases
            when = (NOW - timedelta(hours=3 + n)).isoformat()
            calls.append({"type": "track", "event": f"Bought {tag}", "userId": user, "timestamp": when,
                          "properties": {"plan": "pro" if u % 2 else "free", "revenue": 10}})  # fmt: skip
    response = httpx.post(f"{headwater.url}/v1/batch", json={"writeKey": headwater.keys["write"], "batch": calls})
    assert response.status_code == 200, response.text
    headwater.wait_rows(f"SELECT count(*) FROM events WHERE event LIKE '%{tag}'", [[len(calls)]], timeout=60)
    buyers2 = {f"u{u}-{tag}" for u in range(12) if u % 4 >= 2}
    pro = {f"u{u}-{tag}" for u in range(12) if u % 2}
    return {"tag": tag, "buyers2": buyers2, "pro": pro, "users": {f"u{u}-{tag}" for u in range(12)}}


def test_cohort_lifecycle_filter_and_audit(headwater: RunningHeadwater, shop: dict[str, Any]) -> None:
    tag = shop["tag"]
    bought2 = {"type": "performed", "event": f"Bought {tag}", "min_count": 2, "days": 7}
    body = {"name": f"Repeat buyers {tag}", "conditions": [bought2]}
    preview = ok(api(headwater, "POST", "/api/cohorts/preview", json={"conditions": [bought2]}))
    assert preview["size"] == len(shop["buyers2"]) and "HAVING count(*) >= 2" in preview["sql"]

    created = ok(api(headwater, "POST", "/api/cohorts", json=body), 201)
    cohort_id = created["id"]
    members = ok(api(headwater, "GET", f"/api/cohorts/{cohort_id}/members", params={"limit": 100}))
    assert set(members["members"]) == shop["buyers2"] and members["size"] == len(shop["buyers2"])
    listed = ok(api(headwater, "GET", "/api/cohorts", params={"sizes": "true"}))
    assert {c["id"]: c["size"] for c in listed}[cohort_id] == len(shop["buyers2"])

    sizes = ok(api(headwater, "GET", f"/api/cohorts/{cohort_id}/sizes", params={"days": 5, "interval": "day"}))
    values = [size for _, size in sizes["points"]]
    assert len(values) in (5, 6) and values[-1] == len(shop["buyers2"])
    assert values[0] == 0 and values == sorted(values)  # the purchases happened in the last hours

    trend = {"kind": "trend", "series": [{"event": f"Viewed {tag}", "measure": "users"}], "interval": "day",
             "date_from": (NOW - timedelta(days=4)).isoformat(), "date_to": (NOW + timedelta(hours=1)).isoformat(),
             "filters": [{"property": "$cohort", "op": "eq", "value": cohort_id}]}  # fmt: skip
    answer = ok(api(headwater, "POST", "/api/insights", json=trend))
    assert max(v for _, v in answer["result"][0]["points"]) == len(shop["buyers2"])
    assert f"cohort_{cohort_id} AS" in answer["sql"]

    pro = ok(api(headwater, "POST", "/api/cohorts", json={"name": f"Pro {tag}", "conditions": [
        {"type": "property", "property": "plan", "value": "pro"}]}), 201)  # fmt: skip
    funnel = {"kind": "funnel", "steps": [{"event": f"Viewed {tag}"}, {"event": f"Bought {tag}"}],
              "date_from": (NOW - timedelta(days=4)).isoformat(), "date_to": (NOW + timedelta(hours=1)).isoformat(),
              "breakdown": "$cohort", "breakdown_cohorts": [cohort_id, pro["id"]]}  # fmt: skip
    rows = {r["breakdown"]: [s["count"] for s in r["steps"]] for r in ok(api(headwater, "POST", "/api/insights",
                                                                              json=funnel))["result"]}  # fmt: skip
    assert rows[f"Repeat buyers {tag}"] == [len(shop["buyers2"])] * 2
    pro_buyers = {f"u{u}-{tag}" for u in range(12) if u % 2 and u % 4}
    assert rows[f"Pro {tag}"] == [len(shop["pro"]), len(pro_buyers)]

    renamed = ok(api(headwater, "PUT", f"/api/cohorts/{cohort_id}", json={**body, "name": f"Loyal {tag}"}))
    assert renamed["name"] == f"Loyal {tag}" and renamed["created_by"] == "test-read"
    assert ok(api(headwater, "DELETE", f"/api/cohorts/{pro['id']}"))["success"] is True
    assert api(headwater, "GET", f"/api/cohorts/{pro['id']}").status_code == 404
    deadline = time.monotonic() + 10
    while True:  # audit rows are written after the response
        audit = ok(api(headwater, "GET", "/api/audit", "admin", params={"action": "cohort"}))["rows"]
        actions = {(r["action"], r["target"]) for r in audit}
        if len(actions) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {("cohort.created", f"cohort:{cohort_id}"), ("cohort.updated", f"cohort:{cohort_id}"),
            ("cohort.deleted", f"cohort:{pro['id']}")} <= actions  # fmt: skip


def test_errors_and_permissions(headwater: RunningHeadwater, shop: dict[str, Any]) -> None:
    bad = api(headwater, "POST", "/api/cohorts", json={"name": "x", "conditions": [{"type": "performed"}]})
    assert bad.status_code == 400 and "conditions.0.performed.event" in bad.json()["error"]
    assert api(headwater, "POST", "/api/cohorts", json={"name": "x", "conditions": []}).status_code == 400
    assert api(headwater, "GET", "/api/cohorts/999999").status_code == 404
    assert api(headwater, "GET", "/api/cohorts/abc/members").status_code == 404
    assert api(headwater, "GET", "/api/cohorts", "write").status_code == 403  # an ingest key reads nothing
    body = {"name": "y", "conditions": [{"type": "performed", "event": "x"}]}
    assert api(headwater, "POST", "/api/cohorts", "write", json=body).status_code == 403
    assert httpx.get(headwater.url + "/api/cohorts", timeout=30).status_code == 401
    unknown = api(headwater, "POST", "/api/insights", json={
        "kind": "trend", "series": [{"event": "x"}], "date_from": "2026-01-01", "date_to": "2026-01-02",
        "filters": [{"property": "$cohort", "value": 999999}]})  # fmt: skip
    assert unknown.status_code == 404 and "no cohort 999999" in unknown.json()["error"]
    sizes = api(headwater, "GET", "/api/cohorts/1/sizes", params={"days": 1000, "interval": "hour"})
    assert sizes.status_code in (400, 404)
