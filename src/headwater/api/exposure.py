"""What the server shows to whom: /metrics access, CORS scoped by path, and security headers.

- `/metrics`: with `metrics_token`, a matching `Authorization: Bearer` from anywhere; without it, only clients on
  this machine (a loopback address, or the server's own address).
- CORS: the collector's paths (and the browser SDK's settings) answer `cors_origins` (default `*`); `/api/*`
  answers only `api_cors_origins` (default none: the app served from this server needs no CORS); nothing else
  answers CORS at all.
- Headers: `nosniff` and a referrer policy on every response the Starlette app sends (pages add their own CSP in
  `web.routes`).
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headwater.api.responses import error_response
from headwater.collector.routes import INGEST_PATHS
from headwater.core.settings import Settings

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"strict-origin-when-cross-origin")]


def metrics_refusal(request: Request, settings: Settings) -> Response | None:
    """None when the caller may read /metrics, else the error response."""
    if settings.metrics_token:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.metrics_token.encode()):
            return None
        return error_response("/metrics: send Authorization: Bearer <metrics_token>", 401)
    client = request.client.host if request.client else ""
    server = request.scope.get("server")
    if _loopback(client) or (server is not None and client == server[0]):
        return None
    return error_response(
        "/metrics answers only this machine: set metrics_token (HEADWATER_METRICS_TOKEN) to scrape it from elsewhere",
        403,
    )


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", maxsplit=1)[0]).is_loopback
    except ValueError:
        return False


def split(origins: str) -> list[str]:
    return [o.strip() for o in origins.split(",") if o.strip()]


class ScopedCors:
    """CORS by path: the collector's origins on collector paths, the API's on `/api/*`, none elsewhere."""

    def __init__(self, app: ASGIApp, collector_origins: list[str], api_origins: list[str]) -> None:
        self.app = app
        self.collector = CORSMiddleware(
            app, allow_origins=collector_origins, allow_methods=["POST", "GET", "OPTIONS"], allow_headers=["*"],
            max_age=86400,
        )  # fmt: skip
        api_methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        api_headers = ["authorization", "content-type", "x-api-key", "x-csrf-token", "last-event-id"]
        self.api = CORSMiddleware(
            app, allow_origins=[o for o in api_origins if o != "*"], allow_methods=api_methods,
            allow_headers=api_headers, max_age=600,
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in INGEST_PATHS or path.startswith("/v1/projects/"):
            await self.collector(scope, receive, send)
        elif path.startswith("/api/"):
            await self.api(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds `nosniff` and a referrer policy to every response (headers a route set itself are kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
