"""Run a dashboard: every tile's saved insight with the dashboard's shared range and filters, and the
newest data of its processor tiles.

Tile kinds in the answer (`kind`): an insight's kind (`trend`, `funnel`, ...) with its `result`;
`live` (raw events, fetched by the page from the live tail: `result` None); `live.stream` (a
processor's output stream: `result` `{"rows": [{"key", "value", "time"}]}`, newest first, which the
page then follows); `state` (a processor's served state table: `result` `{"rows": [{"key", "value",
"event_time", "measure"}], "chart", "field"}` in key order, `measure` being the number the bar chart
draws for the row, or None).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from headwater.boards.store import BoardStore
from headwater.core.errors import QueryError
from headwater.insights.engine import InsightEngine

RANGED = ("trend", "funnel", "retention", "journey", "experiment")
FILTERED = ("trend", "funnel", "retention")
STREAM_FIELDS = ("key", "value", "time")  # what a live.stream tile shows of a record (and all a share link gets)


class ProcessorData(Protocol):
    """Reads of the processors' outputs for processor tiles; both raise QueryError when the stream or
    state table is not there (the tile then shows the error)."""

    def state_rows(self, table: str, prefix: str, limit: int) -> list[dict[str, Any]]:
        """`limit` rows `{"key", "value", "event_time"}` of a state table, in key order from `prefix`."""
        ...

    def stream_rows(self, stream: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` records `{"key", "value", "time", ...}` of an output stream, newest first."""
        ...


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


def measure(value: Any, field: str | None) -> float | None:
    """The number a state tile's bar chart draws for a value: at the dotted path `field` inside it; by
    default the value itself when it is a number, else its `value` member (a window result's)."""
    if field is None:
        found = value.get("value") if isinstance(value, dict) else value
    else:
        found = value
        for part in field.split("."):
            if isinstance(found, dict):
                found = found.get(part)
            elif isinstance(found, list) and part.isdigit() and int(part) < len(found):
                found = found[int(part)]
            else:
                return None
    if isinstance(found, bool) or not isinstance(found, int | float):
        return None
    return found


def stream_rows(processors: ProcessorData, stream: str, limit: int) -> list[dict[str, Any]]:
    """A live.stream tile's rows: the record fields it shows, nothing more."""
    return [{k: row.get(k) for k in STREAM_FIELDS} for row in processors.stream_rows(stream, limit)]


def state_result(processors: ProcessorData, spec: dict[str, Any]) -> dict[str, Any]:
    """A state tile's result: its rows (with the measure the chart draws) and how to draw them."""
    rows = processors.state_rows(spec["table"], spec.get("prefix") or "", int(spec.get("limit") or 20))
    field = spec.get("field")
    rows = [{**row, "measure": measure(row["value"], field)} for row in rows]
    return {"rows": rows, "chart": spec.get("chart") or "bar", "field": field}


def _processor_tile(tile: dict[str, Any], processors: ProcessorData | None) -> dict[str, Any]:
    state: dict[str, Any] | None = tile.get("state")
    live: dict[str, Any] = tile.get("live") or {}
    if state is not None:
        entry: dict[str, Any] = {**tile, "name": state.get("title") or state["table"], "kind": "state"}
    else:
        entry = {**tile, "name": live["title"], "kind": "live.stream"}
    if processors is None:
        return {**entry, "result": None, "error": "processor outputs are not available here"}
    try:
        if state is not None:
            result: dict[str, Any] = state_result(processors, state)
        else:
            result = {"rows": stream_rows(processors, live["stream"], int(live.get("limit") or 20))}
    except QueryError as exc:  # the processor is stopped or has not written yet: this tile says so
        return {**entry, "result": None, "error": str(exc)}
    return {**entry, "result": result, "error": None}


def run_dashboard(
    store: BoardStore, insights: InsightEngine, dashboard_id: int, processors: ProcessorData | None = None
) -> dict[str, Any]:
    board = store.dashboard(dashboard_id)
    tiles = []
    for tile in board["tiles"]:
        if tile.get("state") or (tile.get("live") or {}).get("stream"):
            tiles.append(_processor_tile(tile, processors))
            continue
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
