"""The Trend alerts section of the Alerts page (web/static/alerts.js) in the real Chromium on a real `headwater up`:
`#/alerts?insight=<id>` preselects the saved trend, a rule is created (a wrong one shows the field's error), its dry
run, its state once the evaluator fires it, and its history."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from headwater.alerts import AlertEvaluator
from headwater.lake.coordination import open_engine
from headwater.runtime.ops import trend_alerts
from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_web import sign_in
from tests.helpers import RunningHeadwater, make_settings


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    yield from admin_and_analyst_app(tmp_path_factory, "trend-alerts", alerts_enabled="false")


def test_create_evaluate_fire_and_read_history(app: RunningHeadwater, browser: Browser) -> None:
    key = {"Authorization": f"Bearer {app.keys['read']}"}
    query = {"kind": "trend", "series": [{"event": "Order Completed"}], "interval": "hour",
             "date_from": "2026-01-01T00:00:00Z", "date_to": "2026-01-08T00:00:00Z"}  # fmt: skip
    for name in ("Signups", "Orders per hour"):
        body = {"name": name, "query": query}
        saved = httpx.post(app.url + "/api/saved-insights", json=body, headers=key, timeout=30)
    insight = saved.json()["id"]
    page = browser.new_page()
    try:
        sign_in(page, app.url, "ana")
        page.goto(f"{app.url}/#/alerts?insight={insight}")
        form = page.locator("#trend-alert-form")
        expect(form.locator("select[name=trend-insight]")).to_have_value(str(insight))
        expect(form.locator("input[name=trend-name]")).to_have_value("Orders per hour")
        expect(page.locator("#trend-alerts-none")).to_be_visible()
        page.click("#trend-alert-create")  # no threshold yet
        expect(page.locator("#trend-alert-error")).to_have_text("threshold: required in threshold mode")
        form.locator("input[name=trend-threshold]").fill("2")
        form.locator("select[name=trend-op]").select_option(">=")
        page.click("#trend-alert-create")
        row = page.locator("tr[data-trend-alert]")
        expect(row).to_have_count(1)
        expect(row).to_have_attribute("data-state", "ok")
        expect(row).to_contain_text("value >= 2 per interval")
        row.get_by_role("button", name="Evaluate").click()
        expect(page.locator("#trend-alert-detail h3")).to_have_text("Dry run of Orders per hour: would not fire")

        rows = "\n".join(json.dumps({"event": "Order Completed", "userId": f"u{i}"}) for i in range(3))
        assert app.post("/track", rows, app.keys["write"]).status_code == 200
        app.wait_rows("SELECT count(*) FROM events", [[3]])
        settings = make_settings(Path(app.data_dir), port=0)
        evaluator = AlertEvaluator(settings, open_engine(settings.effective_catalog_uri), [trend_alerts(settings)])
        try:
            assert evaluator.tick(time.time())["firing"]
        finally:
            evaluator.close()
        page.reload()
        row = page.locator("tr[data-trend-alert]")
        expect(row).to_have_attribute("data-state", "firing")
        expect(row).to_contain_text("Orders per hour: 3 in the hour from")
        row.get_by_role("button", name="Evaluate").click()
        expect(page.locator("#trend-alert-detail h3")).to_have_text("Dry run of Orders per hour: would fire")
        expect(page.locator(".trend-dry-run")).to_contain_text("holds")
        row.get_by_role("button", name="History").click()
        expect(page.locator(".trend-history tbody tr")).to_have_count(1)
        expect(page.locator(".trend-history")).to_contain_text("firing")
        row.get_by_role("button", name="Disable").click()
        expect(page.locator("tr[data-trend-alert]")).to_have_attribute("data-state", "disabled")
    finally:
        page.close()
