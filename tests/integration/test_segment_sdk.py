"""The official segment-analytics-python SDK, unchanged, pointed at Headwater."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from segment.analytics.client import Client

from tests.helpers import RunningHeadwater


@pytest.mark.parametrize("gzip", [False, True])
def test_official_sdk_delivers_every_call(headwater: RunningHeadwater, gzip: bool) -> None:
    user = f"sdk-{uuid.uuid4().hex[:8]}"
    errors: list[Exception] = []
    client = Client(
        write_key=headwater.keys["write"],
        host=headwater.url,
        gzip=gzip,
        sync_mode=False,
        on_error=lambda error, items: errors.append(error),
        max_retries=2,
    )
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    client.identify(user, {"email": f"{user}@example.com", "plan": "pro"})
    for i in range(25):
        client.track(user, "Order Completed", {"revenue": i, "currency": "EUR"}, timestamp=when)
    client.page(user, "Docs", "Install", {"path": "/docs/install"})
    client.screen(user, "App", "Home")
    client.group(user, "acme", {"employees": 50})
    client.alias(f"anon-{user}", user)
    client.flush()
    client.join()
    assert errors == []
    rows = headwater.wait_rows(
        f"SELECT type, count(*) FROM events WHERE user_id = '{user}' GROUP BY type ORDER BY type",
        [["alias", 1], ["group", 1], ["identify", 1], ["page", 1], ["screen", 1], ["track", 25]],
    )
    assert rows
    revenue = headwater.sql(
        f"SELECT sum((properties->>'revenue')::INT), count(DISTINCT event_id), any_value(context->'library'->>'name') "
        f"FROM events WHERE user_id = '{user}' AND event = 'Order Completed'"
    )
    assert revenue == [[sum(range(25)), 25, "analytics-python"]]
    page = headwater.sql(f"SELECT event, properties->>'path' FROM events WHERE user_id = '{user}' AND type = 'page'")
    assert page == [["Install", "/docs/install"]]
