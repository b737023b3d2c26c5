"""The catalog the insight builder's pickers read: event names, properties and property values, with counts.

Recent data answers, so the pickers stay fast on a big table and show what is being sent now. "Recent" ends at the
day of the newest event (not the clock: imported history works too):
- `GET /api/catalog/events?q=&limit=200` -> `{"events": [{"event", "events", "users", "last_seen"}]}`, most frequent
  first: every event of the last 30 days (exact; day-aligned counts that rollups answer when the fast path has
  them). `users`: distinct `coalesce(user_id, anonymous_id)` (ids, not persons). `last_seen`: exact for events of
  the newest day, else the start of the last day the event was seen.
- `GET /api/catalog/properties?event=&q=` -> `{"properties": [{"property", "type": "string|number|boolean", "events",
  "last_seen", "kind": "property"|"column"}], "sampled": n}`: the keys of `properties` (one named like a column,
  e.g. `country` sent as a property, as `properties.country`, the name filters take) and the filled columns
  (country, browser, channel, utm_source, ...) in a random sample of at most 100,000 events of the newest day, or of
  the last 7 days when the newest day has fewer; `events` is scaled up to those days' events (an estimate when
  `sampled` is below them).
- `GET /api/catalog/values?property=&event=&q=&limit=50` -> `{"values": [{"value", "events"}]}`: the most frequent
  values in the last 7 days (exact; `q` matches anywhere, case-insensitive).

Answers are cached per data version, and for `CACHE_SECONDS` after a new version (new data arrives every second on
a live system: a picker a minute behind is fine). Reads need `view`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.principal import authenticate
from headwater.api.responses import json_response
from headwater.core.errors import AuthError, QueryError
from headwater.core.sql_literals import lit
from headwater.insights.spec import COLUMNS
from headwater.insights.sql import prop, ts
from headwater.query.engine import QueryEngine

CACHE_SECONDS = 60.0
EVENT_DAYS, SAMPLE_DAYS, SAMPLE_ROWS = 30, 7, 100_000
PICKER_COLUMNS = tuple(c for c in COLUMNS if c not in ("event", "plan_version", "ip", "click_id", "bot_reason"))
TYPES = {"VARCHAR": "string", "BOOLEAN": "boolean", "BIGINT": "number", "UBIGINT": "number", "DOUBLE": "number"}


class PickerCatalog:
    """Catalog answers over a QueryEngine, cached by data version (and for a while after it changes)."""

    def __init__(self, query: QueryEngine, shreds: Callable[[tuple[str, ...]], Any] | None = None) -> None:
        self.query = query
        self.shreds = shreds
        self._cache: dict[tuple[Any, ...], tuple[tuple[str, ...], float, Any]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: tuple[Any, ...], compute: Callable[[tuple[str, ...]], Any]) -> Any:
        version = self.query.data_version()
        with self._lock:
            found = self._cache.get(key)
            if found is not None and (found[0] == version or time.monotonic() - found[1] < CACHE_SECONDS):
                return found[2]
        value = compute(version)
        with self._lock:
            if len(self._cache) > 512:
                self._cache.clear()
            self._cache[key] = (version, time.monotonic(), value)
        return value

    def _rows(self, sql: str, limit: int = 100_000) -> list[dict[str, Any]]:
        result = self.query.execute(sql, max_rows=limit)
        return [dict(zip(result.columns, row, strict=True)) for row in result.rows]

    def last_day(self) -> datetime | None:
        """The start of the day after the newest event (the end of "recent"), None without events."""
        newest = self._cached(("newest",), lambda _: self._rows("SELECT max(timestamp) AS t FROM events")[0]["t"])
        if newest is None:
            return None
        return datetime(newest.year, newest.month, newest.day) + timedelta(days=1)

    def events(self) -> list[dict[str, Any]]:
        def compute(_version: tuple[str, ...]) -> list[dict[str, Any]]:
            end = self.last_day()
            if end is None:
                return []
            # day-aligned counts and days, which rollups answer; exact times only for the newest day's events
            since = f"timestamp >= {ts(end - timedelta(days=EVENT_DAYS))}"
            counts = self._rows(
                "SELECT event, count(*) AS events, count(DISTINCT coalesce(user_id, anonymous_id)) AS users "
                f"FROM events WHERE {since} GROUP BY event"
            )
            days = self._rows(
                f"SELECT event, date_trunc('day', timestamp) AS day, count(*) AS n FROM events WHERE {since} "
                "GROUP BY ALL"
            )
            newest = self._rows(
                "SELECT event, max(timestamp) AS last_seen FROM events "
                f"WHERE timestamp >= {ts(end - timedelta(days=1))} GROUP BY event"
            )
            last: dict[str, Any] = {}
            for row in days:
                last[row["event"]] = max(last.get(row["event"], row["day"]), row["day"])
            last.update({row["event"]: row["last_seen"] for row in newest})
            rows = [{**row, "last_seen": last.get(row["event"])} for row in counts]
            rows.sort(key=lambda r: (-r["events"], str(r["event"])))
            return rows

        found: list[dict[str, Any]] = self._cached(("events",), compute)
        return found

    def properties(self, event: str | None) -> dict[str, Any]:
        def compute(_version: tuple[str, ...]) -> dict[str, Any]:
            end = self.last_day()
            if end is None:
                return {"properties": [], "sampled": 0}
            which = f" AND event = {lit(event)}" if event else ""
            # the newest day when it alone fills the sample (big tables: fewer rows to read), else the last 7 days
            window = f"timestamp >= {ts(end - timedelta(days=1))}{which}"
            total = self._rows(f"SELECT count(*) AS n FROM events WHERE {window}")[0]["n"]
            if total < SAMPLE_ROWS:
                window = f"timestamp >= {ts(end - timedelta(days=SAMPLE_DAYS))}{which}"
                total = self._rows(f"SELECT count(*) AS n FROM events WHERE {window}")[0]["n"]
            exposed = {c.lower() for c in self.query.execute("SELECT * FROM events LIMIT 0").columns}
            present = [c for c in PICKER_COLUMNS if c in exposed]  # enrichment columns exist once a stage added them
            columns = "".join(
                f"UNION ALL SELECT {lit(c)}, 'column', count({c}), max(timestamp) FILTER (WHERE {c} IS NOT NULL), "
                f"NULL FROM s\n"
                for c in present
            )
            picked = "".join(f", {c}" for c in present)
            sql = (  # one pass over one sample: the keys of `properties`, the filled columns, the sample's size
                f"WITH s AS MATERIALIZED (SELECT * FROM (SELECT timestamp, properties{picked} "
                f"FROM events WHERE {window}) USING SAMPLE {SAMPLE_ROWS} ROWS),\n"
                "k AS (SELECT key AS property, 'property' AS kind, count(*) AS events, max(timestamp) AS last_seen, "
                "mode(json_type(json_extract(properties, '$.\"' || key || '\"'))) AS type FROM (SELECT timestamp, "
                "properties, unnest(json_keys(properties)) AS key FROM s WHERE properties IS NOT NULL) GROUP BY key)\n"
                "SELECT property, kind, events, last_seen, type FROM k\n"
                f"{columns}UNION ALL SELECT '', 'sampled', count(*), NULL, NULL FROM s"
            )
            rows = self._rows(sql)
            sampled = int(next(r["events"] for r in rows if r["kind"] == "sampled"))
            scale = total / sampled if sampled else 1.0
            out = []
            for r in rows:
                if r["kind"] == "property":
                    out.append(
                        {
                            "property": _property_name(r["property"]),
                            "type": TYPES.get(str(r["type"]), "string"),
                            "events": round(r["events"] * scale),
                            "last_seen": r["last_seen"],
                            "kind": "property",
                        }
                    )
                elif r["kind"] == "column" and r["events"]:
                    kind = "boolean" if r["property"] == "is_bot" else "string"
                    out.append({"property": r["property"], "type": kind, "events": round(r["events"] * scale),
                                "last_seen": r["last_seen"], "kind": "column"})  # fmt: skip
            out.sort(key=lambda p: (-p["events"], p["property"]))
            return {"properties": out, "sampled": sampled}

        found: dict[str, Any] = self._cached(("properties", event), compute)
        return found

    def values(self, name: str, event: str | None, q: str, limit: int) -> list[dict[str, Any]]:
        def compute(version: tuple[str, ...]) -> list[dict[str, Any]]:
            end = self.last_day()
            if end is None:
                return []
            expr = f"CAST({prop(name, self.shreds(version) if self.shreds else {})} AS VARCHAR)"
            cond = [f"timestamp >= {ts(end - timedelta(days=SAMPLE_DAYS))}", f"{expr} IS NOT NULL"]
            cond += [f"event = {lit(event)}"] if event else []
            cond += [f"contains(lower({expr}), {lit(q.lower())})"] if q else []
            sql = (
                f"SELECT {expr} AS value, count(*) AS events FROM events WHERE {' AND '.join(cond)} "
                f"GROUP BY 1 ORDER BY events DESC, value LIMIT {limit}"
            )
            return self._rows(sql)

        found: list[dict[str, Any]] = self._cached(("values", name, event, q, limit), compute)
        return found


def _property_name(key: str) -> str:
    """The name filters and breakdowns take for a key of `properties` (one named like a column gets the prefix)."""
    return f"properties.{key}" if key in COLUMNS else key


def catalog_routes(services: Callable[[], Any]) -> list[Route]:
    catalogs: dict[int, PickerCatalog] = {}

    def catalog() -> PickerCatalog:
        s = services()
        if id(s) not in catalogs:
            catalogs.clear()
            catalogs[id(s)] = PickerCatalog(s.query, s.insights.shreds)
        return catalogs[id(s)]

    def limit_of(request: Request, default: int, high: int) -> int:
        value = request.query_params.get("limit", "")
        if value == "":
            return default
        if not value.isdigit() or not 1 <= int(value) <= high:
            raise QueryError(f"limit: a whole number from 1 to {high}")
        return int(value)

    def endpoint(answer: Callable[[Request, PickerCatalog], Any]) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            s = services()
            try:
                authenticate(request, s.keys, s.users, "view")
                found = await s.query_slots.run(answer, request, catalog())
            except (AuthError, QueryError) as exc:
                return json_response({"success": False, "error": str(exc)}, exc.status)
            return json_response(found)

        return handle

    def events(request: Request, found: PickerCatalog) -> Any:
        q = request.query_params.get("q", "").lower()
        rows = [r for r in found.events() if q in str(r["event"]).lower()]
        return {"events": rows[: limit_of(request, 200, 10_000)]}

    def properties(request: Request, found: PickerCatalog) -> Any:
        q = request.query_params.get("q", "").lower()
        answer = found.properties(request.query_params.get("event") or None)
        return {**answer, "properties": [p for p in answer["properties"] if q in p["property"].lower()]}

    def values(request: Request, found: PickerCatalog) -> Any:
        name = request.query_params.get("property", "")
        if not name or name == "$cohort" or not all(ch.isalnum() or ch in "_$ .:-" for ch in name) or len(name) > 128:
            raise QueryError("property: required, a property or column name")
        event = request.query_params.get("event") or None
        limit = limit_of(request, 50, 1000)
        return {"values": found.values(name, event, request.query_params.get("q", ""), limit)}

    return [
        Route("/api/catalog/events", endpoint(events), methods=["GET"]),
        Route("/api/catalog/properties", endpoint(properties), methods=["GET"]),
        Route("/api/catalog/values", endpoint(values), methods=["GET"]),
    ]
