"""The insight builder in a real browser: pickers fed by the catalog, the default insight, re-runs on change,
the whole insight in the URL (back/forward, pasted links), filters and breakdowns, bands and forecasts."""

from __future__ import annotations

import json
import random
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_web import shot, sign_in
from tests.helpers import RunningHeadwater

DAYS = 35
PLANS = ("free", "pro", "team")


def shop_lines(days: int = DAYS, seed: int = 3) -> list[str]:
    """A small shop history: visitors view pages daily, some sign up, activate and buy (revenue), with plan and
    country properties; `Page Viewed` is the most frequent event. 60 people sign up, the
    even ones activate, every fourth buys for 10 + its number."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    lines: list[dict[str, Any]] = []
    for person in range(60):
        user, plan, country = f"u{person}", PLANS[person % 3], ("FR", "DE", "US")[person % 3 if person % 4 else 0]
        first = rng.randrange(days)
        for day in range(first, -1, -1):
            when = now - timedelta(days=day, hours=rng.random() * 3 + 1)
            steps: list[tuple[str, int, dict[str, Any]]] = [
                ("Page Viewed", v, {}) for v in range(1 + (person + day) % 3)
            ]
            if day == first:
                steps.append(("Signed Up", 5, {}))
                if person % 2 == 0:
                    steps.append(("Activated", 9, {}))
                if person % 4 == 0:
                    steps.append(("Order Completed", 12, {"revenue": 10 + person, "currency": "EUR"}))
            for event, minutes, extra in steps:
                stamp = (when + timedelta(minutes=minutes)).isoformat()
                lines.append(
                    {"event": event, "userId": user, "timestamp": stamp, "plan": plan, "country": country, **extra}
                )
    return [json.dumps(line) for line in lines]


def seed(running: RunningHeadwater, lines: list[str]) -> None:
    for start in range(0, len(lines), 2000):
        assert running.post("/track", "\n".join(lines[start : start + 2000]), running.keys["write"]).status_code == 200
    running.wait_rows("SELECT count(*) FROM events", [[len(lines)]], timeout=60)


@pytest.fixture(autouse=True)
def patient() -> Iterator[None]:
    """Assertions wait up to 15 s (a loaded 2-core machine runs these beside other suites), then the default again."""
    expect.set_options(timeout=15_000)
    yield
    expect.set_options(timeout=5_000)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    for running in admin_and_analyst_app(tmp_path_factory, "builder"):
        seed(running, shop_lines())
        yield running


def open_builder(page: Page, url: str, state: dict[str, Any] | None = None) -> None:
    page.goto(url + "/#/insights" + ("?q=" + urllib.parse.quote(json.dumps(state)) if state else ""))
    expect(page.locator(".kind-tabs")).to_be_visible()


def url_state(page: Page) -> dict[str, Any]:
    query = urllib.parse.urlparse(page.url).fragment.split("?", 1)[1]
    return json.loads(urllib.parse.parse_qs(query)["q"][0])


def pick(page: Page, input_selector: str, text: str, option: str | None = None) -> None:
    """Type into a picker and choose the option `option` (default: the text) from its list."""
    field = page.locator(input_selector)
    field.click()
    field.fill(text)
    page.locator(".picker-menu.open li.item", has_text=option or text).first.click()


def test_opens_on_the_most_frequent_event_as_a_7_day_trend(shop: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, shop.url, "ana")
    page.goto(shop.url + "/#/insights")
    expect(page.locator("input[name=series-event]")).to_have_value("Page Viewed")
    expect(page.locator(".kind-tabs button.on")).to_have_text("Trends")
    expect(page.locator(".presets button.on")).to_have_text("Last 7 days")
    expect(page.locator("#result canvas")).to_have_count(1)  # ran without pressing anything
    expect(page.locator("#result table")).to_contain_text("Page Viewed count")
    state = url_state(page)
    assert state["kind"] == "trend" and state["range"] == "7d" and state["series"][0]["event"] == "Page Viewed"
    # the event list has counts and last-seen, most frequent first
    page.locator("input[name=series-event]").click()
    first = page.locator(".picker-menu.open li.item").first
    expect(first).to_contain_text("Page Viewed")
    expect(first.locator(".meta")).to_contain_text("events")
    expect(first.locator(".meta")).to_contain_text("ago")
    context.close()


def test_picking_changes_rerun_and_the_url_restores_them(shop: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, shop.url, "ana")
    open_builder(page, shop.url)
    expect(page.locator("#result table")).to_contain_text("Page Viewed count")

    # another event: re-runs by itself
    pick(page, "input[name=series-event]", "Signed", "Signed Up")
    expect(page.locator("#result table")).to_contain_text("Signed Up count")
    # a 30-day range and a breakdown by plan: one line per plan, 60 sign-ups in all
    page.click(".presets button[data-range='30d']")
    pick(page, "input[name=breakdown]", "plan")
    table = page.locator("#result table")
    for plan in PLANS:
        expect(table).to_contain_text(f"Signed Up count · {plan}")
    shot(page, "insight-builder")
    state = url_state(page)
    assert state["series"][0]["event"] == "Signed Up" and state["range"] == "30d" and state["breakdown"] == "plan"

    # a filter row: property, operator, value from the catalog's values
    page.click("button.add-filter")
    pick(page, ".filter-row input[name=filter-property]", "plan")
    pick(page, ".filter-row input[name=value]", "pro")
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text("Signed Up count · pro")
    assert url_state(page)["filters"] == [{"property": "plan", "op": "eq", "value": "pro"}]

    # back: the filter goes, the three plans come back; forward: the filter again
    page.go_back()
    expect(page.locator(".filter-row")).to_have_count(0)
    expect(table.locator("tbody tr")).to_have_count(3)
    page.go_forward()
    expect(page.locator(".filter-row input[name=value]")).to_have_value("pro")
    expect(table.locator("tbody tr")).to_have_count(1)

    # a pasted link opens the same insight in a fresh page
    link = page.url
    other = context.new_page()
    other.goto(link)
    expect(other.locator("input[name=series-event]")).to_have_value("Signed Up")
    expect(other.locator("input[name=breakdown]")).to_have_value("plan")
    expect(other.locator("#result table")).to_contain_text("Signed Up count · pro")
    context.close()


def test_funnel_from_pickers_and_other_kinds(shop: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, shop.url, "ana")
    # 60 people signed up, 30 activated (even ids), 15 bought (multiples of 4), all within the last DAYS days
    steps = [{"event": "Signed Up"}, {"event": "Activated"}]
    state = {"kind": "funnel", "range": "90d", "steps": steps, "window_seconds": 14 * 86400, "order": "ordered"}
    open_builder(page, shop.url, state)
    rows = page.locator("#result table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(1).locator("td").nth(2)).to_have_text("30")
    page.click("button.add-step")
    pick(page, ".step-row >> nth=2 >> input[name=step-event]", "Order", "Order Completed")
    expect(rows).to_have_count(3)
    expect(rows.nth(0).locator("td").nth(2)).to_have_text("60")
    expect(rows.nth(2).locator("td").nth(2)).to_have_text("15")
    expect(rows.nth(2).locator("td").nth(3)).to_have_text("25.0%")
    assert [s["event"] for s in url_state(page)["steps"]] == ["Signed Up", "Activated", "Order Completed"]

    # switching kind keeps the events: retention of the first two, then an experiment-less journey
    page.click(".kind-tabs button[data-kind=retention]")
    expect(page.locator("input[name=start-event]")).to_have_value("Signed Up")
    expect(page.locator("#result table")).to_contain_text("cohort")
    page.click(".kind-tabs button[data-kind=journey]")
    expect(page.locator("input[name=journey-event]")).to_have_value("Signed Up")
    expect(page.locator("#result table")).to_contain_text("Activated")
    page.click(".kind-tabs button[data-kind=timeline]")
    expect(page.locator("#status")).to_contain_text("Type a user id")
    page.locator("input[name=person]").fill("u4")
    page.locator("input[name=person]").press("Enter")
    expect(page.locator("#result table").last).to_contain_text("Order Completed")
    context.close()


def test_sum_of_a_numeric_property_and_view_sql(shop: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, shop.url, "ana")
    state = {
        "kind": "trend",
        "range": "90d",
        "series": [{"event": "Order Completed", "measure": "count"}],
        "interval": "month",
        "filters": [],
    }
    open_builder(page, shop.url, state)
    expect(page.locator("#result table")).to_contain_text("Order Completed count")
    page.select_option("select[name=measure]", "sum")
    expect(page.locator("#status")).to_contain_text("numeric property")
    page.locator("input[name=measure-property]").click()
    # only numeric properties are offered
    expect(page.locator(".picker-menu.open li.item .label")).to_have_text(["revenue"])
    page.locator(".picker-menu.open li.item", has_text="revenue").click()
    expected = sum(10 + p for p in range(0, 60, 4))  # every order is in the last DAYS days
    expect(page.locator("#result table tbody tr").first.locator("td").nth(3)).to_have_text(str(expected))
    page.click("details.view-sql summary")
    expect(page.locator("pre.sql")).to_contain_text("revenue")
    context.close()


def test_band_forecast_save_and_alert_me(shop: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, shop.url, "ana")
    open_builder(page, shop.url)
    expect(page.locator("#result table")).to_contain_text("Page Viewed count")
    page.click(".presets button[data-range='30d']")
    page.check("input[name=anomalies]")
    page.check("input[name=forecast-on]")  # 14 days ahead by default
    # the first band and fit of a fresh server import statsmodels: allow them time
    expect(page.locator(".band-caption")).to_contain_text("expected band", timeout=60_000)
    expect(page.locator(".forecast-caption")).to_contain_text("forecast 14 intervals")
    expect(page.locator(".forecast-caption .backtest")).to_contain_text("backtest error ±")
    shot(page, "insight-band-forecast")
    state = url_state(page)
    assert state["anomalies"] is True and state["forecast"] == 14 and state["range"] == "30d"
    page.click("details.view-sql summary")
    expect(page.locator("pre.sql")).to_contain_text("the band's history")

    # a custom range keeps the dates in the URL
    page.click(".presets button[data-range=custom]")
    expect(page.locator("input[name=from]")).to_be_visible()
    page.fill("input[name=from]", (datetime.now(UTC) - timedelta(days=20)).date().isoformat())
    page.locator("input[name=from]").dispatch_event("change")
    # a function, not an expression string: the app's CSP (no 'unsafe-eval') refuses Playwright's eval of strings
    page.wait_for_function("""() => decodeURIComponent(location.hash).includes('"range":"custom"')""")

    # saved, it can get an alert
    page.fill("input[name=save-name]", "Page views")
    page.click("#save")
    expect(page.locator("#save-message")).to_contain_text("saved as insight")
    alert = page.locator("#alert-me")
    expect(alert).to_be_visible()
    saved = int(page.locator("#save-message").inner_text().split("insight ")[1].split()[0])
    assert alert.get_attribute("href") == f"#/alerts?insight={saved}"
    # and opens again from its id
    page.goto(shop.url + f"/#/insights?id={saved}")
    expect(page.locator("input[name=save-name]")).to_have_value("Page views")
    expect(page.locator("input[name=anomalies]")).to_be_checked()
    expect(page.locator(".presets button.on")).to_have_text("Custom")
    context.close()
