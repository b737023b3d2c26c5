"""JSON responses every API module answers with (kept apart from `app` so route modules can import them)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from headwater.core.errors import QueryError


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload, default=str), status_code=status, media_type="application/json", headers=headers
    )


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response({"success": False, "error": message}, status, headers)


async def json_object(request: Request, shape: str = "expected a JSON object") -> dict[str, Any]:
    """The request's body as a JSON object; a 400 QueryError naming the problem otherwise (`shape`: what to say
    when it is JSON but not an object)."""
    try:
        doc = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise QueryError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise QueryError(f"body: {shape}")
    return doc
