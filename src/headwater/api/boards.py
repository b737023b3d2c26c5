"""HTTP routes for saved insights, dashboards and share links."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.principal import Principal, authenticate
from headwater.boards.render import run_dashboard
from headwater.core.errors import AuthError, QueryError

Handler = Callable[[Request, Principal], Awaitable[Any]]


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload, default=str), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


async def _body(request: Request) -> dict[str, Any]:
    try:
        doc = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise QueryError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise QueryError("body: expected a JSON object")
    return doc


def _int(request: Request, name: str) -> int:
    value = request.path_params[name]
    if not str(value).isdigit():
        raise QueryError(f"{name}: expected a number", 404)
    return int(value)


def board_routes(services: Callable[[], Any]) -> list[Route]:
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
        return s.boards.save_dashboard(name, doc, who.name)

    async def dashboard(request: Request, who: Principal) -> Any:
        s = services()
        dashboard_id = _int(request, "id")
        if request.method == "GET":
            return await run_in_threadpool(run_dashboard, s.boards, s.insights, dashboard_id)
        if request.method == "DELETE":
            s.boards.delete_dashboard(dashboard_id)
            return {"success": True}
        doc = await _body(request)
        name = str(doc.pop("name", ""))
        return s.boards.save_dashboard(name, doc, who.name, dashboard_id)

    async def shares(request: Request, who: Principal) -> Any:
        s = services()
        dashboard_id = _int(request, "id")
        if request.method == "GET":
            return s.boards.shares(dashboard_id)
        token = s.boards.share(dashboard_id, who.name)
        return {"token": token, "url": f"/share/{token}", "api": f"/api/shared/{token}"}

    async def revoke(request: Request, who: Principal) -> Any:
        services().boards.revoke_share(_int(request, "id"), request.path_params["prefix"])
        return {"success": True}

    async def shared(request: Request) -> Response:
        """A dashboard through its share link: no sign-in, read-only, embeddable in an iframe."""
        s = services()
        dashboard_id = s.boards.shared_dashboard(request.path_params["token"])
        if dashboard_id is None:
            return _json({"success": False, "error": "this share link does not exist or was revoked"}, 404)
        board = await run_in_threadpool(run_dashboard, s.boards, s.insights, dashboard_id)
        for tile in board["tiles"]:
            tile.pop("sql", None)  # viewers of a link see results, not the queries
        return _json(board, headers={"content-security-policy": "frame-ancestors *", "cache-control": "no-store"})

    async def shared_live(request: Request) -> Response:
        """The newest events of one live tile of a shared dashboard (what the tile shows, nothing more)."""
        s = services()
        dashboard_id = s.boards.shared_dashboard(request.path_params["token"])
        index = request.path_params["tile"]
        if dashboard_id is None or not str(index).isdigit():
            return _json({"success": False, "error": "this share link does not exist or was revoked"}, 404)
        tiles = s.boards.dashboard(dashboard_id)["tiles"]
        if int(index) >= len(tiles) or not tiles[int(index)].get("live"):
            return _json({"success": False, "error": f"tile {index} is not a live tile"}, 404)
        live = tiles[int(index)]["live"]
        page = await run_in_threadpool(s.live.read, None, live["limit"], live["event"], None, None, False)
        keep = ("received_at", "event", "user_id", "anonymous_id", "properties")
        rows = [{k: row.get(k) for k in keep} for row in page["events"]]
        return _json({"events": rows}, headers={"cache-control": "no-store"})

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
