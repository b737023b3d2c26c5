"""Processor tiles on a dashboard in a real browser: an analyst adds a state tile (bars per key) and a
stream tile from the editor's picker, sees the processor's counts, and a signed-out visitor sees them
through the share link."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, expect

from headwater.auth.users import UserStore
from tests.browser.test_web import PASSWORD, shot, sign_in
from tests.helpers import RunningHeadwater, child_env, make_keys

PIPELINE = """
from headwater.processing.api import Pipeline, minutes

p = Pipeline("queue-counter", description="calls per queue per hour")
(p.source("events").filter(lambda e: e["event"] == "Call").map_key(lambda e: e["properties"]["queue"])
 .tumbling_window(minutes(60), grace=minutes(5)).count().current()
 .to_state("queue_counts").to_stream("queue-counts"))
pipeline = p
"""
CALLS = {"alpha": 4, "beta": 2, "gamma": 1}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("web-board-tiles")
    (data_dir / "queues.py").write_text(PIPELINE)
    keys = make_keys(data_dir)
    users = UserStore(data_dir / "users.db")
    users.create("ana", "analyst", PASSWORD)
    users.close()
    processors = json.dumps([f"{data_dir / 'queues.py'}:pipeline"])
    running = RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200, processors=processors), keys=keys)
    try:
        yield running.start()
    finally:
        if running.proc is not None:
            running.stop()


HOUR = (int(time.time()) // 3600 - 2) * 3600  # every call in one window, two hours ago


def send_calls(app: RunningHeadwater, calls: dict[str, int], first_minute: int = 0) -> None:
    lines = []
    for i, queue in enumerate(queue for queue, n in calls.items() for _ in range(n)):
        when = datetime.fromtimestamp(HOUR + 60 * (first_minute + i), tz=UTC).isoformat()
        lines.append(json.dumps({"event": "Call", "userId": f"queue-{queue}", "timestamp": when, "queue": queue}))
    assert app.post("/track", "\n".join(lines), app.keys["write"]).json()["accepted"] == len(lines)


def wait_counts(app: RunningHeadwater, expected: dict[str, int]) -> None:
    read = {"Authorization": f"Bearer {app.keys['read']}"}
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(app.url + "/api/state/queue_counts", headers=read, timeout=30)
        if response.status_code == 200 and {r["key"]: r["value"]["value"] for r in response.json()["rows"]} == expected:
            return
        assert time.monotonic() < deadline, f"the processor did not count the calls: {response.text}"
        time.sleep(0.1)


def bars(tile: Locator) -> Any:
    """What the tile's ECharts bar chart draws: (category keys, values)."""
    chart = tile.locator(".state-chart")
    expect(chart.locator("canvas")).to_have_count(1)
    return chart.evaluate(
        "el => { const o = echarts.getInstanceByDom(el).getOption(); return [o.xAxis[0].data, o.series[0].data]; }"
    )


def check_state_tile(tile: Locator, expected: dict[str, int]) -> None:
    rows = tile.locator("table.state-tile tbody tr")
    expect(rows).to_have_count(len(expected), timeout=15_000)
    for i, (queue, count) in enumerate(sorted(expected.items())):
        expect(rows.nth(i).locator("td").nth(0)).to_have_text(queue)
        expect(rows.nth(i).locator("td").nth(1)).to_have_text(str(count))
    assert bars(tile) == [sorted(expected), [expected[q] for q in sorted(expected)]]


def test_analyst_adds_state_and_stream_tiles_and_shares_them(app: RunningHeadwater, browser: Browser) -> None:
    send_calls(app, CALLS)
    wait_counts(app, CALLS)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, app.url, "ana")
    page.goto(app.url + "/#/dashboards")
    page.fill("input[name=board-name]", "Queues")
    page.click("text=Create")
    expect(page.locator("#add-processor-tile")).to_be_visible()

    # a state tile from the picker: the processor's state table as bars per queue, and its rows
    page.select_option("select[name=processor-output]", "state:queue_counts")
    page.fill("input[name=processor-tile-title]", "Calls per queue")
    page.click("#add-processor-tile")
    state = page.locator(".tile[data-kind='state']")
    expect(state.locator("h2")).to_have_text("Calls per queue")
    check_state_tile(state, CALLS)

    # a stream tile: the processor's output stream, following new records
    page.select_option("select[name=processor-output]", "stream:queue-counts")
    expect(page.locator("input[name=state-field]")).to_be_hidden()
    page.click("#add-processor-tile")
    expect(page.locator(".tile[data-kind='live.stream'] h2")).to_have_text("Live: queue-counts")
    stream = page.locator(".tile[data-kind='live.stream'] table.stream-tile")
    expect(stream.locator("tbody tr")).to_have_count(sum(CALLS.values()), timeout=15_000)
    send_calls(app, {"gamma": 2}, first_minute=30)
    expect(stream.locator("tbody tr", has_text="gamma").filter(has_text='"value":3')).to_have_count(1, timeout=15_000)
    wait_counts(app, {**CALLS, "gamma": 3})
    page.reload()
    check_state_tile(page.locator(".tile[data-kind='state']"), {**CALLS, "gamma": 3})
    shot(page, "dashboard-processor-tiles")

    board_id = page.url.rsplit("/", 1)[-1]
    tiles = httpx.get(f"{app.url}/api/dashboards/{board_id}", headers={"Authorization": f"Bearer {app.keys['read']}"},
                      timeout=30).json()["tiles"]  # fmt: skip
    assert [t["kind"] for t in tiles] == ["state", "live.stream"]
    assert tiles[0]["state"]["title"] == "Calls per queue" and tiles[1]["live"]["stream"] == "queue-counts"

    # the share link, signed out: the same bars and rows, and the stream
    page.click("#share")
    link = page.locator("#share-link").get_attribute("href")
    assert link and link.startswith("/share/")
    anonymous = browser.new_context(viewport={"width": 1280, "height": 900})
    public = anonymous.new_page()
    public.goto(app.url + link)
    expect(public.locator("main")).to_contain_text("shared view")
    check_state_tile(public.locator(".tile[data-kind='state']"), {**CALLS, "gamma": 3})
    expect(public.locator("table.stream-tile")).to_contain_text("gamma", timeout=10_000)
    shot(public, "share-processor-tiles")
    anonymous.close()
    context.close()
