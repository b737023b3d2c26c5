"""The Sources page in a real browser: a file-drop source's counters after a drop, its expanded row
(file progress, the rejected line), the link to its quarantine rows in SQL, and a disabled source."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from headwater.auth.users import UserStore
from tests.browser.test_web import PASSWORD, shot, sign_in
from tests.helpers import RunningHeadwater, child_env, make_keys

BAD = "{oops, not json"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("web-sources")
    drops = data_dir / "drops"
    drops.mkdir()
    keys = make_keys(data_dir)
    users = UserStore(data_dir / "users.db")
    users.create("ana", "analyst", PASSWORD)
    users.close()
    sources = [
        {"name": "drops", "kind": "files", "path": str(drops), "format": "ndjson", "poll_seconds": 0.2},
        {"name": "bets", "kind": "rabbitmq", "url": "amqp://guest:guest@127.0.0.1:1/", "queue": "bets",
         "enabled": False},
    ]  # fmt: skip
    env = child_env(data_dir, flush_interval_ms=200, sources=json.dumps(sources))
    running = RunningHeadwater(data_dir, env, keys=keys)
    try:
        yield running.start()
    finally:
        if running.proc is not None:
            running.stop()


def test_analyst_watches_a_file_drop_and_opens_its_rejections(app: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, app.url, "ana")
    page.click("#nav a[href='#/sources']")
    row = page.locator("#sources tr.source-row[data-source='drops']")
    expect(row).to_contain_text("files / ndjson", timeout=15_000)
    expect(row.locator(".badge")).to_have_text("running", timeout=30_000)
    disabled = page.locator("#sources tr.source-row[data-source='bets']")
    expect(disabled.locator(".badge")).to_have_text("not running")
    expect(disabled).to_contain_text("rabbitmq / json")

    # a file of 3 good lines and 1 bad one: the row counts them (auto-refresh, no reload)
    lines = [json.dumps({"event": "Dropped", "userId": f"d-{i}"}) for i in range(3)]
    partial = app.data_dir / "drops" / "first.ndjson.part"
    partial.write_text("\n".join([lines[0], BAD, *lines[1:]]) + "\n")
    partial.rename(partial.with_name("first.ndjson"))
    cells = row.locator("td")
    expect(cells.nth(4)).to_have_text("4", timeout=30_000)  # records in
    expect(cells.nth(6)).to_have_text("1")  # rejected
    expect(cells.nth(7)).to_have_text("0 files")  # lag: nothing waiting

    # expanded: the file's progress and the rejected line with its reason
    row.click()
    details = page.locator("#sources tr.source-detail[data-source='drops']")
    expect(details).to_be_visible()
    files = details.locator("table.recent-files tbody tr")
    expect(files).to_have_count(1, timeout=10_000)
    expect(files.first).to_contain_text("first.ndjson")
    expect(files.first).to_contain_text("done")
    rejection = details.locator("table.rejections tbody tr")
    expect(rejection).to_have_count(1)
    expect(rejection).to_contain_text("first.ndjson record 2")
    expect(rejection).to_contain_text("invalid JSON")
    expect(rejection.locator(".raw")).to_have_text(BAD)
    with page.expect_response(lambda r: r.url.endswith("/api/sources")):
        pass  # the next auto-refresh redraws the rows: this one stays open
    expect(details).to_be_visible()
    shot(page, "sources")

    # "see in quarantine": the SQL page with the source's quarantine query, run
    app.wait_rows("SELECT count(*) FROM quarantine WHERE source = 'drops'", [[1]])
    details.locator("a.quarantine-link").click()
    expect(page.locator("textarea[name=sql]")).to_have_value(
        "SELECT * FROM quarantine WHERE source = 'drops' ORDER BY received_at DESC LIMIT 100"
    )
    expect(page.locator("main table")).to_contain_text(BAD, timeout=15_000)

    # collapsing again
    page.go_back()
    row = page.locator("#sources tr.source-row[data-source='drops']")
    expect(row).to_be_visible(timeout=15_000)
    row.click()
    expect(page.locator("#sources tr.source-detail[data-source='drops']")).to_be_visible()
    row.click()
    expect(page.locator("#sources tr.source-detail")).to_have_count(0)
    context.close()
