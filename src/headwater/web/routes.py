"""Serves the single-page app, its assets, and share pages (embeddable in iframes)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


def web_routes() -> list[BaseRoute]:
    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"x-frame-options": "DENY", "cache-control": "no-store"})

    async def share(request: Request) -> Response:
        headers = {"content-security-policy": "frame-ancestors *", "cache-control": "no-store"}
        return FileResponse(STATIC / "index.html", headers=headers)

    return [
        Route("/", index, methods=["GET"]),
        Route("/share/{token}", share, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
