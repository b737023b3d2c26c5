"""The app runs under its Content-Security-Policy (no inline script) without a single violation, on every page."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import admin_and_analyst_app
from tests.browser.test_web import sign_in
from tests.helpers import RunningHeadwater

PAGES = ["live", "insights", "dashboards", "cohorts", "processors", "sources", "sql", "catalog", "plan", "models",
         "alerts", "keys", "privacy", "audit"]  # fmt: skip
WATCH = "window.__csp = []; document.addEventListener('securitypolicyviolation', e => window.__csp.push(" \
        "e.violatedDirective + ' ' + e.blockedURI));"  # fmt: skip


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    yield from admin_and_analyst_app(tmp_path_factory, "csp")


def test_every_page_runs_under_the_policy_without_violations(app: RunningHeadwater, browser: Browser) -> None:
    events = [{"type": "track", "event": f"e{i % 3}", "userId": f"u{i}"} for i in range(30)]
    sent = httpx.post(app.url + "/v1/batch", json={"batch": events}, auth=(app.keys["write"], ""), timeout=30)
    assert sent.status_code == 200
    app.wait_rows("SELECT count(*) FROM events", [[30]])
    page = browser.new_page()
    page.add_init_script(WATCH)  # runs before the app's own scripts, through DevTools (not an inline script)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    sign_in(page, app.url, "root")
    assert "script-src 'self';" in app_policy(app)
    for name in PAGES:
        page.goto(f"{app.url}/#/{name}")
        expect(page.locator("main")).not_to_be_empty()
        page.wait_for_load_state("networkidle")
    page.goto(f"{app.url}/#/insights")
    expect(page.locator("canvas").first).to_be_visible(timeout=30_000)  # ECharts drew under the policy
    violations = page.evaluate("window.__csp")
    assert violations == [], violations
    assert not [line for line in console if "Content Security Policy" in line], console
    page.close()


def app_policy(app: RunningHeadwater) -> str:
    return httpx.get(app.url + "/", timeout=30).headers["content-security-policy"]
