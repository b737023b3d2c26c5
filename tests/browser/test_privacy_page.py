"""The Privacy page in a real browser: an admin asks for a deletion, watches it complete, and the deleted
person's events are gone; the request needs the confirmation box; an analyst has no Privacy page."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_web import shot, sign_in
from tests.helpers import RunningHeadwater


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    yield from admin_and_analyst_app(tmp_path_factory, "web-privacy", privacy_expire_after_minutes=0)


def test_admin_deletes_a_person_from_the_privacy_page(app: RunningHeadwater, browser: Browser) -> None:
    events = [{"type": "track", "event": "seen", "userId": user} for user in ("gone-1", "gone-1", "stays-1")]
    response = app.post("/v1/batch", json.dumps({"batch": events}), app.keys["write"])
    assert response.json()["accepted"] == 3
    app.wait_rows("SELECT count(*) FROM events", [[3]])
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, app.url, "root")
    page.click("#nav a[href='#/privacy']")
    page.fill("textarea[name=privacy-users]", "gone-1\n")
    page.click("#privacy-submit")
    expect(page.locator(".error")).to_contain_text("confirm")  # nothing is sent without the box
    page.check("input[name=privacy-confirm]")
    page.click("#privacy-submit")
    expect(page.locator("#privacy-created")).to_contain_text("queued: 1 id")
    row = page.locator("#privacy-requests tbody tr").first
    expect(row).to_have_attribute("data-state", "completed", timeout=60_000)
    expect(row).to_contain_text("events: 2")
    shot(page, "privacy")
    assert app.sql("SELECT user_id, count(*) FROM events GROUP BY 1") == [["stays-1", 1]]
    audit = httpx.get(app.url + "/api/audit?action=privacy", headers={"Authorization": f"Bearer {app.keys['admin']}"})
    assert {r["actor"] for r in audit.json()["rows"]} >= {"root"}
    context.close()


def test_an_analyst_has_no_privacy_page(app: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, app.url, "ana")
    expect(page.locator("#nav a[href='#/audit']")).to_be_hidden()
    expect(page.locator("#nav a[href='#/privacy']")).to_be_hidden()
    reply = httpx.post(app.url + "/api/privacy/deletions", json={"user_ids": ["x"]},
                       headers={"Authorization": f"Bearer {app.keys['read']}"})  # fmt: skip
    assert reply.status_code == 403
    context.close()
