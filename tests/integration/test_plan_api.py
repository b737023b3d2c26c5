"""The plan API under a real `headwater up`: publishing (admins only, checked as `plan check` checks), versions,
one version's events and properties, diffs, activation per source, the audit trail, and the catalog of planned
events next to events seen but not planned (volumes per source; violation rates once a plan is enforced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater.plan.load import read_files
from tests.helpers import ROOT, RunningHeadwater, child_env, make_keys, serving

EXAMPLE = ROOT / "examples" / "plan"
SEEN = {  # events imported before the server starts: (event, source) -> count
    ("Signed Up", "web"): 3,
    ("Product Viewed", "web"): 5,
    ("Product Viewed", "ios"): 2,
    ("Cart Abandoned", "web"): 4,
}


@pytest.fixture(scope="module")
def hw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("plan-api")
    keys = make_keys(data_dir)
    for source in ("web", "ios"):
        rows = [{"event": event, "userId": f"u{i}", "product_id": "ABC-123", "method": "email"}
                for (event, src), n in SEEN.items() if src == source for i in range(n)]  # fmt: skip
        path = data_dir / f"{source}.ndjson"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        args = [sys.executable, "-m", "headwater.cli.main", "import", str(path), "--source", source]
        subprocess.run([*args, "--data-dir", str(data_dir)], check=True, capture_output=True, timeout=300)
    with serving(RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200), keys=keys)) as running:
        yield running


def call(hw: RunningHeadwater, method: str, path: str, role: str = "admin", body: Any = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {hw.keys[role]}"}
    return httpx.request(method, hw.url + path, json=body, headers=headers, timeout=60)


def example_files(version: str = "1-0-0", edit: Any = None) -> dict[str, str]:
    files = read_files(EXAMPLE)
    files["plan.json"] = files["plan.json"].replace('"1-0-0"', f'"{version}"')
    if edit is not None:
        order = json.loads(files["events/order_completed.json"])
        edit(order)
        files["events/order_completed.json"] = json.dumps(order)
    return files


def test_publishing_is_for_admins_and_checked(hw: RunningHeadwater) -> None:
    assert call(hw, "GET", "/api/plans", "read").json() == {"versions": [], "active": {}}
    refused = call(hw, "POST", "/api/plans", "read", {"files": example_files()})
    assert refused.status_code == 403
    assert call(hw, "POST", "/api/plans", "write", {"files": example_files()}).status_code == 403
    created = call(hw, "POST", "/api/plans", body={"files": example_files(), "activate": "*"})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/plans/shop/1-0-0"
    assert (created.json()["plan"], created.json()["activated"]) == ("shop@1-0-0", "*")
    again = call(hw, "POST", "/api/plans", body={"files": example_files()})
    assert again.status_code == 200 and again.json()["stored"] is False

    bad = example_files("1-0-1", lambda d: d["properties"]["revenue"].update(type="numbr"))
    answer = call(hw, "POST", "/api/plans", body={"files": bad})
    assert answer.status_code == 400
    assert [(p["file"], p["event"], p["path"], p["rule"]) for p in answer.json()["problems"]] == [
        ("events/order_completed.json", "Order Completed", "$.properties.revenue.type", "schema")
    ]
    breaking = example_files("1-1-0", lambda d: d["properties"].pop("email"))
    answer = call(hw, "POST", "/api/plans", body={"files": breaking})
    assert answer.status_code == 400 and answer.json()["problems"][0]["rule"] == "version"
    assert "use version 2-0-0 or later" in answer.json()["error"]
    fixed = example_files("2-0-0", lambda d: d["properties"].pop("email"))
    assert call(hw, "POST", "/api/plans", body={"files": fixed}).status_code == 201
    for body in ({}, {"files": []}, {"files": {"plan.json": 3}}, {"files": example_files(), "activate": ""}):
        assert call(hw, "POST", "/api/plans", body=body).status_code == 400, body


def test_versions_detail_and_diff(hw: RunningHeadwater) -> None:
    listing = call(hw, "GET", "/api/plans", "read").json()
    assert [(v["version"], v["active_for"], v["pushed_by"]) for v in listing["versions"]] == [
        ("2-0-0", [], "test-admin"), ("1-0-0", ["*"], "test-admin")
    ]  # fmt: skip
    one = call(hw, "GET", "/api/plans/shop/1-0-0", "read").json()
    assert (one["ref"], one["active_for"], one["naming"]) == ("shop@1-0-0", ["*"], "Object Action")
    order = next(e for e in one["events"] if e["name"] == "Order Completed")
    assert order["mode"] == "quarantine" and order["file"] == "events/order_completed.json"
    email = next(p for p in order["properties"] if p["path"] == "email")
    assert email == {"path": "email", "types": ["string"], "required": False, "personal": "hash", "consent": None,
                     "description": "The buyer's e-mail address (stored as a salted hash)."}  # fmt: skip
    assert order["schema"]["properties"]["currency"]["enum"] == ["EUR", "USD", "GBP"]
    with_files = call(hw, "GET", "/api/plans/shop/active?files=1", "read").json()
    assert with_files["version"] == "1-0-0" and with_files["files"] == example_files()
    assert call(hw, "GET", "/api/plans/shop/9-9-9", "read").status_code == 404
    assert call(hw, "GET", "/api/plans/nope/active", "read").status_code == 404

    diff = call(hw, "GET", "/api/plans/diff?a=1-0-0&b=shop@2-0-0", "read").json()
    assert (diff["level"], diff["needs"], diff["version_ok"]) == ("MODEL", "2-0-0", True)
    assert diff["changes"] == [
        {"level": "MODEL", "event": "Order Completed", "path": "$.properties.email", "change": "property removed"}
    ]
    assert call(hw, "GET", "/api/plans/diff?a=1-0-0", "read").status_code == 400
    assert call(hw, "GET", "/api/plans/diff?a=1-0-0&b=5-0-0", "read").status_code == 404
    assert httpx.get(hw.url + "/api/plans").status_code == 401


def test_activation_per_source_and_audit(hw: RunningHeadwater) -> None:
    assert call(hw, "POST", "/api/plans/activate", "read", {"plan": "shop@2-0-0"}).status_code == 403
    answer = call(hw, "POST", "/api/plans/activate", body={"plan": "shop@2-0-0", "source": "ios"})
    assert answer.status_code == 200, answer.text
    assert {s: v["version"] for s, v in answer.json()["active"].items()} == {"*": "1-0-0", "ios": "2-0-0"}
    assert call(hw, "POST", "/api/plans/activate", body={"plan": "shop@3-0-0"}).status_code == 404
    assert call(hw, "POST", "/api/plans/activate", body={"name": "shop", "version": "x"}).status_code == 400
    assert call(hw, "POST", "/api/plans/activate", body={"source": "web"}).status_code == 400
    rows = call(hw, "GET", "/api/audit?action=plan").json()["rows"]
    assert [(r["actor"], r["actor_kind"], r["details"]["change"], r["target"]) for r in reversed(rows)] == [
        ("test-admin", "key", "pushed", "shop@1-0-0"), ("test-admin", "key", "activated", "shop@1-0-0"),
        ("test-admin", "key", "pushed", "shop@2-0-0"), ("test-admin", "key", "activated", "shop@2-0-0"),
    ]  # fmt: skip
    assert rows[0]["details"]["source"] == "ios" and rows[0]["address"] == "127.0.0.1"


def test_check_in_ci_compares_with_the_server(hw: RunningHeadwater, tmp_path: Path) -> None:
    plan = tmp_path / "plan"
    for name, text in example_files("2-1-0", lambda d: (d["properties"].pop("email"), d["required"].remove("currency"),
                                                        d["properties"].pop("currency"))).items():  # fmt: skip
        (plan / name).parent.mkdir(parents=True, exist_ok=True)
        (plan / name).write_text(text)

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
        command = [sys.executable, "-m", "headwater.cli.main", "plan", "check", *args, "--server", hw.url]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)

    done = check(str(plan), "--key", hw.keys["read"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("shop 2-1-0 has a breaking (MODEL) change from 2-0-0: event \"Order Completed\" $.properties.currency: "
            "property removed; use version 3-0-0 or later") in done.stdout  # fmt: skip
    assert "compared with shop@2-0-0 (active for ios): 1 change(s)" in done.stdout
    same = check(str(EXAMPLE), "--key", hw.keys["read"])
    assert same.returncode == 0, same.stdout
    assert "warning: plan.json: $.version: version: shop 2-0-0 is active for ios" in same.stdout
    refused = check(str(EXAMPLE), "--key", "hw_r_wrong")
    assert refused.returncode == 1 and "HTTP 401" in refused.stdout


def test_catalog_shows_planned_and_unplanned_events_with_volumes(hw: RunningHeadwater) -> None:
    catalog = call(hw, "GET", "/api/plans/catalog", "read").json()
    assert catalog["active"] == {"*": "shop@1-0-0", "ios": "shop@2-0-0"}
    events = {e["event"]: e for e in catalog["events"]}
    assert {e: v["status"] for e, v in events.items()} == {
        "Signed Up": "planned", "Product Viewed": "planned", "Cart Abandoned": "not planned",
        "Order Completed": "planned, not seen", "Product Added": "planned, not seen",
    }  # fmt: skip
    viewed = events["Product Viewed"]
    assert viewed["events"] == 7 and viewed["plans"] == ["shop@1-0-0", "shop@2-0-0"]
    assert [(s["source"], s["events"], s["plan"]) for s in viewed["sources"]] == [
        ("web", 5, "shop@1-0-0"), ("ios", 2, "shop@2-0-0")
    ]  # fmt: skip
    assert catalog["seen_not_planned"] == ["Cart Abandoned"]
    assert catalog["planned_not_seen"] == ["Order Completed", "Product Added"]
    assert events["Cart Abandoned"]["events"] == 4 and events["Cart Abandoned"]["plans"] == []
    assert call(hw, "GET", "/api/plans/catalog?days=0", "read").status_code == 400


def test_violation_rates_once_the_plan_is_enforced(hw: RunningHeadwater) -> None:
    pytest.importorskip("headwater.plan.enforce", reason="enforcement (plan-b) not there yet")
    good = {"order_id": "o1", "revenue": 10, "currency": "EUR"}
    bad = {"order_id": "o2", "revenue": "ten", "currency": "EUR"}
    batch = [{"type": "track", "event": "Product Added", "userId": "v1",
              "properties": {"product_id": "ABC-123", "quantity": q}} for q in (1, 2, 0, "3")]  # fmt: skip
    batch += [{"type": "track", "event": "Order Completed", "userId": "v1", "properties": p} for p in (good, bad)]
    response = hw.post("/v1/batch", json.dumps({"batch": batch}), hw.keys["write"])
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 60
    while True:
        catalog = call(hw, "GET", "/api/plans/catalog", "read").json()
        events = {e["event"]: e for e in catalog["events"]}
        added, order = events["Product Added"], events["Order Completed"]
        if added["events"] == 4 and order["quarantined"] == 1 and order["events"] == 1:
            break
        assert time.monotonic() < deadline, catalog
        time.sleep(0.5)
    assert (added["flagged"], added["violation_rate"]) == (2, 0.5)  # warn: stored and flagged
    assert order["violation_rate"] == 0.5  # quarantine mode: one stored, one quarantined
    assert {(v["path"], v["rule"]) for v in added["violations"]} == {
        ("$.properties.quantity", "minimum"), ("$.properties.quantity", "type")
    }  # fmt: skip
