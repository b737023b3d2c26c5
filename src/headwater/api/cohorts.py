"""HTTP routes for saved cohorts (`headwater.cohorts`): `view` to read, `analyze` to change; changes are audited
(`cohort.created`, `cohort.updated`, `cohort.deleted`).

- `GET /api/cohorts` the saved cohorts (`?sizes=true`: each with its current `size`); `POST` creates one.
- `GET|PUT|DELETE /api/cohorts/{id}`; GET adds the members SQL (`sql`).
- `POST /api/cohorts/preview` a definition (name optional) -> `{"size", "sql"}`, nothing saved.
- `GET /api/cohorts/{id}/sizes?days=30&interval=day` -> `{"points": [[iso, size]], "sql"}`: the size as of the end
  of each interval (see `headwater.cohorts.sizes`).
- `GET /api/cohorts/{id}/members?limit=100` -> `{"members": [...], "size", "truncated", "sql"}`.

People are persons (identity stitching) or raw ids as insights count them: `?count_by=persons|ids`, default as the
`identity_stitching` setting says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.audit import record
from headwater.api.principal import Principal, authenticate
from headwater.api.responses import json_object, json_response
from headwater.cohorts.sizes import size_points, sizes_sql
from headwater.cohorts.spec import CohortError, parse_definition
from headwater.cohorts.sql import members_sql
from headwater.core.errors import AuthError, QueryError

Handler = Callable[[Request, Any, Principal], Awaitable[Any]]
MAX_MEMBERS = 10_000


def _int(value: str, name: str, default: int, low: int, high: int) -> int:
    if value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise CohortError(f"{name}: a whole number from {low} to {high}")
    return int(value)


async def _body(request: Request) -> dict[str, Any]:
    return await json_object(request, 'expected a JSON object, e.g. {"name": ..., "conditions": [...]}')


def cohort_routes(services: Callable[[], Any]) -> list[Route]:
    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Reads need `view`; changes (and previews, which run queries on a caller's definition) `analyze`."""

        async def endpoint(request: Request) -> Response:
            s = services()
            permission = "view" if request.method == "GET" else "analyze"
            try:
                who = authenticate(request, s.keys, s.users, permission)
                result = await handler(request, s, who)
            except (AuthError, QueryError) as exc:
                return json_response({"success": False, "error": str(exc)}, exc.status)
            status = 201 if request.method == "POST" and not request.url.path.endswith("/preview") else 200
            return result if isinstance(result, Response) else json_response(result, status)

        return endpoint

    def actor(request: Request, s: Any) -> str:
        count_by = request.query_params.get("count_by") or ("persons" if s.settings.identity_stitching else "ids")
        if count_by not in ("persons", "ids"):
            raise CohortError("count_by: persons or ids")
        return "person_id" if count_by == "persons" else "coalesce(user_id, anonymous_id)"

    def cohort_id(request: Request) -> int:
        value = str(request.path_params["id"])
        if not value.isdigit():
            raise CohortError(f"no cohort {value}", 404)
        return int(value)

    async def shreds(s: Any) -> Any:
        """The shredded property columns queries can read now (members SQL reads them rather than the JSON)."""
        return await run_in_threadpool(lambda: s.insights.shreds(s.query.data_version()))

    async def count(s: Any, sql: str) -> int:
        result = await s.query_slots.run(s.query.execute, f"SELECT count(*) AS size FROM ({sql})", 1)
        return int(result.rows[0][0])

    async def listing(request: Request, s: Any, who: Principal) -> Any:
        if request.method == "POST":
            saved = await run_in_threadpool(s.cohorts.save, await _body(request), who.name)
            await record(s.audit, request, who, "cohort.created", f"cohort:{saved['id']}", {"name": saved["name"]})
            return saved
        rows: list[dict[str, Any]] = await run_in_threadpool(s.cohorts.all)
        if request.query_params.get("sizes", "").lower() in ("1", "true") and rows:
            who_counts, shred = actor(request, s), await shreds(s)
            parts = [
                f"SELECT {row['id']} AS id, "
                f"(SELECT count(*) FROM ({s.cohorts.members_sql(row['id'], who_counts, None, shred)})) AS size"
                for row in rows
            ]
            result = await s.query_slots.run(s.query.execute, "\nUNION ALL ".join(parts), len(rows))
            sizes = {r[0]: r[1] for r in result.rows}
            for row in rows:
                row["size"] = sizes.get(row["id"])
        return rows

    async def one(request: Request, s: Any, who: Principal) -> Any:
        found = cohort_id(request)
        if request.method == "GET":
            row: dict[str, Any] = await run_in_threadpool(s.cohorts.get, found)
            return {**row, "sql": s.cohorts.members_sql(found, actor(request, s), None, await shreds(s))}
        if request.method == "DELETE":
            await run_in_threadpool(s.cohorts.delete, found)
            await record(s.audit, request, who, "cohort.deleted", f"cohort:{found}")
            return {"success": True}
        saved = await run_in_threadpool(s.cohorts.save, await _body(request), who.name, found)
        await record(s.audit, request, who, "cohort.updated", f"cohort:{found}", {"name": saved["name"]})
        return saved

    async def preview(request: Request, s: Any, who: Principal) -> Any:
        doc = await _body(request)
        definition = parse_definition({"name": "preview", **doc} if not doc.get("name") else doc)
        sql = members_sql(definition, actor(request, s), None, s.cohorts.definition, await shreds(s))
        return {"size": await count(s, sql), "sql": sql}

    async def sizes(request: Request, s: Any, who: Principal) -> Any:
        found = cohort_id(request)
        params = request.query_params
        points = size_points(_int(params.get("days", ""), "days", 30, 1, 3650), params.get("interval") or "day")
        definition = await run_in_threadpool(s.cohorts.definition, found)
        sql = sizes_sql(definition, actor(request, s), points, s.cohorts.definition, await shreds(s))
        result = await s.query_slots.run(s.query.execute, sql, len(points))
        return {"points": [[at.isoformat(), size] for at, size in result.rows], "sql": sql}

    async def members(request: Request, s: Any, who: Principal) -> Any:
        found = cohort_id(request)
        limit = _int(request.query_params.get("limit", ""), "limit", 100, 1, MAX_MEMBERS)
        sql = await run_in_threadpool(s.cohorts.members_sql, found, actor(request, s), None, await shreds(s))
        listed = await s.query_slots.run(s.query.execute, f"SELECT member FROM ({sql}) ORDER BY member", limit)
        size = await count(s, sql)
        return {"members": [r[0] for r in listed.rows], "size": size, "truncated": listed.truncated, "sql": sql}

    return [
        Route("/api/cohorts", guarded(listing), methods=["GET", "POST"]),
        Route("/api/cohorts/preview", guarded(preview), methods=["POST"]),
        Route("/api/cohorts/{id}", guarded(one), methods=["GET", "PUT", "DELETE"]),
        Route("/api/cohorts/{id}/sizes", guarded(sizes), methods=["GET"]),
        Route("/api/cohorts/{id}/members", guarded(members), methods=["GET"]),
    ]
