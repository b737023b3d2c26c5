"""Issue 14's analyst journey in a real browser on a real `headwater up` (alerting on): pick an event from the list,
add a breakdown, save to a dashboard, define a cohort and filter by it, create an alert rule on a saved trend whose
webhook (a real local HTTP receiver) gets exactly one notification when injected data crosses it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_insight_builder import PLANS, open_builder, patient, pick, seed, shop_lines, url_state
from tests.browser.test_web import sign_in
from tests.helpers import RunningHeadwater
from tests.unit.test_alerts import Receiver, receiving


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    for running in admin_and_analyst_app(
        tmp_path_factory, "journey", alerts_enabled="true", alert_interval_s=1, webhook_allowed_hosts='["127.0.0.1"]'
    ):
        seed(running, shop_lines())
        yield running


__all__ = ["patient"]  # autouse: assertions wait up to 15 s


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def admin(running: RunningHeadwater, method: str, path: str, body: Any = None) -> Any:
    answer = httpx.request(
        method, running.url + path, json=body, headers={"Authorization": f"Bearer {running.keys['admin']}"}, timeout=60
    )
    assert answer.status_code < 300, answer.text
    return answer.json()


def wait(condition: Any, what: str, seconds: float = 120) -> None:
    """Until `condition()` is true (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def save_insight(page: Page, name: str, board: str | None = None) -> int:
    page.fill("input[name=save-name]", name)
    if board:
        page.select_option("select[name=dashboard]", label=board)
    page.click("#save")
    expect(page.locator("#save-message")).to_contain_text("saved as insight")
    return int(page.locator("#save-message").inner_text().split("insight ")[1].split()[0])


def test_pick_break_down_save_cohort_filter_and_alert(
    shop: RunningHeadwater, browser: Browser, receiver: Receiver
) -> None:
    board = admin(shop, "POST", "/api/dashboards", {"name": "Shop", "tiles": [], "last_days": 30})
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, shop.url, "ana")

    # 1. the builder opens on a trend of the most frequent event; pick another from the list, break it down
    page.goto(shop.url + "/#/insights")
    expect(page.locator("input[name=series-event]")).to_have_value("Page Viewed")
    pick(page, "input[name=series-event]", "Order", "Order Completed")
    page.click(".presets button[data-range='90d']")
    pick(page, "input[name=breakdown]", "plan")
    for plan in PLANS:
        expect(page.locator("#result table")).to_contain_text(f"Order Completed count · {plan}")

    # 2. saved to a dashboard, it shows there
    save_insight(page, "Orders by plan", "Shop")
    page.goto(shop.url + f"/#/dashboard/{board['id']}")
    expect(page.locator("main")).to_contain_text("Orders by plan")

    # 3. a cohort of buyers (15 people: every fourth of 60) ...
    page.goto(shop.url + "/#/cohorts/new")
    page.fill("input[name=cohort-name]", "Buyers")
    pick(page, "input[name=condition-event]", "Order", "Order Completed")
    page.fill("input[name=days]", "90")  # the history spans DAYS (35) days
    expect(page.locator("#cohort-preview")).to_contain_text("15 people")
    page.click("#save-cohort")
    expect(page).to_have_url(re.compile(r"#/cohorts/\d+$"))
    # ... filters a trend of sign-ups: 15 of the 60
    state = {
        "kind": "trend",
        "range": "90d",
        "series": [{"event": "Signed Up", "measure": "count"}],
        "interval": "week",
        "filters": [],
    }
    open_builder(page, shop.url, state)
    expect(page.locator("#result table tbody tr td").nth(3)).to_have_text("60")
    page.click("button.add-filter")
    pick(page, ".filter-row input[name=filter-property]", "Coh", "Cohort")
    page.select_option("select.cohort-select", label="Buyers")
    expect(page.locator("#result table tbody tr td").nth(3)).to_have_text("15")
    assert url_state(page)["filters"][0]["property"] == "$cohort"

    # 4. an hourly trend of an event nobody sent yet (typed: it is not in the list), saved, then "Alert me"
    page.click(".presets button[data-range='24h']")
    page.click("button.remove-filter")
    field = page.locator("input[name=series-event]")
    field.click()
    field.fill("Refund Requested")
    field.press("Enter")
    expect(page.locator("#result")).to_contain_text("No matching events")
    assert url_state(page)["interval"] == "hour"
    trend = save_insight(page, "Refunds per hour")
    page.click("#alert-me")
    expect(page.locator("select[name=trend-insight]")).to_have_value(str(trend))
    page.select_option("select[name=trend-op]", ">=")
    page.fill("input[name=trend-threshold]", "3")
    page.fill("input[name=trend-name]", "Refund spike")
    page.fill("input[name=trend-webhook]", receiver.url)
    page.click("#trend-alert-create")
    expect(page.locator("#trend-alerts-list")).to_contain_text("Refund spike")

    # injected data crosses it: exactly one notification, also after more evaluations
    refunds = "\n".join(json.dumps({"event": "Refund Requested", "userId": f"u{i}"}) for i in range(4))
    assert shop.post("/track", refunds, shop.keys["write"]).status_code == 200
    firing = lambda: [b for b in receiver.bodies if b["state"] == "firing"]  # noqa: E731
    wait(lambda: len(firing()) >= 1, f"no notification: {receiver.bodies} {shop.log_text()}")
    evaluated = admin(shop, "GET", "/api/alerts")["evaluator"]["evaluated_at"]
    wait(
        lambda: admin(shop, "GET", "/api/alerts")["evaluator"]["evaluated_at"] > evaluated + 3, "the evaluator stopped"
    )
    assert len(firing()) == 1, receiver.bodies
    assert all(b["state"] == "firing" for b in receiver.bodies), receiver.bodies
    context.close()
