"""Segment's browser SDK (the real `@segment/analytics-next` npm bundle) on a shop's page, sending to Headwater.

The page is served from its own origin (a second port). The SDK's `cdnURL` is a small proxy in front of
Headwater (a third port): the proxy forwards everything, but answers 503 to the SDK after the first track call
has reached Headwater, as when an acknowledgment is lost. The SDK retries the call with the same messageId and
Headwater stores it once.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser

from tests.helpers import ROOT, RunningHeadwater, child_env, make_keys, serving

BUNDLE = ROOT / "web" / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
VERSION = "1.84.3"

PAGE = """<!doctype html>
<html><head><title>Shop</title><script src="/sdk/index.js"></script></head>
<body><h1>Shop</h1><script>
window.sent = (async () => {
  const params = new URLSearchParams(location.search);
  const analytics = AnalyticsNext.AnalyticsBrowser.load(
    {writeKey: params.get("key"), cdnURL: params.get("cdn")}, {disableClientPersistence: true});
  const user = params.get("user");
  const results = [];
  for (const call of [
    () => analytics.identify(user, {plan: "pro", email: user + "@example.com"}),
    () => analytics.page("Catalog", "Shoes", {section: "sale"}),
    () => analytics.track("Order Completed", {revenue: 42, currency: "EUR"}),
  ]) {
    const ctx = await call();
    results.push({type: ctx.event.type, messageId: ctx.event.messageId, failed: ctx.failedDelivery() || null});
  }
  return results;
})();
</script></body></html>
"""


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class ShopPage(_Quiet):
    """The shop's origin: the page and the SDK's files from web/node_modules."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/shop.html":
            body, kind = PAGE.encode(), "text/html"
        elif path.startswith("/sdk/") and (BUNDLE / Path(path).name).is_file():
            body, kind = (BUNDLE / Path(path).name).read_bytes(), "text/javascript"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LossyProxy(_Quiet):
    """Forwards to Headwater; the first track call's answer is replaced by a 503 (after Headwater took it)."""

    upstream: tuple[str, int] = ("127.0.0.1", 0)
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def _forward(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)  # Host passed through, as proxies do
            upstream = conn.getresponse()
            status, answer, answer_headers = upstream.status, upstream.read(), upstream.getheaders()
        finally:
            conn.close()
        with self.lock:
            record = {"method": self.command, "path": self.path, "status": status}
            if self.command == "POST":
                record |= {"body": orjson.loads(body or b"{}"), "answer": orjson.loads(answer)}
            first_track = (
                self.command == "POST"
                and self.path == "/v1/t"
                and not any(r["path"] == "/v1/t" and r["method"] == "POST" for r in self.seen)
            )
            self.seen.append(record)
        if first_track:
            status, answer = 503, b'{"success":false,"error":"lost on the way back"}'
            answer_headers = [(k, v) for k, v in answer_headers if k.lower().startswith("access-control")]
        self.send_response(status)
        for name, value in answer_headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_OPTIONS(self) -> None:
        self._forward()


@pytest.fixture(scope="module")
def hw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("segment-sdk")
    keys = make_keys(data_dir)
    with serving(RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200), keys=keys)) as running:
        yield running


def test_analytics_next_from_another_origin_lands_once_with_its_context(
    hw: RunningHeadwater,
    browser: Browser,
) -> None:
    assert (BUNDLE / "index.js").is_file(), "run `make install` (npm ci fetches @segment/analytics-next)"
    host, port = hw.url.removeprefix("http://").split(":")
    LossyProxy.upstream, LossyProxy.seen = (host, int(port)), []
    user = f"web-{uuid.uuid4().hex[:8]}"
    with _serve(ShopPage) as shop, _serve(LossyProxy) as proxy:
        context = browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        external: list[str] = []
        page.on(
            "request",
            lambda r: external.append(r.url) if not r.url.startswith((shop, proxy, "data:")) else None,
        )
        page.goto(f"{shop}/shop.html?key={hw.keys['write']}&cdn={proxy}&user={user}")
        results = page.evaluate("window.sent")  # each call's promise settles after its first attempt
        for _ in range(300):  # the SDK retries the 503'd call after its back-off (0.5 s, jittered)
            if sum(c["path"] == "/v1/t" and c["method"] == "POST" for c in LossyProxy.seen) >= 2:
                break
            page.wait_for_timeout(100)
        context.close()
    assert errors == [] and external == [], (errors, external)
    assert [r["type"] for r in results] == ["identify", "page", "track"]
    assert all(r["failed"] is None for r in results), results

    # the SDK read its settings from Headwater and sent every call to the address they gave
    calls = LossyProxy.seen
    assert calls[0]["method"] == "GET" and calls[0]["path"] == f"/v1/projects/{hw.keys['write']}/settings"
    posts = [c for c in calls if c["method"] == "POST"]
    assert [c["path"] for c in posts] == ["/v1/i", "/v1/p", "/v1/t", "/v1/t"], calls
    track_id = results[2]["messageId"]
    first, retry = posts[2], posts[3]
    assert first["body"]["messageId"] == retry["body"]["messageId"] == track_id
    assert first["answer"]["accepted"] == 1 and retry["answer"]["duplicates"] == 1  # taken once, then a duplicate

    rows = hw.wait_rows(
        f"SELECT type, count(*) FROM events WHERE user_id = '{user}' GROUP BY type ORDER BY type",
        [["identify", 1], ["page", 1], ["track", 1]],
    )
    assert rows
    track = hw.sql(
        "SELECT event, event_id, properties->>'revenue', context->'library'->>'name', context->'library'->>'version',"
        " context->>'userAgent', context->'page'->>'path', context->'page'->>'url', context->'page'->>'title'"
        f" FROM events WHERE user_id = '{user}' AND type = 'track'"
    )
    [[event, event_id, revenue, library, version, agent, path, url, title]] = track
    assert (event, event_id, revenue) == ("Order Completed", track_id, "42")
    assert library == "analytics.js" and version.endswith(f"-{VERSION}")
    assert "Chrome" in agent
    assert (path, title) == ("/shop.html", "Shop") and url.startswith(f"{shop}/shop.html")
    page_row = hw.sql(
        f"SELECT event, properties->>'category', properties->>'section', context->'page'->>'path' FROM events "
        f"WHERE user_id = '{user}' AND type = 'page'"
    )
    assert page_row == [["Shoes", "Catalog", "sale", "/shop.html"]]
    traits = hw.sql(f"SELECT traits->>'plan' FROM events WHERE user_id = '{user}' AND type = 'identify'")
    assert traits == [["pro"]]
