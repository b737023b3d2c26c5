"""Serves the single-page app, its assets, and share pages (embeddable in iframes)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


# No inline script anywhere (scripts are files under /static); styles may be set inline by the app and ECharts.
_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
)
APP_POLICY = _POLICY + "frame-ancestors 'none'"
SHARE_POLICY = _POLICY + "frame-ancestors *"  # share links are meant to be embedded in other sites


def web_routes() -> list[BaseRoute]:
    async def index(request: Request) -> Response:
        headers = {"content-security-policy": APP_POLICY, "x-frame-options": "DENY", "cache-control": "no-store"}
        return FileResponse(STATIC / "index.html", headers=headers)

    async def share(request: Request) -> Response:
        """A shared dashboard or insight, embeddable in other sites' iframes."""
        headers = {"content-security-policy": SHARE_POLICY, "cache-control": "no-store"}
        return FileResponse(STATIC / "index.html", headers=headers)

    return [
        Route("/", index, methods=["GET"]),
        Route("/share/{token}", share, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
