"""HTTP routes for operational alerts (reading: `view`; silences and test notifications: admins, `manage`).

The ops worker's AlertEvaluator writes the state to the catalog database; these routes read it:
- `GET /api/alerts`: alerts firing and pending now, the rules evaluated (definitions, last evaluation, error),
  active silences, and whether the evaluator runs (`evaluated_at` of its last tick).
- `GET /api/alerts/history?limit=100&rule=`: firing and resolved transitions, newest first, with the delivery
  outcome per webhook (`delivery`: delivered, pending, failed, silenced, none).
- `GET /api/alerts/silences[?all=1]`: active (or all) silences.
- `POST /api/alerts/silences` `{"rule": "lake_lag" | "*", "labels": {"table": "events"}, "minutes": 60,
  "comment": "..."}` (or `"ends_at"`: ISO time or unix seconds; `"starts_at"` likewise, default now): 201.
- `DELETE /api/alerts/silences/{id}`.
- `POST /api/alerts/test`: a test notification to every configured webhook; per URL its outcome.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.alerts.evaluator import dashboard_base
from headwater.alerts.notify import send_test
from headwater.alerts.store import AlertStore
from headwater.api.audit import record
from headwater.api.principal import Principal, guarded
from headwater.api.responses import error_response, json_response
from headwater.auth.audit import ACTIONS

MAX_HISTORY = 1000
MAX_SILENCE_DAYS = 366
SILENCE_RULE = "^[a-z0-9*][a-z0-9_.*-]{0,127}$"


def _time(value: Any, field: str) -> float:
    """Unix seconds from a number or an ISO-8601 string; ValueError naming `field` otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                raise ValueError(f"{field}: give a time zone (e.g. 2026-01-31T12:00:00Z)")
            return parsed.timestamp()
    raise ValueError(f"{field}: an ISO-8601 time with a time zone, or unix seconds")


def parse_silence(doc: dict[str, Any], now: float) -> dict[str, Any]:
    """The silence a POST body asks for; ValueError with the field when it is wrong."""
    rule = doc.get("rule", "*")
    if not isinstance(rule, str) or not re.match(SILENCE_RULE, rule):
        raise ValueError("rule: a rule name (e.g. lake_lag), or * for every rule")
    labels = doc.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ValueError('labels: an object of label values, e.g. {"table": "events"}')
    starts = _time(doc["starts_at"], "starts_at") if doc.get("starts_at") is not None else now
    if doc.get("ends_at") is not None:
        ends = _time(doc["ends_at"], "ends_at")
    else:
        minutes = doc.get("minutes", 60)
        if not isinstance(minutes, int | float) or isinstance(minutes, bool) or minutes <= 0:
            raise ValueError("minutes: how long the silence lasts, a positive number")
        ends = starts + 60 * float(minutes)
    if ends <= starts or ends <= now:
        raise ValueError("ends_at: must be after starts_at and in the future")
    if ends - starts > MAX_SILENCE_DAYS * 86400:
        raise ValueError(f"a silence lasts at most {MAX_SILENCE_DAYS} days")
    comment = doc.get("comment", "")
    if not isinstance(comment, str) or len(comment) > 1000:
        raise ValueError("comment: text of at most 1000 characters")
    return {"rule": rule, "labels": labels, "starts_at": starts, "ends_at": ends, "comment": comment}


def alert_routes(services: Callable[[], Any]) -> list[Route]:
    """`services()` gives the opened Services (`settings`, `audit`; `alerts`: an AlertStore, when it has one)."""
    opened: list[AlertStore] = []
    lock = threading.Lock()

    def store(s: Any) -> AlertStore:
        own = getattr(s, "alerts", None)
        if isinstance(own, AlertStore):
            return own
        with lock:  # opened on first use: the alert tables live in the catalog database
            if not opened:
                from headwater.lake.coordination import open_engine

                opened.append(AlertStore(open_engine(s.settings.effective_catalog_uri)))
            return opened[0]

    async def body_of(request: Request) -> dict[str, Any] | Response:
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error_response(f"body is not valid JSON: {exc}", 400)
        if not isinstance(doc, dict):
            return error_response("body: a JSON object", 400)
        return doc

    async def listing(request: Request, s: Any, who: Principal) -> Response:
        settings = s.settings

        def read() -> dict[str, Any]:
            alerts = store(s)
            now = time.time()
            rules = alerts.rules()
            evaluated = max((r["evaluated_at"] or 0 for r in rules), default=None) or None
            return {
                "alerts": alerts.current(),
                "rules": rules,
                "silences": alerts.silences(now),
                "evaluator": {
                    "enabled": settings.alerts_enabled, "interval_s": settings.alert_interval_s,
                    "evaluated_at": evaluated,
                    "running": evaluated is not None and now - evaluated < 3 * settings.alert_interval_s + 30,
                },
                "webhooks": len(settings.alert_webhooks),
            }  # fmt: skip

        return json_response(await run_in_threadpool(read), headers={"cache-control": "no-store"})

    async def history(request: Request, s: Any, who: Principal) -> Response:
        limit = request.query_params.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_HISTORY:
            return error_response(f"limit: a whole number from 1 to {MAX_HISTORY}", 400)
        rule = request.query_params.get("rule") or None
        rows = await run_in_threadpool(lambda: store(s).history(int(limit), rule))
        if "manage" not in who.permissions:  # webhook URLs may carry tokens (Slack, PagerDuty)
            for row in rows:
                row["targets"] = [f"webhook {i + 1}" for i in range(len(row["targets"]))]
                row["deliveries"] = {f"webhook {i + 1}": v for i, v in enumerate(row["deliveries"].values())}
        return json_response({"history": rows}, headers={"cache-control": "no-store"})

    async def silences(request: Request, s: Any, who: Principal) -> Response:
        include = request.query_params.get("all") in ("1", "true")
        rows = await run_in_threadpool(lambda: store(s).silences(time.time(), include))
        return json_response({"silences": rows}, headers={"cache-control": "no-store"})

    async def create_silence(request: Request, s: Any, who: Principal) -> Response:
        doc = await body_of(request)
        if isinstance(doc, Response):
            return doc
        now = time.time()
        try:
            wanted = parse_silence(doc, now)
        except ValueError as exc:
            return error_response(str(exc), 400)
        made = await run_in_threadpool(lambda: store(s).add_silence(**wanted, created_by=who.name, now=now))
        if "alert.silenced" in ACTIONS:
            await record(s.audit, request, who, "alert.silenced", wanted["rule"], {"id": made["id"], **wanted})
        return json_response(made, 201, headers={"location": f"/api/alerts/silences/{made['id']}"})

    async def delete_silence(request: Request, s: Any, who: Principal) -> Response:
        raw = request.path_params["id"]
        if not raw.isdigit():
            return error_response("id: the number of a silence", 400)
        deleted = await run_in_threadpool(lambda: store(s).delete_silence(int(raw)))
        if not deleted:
            return error_response(f"no silence {raw}", 404)
        if "alert.unsilenced" in ACTIONS:
            await record(s.audit, request, who, "alert.unsilenced", raw)
        return json_response({"deleted": int(raw)})

    async def test(request: Request, s: Any, who: Principal) -> Response:
        urls = list(s.settings.alert_webhooks)
        if not urls:
            return error_response("no webhook configured: set alert_webhooks in headwater.toml", 400)
        link = f"{dashboard_base(s.settings)}/#/alerts"
        results = await run_in_threadpool(send_test, urls, link)
        return json_response({"results": results, "ok": all(r["ok"] for r in results)})

    return [
        Route("/api/alerts", guarded(services, "view", listing), methods=["GET"]),
        Route("/api/alerts/history", guarded(services, "view", history), methods=["GET"]),
        Route("/api/alerts/silences", guarded(services, "view", silences), methods=["GET"]),
        Route("/api/alerts/silences", guarded(services, "manage", create_silence), methods=["POST"]),
        Route("/api/alerts/silences/{id}", guarded(services, "manage", delete_silence), methods=["DELETE"]),
        Route("/api/alerts/test", guarded(services, "manage", test), methods=["POST"]),
    ]
