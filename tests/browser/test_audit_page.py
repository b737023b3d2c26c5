"""The Audit page in a real browser: an admin sees the changes made through the API and through the app itself
(newest first, who, what, from where), filters them, downloads the CSV export; an analyst cannot open it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_web import shot, sign_in
from tests.helpers import RunningHeadwater


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    yield from admin_and_analyst_app(tmp_path_factory, "web-audit")


def test_admin_reads_filters_and_exports_the_audit_trail(app: RunningHeadwater, browser: Browser) -> None:
    admin = {"Authorization": f"Bearer {app.keys['admin']}"}
    assert httpx.post(app.url + "/api/keys", json={"name": "ingest-web", "role": "write"}, headers=admin).is_success
    assert httpx.delete(app.url + "/api/keys/ingest-web", headers=admin).is_success

    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    sign_in(page, app.url, "root")
    # a change made in the app itself: a key created on the Keys page
    page.click("#nav a[href='#/keys']")
    page.fill("input[name=key-name]", "from-the-app")
    page.click("text=Create key")
    expect(page.locator("main")).to_contain_text("shown once")

    page.click("#nav a[href='#/audit']")
    rows = page.locator("#audit tbody tr")
    expect(rows.first).to_contain_text("key.created", timeout=15_000)
    expect(rows.first).to_contain_text("from-the-app")
    expect(rows.first).to_contain_text("root")
    expect(rows.first.locator(".badge")).to_have_text("user")
    revoked = page.locator("#audit tbody tr[data-action='key.revoked']")
    expect(revoked).to_have_count(1)
    expect(revoked).to_contain_text("test-admin")
    expect(revoked).to_contain_text("127.0.0.1")
    expect(page.locator("#audit tbody tr[data-action='settings.started']")).to_contain_text("first start")
    shot(page, "audit")

    # filters: keys only, then an actor
    page.select_option("select[name=audit-action]", "key")
    expect(page.locator("#audit tbody tr[data-action='settings.started']")).to_have_count(0)
    expect(rows).to_have_count(3)
    page.fill("input[name=audit-actor]", "test-admin")
    page.press("input[name=audit-actor]", "Enter")
    expect(rows).to_have_count(2)
    expect(page.locator("main")).to_contain_text("2 rows, newest first")

    # the export carries the same filters and downloads as a file
    with page.expect_download() as download:
        page.click("#audit-csv")
    assert download.value.suggested_filename.startswith("headwater-audit-")
    exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [(r["action"], r["target"], r["actor"]) for r in exported] == [
        ("key.revoked", "ingest-web", "test-admin"),
        ("key.created", "ingest-web", "test-admin"),
    ]
    page.fill("input[name=audit-actor]", "nobody")
    page.click("#audit-apply")
    expect(page.locator("main")).to_contain_text("no rows match")
    context.close()


def test_analysts_do_not_see_it(app: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, app.url, "ana")
    expect(page.locator("#nav a[href='#/audit']")).to_be_hidden()
    page.goto(app.url + "/#/audit")
    expect(page.locator("main .error")).to_contain_text("audit trail is for admins")
    context.close()
