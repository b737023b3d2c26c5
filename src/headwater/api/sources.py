"""HTTP routes for the configured sources (Kafka topics, RabbitMQ queues, file drops): their status.

Each running source writes `<data_dir>/sources/<name>/status.json` about once a second
(`headwater.sources.status`); these routes read it for every source in `settings.sources`:

- `GET /api/sources`: `{"sources": [status, ...]}` in the configured order; a source that is not
  running (or whose status is stale) has `state: "not running"` and only its configuration.
- `GET /api/sources/<name>`: one status; 404 when no source has that name.

Reads need the `view` permission: read and admin keys, and every signed-in user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.principal import Principal, guarded
from headwater.api.responses import error_response, json_response
from headwater.sources.status import read_status


def source_routes(services: Callable[[], Any]) -> list[Route]:
    """Routes reading `services().settings.sources`; auth as every /api read."""

    async def sources(request: Request, s: Any, who: Principal) -> Response:
        return json_response({"sources": [read_status(s.settings, source) for source in s.settings.sources]})

    async def one(request: Request, s: Any, who: Principal) -> Response:
        name = request.path_params["name"]
        for source in s.settings.sources:
            if source.name == name:
                return json_response(read_status(s.settings, source))
        known = ", ".join(source.name for source in s.settings.sources)
        hint = f"configured: {known}" if known else "none is configured; add a [[sources]] table to headwater.toml"
        return error_response(f"no source named {name!r} ({hint})", 404)

    return [
        Route("/api/sources", guarded(services, "view", sources), methods=["GET"]),
        Route("/api/sources/{name}", guarded(services, "view", one), methods=["GET"]),
    ]
