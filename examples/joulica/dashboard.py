"""Create the Joulica dashboard: calls handled per queue, live next to history.

    python examples/joulica/dashboard.py --key <read or admin key> [--url http://127.0.0.1:8080] [--days 7]

Through the boards API (`/api/saved-insights`, `/api/dashboards`), it creates, or updates when
they exist by name:

- the saved insight "Calls handled per queue (history)": a trend of `call_handled` events by
  `queue`, hourly, over the `events` table;
- the dashboard "Contact centre: live and history": a live tile (left) beside that trend (right),
  sharing the last `--days` days and refreshing every 10 s.

The live tile should show the processor's windowed counts (the state table `joulica_calls_now`,
or the stream `joulica-calls-now` that `calls.py` writes). The script offers the server those
tile shapes first and falls back to what the boards API accepts: a live feed of `call_handled`
events. It prints which one it got.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

INSIGHT = "Calls handled per queue (history)"
DASHBOARD = "Contact centre: live and history"
LIVE_TITLE = "Calls handled this minute, per queue (live)"
LIVE_TILES: dict[str, dict[str, Any]] = {  # tried in this order; the last is what every version of the boards API takes
    "state": {"state": {"title": LIVE_TITLE, "table": "joulica_calls_now", "limit": 50}},
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


def create(url: str, key: str, days: int = 7) -> dict[str, Any]:
    """Create or update the insight and the dashboard; returns their ids, the live tile kind and the page."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as client:
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
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key is required (headwater keys create analyst --role read)")
    try:
        made = create(args.url, args.key, args.days)
    except BoardsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if made["live_tile"] == "events":
        print(
            "note: this server's dashboards cannot show a processor's state table or stream yet; the live "
            "tile shows call_handled events instead (per-minute counts: GET /api/state/joulica_calls_now/<queue>)",
            file=sys.stderr,
        )
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
