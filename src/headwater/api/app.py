"""Builds the ASGI app that `headwater up` / `headwater server` serve."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from headwater import __version__
from headwater.api.accounts import account_routes
from headwater.api.alerts import alert_routes
from headwater.api.audit import audit_routes
from headwater.api.boards import board_routes
from headwater.api.catalog import catalog_routes
from headwater.api.checks import check_routes
from headwater.api.cohorts import cohort_routes
from headwater.api.exposure import ScopedCors, SecurityHeaders, metrics_refusal, split
from headwater.api.imports import import_routes
from headwater.api.models import model_routes
from headwater.api.openapi import openapi_routes
from headwater.api.plans import plan_routes
from headwater.api.principal import authenticate
from headwater.api.privacy import privacy_routes
from headwater.api.processors import ProcessorRegistry, processor_routes
from headwater.api.quarantine import quarantine_routes
from headwater.api.responses import error_response, json_response
from headwater.api.segment import segment_routes
from headwater.api.sources import source_routes
from headwater.api.trend_alerts import trend_alert_routes
from headwater.auth.audit import AuditLog
from headwater.auth.keys import KeyStore
from headwater.auth.throttle import SignInThrottle
from headwater.auth.users import UserStore
from headwater.boards.store import BoardStore
from headwater.cohorts.store import CohortStore
from headwater.collector.parsing import Limits
from headwater.collector.routes import INGEST_PATHS, Collector, IngestApp
from headwater.core.erasure import Suppressor, open_board
from headwater.core.errors import AuthError, LogError, QueryError
from headwater.core.settings import Settings
from headwater.insights.engine import InsightEngine
from headwater.lake.writer import GROUP as LAKE_GROUP
from headwater.live.tail import LiveTail
from headwater.log import open_log
from headwater.log.base import LogAdmin, Producer
from headwater.plan.active import ActivePlans
from headwater.plan.ingest import IngestTransform
from headwater.plan.live import LiveViolations
from headwater.plan.store import PlanStore
from headwater.privacy.requests import DeletionStore
from headwater.query.engine import QueryEngine
from headwater.query.slots import QueryBusy, QuerySlots
from headwater.web.routes import web_routes

log = logging.getLogger(__name__)
LIVE_STREAM_SECONDS = 30.0


class LogGauges:
    """Prometheus collector computing log size and per-group lag at scrape time."""

    def __init__(self, admin: LogAdmin, producer: Producer, backend: str) -> None:
        self.admin = admin
        self.producer = producer
        self.backend = backend

    def collect(self) -> Any:
        up = GaugeMetricFamily("headwater_log_up", "1 when the event log is reachable", labels=["backend"])
        problem = self.admin.problem()
        up.add_metric([self.backend], 0 if problem else 1)
        in_flight = GaugeMetricFamily(
            "headwater_log_producer_in_flight", "Records handed to the log producer and not yet acknowledged"
        )
        in_flight.add_metric([], self.producer.in_flight())
        yield from (up, in_flight)
        if problem:
            return
        try:
            yield from self._offsets()
        except LogError:
            log.warning("log offsets unavailable for /metrics", exc_info=True)

    def _offsets(self) -> Any:
        size_bytes = self.admin.size_bytes()
        if size_bytes is not None:
            size = GaugeMetricFamily("headwater_log_size_bytes", "Live bytes in the event log")
            size.add_metric([], size_bytes)
            yield size
        ends = self.admin.end_offsets()
        end = GaugeMetricFamily("headwater_log_end_offset", "Next offset per partition", labels=["partition"])
        for partition, offset in ends.items():
            end.add_metric([str(partition)], offset)
        lag = GaugeMetricFamily("headwater_consumer_lag", "Records not yet consumed per group", labels=["group"])
        lag_by_partition = GaugeMetricFamily(
            "headwater_consumer_partition_lag",
            "Records not yet consumed per group and partition",
            labels=["group", "partition"],
        )
        for group, offsets in self.admin.group_offsets().items():
            behind = {p: max(0, e - offsets.get(p, 0)) for p, e in ends.items()}
            lag.add_metric([group], sum(behind.values()))
            for partition, count in behind.items():
                lag_by_partition.add_metric([group, str(partition)], count)
        yield from (end, lag, lag_by_partition)


class Services:
    """Everything the routes share, opened in the lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = open_log(settings)
        self.producer = self.log.producer()
        self.admin = self.log.admin()
        self.log_problem: str | None = None
        self.keys = KeyStore(settings.store_uri("keys"))
        self.users = UserStore(settings.store_uri("users"), settings.session_hours)
        self.sign_ins = SignInThrottle(
            settings.store_uri("users"), settings.login_free_failures, settings.login_backoff_max_s
        )
        limits = Limits(settings.max_request_bytes, settings.max_event_bytes, settings.max_batch_events)
        self.collector = Collector(self.producer, self.keys, limits)
        self.query_slots = QuerySlots(
            settings.query_concurrency, settings.query_queue, settings.query_queue_wait_s, settings.query_nice
        )
        self.query = self.query_slots.build(lambda: QueryEngine(settings))  # DuckDB's threads inherit the niceness
        self.cohorts = CohortStore(settings.store_uri("app"))
        self.insights = InsightEngine(self.query, cohorts=self.cohorts.resolver)  # `$cohort` filters, breakdowns
        self.processors = ProcessorRegistry(settings.processors_dir)
        self.live = LiveTail(self.log, self.processors.streams)
        self.boards = BoardStore(settings.store_uri("app"))
        self.audit = AuditLog(settings.effective_catalog_uri)
        catalog_db = open_board(settings.effective_catalog_uri)
        self.suppressor = Suppressor(catalog_db, settings.privacy_salt)
        self.collector.suppressor = self.suppressor
        self.collector.trust_forwarded = settings.collector_trust_forwarded
        self.collector.record_ip = settings.enrich_ip != "drop" or settings.enrich_geoip_database is not None
        self.deletions = DeletionStore(catalog_db)
        self.plans = PlanStore(catalog_db, self.audit)
        active_plans = ActivePlans(self.plans.active_plans, settings.plan_refresh_s)
        self.live_plans = LiveViolations(active_plans)
        # personal data hashed/masked/dropped and consent applied before events reach the durable log
        self.collector.transform = IngestTransform(active_plans, settings, self.suppressor.salt)
        self.started = time.time()

    def check_pressure(self) -> None:
        self.log_problem = self.admin.problem()
        if self.log_problem is not None:  # answer 503 at once rather than wait for acks that cannot come
            self.collector.overload = (f"event log unavailable: {self.log_problem}", 2)
            return
        budget = self.settings.log_disk_budget_mb * 1024 * 1024
        size = self.admin.size_bytes() or 0
        try:
            lag = self.admin.lag(LAKE_GROUP)
        except LogError:  # reachable but not answering this (a coordinator moving): do not hold intake for it
            lag = 0
        if size > budget:
            self.collector.overload = (f"log over disk budget: {size} of {budget} bytes used", 5)
        elif lag > self.settings.max_lake_lag_events:
            self.collector.overload = (f"lake writer lagging: {lag} events behind", 2)
        else:
            self.collector.overload = None

    def lake_lag(self) -> int | None:
        """Records the lake writers have not committed yet (None when the log cannot say now)."""
        try:
            return self.admin.lag(LAKE_GROUP)
        except LogError:
            return None

    def close(self) -> None:
        self.producer.close()
        self.admin.close()
        self.query.close()
        self.query_slots.close()
        self.live.close()
        self.processors.close()
        self.boards.close()
        self.cohorts.close()
        self.audit.close()
        self.deletions.engine.dispose()
        self.keys.close()
        self.users.close()
        self.sign_ins.close()


def metrics_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return registry


def build_app(settings: Settings) -> IngestApp:
    services: Services | None = None
    gauges_registry = CollectorRegistry()

    def svc() -> Services:
        assert services is not None, "services are opened in the lifespan"
        return services

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal services
        services = await run_in_threadpool(Services, settings)
        gauges_registry.register(LogGauges(services.admin, services.producer, services.log.backend))
        app.state.services = services
        ingest.collector = services.collector
        watcher = asyncio.create_task(_watch(services))
        try:
            yield
        finally:
            watcher.cancel()
            services.collector.flush_metrics()
            await run_in_threadpool(services.close)

    async def healthz(request: Request) -> Response:
        s = svc()
        problem = s.log_problem
        payload = {
            "status": "ok" if s.collector.overload is None else "degraded",
            "version": __version__,
            "uptime_s": round(time.time() - s.started, 1),
            "log": {"backend": s.log.backend, "reachable": problem is None, "problem": problem},
            "lake_lag_events": None if problem else await run_in_threadpool(s.lake_lag),
            "overload": s.collector.overload[0] if s.collector.overload else None,
        }
        return json_response(payload)

    async def metrics_endpoint(request: Request) -> Response:
        refused = metrics_refusal(request, settings)
        if refused is not None:
            return refused
        s = svc()
        s.collector.flush_metrics()
        body = generate_latest(metrics_registry()) + generate_latest(gauges_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def allowed(request: Request, permission: str) -> Response | None:
        """None when the caller (API key or signed-in user) may `permission`, else the error response."""
        s = svc()
        try:
            authenticate(request, s.keys, s.users, permission)
        except AuthError as exc:
            return error_response(str(exc), exc.status)
        return None

    async def read_request(request: Request, hint: str, permission: str) -> dict[str, Any] | Response:
        """The JSON object of an allowed request, or the error response to send."""
        refused = allowed(request, permission)
        if refused is not None:
            return refused
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error_response(f"body is not valid JSON: {exc}", 400)
        if not isinstance(doc, dict):
            return error_response(f"body: send a JSON object, e.g. {hint}", 400)
        return doc

    async def query(request: Request) -> Response:
        s = svc()
        doc = await read_request(request, '{"sql": "SELECT ..."}', "sql")
        if isinstance(doc, Response):
            return doc
        if not isinstance(doc.get("sql"), str):
            return error_response('sql: required, send {"sql": "SELECT ..."}', 400)
        max_rows = doc.get("max_rows")
        if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
            return error_response("max_rows: must be a positive integer", 400)
        limit = min(max_rows or s.settings.query_max_rows, s.settings.query_max_rows)
        try:
            result = await s.query_slots.run(s.query.execute, doc["sql"], limit)
        except QueryError as exc:
            return _query_error(exc)
        return Response(
            orjson.dumps(result.as_dict(), default=str, option=orjson.OPT_NON_STR_KEYS),
            media_type="application/json",
        )

    async def insight(request: Request) -> Response:
        spec = await read_request(request, '{"kind": "trend", ...}', "view")
        if isinstance(spec, Response):
            return spec
        s = svc()
        try:
            answer = await s.query_slots.run(s.insights.run, spec)
        except QueryError as exc:
            return _query_error(exc)
        return Response(orjson.dumps(answer, default=str), media_type="application/json")

    def live_args(request: Request) -> dict[str, Any]:
        params = request.query_params
        limit = params.get("limit", "100")
        if not limit.isdigit():
            raise ValueError("limit: must be a positive integer")
        return {
            "limit": int(limit),
            "event": params.get("event") or None,
            "person": params.get("user") or None,
            "source": params.get("source") or None,
            "include_rejected": params.get("rejected", "true").lower() != "false",
            "stream": params.get("stream") or None,
        }

    async def live_page(request: Request, cursor: str | None, limit: int | None = None) -> dict[str, Any] | Response:
        """A page of the live tail for an allowed caller, or the error response to send."""
        refused = allowed(request, "view")
        if refused is not None:
            return refused
        try:
            args = live_args(request)
            if limit is not None:
                args["limit"] = limit
            page: dict[str, Any] = await run_in_threadpool(read_live, svc(), cursor, args)
        except ValueError as exc:
            return error_response(str(exc), 400)
        except LogError as exc:
            return error_response(f"event log unavailable: {exc}", 503, {"retry-after": "2"})
        return page

    async def live(request: Request) -> Response:
        page = await live_page(request, request.query_params.get("cursor"))
        return page if isinstance(page, Response) else Response(orjson.dumps(page), media_type="application/json")

    async def live_stream(request: Request) -> Response:
        """Server-sent events; each event's id is a cursor, so EventSource resumes after a reconnect."""
        s = svc()
        cursor = request.headers.get("last-event-id") or request.query_params.get("cursor") or None
        first = await live_page(request, cursor, 1 if cursor is None else None)
        if isinstance(first, Response):
            return first
        args = live_args(request)

        async def events() -> AsyncIterator[bytes]:
            position = first["cursor"]
            deadline = time.monotonic() + LIVE_STREAM_SECONDS  # bounded: clients reconnect, shutdown is quick
            yield b"retry: 500\n\n"
            if cursor is not None:  # what arrived after the client's cursor (without one: the newest, not sent)
                for row in first["events"]:
                    yield b"id: " + position.encode() + b"\ndata: " + orjson.dumps(row) + b"\n\n"
            while time.monotonic() < deadline and not await request.is_disconnected():
                try:
                    page = await run_in_threadpool(read_live, s, position, args)
                except LogError:  # the log is away for a moment: keep the stream, try again
                    await asyncio.sleep(1.0)
                    continue
                behind = _advanced(position, page["cursor"]) >= args["limit"]  # a full page: more is waiting
                position = page["cursor"]
                for row in page["events"]:
                    yield b"id: " + position.encode() + b"\ndata: " + orjson.dumps(row) + b"\n\n"
                yield b": tick\n\n"
                if not behind:
                    await asyncio.sleep(0.25)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-store"})

    origins = split(settings.cors_origins)
    middleware = [
        Middleware(ScopedCors, collector_origins=origins, api_origins=split(settings.api_cors_origins)),
        Middleware(SecurityHeaders),
    ]
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/api/query", query, methods=["POST"]),
        Route("/api/insights", insight, methods=["POST"]),
        Route("/api/live", live, methods=["GET"]),
        Route("/api/live/stream", live_stream, methods=["GET"]),
    ]
    ingest_routes: list[BaseRoute] = [Route(p, _method_not_allowed, methods=["GET"]) for p in INGEST_PATHS]
    routes += account_routes(svc) + audit_routes(svc) + board_routes(svc) + processor_routes(svc) + source_routes(svc)
    routes += import_routes(svc)
    routes += privacy_routes(svc)
    routes += plan_routes(svc)
    routes += quarantine_routes(svc)
    routes += check_routes(svc)
    routes += alert_routes(svc)
    routes += trend_alert_routes(svc)
    routes += model_routes(svc)
    routes += cohort_routes(svc) + catalog_routes(svc)
    routes += segment_routes(svc)
    routes += web_routes()
    routes += openapi_routes(lambda: routes + ingest_routes)
    starlette = Starlette(
        routes=routes + ingest_routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={QueryBusy: _query_busy, HTTPException: _http_error},
    )
    ingest = IngestApp(starlette, origins)
    return ingest


def _advanced(before: str, after: str) -> int:
    """How many records of the log lie between two live-tail cursors."""
    start = {p: int(o) for p, o in (part.split(":") for part in filter(None, before.split(",")))}
    end = {p: int(o) for p, o in (part.split(":") for part in filter(None, after.split(",")))}
    return sum(max(0, offset - start.get(p, offset)) for p, offset in end.items())


def read_live(s: Services, cursor: str | None, args: dict[str, Any]) -> dict[str, Any]:
    """A page of the live tail, each event with what its source's tracking plan finds in it."""
    page: dict[str, Any] = s.live.read(cursor, **args)
    s.live_plans.annotate(page["events"])
    return page


def _query_error(exc: QueryError) -> Response:
    """The error of a query as JSON; a query refused for lack of a slot says when to retry."""
    headers = {"retry-after": str(exc.retry_after)} if isinstance(exc, QueryBusy) else None
    return error_response(str(exc), exc.status, headers)


async def _query_busy(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueryBusy)
    return _query_error(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (no route, wrong method) as the JSON error shape under /api/, plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/api/"):
        return Response(exc.detail, exc.status_code, exc.headers, media_type="text/plain")
    if exc.status_code == 404:
        message = f"no API endpoint {request.method} {request.url.path[:200]}"
    else:
        message = f"{exc.detail} ({request.method} {request.url.path[:200]})"
    return error_response(message, exc.status_code, dict(exc.headers) if exc.headers else None)


async def _method_not_allowed(request: Request) -> Response:
    return error_response("use POST to send events", 405, {"allow": "POST"})


async def _watch(services: Services) -> None:
    """Refresh back-pressure state and push the collector's metrics twice a second."""
    while True:
        try:
            services.collector.flush_metrics()
            await run_in_threadpool(services.check_pressure)
        except Exception:
            log.exception("back-pressure check failed")
        await asyncio.sleep(0.5)
