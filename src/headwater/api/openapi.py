"""The OpenAPI 3.1 document of every HTTP route, served at /openapi.json.

Built from the app's own routing table at request time, so a new route is documented (with its path parameters,
methods, security and the shared error shape) the moment it is registered; ingest paths are described from
`INGEST_PATHS`. Request bodies of the main operations are described field by field (api/openapi_schemas.py, from
the pydantic models where there are some); other bodies as JSON objects. Each handler still validates its own fields
and answers a 400 naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from headwater import __version__
from headwater.api.openapi_schemas import BODIES, RESPONSES, ingest_schema, model_schemas, segment_schemas
from headwater.api.principal import CSRF_HEADER, SESSION_COOKIE
from headwater.api.responses import json_response
from headwater.collector.routes import INGEST_PATHS

ERROR = {"$ref": "#/components/schemas/Error"}
BODY_METHODS = frozenset({"post", "put", "patch"})
STREAMS = frozenset({"/api/live/stream"})  # server-sent events: the response never ends on its own
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/api/login", "/metrics"})
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerKey": {"type": "http", "scheme": "bearer", "description": "An API key as a Bearer token."},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "An API key."},
    "basicKey": {"type": "http", "scheme": "basic", "description": "An API key as the Basic user (Segment SDKs)."},
    "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE, "description": "A signed-in web user."},
    "csrf": {
        "type": "apiKey",
        "in": "header",
        "name": CSRF_HEADER,
        "description": "Sent with the session cookie on every non-GET request (returned at sign-in).",
    },
}
KEY_SECURITY: list[dict[str, list[str]]] = [{"bearerKey": []}, {"apiKeyHeader": []}, {"basicKey": []}]
SESSION_SECURITY: list[dict[str, list[str]]] = [{"session": []}, {"session": [], "csrf": []}]
ERROR_STATUSES = {
    "400": "The request is malformed; the error names the field.",
    "401": "No valid API key or session.",
    "403": "The caller may not do this.",
    "404": "Not found.",
    "405": "Method not allowed.",
    "409": "Conflicts with the current state.",
    "413": "Body too large.",
    "429": "Too many requests; see Retry-After.",
    "503": "Busy or under back-pressure; see Retry-After.",
}


def _walk(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, list[str], str]]:
    """(path, lower-case methods, summary) of every endpoint, mounts included."""
    found: list[tuple[str, list[str], str]] = []
    for route in routes:
        if isinstance(route, Route):
            methods = sorted(m.lower() for m in (route.methods or {"GET"}) if m != "HEAD")
            doc = (getattr(route.endpoint, "__doc__", None) or route.name or "").strip().splitlines()
            found.append((prefix + route.path, methods, doc[0] if doc else route.name))
        elif isinstance(route, Mount):
            sub = getattr(route, "routes", None) or []
            if sub:
                found += _walk(list(sub), prefix + route.path)
            else:
                found.append((prefix + route.path + "/{path}", ["get"], f"Files under {route.path or '/'}"))
    return found


def _plain(path: str) -> str:
    """The path without Starlette converters: /a/{key:path} -> /a/{key} (OpenAPI has no converters)."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _parameters(path: str) -> list[dict[str, Any]]:
    params = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            name, _, kind = part[1:-1].partition(":")
            schema = {"type": "integer"} if kind == "int" else {"type": "string"}
            params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def _operation(path: str, method: str, summary: str) -> dict[str, Any]:
    """The operation `method` on `path` (Starlette form, converters kept so {id:int} becomes an integer)."""
    params = _parameters(path)
    path = _plain(path)
    op: dict[str, Any] = {"summary": summary, "operationId": f"{method}_{path}", "parameters": params}
    body = BODIES.get((method, path))
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    elif method in BODY_METHODS:
        op["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
        }
    status, schema = RESPONSES.get((method, path), ("200", {}))
    ok = {"description": "Success.", "content": {"application/json": {"schema": schema}}}
    if path in STREAMS:
        ok = {"description": "Server-sent events (text/event-stream).", "content": {"text/event-stream": {}}}
    op["responses"] = {status: ok} | {
        code: {"description": text, "content": {"application/json": {"schema": ERROR}}}
        for code, text in ERROR_STATUSES.items()
    }
    if path in PUBLIC_PATHS or not path.startswith("/api/"):
        op["security"] = [{}]
    return op


def _ingest(path: str, kind: str) -> dict[str, Any]:
    body = ingest_schema(kind)
    return {
        "post": {
            "summary": f"Send {kind} event(s)",
            "operationId": f"post_{path}",
            "tags": ["ingest"],
            "security": [*KEY_SECURITY, {}],
            "requestBody": {
                "required": True,
                "description": "JSON (or text/plain JSON with writeKey in the body).",
                "content": {"application/json": {"schema": body}, "text/plain": {"schema": {"type": "string"}}},
            },
            "responses": {
                "200": {"description": "Accepted.", "content": {"application/json": {"schema": {}}}},
                **{
                    code: {"description": ERROR_STATUSES[code], "content": {"application/json": {"schema": ERROR}}}
                    for code in ("400", "401", "403", "413", "429", "503")
                },
            },
        }
    }


def build_document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` plus the ingest paths."""
    paths: dict[str, dict[str, Any]] = {}
    for raw, methods, summary in _walk(routes):
        item = paths.setdefault(_plain(raw), {})
        for method in methods:
            item.setdefault(method, _operation(raw, method, summary))
    for path, kind in INGEST_PATHS.items():
        paths.setdefault(path, {}).update(_ingest(path, kind))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Headwater", "version": __version__},
        "paths": dict(sorted(paths.items())),
        "security": KEY_SECURITY + SESSION_SECURITY,
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"success": {"const": False}, "error": {"type": "string"}},
                },
                **model_schemas(),
                **segment_schemas(),
            },
        },
    }


def openapi_routes(all_routes: Callable[[], list[BaseRoute]]) -> list[BaseRoute]:
    """The /openapi.json route; `all_routes()` gives every route of the app."""
    cache: dict[str, Any] = {}

    async def openapi(_request: Request) -> Response:
        """The OpenAPI document of this server."""
        if "doc" not in cache:
            cache["doc"] = build_document(all_routes())
        return json_response(cache["doc"])

    return [Route("/openapi.json", openapi, methods=["GET"])]
