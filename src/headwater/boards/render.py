"""Run a dashboard: every tile's saved insight with the dashboard's shared range and filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from headwater.boards.store import BoardStore
from headwater.core.errors import QueryError
from headwater.insights.engine import InsightEngine

RANGED = ("trend", "funnel", "retention", "journey", "experiment")
FILTERED = ("trend", "funnel", "retention")


def apply_board(query: dict[str, Any], board: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The tile's query with the board's shared date range and filters applied."""
    query = dict(query)
    kind = query.get("kind")
    if board.get("last_days") and kind in RANGED:
        # up to the end of the current minute: includes what just arrived, and keeps the SQL (the cache key)
        # the same for a minute
        end = (now or datetime.now(UTC)).replace(second=0, microsecond=0) + timedelta(minutes=1)
        query["date_to"] = end.isoformat()
        query["date_from"] = (end - timedelta(days=board["last_days"])).isoformat()
    if board.get("filters") and kind in FILTERED:
        query["filters"] = [*query.get("filters", []), *board["filters"]]
    return query


def run_dashboard(store: BoardStore, insights: InsightEngine, dashboard_id: int) -> dict[str, Any]:
    board = store.dashboard(dashboard_id)
    tiles = []
    for tile in board["tiles"]:
        if tile.get("live"):  # real-time tiles are fetched by the page from the live tail
            tiles.append({**tile, "name": tile["live"]["title"], "kind": "live", "result": None, "error": None})
            continue
        saved = store.insight(tile["insight_id"])
        entry: dict[str, Any] = {**tile, "name": saved["name"], "kind": saved["query"].get("kind")}
        try:
            answer = insights.run(apply_board(saved["query"], board))
            entry.update(result=answer["result"], sql=answer["sql"], error=None)
        except QueryError as exc:  # one broken tile does not break the board
            entry.update(result=None, sql=None, error=str(exc))
        tiles.append(entry)
    return {**board, "tiles": tiles}
