"""The live stream (server-sent events) of a real server: resumed from a cursor, it delivers every event after it,
including those that arrived before the stream opened (the live page takes a cursor, then opens the stream)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.helpers import RunningHeadwater, child_env, make_keys, serving


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir: Path = tmp_path_factory.mktemp("live-stream")
    keys = make_keys(data_dir)
    with serving(RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200), keys=keys)) as hw:
        yield hw


def stream_events(app: RunningHeadwater, params: dict[str, str], wanted: int) -> list[dict[str, object]]:
    """The first `wanted` events the stream sends (ids are cursors, data the event rows)."""
    found: list[dict[str, object]] = []
    headers = {"Authorization": f"Bearer {app.keys['read']}"}
    with httpx.stream("GET", app.url + "/api/live/stream", params=params, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                found.append(orjson.loads(line[6:]))
                if len(found) == wanted:
                    break
    return found


def test_a_stream_resumed_from_a_cursor_sends_what_arrived_before_it_opened(app: RunningHeadwater) -> None:
    headers = {"Authorization": f"Bearer {app.keys['read']}"}
    assert app.post("/track", '{"event":"Before","userId":"u0"}', app.keys["write"]).status_code == 200
    cursor = httpx.get(app.url + "/api/live", params={"limit": "1"}, headers=headers).json()["cursor"]
    for i in range(3):  # after the cursor, before the stream opens
        assert app.post("/track", f'{{"event":"Gap","userId":"u{i}"}}', app.keys["write"]).status_code == 200
    got = stream_events(app, {"cursor": cursor, "limit": "100"}, 3)
    assert [(e["event"], e["user_id"]) for e in got] == [("Gap", "u0"), ("Gap", "u1"), ("Gap", "u2")]


def test_a_stream_without_a_cursor_starts_at_the_end(app: RunningHeadwater) -> None:
    app.post("/track", '{"event":"Old","userId":"o1"}', app.keys["write"])
    headers = {"Authorization": f"Bearer {app.keys['read']}"}
    sent = False
    with httpx.stream("GET", app.url + "/api/live/stream", headers=headers, timeout=30) as response:
        for line in response.iter_lines():
            if not sent and line.startswith(":"):  # the stream is open: what comes now is new
                app.post("/track", '{"event":"New","userId":"n1"}', app.keys["write"])
                sent = True
            if line.startswith("data: "):
                assert orjson.loads(line[6:])["event"] == "New"  # never the old one
                break
