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


def apply_board(
    query: dict[str, Any], board: dict[str, Any], now: datetime | None = None, display: str = "chart"
) -> dict[str, Any]:
    """The tile's query with the board's shared date range and filters applied; a number tile's trend is
    run with `compare` (the previous period of the same length) for its change."""
    query = dict(query)
    kind = query.get("kind")
    if kind in RANGED and board.get("date_from") and board.get("date_to"):
        query["date_from"], query["date_to"] = str(board["date_from"]), str(board["date_to"])
    elif kind in RANGED and board.get("last_days"):
        # "last N days": today and the N-1 days before, in whole UTC days (as the builder's presets), so that
        # trends and retention are answered from the rollups; "last 1 day" is the last 24 h up to the end of the
        # current minute. Either way what just arrived counts, and the SQL (the cache key) stays put a while.
        current = (now or datetime.now(UTC)).astimezone(UTC)
        if board["last_days"] == 1:
            end = current.replace(second=0, microsecond=0) + timedelta(minutes=1)
        else:
            end = current.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        query["date_to"] = end.isoformat()
        query["date_from"] = (end - timedelta(days=board["last_days"])).isoformat()
    if board.get("filters") and kind in FILTERED:
        query["filters"] = [*query.get("filters", []), *board["filters"]]
    if display == "number" and kind == "trend":
        query["compare"] = True
    return query


def _value(measure: str, points: list[list[Any]]) -> float | None:
    """One number for a series over the range: the total of counts and sums; the lowest minimum, the highest
    maximum; otherwise (distinct users, averages, percentiles) the mean over the intervals that have a value
    (distinct users per interval do not add up to distinct users over the range)."""
    values = [float(p[1]) for p in points if p[1] is not None]
    if not values:
        return None
    if measure in ("count", "sum"):
        return sum(values)
    if measure == "min":
        return min(values)
    if measure == "max":
        return max(values)
    return sum(values) / len(values)


NUMBER_LABELS = {"count": "total", "sum": "total", "min": "lowest", "max": "highest", "users": "average per {interval}"}


def number_summary(query: dict[str, Any], result: list[dict[str, Any]]) -> dict[str, Any]:
    """A number tile's figure: the first series (without breakdown: all of it) over the range, the same over
    the previous period of the same length, and the relative change (None when the previous is 0 or absent)."""
    first = (query.get("series") or [{}])[0]
    measure = first.get("measure", "count")
    current = [s for s in result if s.get("series", 0) == 0 and s.get("period") == "current"]
    previous = [s for s in result if s.get("series", 0) == 0 and s.get("period") == "previous"]

    def combined(lines: list[dict[str, Any]]) -> float | None:
        if not lines:
            return None
        if len(lines) == 1 or measure in ("count", "sum"):  # breakdown values add up for counts and sums
            found = [_value(measure, line["points"]) for line in lines]
            kept = [v for v in found if v is not None]
            return sum(kept) if kept else None
        return _value(measure, lines[0]["points"])

    value, before = combined(current), combined(previous)
    if measure in ("count", "users", "sum") and query.get("compare"):  # no line: nothing happened, 0
        value, before = value or 0.0, before or 0.0
    change = (value - before) / before if value is not None and before else None
    label = NUMBER_LABELS.get(measure, "average per {interval}").format(interval=query.get("interval", "day"))
    return {"value": value, "previous": before, "change": change, "label": label, "event": first.get("event"),
            "measure": measure}  # fmt: skip


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
    store: BoardStore,
    insights: InsightEngine,
    dashboard_id: int,
    processors: ProcessorData | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every tile's data; `overrides` (a validated BoardRange's fields) replace the saved range and filters
    for this run only (a viewer exploring the board)."""
    board = store.dashboard(dashboard_id)
    if overrides:
        board = {**board, **overrides, "overridden": sorted(overrides)}
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
            query = apply_board(saved["query"], board, display=tile.get("display") or "chart")
            answer = insights.run(query)
            entry.update(result=answer["result"], sql=answer["sql"], error=None)
            if query.get("kind") == "trend" and tile.get("display") == "number":
                entry["number"] = number_summary(query, answer["result"])
        except QueryError as exc:  # one broken tile does not break the board
            entry.update(result=None, sql=None, error=str(exc))
        tiles.append(entry)
    return {**board, "tiles": tiles}
