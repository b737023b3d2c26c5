"""Starlette routes of the collector."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.auth.keys import KeyStore
from headwater.collector.parsing import BatchParser, Limits, ParsedBatch, decompress, peek_write_key
from headwater.core import metrics
from headwater.core.errors import AuthError, BackPressureError, CollectorError
from headwater.core.events import SEGMENT_TYPES
from headwater.log.base import Producer


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response({"success": False, "error": message}, status, headers)


def request_key(request: Request) -> str | None:
    """The key from x-api-key, HTTP Basic user (Segment SDKs) or a Bearer token."""
    headers = request.headers
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            user = base64.b64decode(value.strip(), validate=False).decode("utf-8", "replace")
        except ValueError:
            return None
        return user.split(":", 1)[0] or None
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return None


class Collector:
    """Holds what the routes need: producer, keys, limits and the back-pressure state."""

    def __init__(self, producer: Producer, keys: KeyStore, limits: Limits) -> None:
        self.producer = producer
        self.keys = keys
        self.limits = limits
        self.overload: tuple[str, int] | None = None  # (reason, retry-after seconds)

    async def read_body(self, request: Request) -> bytes:
        limit = self.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise CollectorError(f"body is {declared} bytes; the limit is {limit}: send smaller batches", 413)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise CollectorError(f"body is over the {limit}-byte limit: send smaller batches", 413)
            chunks.append(chunk)
        body = decompress(b"".join(chunks), request.headers.get("content-encoding"), limit)
        metrics.REQUEST_BYTES.inc(len(body))
        return body

    async def handle(self, request: Request, endpoint: str) -> Response:
        route = "/track" if endpoint == "track-raw" else f"/v1/{endpoint}"
        try:
            response = await self._handle(request, endpoint)
        except AuthError as exc:
            response = error_response(str(exc), exc.status)
        except CollectorError as exc:
            response = error_response(str(exc), exc.status)
        except BackPressureError as exc:
            metrics.BACKPRESSURE.labels(str(exc).split(":")[0]).inc()
            response = error_response(str(exc), 503, {"Retry-After": str(exc.retry_after)})
        metrics.REQUESTS.labels(route, str(response.status_code)).inc()
        return response

    async def _handle(self, request: Request, endpoint: str) -> Response:
        key = request_key(request)
        if key is not None:  # fail fast before reading a body we would refuse
            self.keys.require(key, write=True)
        if self.overload is not None:
            reason, retry = self.overload
            raise BackPressureError(reason, retry)
        body = await self.read_body(request)
        now_ms = int(time.time() * 1000)
        if key is None and endpoint != "track-raw":
            key = peek_write_key(body)
        source = self.keys.require(key, write=True).name
        parser = BatchParser(self.limits, source, now_ms)
        if endpoint == "track-raw":
            parsed = parser.parse_track(body)
        else:
            parsed = parser.parse_segment(body, endpoint)
        return await self._append(parsed, "track" if endpoint == "track-raw" else endpoint)

    async def _append(self, parsed: ParsedBatch, label: str) -> Response:
        records = parsed.records + parsed.quarantine
        idem = parsed.idempotency + [None] * len(parsed.quarantine)
        duplicates = 0
        if records:
            started = time.perf_counter()
            result = await asyncio.wrap_future(self.producer.append(records, idem))
            metrics.APPEND_SECONDS.observe(time.perf_counter() - started)
            duplicates = len(result.duplicates)
        accepted = parsed.valid
        metrics.EVENTS_ACCEPTED.labels(label).inc(accepted - duplicates)
        if duplicates:
            metrics.EVENTS_DUPLICATE.inc(duplicates)
        if parsed.rejected:
            metrics.EVENTS_REJECTED.labels(label).inc(len(parsed.rejected))
        payload: dict[str, Any] = {
            "success": accepted > 0 or not parsed.rejected,
            "accepted": accepted,
        }
        if duplicates:
            payload["duplicates"] = duplicates
        if parsed.rejected:
            payload["rejected"] = parsed.rejected
            payload["quarantined"] = len(parsed.rejected)
        status = 200 if accepted > 0 or not parsed.rejected else 400
        if status == 400:
            payload["error"] = f"no valid events: {len(parsed.rejected)} rejected (see `rejected`; kept in quarantine)"
        return json_response(payload, status)


def collector_routes(collector: Collector) -> list[Route]:
    async def track(request: Request) -> Response:
        return await collector.handle(request, "track-raw")

    def segment(endpoint: str) -> Any:
        async def handler(request: Request) -> Response:
            return await collector.handle(request, endpoint)

        return handler

    routes = [Route("/track", track, methods=["POST"])]
    for endpoint in (*SEGMENT_TYPES, "batch"):
        routes.append(Route(f"/v1/{endpoint}", segment(endpoint), methods=["POST"]))
    routes.append(Route("/v1/import", segment("batch"), methods=["POST"]))
    return routes
