"""The Models page module (web/static/models.js) in Chromium, over the real model and check routes: the lineage
graph (lake tables, models, edges), a row per model with its last build, its checks, and an admin's Run button.

The page is loaded by a small harness page that gives it the app's helpers (the app's nav is wired by the lead),
served with the routes by uvicorn on a free port; the API is called with an admin key."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Page, sync_playwright
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from headwater.api.checks import check_routes
from headwater.api.models import model_routes
from headwater.auth.keys import KeyStore
from headwater.auth.users import UserStore
from tests.browser.test_web import CHROMIUM, FLAGS
from tests.helpers import ROOT, make_keys, make_settings

STATIC = ROOT / "src" / "headwater" / "web" / "static"
HARNESS = """<!doctype html><html><head><link rel="stylesheet" href="/static/app.css"></head>
<body><main id="view"></main>
<script type="module">
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
    headers: { "content-type": "application/json", authorization: "Bearer KEY" },
    body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}
const { modelsPage } = await import("/static/models.js");
await modelsPage({ view: document.getElementById("view"), h, api, every: (fn, ms) => setInterval(fn, ms),
  can: (p) => ["view", "manage"].includes(p) });
document.body.dataset.ready = "1";
</script></body></html>"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    models = tmp_path / "models"
    models.mkdir()
    (models / "totals.sql").write_text("-- description: events in the lake\nSELECT count(*) AS n FROM events")
    (models / "doubled.sql").write_text("SELECT n * 2 AS n2 FROM totals")
    (models / "broken.sql").write_text("SELECT * FROM nowhere")
    (models / "checks.toml").write_text(
        '[[checks]]\nname = "has_n"\ntable = "totals"\nkind = "not_null"\ncolumn = "n"\n'
    )
    services = SimpleNamespace(settings=make_settings(data_dir, models_dir=models), keys=KeyStore(data_dir / "keys.db"),
                               users=UserStore(data_dir / "users.db"))  # fmt: skip
    html = HARNESS.replace("KEY", keys["admin"])

    async def harness(request: Any) -> HTMLResponse:
        return HTMLResponse(html)

    routes = [*model_routes(lambda: services), *check_routes(lambda: services), Route("/", harness),
              Mount("/static", StaticFiles(directory=STATIC))]  # fmt: skip
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=routes), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        services.keys.close()
        services.users.close()
        if getattr(services, "models", None) is not None:
            services.models.close()


def test_the_models_page_draws_lineage_runs_and_checks(site: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page: Page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(site)
            page.wait_for_selector("body[data-ready='1']", timeout=30000)
            nodes = page.eval_on_selector_all("#models-lineage .model-node", "els => els.map(e => e.dataset.model)")
            assert sorted(nodes) == ["broken", "doubled", "events", "totals"]  # lake table `events` included
            edges = page.eval_on_selector_all("#models-lineage path[data-edge]", "els => els.map(e => e.dataset.edge)")
            assert sorted(edges) == ["events->totals", "totals->doubled"]
            rows = page.eval_on_selector_all(".models-table tr.model-row", "els => els.map(e => e.dataset.model)")
            assert rows == ["totals", "doubled", "broken"]
            assert "never built" in page.inner_text("tr.model-row[data-model='totals']")
            assert "reads nowhere" in page.inner_text("tr.model-row[data-model='broken']")

            page.click("button[data-run='totals']")  # built in the server's background, then redrawn
            page.wait_for_function(
                "document.querySelector(\"tr.model-row[data-model='totals']\").innerText.includes('ok')",
                timeout=60000,
            )
            page.reload()
            page.wait_for_selector("body[data-ready='1']", timeout=30000)
            row = page.inner_text("tr.model-row[data-model='totals']")
            assert "ok" in row and "1 passing" in row  # the build ran the model's check
            page.click("tr.model-row[data-model='totals']")
            page.wait_for_selector("#model-detail .model-runs")
            detail = page.inner_text("#model-detail")
            assert "events in the lake" in detail and "SELECT count(*) AS n FROM events" in detail
            assert "has_n" in detail and "pass" in detail and "manual" in detail
            assert errors == []
        finally:
            browser.close()
