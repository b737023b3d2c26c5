"""The Live page in a real browser shows, next to each event, what the active tracking plan finds in it: the
violations (path, rule, expected, got) and the mode, a tick for a clean event, nothing for a source without a
plan."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_web import shot, sign_in
from tests.helpers import RunningHeadwater

ORDER = {
    "title": "Order Completed",
    "type": "object",
    "x-enforcement": "quarantine",
    "properties": {"revenue": {"type": "number", "minimum": 0}, "currency": {"enum": ["EUR", "USD"]}},
    "required": ["revenue"],
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    yield from admin_and_analyst_app(tmp_path_factory, "web-live-plan", plan_refresh_s=0.2)


def test_violations_next_to_live_events(app: RunningHeadwater, browser: Browser) -> None:
    files = {"plan.json": json.dumps({"name": "shop", "version": "1-0-0"}),
             "events/order_completed.json": json.dumps(ORDER)}  # fmt: skip
    answer = httpx.post(app.url + "/api/plans", json={"files": files, "activate": "test-write"},
                        headers={"Authorization": f"Bearer {app.keys['admin']}"}, timeout=30)  # fmt: skip
    assert answer.status_code == 201, answer.text
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    sign_in(page, app.url, "ana")
    page.goto(app.url + "/#/live")
    events = [
        {"event": "Order Completed", "userId": "bad-1", "revenue": "12", "currency": "GBP"},
        {"event": "Order Completed", "userId": "good-1", "revenue": 12, "currency": "EUR"},
    ]
    sent = app.post("/track", "\n".join(json.dumps(e) for e in events), app.keys["write"])
    assert sent.json()["accepted"] == 2
    bad = page.locator("#live tbody tr", has_text="bad-1")
    expect(bad.locator("td.plan")).to_contain_text("2 violations (quarantine)", timeout=20_000)
    expect(bad.locator("td.plan")).to_contain_text("$.properties.revenue: type: expected number, got string")
    expect(bad.locator("td.plan")).to_contain_text('$.properties.currency: enum: expected one of ["EUR","USD"]')
    expect(bad.locator("td.plan")).to_have_attribute("title", "shop@1-0-0")
    good = page.locator("#live tbody tr", has_text="good-1")
    expect(good.locator("td.plan")).to_have_text("✓")
    shot(page, "live-violations")
    context.close()
