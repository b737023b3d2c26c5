"""The Live events page in a real browser: 100 000 events streamed to it leave a bounded table, pause holds
new rows back, filters narrow the stream, and a row opens the event's full JSON and links to its user."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_web import shot, sign_in
from tests.helpers import RunningHeadwater

MAX_ROWS = 500  # live.js MAX_ROWS
BATCH = 2_500  # the collector's max_batch_events


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    yield from admin_and_analyst_app(tmp_path_factory, "web-live")


def send(app: RunningHeadwater, events: Sequence[Mapping[str, object]]) -> None:
    for start in range(0, len(events), BATCH):
        chunk = events[start : start + BATCH]
        body = "\n".join(json.dumps(e) for e in chunk)
        response = app.post("/track", body, app.keys["write"])
        assert response.status_code == 200 and response.json()["accepted"] == len(chunk), response.text


def received(page: Page) -> int:
    return int(page.locator("#live-stats").get_attribute("data-received") or 0)


def wait_received(page: Page, at_least: int, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(
        f"() => Number(document.querySelector('#live-stats')?.dataset.received || 0) >= {at_least}",
        timeout=timeout_ms,
    )


def live_page(app: RunningHeadwater, browser: Browser) -> Page:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    sign_in(page, app.url, "ana")
    page.goto(app.url + "/#/live")
    expect(page.locator("#live-status")).to_have_text("streaming", timeout=15_000)
    return page


def test_hundred_thousand_events_leave_a_bounded_table(app: RunningHeadwater, browser: Browser) -> None:
    page = live_page(app, browser)
    before = received(page)
    plans = ("free", "pro", "team")
    events = [
        {"event": f"Step {i % 7}", "userId": f"u-{i % 997}", "plan": plans[i % 3], "i": i} for i in range(100_000)
    ]
    send(app, events)
    wait_received(page, before + 100_000, timeout_ms=600_000)
    assert received(page) == before + 100_000  # every event arrived, none twice
    rows = page.locator("#live tbody tr")
    expect(rows).to_have_count(MAX_ROWS)  # the DOM holds a bounded window
    expect(page.locator("#live-stats")).to_contain_text(f"{before + 100_000} received")
    shown = [json.loads(text)["i"] for text in page.locator("#live td.props").all_inner_texts()]
    assert len(set(shown)) == MAX_ROWS and min(shown) >= 100_000 - BATCH  # the newest: from the last request

    # still usable: a row opens the event's full JSON, with a link to its user's timeline
    rows.nth(1).click()
    detail = json.loads(page.locator("#event-json").inner_text())
    i = detail["properties"]["i"]
    assert detail["properties"] == {"plan": plans[i % 3], "i": i} and detail["user_id"] == f"u-{i % 997}"
    expect(page.locator("#open-timeline")).to_have_attribute("href", f"#/timeline/u-{i % 997}")
    shot(page, "live-page")
    page.context.close()


def test_pause_holds_new_rows_until_resume(app: RunningHeadwater, browser: Browser) -> None:
    page = live_page(app, browser)
    page.click("#pause")
    expect(page.locator("#pause")).to_have_text("Resume")
    before = received(page)
    marker = f"paused-{uuid.uuid4().hex[:8]}"
    send(app, [{"event": "Held", "userId": marker}])
    wait_received(page, before + 1)
    expect(page.locator("#live-stats")).to_contain_text("paused: 1 new")
    expect(page.locator("#live tbody")).not_to_contain_text(marker)
    page.click("#pause")
    expect(page.locator("#live tbody tr").first).to_contain_text(marker)
    page.context.close()


def test_filters_by_event_user_and_property(app: RunningHeadwater, browser: Browser) -> None:
    page = live_page(app, browser)
    tag = uuid.uuid4().hex[:6]
    page.fill("input[name=event]", f"Rare {tag}")
    page.press("input[name=event]", "Enter")
    expect(page).to_have_url(f"{app.url}/#/live?event=Rare+{tag}")
    expect(page.locator("#live-status")).to_have_text("streaming", timeout=15_000)
    noise = [{"event": "Common", "userId": f"n-{i}", "plan": "free"} for i in range(300)]
    rare = [{"event": f"Rare {tag}", "userId": f"r-{i}", "plan": "pro" if i % 2 else "free"} for i in range(6)]
    send(app, noise[:150] + rare + noise[150:])
    rows = page.locator("#live tbody tr")
    expect(rows).to_have_count(6)  # only the rare event, from the server's filter
    for i in range(6):
        expect(rows.nth(i).locator("td").nth(1)).to_have_text(f"Rare {tag}")

    page.fill("input[name=prop]", "plan=pro")  # narrows what is shown, here
    expect(rows).to_have_count(3)
    for i in range(3):
        expect(rows.nth(i).locator("td.props")).to_contain_text('"plan":"pro"')

    page.fill("input[name=prop]", "")
    page.fill("input[name=event]", "")
    page.press("input[name=event]", "Enter")
    page.fill("input[name=user]", "r-3")
    page.press("input[name=user]", "Enter")
    expect(page.locator("#live-status")).to_have_text("streaming", timeout=15_000)
    send(app, [*noise[:20], {"event": "Again", "userId": "r-3"}, *noise[20:40]])
    expect(rows).to_have_count(1)  # only that user's events
    expect(rows.first.locator("td").nth(2)).to_have_text("r-3")
    rows.first.locator("a.user-link").click()
    expect(page).to_have_url(f"{app.url}/#/timeline/r-3")
    page.context.close()
