"""Webhook notifications: one JSON POST per transition (firing, resolved) to each URL, with a timeout.

Body: {id, alert, state, severity, summary, labels, value, since, at, dashboard_url} (`id` is the history row:
a receiver that gets the same id twice, after a crash between sending and recording, can drop the repeat).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from headwater import __version__

WEBHOOK_TIMEOUT_S = 5.0
GIVE_UP_S = 86_400.0  # a notification still undelivered a day later is marked failed


def iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def payload(entry: dict[str, Any]) -> dict[str, Any]:
    """The JSON body sent for one history entry."""
    return {
        "id": entry["id"], "alert": entry["rule"], "state": entry["state"], "severity": entry["severity"],
        "summary": entry["summary"], "labels": entry["labels"], "value": entry["value"],
        "since": iso(entry["since"]), "at": iso(entry["at"]), "dashboard_url": entry["dashboard_url"],
    }  # fmt: skip


def post(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` to `url`; the outcome {ok, status, error, at} (any 2xx is success)."""
    headers = {"user-agent": f"headwater/{__version__} alerts"}
    # httpx's timeout bounds each read, not the whole answer: a receiver trickling its reply would hold the ops
    # loop (models, checks, alerts) as long as it likes, so the reply is read against a deadline, and only its start
    deadline = time.monotonic() + 2 * WEBHOOK_TIMEOUT_S
    try:
        with client.stream("POST", url, json=body, headers=headers, timeout=WEBHOOK_TIMEOUT_S) as response:
            reply = b""
            for chunk in response.iter_bytes():
                reply += chunk
                if len(reply) >= 4096 or time.monotonic() > deadline:
                    break
    except httpx.HTTPError as exc:
        return {"ok": False, "status": None, "error": f"{type(exc).__name__}: {exc}"[:300], "at": time.time()}
    ok = 200 <= response.status_code < 300
    error = None if ok else f"HTTP {response.status_code}: {reply[:200].decode(errors='replace')}"
    return {"ok": ok, "status": response.status_code, "error": error, "at": time.time()}


def send_test(urls: Sequence[str], dashboard_url: str, client: httpx.Client | None = None) -> list[dict[str, Any]]:
    """A test notification to every URL; per URL its outcome."""
    now = time.time()
    body = {"id": 0, "alert": "test", "state": "test", "severity": "info",
            "summary": "Test notification from Headwater: this webhook receives alerts.", "labels": {},
            "value": None, "since": iso(now), "at": iso(now), "dashboard_url": dashboard_url}  # fmt: skip
    own = client is None
    http = client or httpx.Client()
    try:
        return [{"url": url, **post(http, url, body)} for url in urls]
    finally:
        if own:
            http.close()
