"""Create the Joulica dashboard: calls handled per queue, live next to history.

    python examples/joulica/dashboard.py --key <read or admin key> [--url http://127.0.0.1:8080] [--days 7]

Through the boards API (`/api/saved-insights`, `/api/dashboards`), it creates, or updates when
they exist by name:

- the saved insight "Calls handled per queue (history)": a trend of `call_handled` events by
  `queue`, hourly, over the `events` table;
- the dashboard "Contact centre: live and history": a live tile (left) beside that trend (right),
  sharing the last `--days` days and refreshing every 10 s.

The live tile shows the processor's windowed counts: a state tile over the state table
`joulica_calls_now` that `calls.py` serves, a bar per queue of its current minute's `calls`.
The server accepts it once the processor runs (it checks that some processor serves the table), so
the script first waits up to `--wait` seconds for the processor to be listed in `/api/processors`.
If the server refuses that tile (400), it tries a live tile over the stream `joulica-calls-now`,
then a live feed of `call_handled` events (what servers without processor tiles take). It prints
which one it got (`"live_tile"`: `state`, `stream` or `events`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

INSIGHT = "Calls handled per queue (history)"
DASHBOARD = "Contact centre: live and history"
LIVE_TITLE = "Calls handled this minute, per queue (live)"
STATE_TABLE = "joulica_calls_now"
LIVE_TILES: dict[str, dict[str, Any]] = {  # tried in this order; the last is what every version of the boards API takes
    "state": {"state": {"title": LIVE_TITLE, "table": STATE_TABLE, "limit": 50, "chart": "bar", "field": "calls"}},
    "stream": {"live": {"title": LIVE_TITLE, "stream": "joulica-calls-now", "limit": 50}},
    "events": {"live": {"title": "Calls handled (live feed of call_handled events)", "event": "call_handled"}},
}


class BoardsError(RuntimeError):
    pass


def trend(days: int, now: datetime | None = None) -> dict[str, Any]:
    end = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return {
        "kind": "trend", "series": [{"event": "call_handled", "measure": "count"}], "interval": "hour",
        "breakdown": "queue", "date_from": (end - timedelta(days=days)).isoformat(), "date_to": end.isoformat(),
    }  # fmt: skip


def _call(client: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    response = client.request(method, path, json=body)
    if response.status_code >= 400:
        raise BoardsError(f"{method} {path}: {response.status_code} {response.text[:500]}")
    return response.json()


def _find(items: list[dict[str, Any]], name: str) -> int | None:
    return next((int(item["id"]) for item in items if item.get("name") == name), None)


def wait_for_processor(client: httpx.Client, wait_s: float) -> bool:
    """Whether a processor serving the state table is listed, polling up to `wait_s` seconds (a server
    without `/api/processors` answers at once: no)."""
    deadline = time.monotonic() + wait_s
    while True:
        response = client.get("/api/processors")
        if response.status_code == 404:
            return False
        if response.status_code == 200:
            for processor in response.json().get("processors") or []:
                tables = (processor.get("outputs") or {}).get("state_tables") or []
                if STATE_TABLE in tables:
                    return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def create(url: str, key: str, days: int = 7, wait_s: float = 30) -> dict[str, Any]:
    """Create or update the insight and the dashboard; returns their ids, the live tile kind and the page."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as client:
        wait_for_processor(client, wait_s)
        body = {"name": INSIGHT, "query": trend(days)}
        insight_id = _find(_call(client, "GET", "/api/saved-insights"), INSIGHT)
        if insight_id is None:
            insight_id = int(_call(client, "POST", "/api/saved-insights", body)["id"])
        else:
            _call(client, "PUT", f"/api/saved-insights/{insight_id}", body)
        board_id = _find(_call(client, "GET", "/api/dashboards"), DASHBOARD)
        refused: list[str] = []
        for kind, tile in LIVE_TILES.items():
            tiles = [
                {**tile, "x": 0, "y": 0, "w": 5, "h": 6},
                {"insight_id": insight_id, "x": 5, "y": 0, "w": 7, "h": 6},
            ]
            board = {"name": DASHBOARD, "last_days": days, "refresh_seconds": 10, "tiles": tiles}
            try:
                if board_id is None:
                    board_id = int(_call(client, "POST", "/api/dashboards", board)["id"])
                else:
                    _call(client, "PUT", f"/api/dashboards/{board_id}", board)
            except BoardsError as exc:
                if " 400 " not in str(exc) or kind == "events":
                    raise
                refused.append(f"{kind}: {exc}")
                continue
            return {
                "dashboard_id": board_id, "insight_id": insight_id, "live_tile": kind, "refused": refused,
                "page": f"{url.rstrip('/')}/#/dashboard/{board_id}",
            }  # fmt: skip
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create the contact-centre dashboard (live next to history).")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="Headwater's base URL")
    parser.add_argument("--key", default=os.environ.get("HEADWATER_KEY"), help="a read or admin key")
    parser.add_argument("--days", type=int, default=7, help="range of the historical trend")
    parser.add_argument("--wait", type=float, default=30, help="seconds to wait for the processor to be listed")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key is required (headwater keys create analyst --role read)")
    try:
        made = create(args.url, args.key, args.days, args.wait)
    except BoardsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if made["live_tile"] != "state":
        print(
            f"note: the server refused the state tile ({'; '.join(made['refused'])}); the live tile shows "
            f"{'the stream joulica-calls-now' if made['live_tile'] == 'stream' else 'call_handled events'} instead "
            "(per-minute counts: GET /api/state/joulica_calls_now/<queue>)",
            file=sys.stderr,
        )
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
