"""`/api/checks`: the routes of `headwater.api.checks` on the real Services of a data directory with a lake
(events and tables as in test_checks), real API keys, and a checks.toml."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from headwater.api.app import Services
from headwater.api.checks import check_routes
from tests.helpers import make_keys, make_settings
from tests.integration.test_checks import write_events, write_tables

CHECKS = """
[[checks]]
name = "orders_ids"
kind = "unique"
table = "orders"
column = "order_id"

[[checks]]
kind = "accepted_values"
table = "orders"
column = "status"
values = ["paid", "refunded", "lost"]
severity = "warn"
schedule = "*/10 * * * *"

[[checks]]
name = "events_fresh"
kind = "freshness"
table = "events"
time_column = "received_at"
max_age_minutes = 1440
"""


class Api:
    """HTTP requests to the routes, through httpx's ASGI transport."""

    def __init__(self, app: Starlette, keys: dict[str, str], models: Path) -> None:
        self.app, self.keys, self.models = app, keys, models

    def request(self, method: str, path: str, role: str | None, body: object = None) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://checks") as client:
                headers = {"x-api-key": self.keys[role]} if role else {}
                return await client.request(method, path, json=body, headers=headers)

        return asyncio.run(send())

    def get(self, path: str, role: str | None = "read") -> tuple[int, Any]:
        response = self.request("GET", path, role)
        return response.status_code, response.json()

    def run(self, body: object, role: str = "admin") -> tuple[int, Any]:
        response = self.request("POST", "/api/checks/run", role, body)
        return response.status_code, response.json()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data_dir = tmp_path_factory.mktemp("checks-api")
    models = data_dir / "models"
    models.mkdir()
    (models / "checks.toml").write_text(CHECKS)
    settings = make_settings(data_dir, models_dir=models)
    write_events(settings)
    write_tables(settings)
    keys = make_keys(data_dir)
    services = Services(settings)
    try:
        yield Api(Starlette(routes=check_routes(lambda: services)), keys, models)
    finally:
        services.close()


def test_listing_before_and_after_a_run(api: Api) -> None:
    status, body = api.get("/api/checks")
    assert status == 200 and body["configured"] and body["error"] is None
    names = [c["name"] for c in body["checks"]]
    assert names == ["orders_ids", "orders_accepted_values_status", "events_fresh"]
    assert all(c["last"] is None and c["history"] == [] for c in body["checks"])
    assert body["checks"][1]["values"] == ["paid", "refunded", "lost"]
    assert body["checks"][1]["schedule"] == "*/10 * * * *" and body["checks"][1]["severity"] == "warn"

    status, ran = api.run({})
    assert status == 200
    assert [(r["check"], r["status"]) for r in ran["results"]] == [
        ("orders_ids", "fail"), ("orders_accepted_values_status", "pass"), ("events_fresh", "pass"),
    ]  # fmt: skip
    status, ran = api.run({"checks": ["orders_ids"]})
    assert [r["check"] for r in ran["results"]] == ["orders_ids"]
    assert ran["results"][0]["failing"] == 2 and ran["results"][0]["detail"]["sample"] == [{"order_id": 6, "rows": 2}]

    status, body = api.get("/api/checks?table=orders&history=5")
    assert [c["name"] for c in body["checks"]] == ["orders_ids", "orders_accepted_values_status"]
    ids = body["checks"][0]
    assert ids["last"]["run_id"] == ran["results"][0]["run_id"]
    assert [h["status"] for h in ids["history"]] == ["fail", "fail"]
    assert len(body["checks"][1]["history"]) == 1


def test_runs_are_for_admins_and_names_are_checked(api: Api) -> None:
    status, body = api.run({"checks": ["orders_ids"]}, role="read")
    assert status == 403, body
    status, body = api.run({"checks": ["nope"]})
    assert status == 404 and "nope" in body["error"]
    status, body = api.run({"checks": "orders_ids"})
    assert status == 400
    status, body = api.get("/api/checks?history=x")
    assert status == 400
    status, body = api.get("/api/checks", role=None)
    assert status == 401


def test_a_broken_checks_file_is_reported(api: Api) -> None:
    good = (api.models / "checks.toml").read_text()
    try:
        (api.models / "checks.toml").write_text('[[checks]]\nkind = "unique"\ntable = "orders"\n')
        status, body = api.get("/api/checks")
        assert status == 200 and body["checks"] == []
        assert "check #1" in body["error"] and "'column'" in body["error"]
        status, body = api.run({})
        assert status == 400 and "checks.toml" in body["error"]
    finally:
        (api.models / "checks.toml").write_text(good)
