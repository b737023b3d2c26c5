"""The Alerts page module (web/static/alerts.js) in the real Chromium over the real /api/alerts routes: firing
alerts, rules, history with delivery, a silence added and ended, a test notification; a viewer sees no admin
controls. The page runs in a small harness giving it the app's helpers, until app.js links it (#/alerts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from headwater.alerts import AlertEvaluator
from headwater.api.alerts import alert_routes
from headwater.lake.coordination import open_engine
from headwater.web.routes import web_routes
from tests.browser.test_web import CHROMIUM, FLAGS
from tests.helpers import make_keys, make_settings
from tests.integration.test_alerts_api import Services, serve
from tests.unit.test_alerts import Receiver, Switch

HARNESS = """<!doctype html><html><head><link rel="stylesheet" href="/static/app.css"></head>
<body><main id="view"></main><script type="module">
import { alertsPage } from "/static/alerts.js";
const KEY = %s, PERMISSIONS = %s;
const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const child of children.flat()) el.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return el;
};
async function api(path, options = {}) {
  const response = await fetch(path, { method: options.method || "GET",
    headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
    body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}
alertsPage({ view: document.getElementById("view"), h, api, every: (fn, ms) => setInterval(fn, ms),
             can: (p) => PERMISSIONS.includes(p) }).then(() => { document.body.dataset.ready = "1"; });
</script></body></html>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def test_alerts_page_for_an_admin_and_a_viewer(tmp_path: Path, browser: Browser) -> None:
    receiver = Receiver()
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    settings = make_settings(data_dir, port=0, alert_webhooks=[receiver.url], alert_for_s=0)
    services = Services(settings)
    switch = Switch("trend.signups", summary="signups dropped", on=[{"event": "signup"}])
    ev = AlertEvaluator(settings, open_engine(settings.effective_catalog_uri), [switch, Switch("quiet", for_s=60)])
    ev.builtins = []
    ev.tick()

    async def harness(request: Request) -> HTMLResponse:
        role = request.query_params["role"]
        permissions = ["view", "analyze", "sql", "manage"] if role == "admin" else ["view", "analyze", "sql"]
        return HTMLResponse(HARNESS % (json.dumps(keys[role]), json.dumps(permissions)))

    app = Starlette(routes=[Route("/harness", harness), *alert_routes(lambda: services), *web_routes()])
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        with serve(app) as client:
            page = context.new_page()
            page.goto(f"{client.base_url}/harness?role=admin")
            expect(page.locator("body[data-ready='1']")).to_have_count(1, timeout=15_000)
            row = page.locator("table.alerts-current tr[data-rule='trend.signups']")
            expect(row).to_contain_text("event=signup")
            expect(row.locator(".badge").first).to_have_text("firing")
            expect(page.locator("table.alerts-rules tr[data-rule='quiet']")).to_have_count(1)
            expect(page.locator("table.alerts-history tr[data-rule='trend.signups']")).to_contain_text("delivered")
            expect(page.locator("#alerts-status")).to_contain_text("1 webhook")

            row.locator("button").click()  # prefills the silence form with the alert's rule and labels
            expect(page.locator("input[name='silence-rule']")).to_have_value("trend.signups")
            expect(page.locator("input[name='silence-labels']")).to_have_value("event=signup")
            page.fill("input[name='silence-comment']", "known outage")
            page.click("#silence-add")
            silence = page.locator("table.alerts-silences tr[data-silence]")
            expect(silence).to_contain_text("known outage")
            page.fill("input[name='silence-labels']", "oops")
            page.click("#silence-add")
            expect(page.locator(".error").first).to_contain_text("name=value")
            silence.locator("button").click()
            expect(page.locator("table.alerts-silences")).to_have_count(0)

            page.click("#alerts-test")
            expect(page.locator("#alerts-test-result")).to_contain_text(receiver.url)
            assert [b["state"] for b in receiver.bodies] == ["firing", "test"]

            viewer = context.new_page()
            viewer.goto(f"{client.base_url}/harness?role=read")
            expect(viewer.locator("body[data-ready='1']")).to_have_count(1, timeout=15_000)
            expect(viewer.locator("table.alerts-current tr[data-rule='trend.signups']")).to_have_count(1)
            expect(viewer.locator("#silence-form")).to_have_count(0)
            expect(viewer.locator("#alerts-test")).to_have_count(0)
    finally:
        context.close()
        ev.close()
        services.close()
        receiver.close()
