"""End to end in a real browser: Debian's chromium driven by Playwright against `headwater up`."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from headwater.auth.users import UserStore
from tests.helpers import ROOT, RunningHeadwater, child_env, make_keys

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip
SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "analyst-password-1"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, deployment: dict[str, str]) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("web")
    keys = make_keys(data_dir)
    users = UserStore(data_dir / "users.db")
    users.create("ana", "analyst", PASSWORD)
    users.create("vic", "viewer", PASSWORD)
    users.close()
    env = child_env(data_dir, flush_interval_ms=200, **deployment)
    running = RunningHeadwater(data_dir, env, keys=keys, settings=deployment).start()
    now = datetime.now(UTC)
    lines = []
    for person, steps in (("u-full", ["Signed Up", "Activated", "Paid"]), ("u-half", ["Signed Up", "Activated"]),
                          ("u-start", ["Signed Up"])):  # fmt: skip
        for i, event in enumerate(steps):
            when = (now - timedelta(hours=3) + timedelta(minutes=10 * i)).isoformat()
            lines.append(f'{{"event":"{event}","userId":"{person}","timestamp":"{when}","plan":"pro"}}')
    assert running.post("/track", "\n".join(lines), keys["write"]).json()["accepted"] == 6
    running.wait_rows("SELECT count(*) FROM events", [[6]])
    try:
        yield running
    finally:
        running.stop()


def sign_in(page: Page, url: str, name: str) -> None:
    page.goto(url + "/")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#who")).to_contain_text(name)
    page.wait_for_url(re.compile(r"#/\w"))  # the home page has sent us on (first dashboard, else live events)


def shot(page: Page, name: str) -> None:
    """Screenshots for docs/ when HEADWATER_SCREENSHOTS=1 (`make screenshots`); a render check otherwise."""
    png = page.screenshot(full_page=True)
    assert len(png) > 10_000  # a blank page compresses to almost nothing
    if os.environ.get("HEADWATER_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / f"{name}.png").write_bytes(png)


def test_analyst_journey_live_funnel_dashboard_share(app: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, app.url, "ana")

    # live events: a freshly posted event shows up within seconds
    marker = f"live-{uuid.uuid4().hex[:8]}"
    expect(page.locator("table#live")).to_be_visible()
    app.post("/track", f'{{"event":"Clicked","userId":"{marker}","button":"buy"}}', app.keys["write"])
    expect(page.locator("table#live")).to_contain_text(marker, timeout=10_000)
    shot(page, "live-events")

    # a dashboard to save into
    page.goto(app.url + "/#/dashboards")
    page.fill("input[name=board-name]", "Growth")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#share")).to_be_visible()

    # build a funnel from the event lists and check the numbers (it runs as soon as its steps are picked)
    page.goto(app.url + "/#/insights")
    page.click(".kind-tabs button[data-kind=funnel]")
    page.click(".presets button[data-range='24h']")
    for index, event in enumerate(["Signed Up", "Activated", "Paid"]):
        if index == 2:
            page.click("button.add-step")
        field = page.locator("input[name=step-event]").nth(index)
        field.click()
        field.fill(event)
        page.locator(".picker-menu.open li.item", has_text=event).first.click()
    result = page.locator("#result table")
    expect(result).to_contain_text("Signed Up")
    rows = result.locator("tbody tr")
    expect(rows.nth(0).locator("td").nth(2)).to_have_text("3")
    expect(rows.nth(1).locator("td").nth(2)).to_have_text("2")
    expect(rows.nth(2).locator("td").nth(2)).to_have_text("1")
    expect(rows.nth(2).locator("td").nth(3)).to_have_text("33.3%")
    shot(page, "insight-funnel")
    page.fill("input[name=save-name]", "Signup funnel")
    page.select_option("select[name=dashboard]", label="Growth")
    page.click("#save")
    expect(page.locator("#save-message")).to_contain_text("added to the dashboard")

    # the dashboard shows the saved funnel; share it
    page.goto(app.url + "/#/dashboards")
    page.click("text=Growth")
    expect(page.locator("main")).to_contain_text("Signup funnel")
    # a real-time widget beside the historical one
    page.fill("input[name=live-event]", "Clicked")
    page.click("#add-live")
    tick = f"tick-{uuid.uuid4().hex[:8]}"
    app.post("/track", f'{{"event":"Clicked","userId":"{tick}"}}', app.keys["write"])
    expect(page.locator("table.live-tile")).to_contain_text(tick, timeout=10_000)
    page.click("#share")
    link = page.locator("#share-link").get_attribute("href")
    assert link and link.startswith("/share/")
    shot(page, "dashboard")

    # one person's timeline
    page.goto(app.url + "/#/insights")
    page.click(".kind-tabs button[data-kind=timeline]")
    page.fill("input[name=person]", "u-full")
    page.press("input[name=person]", "Enter")
    expect(page.locator("#result h3")).to_contain_text("Person u-full")  # the person, then its ids and events
    expect(page.locator("#result table").last).to_contain_text("Paid")

    # SQL editor
    page.goto(app.url + "/#/sql")
    page.click("text=Run")
    expect(page.locator("main table")).to_contain_text("Signed Up")
    shot(page, "sql")

    # the share link works signed out
    anonymous = browser.new_context(viewport={"width": 1280, "height": 900})
    public = anonymous.new_page()
    public.goto(app.url + link)
    expect(public.locator("main")).to_contain_text("Growth")
    expect(public.locator("main")).to_contain_text("shared view")
    funnel_rows = public.locator(".tile", has_text="Signup funnel").locator("tbody tr")
    expect(funnel_rows.nth(2).locator("td").nth(2)).to_have_text("1")
    expect(public.locator("table.live-tile")).to_contain_text(tick, timeout=10_000)
    shot(public, "share-link")
    anonymous.close()
    context.close()


def test_viewer_cannot_use_sql_or_keys(app: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, app.url, "vic")
    expect(page.locator("#nav a[href='#/sql']")).to_be_hidden()
    expect(page.locator("#nav a[href='#/keys']")).to_be_hidden()
    page.goto(app.url + "/#/keys")
    expect(page.locator("main")).to_contain_text("may not manage")
    context.close()


def test_signed_out_visitor_gets_the_sign_in_form(app: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(app.url + "/#/sql")
    expect(page.locator("form.login")).to_be_visible()
    page.fill("input[name=name]", "ana")
    page.fill("input[name=password]", "wrong-password")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("wrong user name or password")
    context.close()


def test_admin_manages_keys_users_and_revokes_share_links(app: RunningHeadwater, browser: Browser) -> None:
    admin_key = {"Authorization": f"Bearer {app.keys['admin']}"}
    assert httpx.post(app.url + "/api/users", json={"name": "root", "role": "admin", "password": PASSWORD},
                      headers=admin_key).status_code == 201  # fmt: skip
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, app.url, "root")
    page.goto(app.url + "/#/keys")
    page.fill("input[name=key-name]", "website")
    page.click("text=Create key")
    expect(page.locator("main")).to_contain_text("New write key (shown once): hw_w_")
    page.fill("input[name=user-name]", "newbie")
    page.fill("input[name=user-password]", "newbie-password-1")
    page.click("#add-user")
    expect(page.locator("main")).to_contain_text("created viewer newbie")
    page.goto(app.url + "/#/dashboards")
    page.fill("input[name=board-name]", "Ops")
    page.get_by_role("button", name="Create", exact=True).click()
    page.click("#share")
    link = page.locator("#share-link").get_attribute("href")
    page.click("button.revoke")
    expect(page.locator("#share-link")).to_have_count(0)
    anonymous = browser.new_context()
    public = anonymous.new_page()
    public.goto(app.url + str(link))
    expect(public.locator("main")).to_contain_text("revoked")
    anonymous.close()
    context.close()
