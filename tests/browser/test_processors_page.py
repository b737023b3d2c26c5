"""The Processors page in a real browser: a processor's counters, a state lookup, its output stream live."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from unittest.mock import ANY

import httpx
import pytest
from playwright.sync_api import Browser, expect

from headwater.auth.users import UserStore
from tests.browser.test_web import PASSWORD, shot, sign_in
from tests.helpers import RunningHeadwater, child_env, make_keys

FINAL = [(0, 3, 6), (1, 2, 4), (2, 2, 5)]  # fan-i: clicks, last button (clicks i, i+3, i+6 of 7)
PIPELINE = """
from headwater.processing.api import Pipeline


def count(ctx, value):
    seen = ctx.state.get("seen", 0) + 1
    ctx.state.set("seen", seen)
    ctx.emit({"clicks": seen, "button": value["properties"].get("button")})


p = Pipeline("click-counter", description="clicks per user")
(p.source("events").filter(lambda e: e["event"] == "Clicked").process(count)
 .to_state("clicks_by_user").to_stream("click-counts"))
pipeline = p
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("web-processors")
    (data_dir / "clicks.py").write_text(PIPELINE)
    keys = make_keys(data_dir)
    users = UserStore(data_dir / "users.db")
    users.create("vic", "viewer", PASSWORD)
    users.close()
    processors = json.dumps([f"{data_dir / 'clicks.py'}:pipeline"])
    running = RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200, processors=processors), keys=keys)
    try:
        yield running.start()
    finally:
        if running.proc is not None:
            running.stop()


def test_viewer_sees_processor_searches_state_and_follows_its_stream(app: RunningHeadwater, browser: Browser) -> None:
    lines = [f'{{"event":"Clicked","userId":"fan-{i % 3}","button":"b{i}"}}' for i in range(7)]
    lines.append('{"event":"Viewed","userId":"fan-0"}')
    assert app.post("/track", "\n".join(lines), app.keys["write"]).json()["accepted"] == 8
    read = {"Authorization": f"Bearer {app.keys['read']}"}
    deadline = time.monotonic() + 30
    while httpx.get(app.url + "/api/state/clicks_by_user?prefix=fan-", headers=read, timeout=30).json()["rows"] != [
        {"key": f"fan-{i}", "value": {"clicks": n, "button": f"b{b}"}, "event_time": ANY} for i, n, b in FINAL
    ]:  # the processor checkpoints every 200 ms
        assert time.monotonic() < deadline, "the processor did not apply the clicks"
        time.sleep(0.1)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, app.url, "vic")
    page.click("#nav a[href='#/processors']")
    summary = page.locator("#processors table")
    expect(summary).to_contain_text("click-counter", timeout=15_000)
    expect(summary.locator("tbody tr").first).to_contain_text("running", timeout=15_000)
    card = page.locator(".processor[data-processor='click-counter']")
    expect(card).to_contain_text("clicks per user")

    # search the state table by key prefix: fan-0 clicked 3 times (i = 0, 3, 6), the last on b6
    search = card.locator(".state-table[data-table='clicks_by_user']")
    search.locator("input[name='state-clicks_by_user']").fill("fan-")
    search.locator("button.state-search").click()
    result = search.locator(".state-result table")
    expect(result.locator("tbody tr")).to_have_count(3, timeout=15_000)
    expect(result.locator("tbody tr").first).to_contain_text('"clicks":3')
    expect(result.locator("tbody tr").first).to_contain_text('"button":"b6"')
    search.locator("input[name='state-clicks_by_user']").fill("fan-2")
    search.locator("input[name='state-clicks_by_user']").press("Enter")
    expect(result.locator("tbody tr")).to_have_count(1)
    expect(result).to_contain_text('"clicks":2')
    shot(page, "processors")

    # its output stream in the live view, and a new record arriving there
    card.locator("a.stream-link", has_text="click-counts").click()
    live = page.locator("table#live-stream")
    expect(live).to_contain_text("fan-1", timeout=10_000)
    app.post("/track", '{"event":"Clicked","userId":"late-fan","button":"go"}', app.keys["write"])
    expect(live).to_contain_text("late-fan", timeout=10_000)
    expect(live).to_contain_text('"button":"go"')
    context.close()
