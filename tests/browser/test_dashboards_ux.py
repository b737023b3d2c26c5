"""Dashboards in a real browser: a number tile with its change vs the previous period, chart/number toggle,
resizing by the corner handle (saved), auto-refresh and refresh now, board-wide date presets and filters,
empty and loading states, the share page, and dark mode following the system (color_scheme="dark")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_insight_builder import pick
from tests.browser.test_web import PASSWORD, shot, sign_in
from tests.helpers import RunningHeadwater

ROW_PX, GAP_PX = 80, 16  # dashboards.js
ORDERS_AT = datetime.now(UTC)  # the orders are placed relative to this


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    for running in admin_and_analyst_app(tmp_path_factory, "web-boards"):
        now = ORDERS_AT
        orders = [(1, "pro"), (1, "pro"), (2, "pro"), (2, "free"), (3, "pro"), (3, "free")]  # the last 7 days
        orders += [(9, "pro"), (10, "free"), (11, "free")]  # the 7 days before
        lines = [
            json.dumps({"event": "Order Completed", "userId": f"u-{i}", "plan": plan, "revenue": 10,
                        "timestamp": (now - timedelta(days=days, hours=1)).isoformat()})
            for i, (days, plan) in enumerate(orders)
        ]  # fmt: skip
        assert running.post("/track", "\n".join(lines), running.keys["write"]).json()["accepted"] == len(lines)
        running.wait_rows("SELECT count(*) FROM events", [[len(lines)]])
        yield running


def call(app: RunningHeadwater, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, app.url + path, json=body, timeout=60,
                             headers={"Authorization": f"Bearer {app.keys['admin']}"})  # fmt: skip
    assert response.status_code < 300, response.text
    return response.json()


def orders_board(app: RunningHeadwater, name: str, event: str = "Order Completed", **body: Any) -> int:
    now = datetime.now(UTC)
    query = {"kind": "trend", "series": [{"event": event}], "interval": "day",
             "date_from": (now - timedelta(days=60)).isoformat(), "date_to": now.isoformat()}  # fmt: skip
    insight = call(app, "POST", "/api/saved-insights", {"name": "Orders", "query": query})
    tiles = [{"insight_id": insight["id"], "w": 4, "h": 3, "display": "number"}]
    board = call(app, "POST", "/api/dashboards", {"name": name, "tiles": tiles, "last_days": 7, **body})
    return int(board["id"])


def open_board(app: RunningHeadwater, browser: Browser, board_id: int, scheme: str = "light") -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme)  # type: ignore[arg-type]
    page = context.new_page()
    sign_in(page, app.url, "ana")
    page.goto(f"{app.url}/#/dashboard/{board_id}")
    return page


def wait_saved(page: Page, board_id: int, condition: str) -> None:
    """Until the saved board `b` meets the JavaScript `condition`."""
    page.wait_for_function(
        f"() => fetch('/api/dashboards/{board_id}?run=0').then(r => r.json()).then(b => {condition})"
    )


def test_number_tile_toggle_resize_range_and_share(app: RunningHeadwater, browser: Browser) -> None:
    board_id = orders_board(app, "Shop numbers")
    page = open_board(app, browser, board_id)
    tile = page.locator(".tile[data-kind='trend']")
    expect(tile.locator(".number-value")).to_have_text("6")
    expect(tile.locator(".number-change")).to_have_text("▲ 100.0% vs previous period (3)")
    expect(tile.locator(".number-change")).to_have_class("number-change up")
    expect(tile.locator(".number-label")).to_contain_text("Order Completed · count · total")
    shot(page, "dashboard-number-tile")

    # chart and back, saved with the board
    tile.locator(".toggle-display").click()
    expect(tile).to_have_attribute("data-display", "chart")
    expect(tile.locator(".chart canvas")).to_have_count(1)
    assert call(app, "GET", f"/api/dashboards/{board_id}?run=0")["tiles"][0]["display"] == "chart"
    tile.locator(".toggle-display").click()
    expect(tile.locator(".number-value")).to_have_text("6")

    # resize by the corner handle: 4x3 to 6x4, kept after a reload
    handle = tile.locator(".resize-handle")
    box = tile.bounding_box()
    grid = page.locator(".board-grid").bounding_box()
    assert box and grid
    column = (grid["width"] - 11 * GAP_PX) / 12
    start = handle.bounding_box()
    assert start
    page.mouse.move(start["x"] + 8, start["y"] + 8)
    page.mouse.down()
    page.mouse.move(box["x"] + 6 * (column + GAP_PX) - GAP_PX, box["y"] + 4 * (ROW_PX + GAP_PX) - GAP_PX, steps=5)
    page.mouse.up()
    wait_saved(page, board_id, "b.tiles[0].w === 6 && b.tiles[0].h === 4")
    page.reload()
    tile = page.locator(".tile[data-kind='trend']")
    expect(tile).to_have_attribute("data-w", "6")
    expect(tile).to_have_attribute("data-h", "4")
    size = tile.bounding_box()
    assert size and abs(size["height"] - (4 * ROW_PX + 3 * GAP_PX)) < 2

    # board-wide range preset: 30 days hold all 9 orders and nothing before them
    page.select_option("select[name=board-range]", "30")
    expect(tile.locator(".number-value")).to_have_text("9")
    expect(tile.locator(".number-change")).to_have_text("new: nothing in the previous period")
    expect(page.locator(".board-title")).to_contain_text("last 30 days")
    assert call(app, "GET", f"/api/dashboards/{board_id}?run=0")["last_days"] == 30

    # a custom range: the two days holding the previous week's orders at 9 and 10 days ago
    page.select_option("select[name=board-range]", "custom")
    first, last = (ORDERS_AT - timedelta(days=days, hours=1) for days in (10, 9))
    page.fill("input[name=board-from]", str(first.date()))
    page.fill("input[name=board-to]", str(last.date()))
    expect(tile.locator(".number-value")).to_have_text("2")
    saved = call(app, "GET", f"/api/dashboards/{board_id}?run=0")
    assert saved["date_from"].startswith(str(first.date())) and saved["last_days"] is None
    page.select_option("select[name=board-range]", "7")
    expect(tile.locator(".number-value")).to_have_text("6")

    # board-wide filter: plan = pro
    page.click(".board-filters button.add-filter")
    pick(page, ".board-filters .filter-row input[name=filter-property]", "plan")
    pick(page, ".board-filters .filter-row input[name=value]", "pro")
    expect(tile.locator(".number-value")).to_have_text("4")
    expect(tile.locator(".number-change")).to_contain_text("300.0%")  # 1 pro order the week before
    filters = call(app, "GET", f"/api/dashboards/{board_id}?run=0")["filters"]
    assert filters == [{"property": "plan", "op": "eq", "value": "pro"}]

    # the share link shows the same number, signed out
    page.click("#share")
    link = page.locator("#share-link").get_attribute("href")
    public = browser.new_context().new_page()
    public.goto(app.url + str(link))
    expect(public.locator(".number-value")).to_have_text("4")
    expect(public.locator("main")).to_contain_text("shared view")
    expect(public.locator(".resize-handle")).to_have_count(0)
    public.context.close()
    page.context.close()


def test_refresh_now_and_auto_refresh_setting(app: RunningHeadwater, browser: Browser) -> None:
    board_id = orders_board(app, "Shop refresh", event="Refund Issued")
    page = open_board(app, browser, board_id)
    value = page.locator(".tile .number-value")
    expect(value).to_have_text("0")
    expect(page.locator(".tile .number-change")).to_have_text("nothing in this or the previous period")
    page.select_option("select[name=board-refresh]", "60")
    wait_saved(page, board_id, "b.refresh_seconds === 60")
    when = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    app.post("/track", json.dumps({"event": "Refund Issued", "userId": "late", "timestamp": when}), app.keys["write"])
    app.wait_rows("SELECT count(*) FROM events WHERE user_id = 'late'", [[1]])
    page.click("#refresh")
    expect(value).to_have_text("1")
    expect(page.locator("#board-updated")).to_contain_text("updated")
    page.context.close()


def test_empty_board_says_what_to_do_and_dark_mode_follows_the_system(app: RunningHeadwater, browser: Browser) -> None:
    empty = call(app, "POST", "/api/dashboards", {"name": "Nothing yet", "tiles": []})
    page = open_board(app, browser, empty["id"], scheme="dark")
    expect(page.locator(".empty-board")).to_contain_text("Add an insight from the builder")
    expect(page.locator(".empty-board a[href='#/insights']")).to_be_visible()
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    card = page.evaluate("getComputedStyle(document.querySelector('.card')).backgroundColor")
    assert background == "rgb(15, 19, 26)" and card == "rgb(23, 28, 37)"

    # charts take the dark theme; a tile whose range holds no events says so
    board_id = orders_board(app, "Shop dark")
    call(app, "PUT", f"/api/dashboards/{board_id}", {"name": "Shop dark", "last_days": 7, "tiles": [
        {**call(app, "GET", f"/api/dashboards/{board_id}?run=0")["tiles"][0], "display": "chart"}]})  # fmt: skip
    page.goto(f"{app.url}/#/dashboard/{board_id}")
    chart = page.locator(".tile .chart")
    expect(chart.locator("canvas")).to_have_count(1)
    expect(chart).to_have_attribute("data-theme", "dark")
    option = "echarts.getInstanceByDom(document.querySelector('.tile .chart')).getOption()"
    assert page.evaluate(option + ".backgroundColor") == "transparent"
    shot(page, "dashboard-dark")
    page.select_option("select[name=board-range]", "custom")
    page.fill("input[name=board-from]", "2020-01-01")
    page.fill("input[name=board-to]", "2020-01-02")
    expect(page.locator(".tile-empty")).to_contain_text("No events match in this range")
    page.context.close()

    light = open_board(app, browser, board_id, scheme="light")
    expect(light.locator(".tile-empty")).to_be_visible()  # the saved custom range
    assert light.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(247, 248, 250)"
    light.context.close()


def test_a_viewer_explores_through_the_url_and_saves_nothing(app: RunningHeadwater, browser: Browser) -> None:
    board_id = orders_board(app, "Shop viewer")
    call(app, "POST", "/api/users", {"name": "vic", "role": "viewer", "password": PASSWORD})
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(page, app.url, "vic")
    page.goto(f"{app.url}/#/dashboard/{board_id}")
    value = page.locator(".tile .number-value")
    expect(value).to_have_text("6")
    expect(page.locator(".resize-handle")).to_have_count(0)
    expect(page.locator(".toggle-display")).to_have_count(0)
    expect(page.locator("select[name=board-refresh]")).to_be_disabled()
    page.select_option("select[name=board-range]", "30")
    expect(value).to_have_text("9")
    expect(page).to_have_url(f"{app.url}/#/dashboard/{board_id}?last_days=30")
    page.reload()  # the link holds the view
    expect(value).to_have_text("9")
    expect(page.locator("select[name=board-range]")).to_have_value("30")
    assert call(app, "GET", f"/api/dashboards/{board_id}?run=0")["last_days"] == 7  # nothing saved
    page.context.close()


def test_board_overrides_over_the_api(app: RunningHeadwater) -> None:
    board_id = orders_board(app, "Shop API")
    base = f"/api/dashboards/{board_id}"
    assert call(app, "GET", base)["tiles"][0]["number"]["value"] == 6
    wider = call(app, "GET", base + "?last_days=30")
    assert wider["tiles"][0]["number"]["value"] == 9 and wider["overridden"] == ["last_days"]
    pro = json.dumps([{"property": "plan", "op": "eq", "value": "pro"}])
    assert call(app, "GET", base + "?filters=" + pro)["tiles"][0]["number"]["value"] == 4
    saved = call(app, "GET", base + "?run=0")
    assert "result" not in saved["tiles"][0] and saved["last_days"] == 7
    headers = {"Authorization": f"Bearer {app.keys['read']}"}
    for bad, message in (("?last_days=0", "last_days"), ("?date_from=2026-01-01", "date_from and date_to"),
                         ("?filters=[{", "filters: expected a JSON list")):  # fmt: skip
        response = httpx.get(app.url + base + bad, headers=headers, timeout=60)
        assert response.status_code == 400 and message in response.json()["error"], response.text
