"""Dashboard tiles over a processor under `headwater up`: a state tile (a served state table as bars or
rows) and a live.stream tile (an output stream's newest records), created through the boards API, run,
and shared (the share link gives their rows and nothing else); 400s naming the field for a table or
stream that no processor writes; boards saved before these tiles existed still load."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from headwater.boards.render import measure, run_dashboard
from headwater.boards.store import BoardStore
from tests.helpers import RunningHeadwater, child_env, make_keys

PIPELINE = """
from headwater.processing.api import Pipeline, minutes

p = Pipeline("queue-counter", description="calls per queue per hour")
calls = p.source("events").filter(lambda e: e["event"] == "Call").map_key(lambda e: e["properties"]["queue"])
(calls.tumbling_window(minutes(60), grace=minutes(5)).count().current()
 .to_state("queue_counts").to_stream("queue-counts"))
calls.map(lambda e: {"agent": e["properties"]["agent"]}).to_state("queue_agents")  # on no board
pipeline = p
"""
CALLS = {"alpha": 4, "beta": 2, "bravo": 3, "gamma": 1}  # calls per queue
SECRET = "agent-not-on-the-board"


@pytest.fixture(scope="module")
def hw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("board-processor-tiles")
    (data_dir / "queues.py").write_text(PIPELINE)
    keys = make_keys(data_dir)
    processors = json.dumps([f"{data_dir / 'queues.py'}:pipeline"])
    running = RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200, processors=processors), keys=keys)
    try:
        yield running.start()
    finally:
        if running.proc is not None:
            running.stop()


def api(hw: RunningHeadwater, method: str, path: str, body: Any = None, key: str | None = "read") -> httpx.Response:
    headers = {"Authorization": f"Bearer {hw.keys[key]}"} if key else {}
    return httpx.request(method, hw.url + path, json=body, headers=headers, timeout=60)


def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: still {last!r} after {timeout} s")


@pytest.fixture(scope="module")
def counted(hw: RunningHeadwater) -> dict[str, int]:
    """The calls sent (all in one hour window, each queue's under one user: one partition) and applied."""
    hour = (int(time.time()) // 3600 - 2) * 3600
    lines, i = [], 0
    for queue, calls in CALLS.items():
        for _ in range(calls):
            when = datetime.fromtimestamp(hour + 60 * i, tz=UTC).isoformat()
            call = {"event": "Call", "userId": f"queue-{queue}", "timestamp": when, "queue": queue, "agent": SECRET}
            lines.append(json.dumps(call))
            i += 1
    lines.append(json.dumps({"event": "Viewed", "userId": "someone"}))
    assert hw.post("/track", "\n".join(lines), hw.keys["write"]).json()["accepted"] == len(lines)

    def applied() -> bool:
        response = api(hw, "GET", "/api/state/queue_counts")
        return response.status_code == 200 and {r["key"]: r["value"]["value"] for r in response.json()["rows"]} == CALLS

    wait_for(applied, "the processor's counts")
    wait_for(lambda: api(hw, "GET", "/api/state/queue_agents").status_code == 200, "the second state table")
    return CALLS


STATE_TILE = {"state": {"title": "Calls per queue", "table": "queue_counts"}, "w": 6}
PREFIX_TILE = {"state": {"table": "queue_counts", "prefix": "b", "limit": 1, "chart": "table", "field": "start"}}
STREAM_TILE = {"live": {"title": "Count updates", "stream": "queue-counts", "limit": 50}}


def test_state_and_stream_tiles_show_what_the_processor_computed(hw: RunningHeadwater, counted: dict[str, int]) -> None:
    board = {"name": "Queues", "tiles": [STATE_TILE, PREFIX_TILE, STREAM_TILE], "refresh_seconds": 10}
    created = api(hw, "POST", "/api/dashboards", board)
    assert created.status_code == 201, created.text
    saved = created.json()
    assert saved["tiles"][0]["state"] == {"title": "Calls per queue", "table": "queue_counts", "prefix": "",
                                          "limit": 20, "chart": "bar", "field": None}  # fmt: skip
    assert saved["tiles"][1]["state"]["title"] == "queue_counts"  # defaults to the table's name
    assert saved["tiles"][2]["live"] == {"title": "Count updates", "event": None, "stream": "queue-counts", "limit": 50}

    shown = api(hw, "GET", f"/api/dashboards/{saved['id']}").json()
    state, prefixed, stream = shown["tiles"]
    scan = api(hw, "GET", "/api/state/queue_counts").json()["rows"]
    assert (state["kind"], state["name"], state["error"]) == ("state", "Calls per queue", None)
    assert state["result"] == {"rows": [{**row, "measure": row["value"]["value"]} for row in scan],
                               "chart": "bar", "field": None}  # fmt: skip
    assert [(r["key"], r["measure"]) for r in state["result"]["rows"]] == sorted(counted.items())
    beta = next(r for r in scan if r["key"] == "beta")
    assert prefixed["kind"] == "state" and prefixed["result"]["chart"] == "table"
    assert prefixed["result"]["rows"] == [{**beta, "measure": beta["value"]["start"]}]  # prefix "b", 1 row

    # every count update, newest first: queue q's counts 1..n, each row only key, value, time
    assert (stream["kind"], stream["name"], stream["error"]) == ("live.stream", "Count updates", None)
    rows = stream["result"]["rows"]
    assert all(set(row) == {"key", "value", "time"} for row in rows)
    assert sorted((r["key"], r["value"]["value"]) for r in rows) == sorted(
        (q, n) for q, calls in counted.items() for n in range(1, calls + 1)
    )


def test_share_link_gives_the_tiles_rows_and_nothing_else(hw: RunningHeadwater, counted: dict[str, int]) -> None:
    board = {"name": "Shared queues", "tiles": [STATE_TILE, STREAM_TILE, {"live": {"event": "Viewed", "limit": 50}}]}
    board_id = api(hw, "POST", "/api/dashboards", board).json()["id"]
    token = api(hw, "POST", f"/api/dashboards/{board_id}/shares").json()["token"]
    own = api(hw, "GET", f"/api/dashboards/{board_id}").json()

    public = httpx.get(f"{hw.url}/api/shared/{token}", timeout=60)  # no credentials
    assert public.status_code == 200 and public.headers["cache-control"] == "no-store"
    state, stream, _ = public.json()["tiles"]
    assert state["result"] == own["tiles"][0]["result"]
    assert {r["key"]: r["measure"] for r in state["result"]["rows"]} == counted
    assert sorted((r["key"], r["value"]["value"]) for r in stream["result"]["rows"]) == sorted(
        (q, n) for q, calls in counted.items() for n in range(1, calls + 1)
    )
    assert SECRET not in public.text and "queue_agents" not in public.text  # not on the board: not shared

    feed = httpx.get(f"{hw.url}/api/shared/{token}/live/1", params={"stream": "queue_agents"}, timeout=60)
    assert feed.status_code == 200 and set(feed.json()) == {"events"}
    assert sorted(map(json.dumps, feed.json()["events"])) == sorted(map(json.dumps, stream["result"]["rows"]))
    assert all(set(row) == {"key", "value", "time"} for row in feed.json()["events"])
    events = httpx.get(f"{hw.url}/api/shared/{token}/live/2", timeout=60).json()["events"]
    assert events and {e["event"] for e in events} == {"Viewed"} and SECRET not in json.dumps(events)
    assert httpx.get(f"{hw.url}/api/shared/{token}/live/0", timeout=60).status_code == 404  # a state tile
    assert httpx.get(f"{hw.url}/api/shared/{token}/live/3", timeout=60).status_code == 404
    assert httpx.get(f"{hw.url}/api/shared/not-a-token/live/1", timeout=60).status_code == 404


def test_unknown_table_or_stream_is_a_400_naming_the_field(hw: RunningHeadwater, counted: dict[str, int]) -> None:
    def refused(tiles: list[dict[str, Any]]) -> str:
        response = api(hw, "POST", "/api/dashboards", {"name": "bad", "tiles": tiles})
        assert response.status_code == 400, response.text
        return str(response.json()["error"])

    error = refused([STATE_TILE, {"state": {"table": "no_such_table"}}])
    assert "tiles.1.state.table" in error and "no_such_table" in error and "queue_counts" in error
    error = refused([{"live": {"stream": "no-such-stream"}}])
    assert "tiles.0.live.stream" in error and "no-such-stream" in error and "queue-counts" in error
    assert "tiles.0.live" in refused([{"live": {"stream": "queue-counts", "event": "Call"}}])
    assert "tiles.0.state.chart" in refused([{"state": {"table": "queue_counts", "chart": "pie"}}])
    assert "tiles.0.state.field" in refused([{"state": {"table": "queue_counts", "field": "a..b"}}])
    assert "tiles.0.state.table" in refused([{"state": {"title": "no table"}}])
    assert "insight_id or live" in refused([{"state": {"table": "queue_counts"}, "live": {"event": "x"}}])
    board_id = api(hw, "POST", "/api/dashboards", {"name": "ok", "tiles": []}).json()["id"]
    put = api(hw, "PUT", f"/api/dashboards/{board_id}", {"name": "ok", "tiles": [{"state": {"table": "nope"}}]})
    assert put.status_code == 400 and "tiles.0.state.table" in put.json()["error"]


def test_board_stays_editable_when_its_processor_is_gone(hw: RunningHeadwater, counted: dict[str, int]) -> None:
    """A tile of a table that a processor served when the board was saved keeps the board editable after
    the processor went away (its tile shows why it is empty); a new tile of it is refused."""
    folder = hw.data_dir / "processors" / "ghost"
    folder.mkdir(parents=True)
    outputs = {"streams": ["ghost-stream"], "tables": [], "state_tables": ["ghost_table"], "sinks": []}
    manifest = {"processor": "ghost", "run": "r1", "input": "events", "started_at": 1, "outputs": outputs}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    tiles = [{"state": {"table": "ghost_table"}}, {"live": {"stream": "ghost-stream"}}]
    board_id = wait_for(lambda: api(hw, "POST", "/api/dashboards", {"name": "ghost", "tiles": tiles}).json().get("id"),
                        "the ghost processor listed")  # fmt: skip
    ghost = api(hw, "GET", f"/api/dashboards/{board_id}").json()["tiles"][0]
    assert ghost["result"] is None and "ghost" in ghost["error"]  # no state file: the tile says so
    (folder / "manifest.json").unlink()
    folder.rmdir()
    wait_for(lambda: api(hw, "POST", "/api/dashboards", {"name": "new", "tiles": tiles}).status_code == 400,
             "the ghost processor gone")  # fmt: skip
    again = api(hw, "PUT", f"/api/dashboards/{board_id}", {"name": "ghost", "tiles": tiles, "refresh_seconds": 5})
    assert again.status_code == 200, again.text
    gone = api(hw, "GET", f"/api/dashboards/{board_id}").json()["tiles"]
    assert "ghost_table" in gone[0]["error"] and "ghost-stream" in gone[1]["error"]


def test_old_boards_load_and_measures(tmp_path: Path) -> None:
    """A board stored before stream and state tiles (no `state`, no `live.stream`) loads, runs and saves."""
    store = BoardStore(tmp_path / "app.db")
    try:
        live = {"title": "Live", "event": "Call", "limit": 5}
        tile = {"insight_id": None, "live": live, "x": 0, "y": 0, "w": 6, "h": 4}
        old = {"tiles": [tile], "last_days": None, "filters": [], "refresh_seconds": 0}
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO dashboards VALUES (3, 'old', :body, 'ana', 1, 1)"),
                         {"body": json.dumps(old)})  # fmt: skip
        engine.dispose()
        board = store.dashboard(3)
        assert board["tiles"][0]["state"] is None and board["tiles"][0]["live"]["stream"] is None
        ran = run_dashboard(store, None, 3)  # type: ignore[arg-type]  # no insight tile, no engine needed
        assert ran["tiles"][0]["kind"] == "live" and ran["tiles"][0]["error"] is None
        body = {k: board[k] for k in ("tiles", "last_days", "filters", "refresh_seconds")}
        assert store.save_dashboard("old", body, "ana", 3)["tiles"] == board["tiles"]
    finally:
        store.close()
    assert measure(7, None) == 7 and measure({"value": 2.5}, None) == 2.5 and measure({"value": "x"}, None) is None
    assert measure({"calls": 3, "avg": {"s": 1.5}}, "calls") == 3 and measure({"avg": {"s": 1.5}}, "avg.s") == 1.5
    assert measure({"list": [4, 5]}, "list.1") == 5 and measure({"a": True}, "a") is None
    assert measure({"a": 1}, "b") is None and measure(3, "a") is None
