"""The Cohorts page in a real browser: an analyst defines "bought at least twice" with the pickers, sees the size
preview, saves it, then sees its size over time, its members and its SQL; the list shows the size."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_web import shot, sign_in
from tests.helpers import RunningHeadwater


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    yield from admin_and_analyst_app(tmp_path_factory, "web-cohorts")


def route_cohorts(page: Page) -> None:
    """Serve app.js with the `#/cohorts` route when it does not have it yet (it is wired in at integration)."""

    def patch(route: Route) -> None:
        response = route.fetch()
        text = response.text()
        if "cohortsPage" not in text:
            text = 'import { cohortsPage } from "./cohorts.js";\n' + text.replace(
                'if (page === "insights")',
                'if (page === "cohorts") await cohortsPage(app, arg);\n    else if (page === "insights")',
            )
        route.fulfill(response=response, body=text)

    page.route("**/static/app.js", patch)


def test_analyst_defines_saves_and_inspects_a_cohort(app: RunningHeadwater, browser: Browser) -> None:
    tag = uuid.uuid4().hex[:6]
    bought, viewed = f"Bought {tag}", f"Viewed {tag}"
    now = datetime.now(UTC)
    calls = []
    for u in range(8):
        user = f"buyer{u}-{tag}"
        seen = (now - timedelta(days=2)).isoformat()
        calls.append({"type": "track", "event": viewed, "userId": user, "timestamp": seen,
                      "properties": {"plan": "pro" if u % 2 else "free"}})  # fmt: skip
        for n in range(u % 3):  # 0, 1 or 2 purchases: u % 3 == 2 bought twice
            when = (now - timedelta(hours=2 + n)).isoformat()
            calls.append({"type": "track", "event": bought, "userId": user, "timestamp": when,
                          "properties": {"revenue": 5}})  # fmt: skip
    twice = sorted(f"buyer{u}-{tag}" for u in range(8) if u % 3 == 2)
    assert httpx.post(app.url + "/v1/batch", json={"writeKey": app.keys["write"], "batch": calls}).is_success
    app.wait_rows(f"SELECT count(*) FROM events WHERE event LIKE '%{tag}'", [[len(calls)]], timeout=60)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    route_cohorts(page)
    sign_in(page, app.url, "ana")
    page.goto(app.url + "/#/cohorts")
    expect(page.locator("#cohorts-page")).to_contain_text("No cohorts yet")
    page.click("#new-cohort")
    editor = page.locator("#cohort-editor")
    expect(editor).to_be_visible()
    page.fill("input[name=cohort-name]", f"Repeat buyers {tag}")
    event = editor.locator("input[name=condition-event]")
    event.click()
    event.fill(tag)
    page.locator(f".picker-menu li.item[data-value='{bought}']").click()  # picked from the catalog's list
    page.fill("input[name=min-count]", "2")
    expect(page.locator("#cohort-preview")).to_have_text(f"{len(twice)} people now", timeout=15_000)
    page.click("#save-cohort")
    expect(page).to_have_url(re.compile(r"#/cohorts/\d+$"))
    expect(page.locator("#cohorts tbody tr")).to_have_count(1)
    expect(page.locator("#cohorts tbody tr td.size")).to_have_text(str(len(twice)))
    expect(page.locator("#cohort-members")).to_contain_text(f"{len(twice)} members")
    members = page.locator("#cohort-members td")
    expect(members).to_have_count(len(twice))
    assert sorted(members.all_inner_texts()) == twice
    expect(page.locator("#cohort-sizes canvas")).to_have_count(1)
    page.locator("#cohort-details summary").click()
    expect(page.locator("#cohort-sql")).to_contain_text("HAVING count(*) >= 2")
    shot(page, "cohorts")

    # edit: plan pro buyers only (a second condition with the property picker); the preview follows
    page.click("#add-condition")
    page.locator("select[name=condition-type]").nth(1).select_option("property")
    prop = editor.locator("input[name=condition-property]")
    prop.click()
    prop.fill("plan")
    page.locator(".picker-menu li.item[data-value='plan']").click()
    value = editor.locator("input[name=condition-value]")
    value.click()
    page.locator(".picker-menu li.item[data-value='pro']").click()
    pro_twice = [m for m in twice if int(m[5 : m.index("-")]) % 2]  # buyer5 only
    assert len(pro_twice) == 1
    expect(page.locator("#cohort-preview")).to_have_text(f"{len(pro_twice)} person now", timeout=15_000)
    page.click("#save-cohort")
    expect(page.locator("#cohorts tbody tr td.size")).to_have_text(str(len(pro_twice)))
    context.close()
