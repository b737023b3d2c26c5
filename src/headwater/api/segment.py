"""Segment analytics-next's settings endpoint: `GET /v1/projects/{writeKey}/settings`.

Segment's browser SDK (`@segment/analytics-next`) first fetches `<cdnURL>/v1/projects/<writeKey>/settings`,
then sends each call to `<protocol>://<apiHost>/<t|p|i|g|a|s>` (or `/b` when batching) as a `text/plain` JSON
body carrying `writeKey`, with the key also as the HTTP Basic user. Loading the SDK with
`cdnURL: "https://headwater.example.com"` makes it talk to Headwater only: this answer points `apiHost` at the
host the settings were fetched from, turns off the SDK's own telemetry (`metrics.sampleRate: 0`) and lists no
device-mode destinations, remote plugins or middleware, so nothing is loaded from Segment's CDN.

The write key is public in a web page; the answer holds nothing but the key itself and this server's address.
An unknown or revoked key, or one that cannot send events, is a 404 (as Segment's CDN answers). The collector's
`cors_origins` apply (the CORS middleware of the app): `*` by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.responses import error_response, json_response
from headwater.core.errors import AuthError

SETTINGS_PATH = "/v1/projects/{writeKey}/settings"
CACHE_SECONDS = 60  # a revoked key stops loading the SDK within this; sending is refused at once


def sdk_settings(write_key: str, api_host: str, protocol: str) -> dict[str, Any]:
    """The CDN settings document analytics-next reads (its `CDNSettings` type), for one write key."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},  # the SDK's telemetry would go to <apiHost>/m
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
        "consentSettings": {"allCategories": [], "hasUnmappedDestinations": False},
        "autoInstrumentationSettings": {"sampleRate": 0},
    }


def public_origin(request: Request, trust_forwarded: bool) -> tuple[str, str]:
    """(protocol, host[:port]) the client reached this server at; behind a trusted proxy, its X-Forwarded-*."""
    protocol = request.url.scheme
    host = request.headers.get("host") or request.url.netloc
    if trust_forwarded:
        forwarded_proto = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
        if forwarded_proto in ("http", "https"):
            protocol = forwarded_proto
        forwarded_host = request.headers.get("x-forwarded-host", "").split(",")[-1].strip()
        if forwarded_host:
            host = forwarded_host
    return ("https" if protocol in ("https", "wss") else "http"), host


def segment_routes(services: Callable[[], Any]) -> list[BaseRoute]:
    """GET /v1/projects/{writeKey}/settings (no other authentication: the key is in the path)."""

    async def settings(request: Request) -> Response:
        s = services()
        key = request.path_params["writeKey"]
        try:
            found = await run_in_threadpool(s.keys.lookup, key)
        except AuthError as exc:  # the accounts database is down: retryable
            return error_response(str(exc), exc.status)
        if found is None or not found.can_write():
            return error_response("no such write key: create one with `headwater keys create NAME --role write`", 404)
        protocol, host = public_origin(request, s.settings.collector_trust_forwarded)
        api_host = host + request.scope.get("root_path", "").rstrip("/") + "/v1"
        return json_response(
            sdk_settings(key, api_host, protocol), 200, {"cache-control": f"public, max-age={CACHE_SECONDS}"}
        )

    return [Route(SETTINGS_PATH, settings, methods=["GET"])]
