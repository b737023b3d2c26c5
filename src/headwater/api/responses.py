"""JSON responses every API module answers with (kept apart from `app` so route modules can import them)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload, default=str), status_code=status, media_type="application/json", headers=headers
    )


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response({"success": False, "error": message}, status, headers)
