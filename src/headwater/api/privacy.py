"""HTTP routes for privacy deletions (admins only; the `manage` permission).

- `POST /api/privacy/deletions` `{"user_ids": [...], "anonymous_ids": [...], "suppress_days": N}` answers 202
  at once with the request's id; the privacy worker (`headwater up` runs it) carries it out.
- `GET /api/privacy/deletions/<id>`: state, step, rows removed per table, completion time.
- `GET /api/privacy/deletions`: the newest requests (never their ids: a request shows counts only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.principal import Principal, guarded
from headwater.api.responses import error_response, json_response
from headwater.core.erasure import hash_id
from headwater.privacy.requests import check_days, validate_ids


def privacy_routes(services: Callable[[], Any]) -> list[Route]:
    """`services()` gives the opened Services (with `deletions`, `audit` and `suppressor`)."""

    async def create(request: Request, s: Any, who: Principal) -> Response:
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error_response(f"body is not valid JSON: {exc}", 400)
        try:
            user_ids, anonymous_ids = validate_ids(doc)
            days = check_days(doc.get("suppress_days", 0))
        except ValueError as exc:
            return error_response(str(exc), 400)
        address = request.client.host if request.client else ""

        def store() -> Any:
            created = s.deletions.create(user_ids, anonymous_ids, who.name, address, float(days))
            salt = s.suppressor.salt
            s.audit.record(
                who.name, "privacy.deletion_requested", target=created.id, address=address, actor_kind=who.kind,
                details={"ids_hashed": sorted(hash_id(i, salt) for i in {*user_ids, *anonymous_ids}),
                         "suppress_days": days},
            )  # fmt: skip
            return created

        created = await run_in_threadpool(store)
        body = created.public()
        body["url"] = f"/api/privacy/deletions/{created.id}"
        return json_response(body, 202, headers={"location": body["url"]})

    async def one(request: Request, s: Any, who: Principal) -> Response:
        found = await run_in_threadpool(s.deletions.get, request.path_params["id"])
        if found is None:
            return error_response(f"no deletion request {request.path_params['id']!r}", 404)
        return json_response(found.public())

    async def listing(request: Request, s: Any, who: Principal) -> Response:
        found = await run_in_threadpool(s.deletions.list, 100)
        return json_response({"deletions": [d.public() for d in found]})

    async def collection(request: Request, s: Any, who: Principal) -> Response:
        return await (create if request.method == "POST" else listing)(request, s, who)

    return [
        Route("/api/privacy/deletions", guarded(services, "manage", collection), methods=["GET", "POST"]),
        Route("/api/privacy/deletions/{id}", guarded(services, "manage", one), methods=["GET"]),
    ]
