"""HTTP routes for saved insights, dashboards and share links.

Processor tiles (`{"live": {"stream"}}`, `{"state": {"table", ...}}`) are checked when a board is
saved: the stream must be one a processor writes, the state table one a processor serves (400
naming the field otherwise; what the saved board already showed stays accepted). A share link
gives their data only as the tiles show it: `GET /api/shared/<token>` carries each processor
tile's rows, and `GET /api/shared/<token>/live/<tile>` the newest records of a live tile (events
or its stream).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.audit import record
from headwater.api.principal import Principal, authenticate
from headwater.api.processors import NotFound, ProcessorRegistry
from headwater.api.responses import json_object
from headwater.boards.render import ProcessorData, run_dashboard, stream_rows
from headwater.boards.store import BoardRange, ProcessorOutputs, validation_errors
from headwater.core.errors import AuthError, LogError, QueryError
from headwater.live.tail import LiveTail

Handler = Callable[[Request, Principal], Awaitable[Any]]


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload, default=str), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


async def _body(request: Request) -> dict[str, Any]:
    return await json_object(request)


def _overrides(request: Request) -> dict[str, Any] | None:
    """`?last_days=7`, `?date_from=..&date_to=..`, `?filters=<JSON list>`: the board's range and filters
    replaced for one run (a viewer may explore; saving needs the analyze permission)."""
    params = request.query_params
    given: dict[str, Any] = {}
    if params.get("last_days"):
        given["last_days"] = params["last_days"]
    if params.get("date_from") or params.get("date_to"):
        given.update(date_from=params.get("date_from"), date_to=params.get("date_to"))
    if params.get("filters"):
        try:
            given["filters"] = orjson.loads(params["filters"])
        except orjson.JSONDecodeError:
            raise QueryError("filters: expected a JSON list of filters") from None
    if not given:
        return None
    try:
        parsed = BoardRange.model_validate(given)
    except ValidationError as exc:
        raise QueryError(validation_errors(exc)) from None
    chosen = parsed.model_dump(mode="json", include=set(given))
    if "date_from" in given:
        chosen["last_days"] = None
    return chosen


def _int(request: Request, name: str) -> int:
    value = request.path_params[name]
    if not str(value).isdigit():
        raise QueryError(f"{name}: expected a number", 404)
    return int(value)


class ProcessorReads(ProcessorData):
    """Processor tiles' data from the state tables the registry finds and the streams the live tail reads."""

    def __init__(self, registry: ProcessorRegistry, live: LiveTail) -> None:
        self.registry = registry
        self.live = live

    def state_rows(self, table: str, prefix: str, limit: int) -> list[dict[str, Any]]:
        try:
            rows: list[dict[str, Any]] = self.registry.scan(table, prefix, None, limit)["rows"]
        except NotFound as exc:
            raise QueryError(str(exc), 404) from None
        return rows

    def stream_rows(self, stream: str, limit: int) -> list[dict[str, Any]]:
        try:
            rows: list[dict[str, Any]] = self.live.read(None, limit, None, None, None, True, stream)["events"]
        except ValueError as exc:  # no processor writes it (any more)
            raise QueryError(str(exc), 404) from None
        except LogError as exc:
            raise QueryError(f"event log unavailable: {exc}", 503) from None
        return rows

    def outputs(self) -> ProcessorOutputs:
        """What processor tiles may name now."""
        tables = {
            str(table)
            for manifest in self.registry.manifests().values()
            for table in (manifest.get("outputs") or {}).get("state_tables") or []
        }
        return ProcessorOutputs(streams=self.registry.streams(), state_tables=tables)


def board_routes(services: Callable[[], Any]) -> list[Route]:
    def reads() -> ProcessorReads:
        s = services()
        return ProcessorReads(s.processors, s.live)

    def run(dashboard_id: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        s = services()
        return run_dashboard(s.boards, s.insights, dashboard_id, reads(), overrides)

    def guarded(handler: Handler, write_permission: str = "analyze") -> Callable[[Request], Awaitable[Response]]:
        """Reads need `view`; changes need `write_permission`. Errors become JSON with their status."""

        async def endpoint(request: Request) -> Response:
            s = services()
            permission = "view" if request.method == "GET" else write_permission
            try:
                principal = authenticate(request, s.keys, s.users, permission)
                result = await handler(request, principal)
            except (AuthError, QueryError) as exc:
                return _json({"success": False, "error": str(exc)}, exc.status)
            return result if isinstance(result, Response) else _json(result, 201 if request.method == "POST" else 200)

        return endpoint

    async def saved_insights(request: Request, who: Principal) -> Any:
        s = services()
        if request.method == "GET":
            return s.boards.insights()
        doc = await _body(request)
        return s.boards.save_insight(str(doc.get("name", "")), doc.get("query") or {}, who.name)

    async def saved_insight(request: Request, who: Principal) -> Any:
        s = services()
        insight_id = _int(request, "id")
        if request.method == "GET":
            return s.boards.insight(insight_id)
        if request.method == "DELETE":
            s.boards.delete_insight(insight_id)
            return {"success": True}
        doc = await _body(request)
        return s.boards.save_insight(str(doc.get("name", "")), doc.get("query") or {}, who.name, insight_id)

    async def dashboards(request: Request, who: Principal) -> Any:
        s = services()
        if request.method == "GET":
            return s.boards.dashboards()
        doc = await _body(request)
        name = str(doc.pop("name", ""))
        return s.boards.save_dashboard(name, doc, who.name, outputs=reads().outputs())

    async def dashboard(request: Request, who: Principal) -> Any:
        s = services()
        dashboard_id = _int(request, "id")
        if request.method == "GET":
            if request.query_params.get("run") in ("0", "false"):
                return s.boards.dashboard(dashboard_id)  # the saved board alone, quick (e.g. to add a tile)
            overrides = _overrides(request)
            return await s.query_slots.run(run, dashboard_id, overrides)  # QueryBusy -> 429 (the app's handler)
        if request.method == "DELETE":
            s.boards.delete_dashboard(dashboard_id)
            return {"success": True}
        doc = await _body(request)
        name = str(doc.pop("name", ""))
        return s.boards.save_dashboard(name, doc, who.name, dashboard_id, reads().outputs())

    async def shares(request: Request, who: Principal) -> Any:
        s = services()
        dashboard_id = _int(request, "id")
        if request.method == "GET":
            return s.boards.shares(dashboard_id)
        token = s.boards.share(dashboard_id, who.name)
        await record(s.audit, request, who, "share.created", f"dashboard:{dashboard_id}", {"prefix": token[:8]})
        return {"token": token, "url": f"/share/{token}", "api": f"/api/shared/{token}"}

    async def revoke(request: Request, who: Principal) -> Any:
        s = services()
        dashboard_id, prefix = _int(request, "id"), request.path_params["prefix"]
        s.boards.revoke_share(dashboard_id, prefix)
        await record(s.audit, request, who, "share.revoked", f"dashboard:{dashboard_id}", {"prefix": prefix})
        return {"success": True}

    async def shared(request: Request) -> Response:
        """A dashboard through its share link: no sign-in, read-only, embeddable in an iframe."""
        s = services()
        dashboard_id = s.boards.shared_dashboard(request.path_params["token"])
        if dashboard_id is None:
            return _json({"success": False, "error": "this share link does not exist or was revoked"}, 404)
        board = await s.query_slots.run(run, dashboard_id)
        for tile in board["tiles"]:
            tile.pop("sql", None)  # viewers of a link see results, not the queries
        return _json(board, headers={"content-security-policy": "frame-ancestors *", "cache-control": "no-store"})

    async def shared_live(request: Request) -> Response:
        """The newest records of one live tile of a shared dashboard (what the tile shows, nothing more):
        `{"events": [...]}`, events with a few fields, or a stream's records `{"key", "value", "time"}`."""
        s = services()
        dashboard_id = s.boards.shared_dashboard(request.path_params["token"])
        index = request.path_params["tile"]
        if dashboard_id is None or not str(index).isdigit():
            return _json({"success": False, "error": "this share link does not exist or was revoked"}, 404)
        tiles = s.boards.dashboard(dashboard_id)["tiles"]
        if int(index) >= len(tiles) or not tiles[int(index)].get("live"):
            return _json({"success": False, "error": f"tile {index} is not a live tile"}, 404)
        live = tiles[int(index)]["live"]
        headers = {"cache-control": "no-store"}
        if live.get("stream"):
            try:
                rows = await run_in_threadpool(stream_rows, reads(), live["stream"], live["limit"])
            except QueryError as exc:
                return _json({"success": False, "error": str(exc)}, exc.status, headers)
            return _json({"events": rows}, headers=headers)
        page = await run_in_threadpool(s.live.read, None, live["limit"], live["event"], None, None, False)
        keep = ("received_at", "event", "user_id", "anonymous_id", "properties")
        rows = [{k: row.get(k) for k in keep} for row in page["events"]]
        return _json({"events": rows}, headers=headers)

    return [
        Route("/api/shared/{token}/live/{tile}", shared_live, methods=["GET"]),
        Route("/api/saved-insights", guarded(saved_insights), methods=["GET", "POST"]),
        Route("/api/saved-insights/{id}", guarded(saved_insight), methods=["GET", "PUT", "DELETE"]),
        Route("/api/dashboards", guarded(dashboards), methods=["GET", "POST"]),
        Route("/api/dashboards/{id}", guarded(dashboard), methods=["GET", "PUT", "DELETE"]),
        Route("/api/dashboards/{id}/shares", guarded(shares), methods=["GET", "POST"]),
        Route("/api/dashboards/{id}/shares/{prefix}", guarded(revoke), methods=["DELETE"]),
        Route("/api/shared/{token}", shared, methods=["GET"]),
    ]
