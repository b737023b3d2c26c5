"""A person's timeline in a real browser (#/timeline/<id>): reached from a live row, it shows the ids stitched
into the person, their latest traits and properties, and every event (both devices, before and after they
identified), each opening its JSON; an unknown id says what to do."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_web import shot, sign_in
from tests.helpers import RunningHeadwater

TAG = uuid.uuid4().hex[:8]
USER, PHONE, LAPTOP = f"user-{TAG}", f"phone-{TAG}", f"laptop-{TAG}"


def at(minutes: int) -> str:
    return (datetime.now(UTC) - timedelta(hours=2) + timedelta(minutes=minutes)).isoformat()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    for running in admin_and_analyst_app(tmp_path_factory, "web-timeline"):
        calls = [
            {"type": "page", "name": "Pricing", "anonymousId": PHONE, "timestamp": at(0),
             "properties": {"plan": "free"}},
            {"type": "page", "name": "Pricing", "anonymousId": LAPTOP, "timestamp": at(5)},
            {"type": "identify", "userId": USER, "anonymousId": PHONE, "timestamp": at(10),
             "traits": {"email": f"{TAG}@example.com", "plan": "pro"}},
            {"type": "identify", "userId": USER, "anonymousId": LAPTOP, "timestamp": at(20)},
            {"type": "track", "event": "Order Completed", "userId": USER, "anonymousId": LAPTOP, "timestamp": at(30),
             "properties": {"revenue": 42, "currency": "EUR"}},
        ]  # fmt: skip
        response = httpx.post(f"{running.url}/v1/batch", json={"writeKey": running.keys["write"], "batch": calls})
        assert response.status_code == 200, response.text
        running.wait_rows(f"SELECT count(DISTINCT person_id) FROM events WHERE person_id = '{USER}'", [[1]], 60)
        running.wait_rows(f"SELECT count(*) FROM events WHERE person_id = '{USER}'", [[5]], 60)
        yield running


def signed_in(app: RunningHeadwater, browser: Browser) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(page, app.url, "ana")
    return page


def test_a_live_row_opens_the_persons_timeline(app: RunningHeadwater, browser: Browser) -> None:
    page = signed_in(app, browser)
    page.goto(app.url + "/#/live")
    row = page.locator("#live tbody tr", has_text="Order Completed")
    expect(row).to_have_count(1, timeout=15_000)
    row.locator("a.user-link").click()
    expect(page).to_have_url(f"{app.url}/#/timeline/{USER}")

    expect(page.locator("#timeline-person")).to_have_text(f"Person {USER}")
    expect(page.locator("#timeline-count")).to_have_text("5")
    ids = page.locator("#identities tbody tr td:first-child")
    expect(ids).to_have_count(3)
    assert sorted(ids.all_inner_texts()) == sorted([USER, PHONE, LAPTOP])

    props = page.locator("#person-properties tbody tr")
    expect(props.filter(has_text="email")).to_contain_text(f"{TAG}@example.com")
    expect(props.filter(has_text="revenue")).to_contain_text("42")
    expect(props.filter(has=page.locator("td:first-child", has_text="plan")).first).to_contain_text("pro")  # the trait

    events = page.locator("#timeline-events tr.timeline-event")
    expect(events).to_have_count(5)
    expect(events.first).to_contain_text("Order Completed")  # newest first
    expect(events.last).to_contain_text(PHONE)  # the first anonymous visit, before identify
    events.first.click()
    shown = json.loads(page.locator("#timeline-json").inner_text())
    assert shown["properties"] == {"revenue": 42, "currency": "EUR"} and shown["user_id"] == USER
    shot(page, "timeline")

    # an anonymous id opens the same person; its ids link on
    page.locator("#identities a", has_text=PHONE).click()
    expect(page.locator("#timeline-person")).to_have_text(f"Person {USER}")
    expect(page.locator("#timeline-events tr.timeline-event")).to_have_count(5)
    page.context.close()


def test_unknown_and_missing_ids(app: RunningHeadwater, browser: Browser) -> None:
    page = signed_in(app, browser)
    page.goto(f"{app.url}/#/timeline/nobody-{TAG}")
    expect(page.locator("#timeline-empty")).to_contain_text(f"No events of nobody-{TAG}")
    page.goto(f"{app.url}/#/timeline")
    page.fill("input[name=person]", LAPTOP)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{app.url}/#/timeline/{LAPTOP}")
    expect(page.locator("#timeline-person")).to_have_text(f"Person {USER}")
    page.context.close()
