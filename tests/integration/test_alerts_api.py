"""The /api/alerts routes over the state an evaluator wrote, with real key and user stores and a real webhook
receiver (the routes mounted on their own Starlette app until `api/app.py` registers them)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from headwater.alerts import AlertEvaluator
from headwater.api.alerts import alert_routes
from headwater.auth.audit import AuditLog
from headwater.auth.keys import KeyStore
from headwater.auth.users import UserStore
from headwater.core.settings import Settings
from headwater.lake.coordination import open_engine
from tests.helpers import make_keys, make_settings
from tests.unit.test_alerts import Receiver, Switch


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[httpx.Client]:
    """`app` served by uvicorn on a free local port in a thread; a client on it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


class Services:
    """What the alert routes use of the server's Services."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.data_dir / "keys.db")
        self.users = UserStore(settings.data_dir / "users.db", 1)
        self.audit = AuditLog(settings.effective_catalog_uri)

    def close(self) -> None:
        self.keys.close()
        self.users.close()
        self.audit.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[httpx.Client, dict[str, str], Receiver, AlertEvaluator]]:
    receiver = Receiver()
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    settings = make_settings(data_dir, port=0, alert_webhooks=[receiver.url], alert_for_s=0)
    services = Services(settings)
    ev = AlertEvaluator(settings, open_engine(settings.effective_catalog_uri), [Switch("trend.x", on=[{"a": "1"}])])
    ev.builtins = []
    app = Starlette(routes=alert_routes(lambda: services))
    try:
        with serve(app) as client:
            yield client, keys, receiver, ev
    finally:
        ev.close()
        services.close()
        receiver.close()


def auth(keys: dict[str, str], role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {keys[role]}"}


def test_current_alerts_rules_and_history(setup: tuple[httpx.Client, dict[str, str], Receiver, AlertEvaluator]) -> None:
    client, keys, receiver, ev = setup
    ev.tick()
    assert client.get("/api/alerts").status_code == 401
    doc = client.get("/api/alerts", headers=auth(keys, "read")).json()
    assert [(a["rule"], a["state"], a["labels"]) for a in doc["alerts"]] == [("trend.x", "firing", {"a": "1"})]
    assert [r["name"] for r in doc["rules"]] == ["trend.x"] and doc["evaluator"]["running"] is True
    assert doc["webhooks"] == 1
    history = client.get("/api/alerts/history?limit=5", headers=auth(keys, "read")).json()["history"]
    assert [(h["rule"], h["state"], h["delivery"]) for h in history] == [("trend.x", "firing", "delivered")]
    assert history[0]["targets"] == ["webhook 1"]  # URLs (which may hold tokens) for admins only
    admin = client.get("/api/alerts/history", headers=auth(keys, "admin")).json()["history"]
    assert admin[0]["targets"] == [receiver.url] and admin[0]["deliveries"][receiver.url]["ok"] is True
    bad = client.get("/api/alerts/history?limit=0", headers=auth(keys, "read"))
    assert bad.status_code == 400 and "limit" in bad.json()["error"]


def test_silences_created_listed_applied_deleted(
    setup: tuple[httpx.Client, dict[str, str], Receiver, AlertEvaluator],
) -> None:
    client, keys, receiver, ev = setup
    body: dict[str, Any] = {"rule": "trend.x", "labels": {"a": "1"}, "minutes": 30, "comment": "known"}
    assert client.post("/api/alerts/silences", json=body, headers=auth(keys, "read")).status_code == 403
    wrongs: list[tuple[dict[str, Any], str]] = [
        ({"rule": "Bad Name"}, "rule"), ({"labels": {"a": 1}}, "labels"), ({"minutes": -1}, "minutes"),
        ({"ends_at": "2020-01-01T00:00:00Z"}, "ends_at"), ({"ends_at": "tomorrow"}, "ends_at"),
    ]  # fmt: skip
    for wrong, field in wrongs:
        answer = client.post("/api/alerts/silences", json={**body, **wrong}, headers=auth(keys, "admin"))
        assert answer.status_code == 400 and answer.json()["error"].startswith(field), answer.text
    made = client.post("/api/alerts/silences", json=body, headers=auth(keys, "admin"))
    assert made.status_code == 201 and made.json()["ends_at"] - made.json()["starts_at"] == 1800
    listed = client.get("/api/alerts/silences", headers=auth(keys, "read")).json()["silences"]
    assert [(s["rule"], s["labels"], s["created_by"]) for s in listed] == [("trend.x", {"a": "1"}, "test-admin")]
    ev.tick()
    assert receiver.bodies == []  # silenced: recorded, not sent
    history = client.get("/api/alerts/history", headers=auth(keys, "read")).json()["history"]
    assert history[0]["silenced"] is True and history[0]["delivery"] == "silenced"
    silence_id = made.json()["id"]
    assert client.delete(f"/api/alerts/silences/{silence_id}", headers=auth(keys, "admin")).status_code == 200
    assert client.delete(f"/api/alerts/silences/{silence_id}", headers=auth(keys, "admin")).status_code == 404
    assert client.get("/api/alerts/silences", headers=auth(keys, "read")).json()["silences"] == []


def test_test_notification_reaches_every_webhook(
    setup: tuple[httpx.Client, dict[str, str], Receiver, AlertEvaluator],
) -> None:
    client, keys, receiver, _ = setup
    assert client.post("/api/alerts/test", headers=auth(keys, "read")).status_code == 403
    answer = client.post("/api/alerts/test", headers=auth(keys, "admin")).json()
    assert answer["ok"] is True and [r["url"] for r in answer["results"]] == [receiver.url]
    assert [(b["alert"], b["state"]) for b in receiver.bodies] == [("test", "test")]
    receiver.status = 503
    failed = client.post("/api/alerts/test", headers=auth(keys, "admin")).json()
    assert failed["ok"] is False and failed["results"][0]["status"] == 503
