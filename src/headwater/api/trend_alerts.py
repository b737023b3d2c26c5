"""HTTP routes for trend alerts (alerts/trends.py): rules on saved trends. Reading needs `view`, changes `analyze`.

- `GET /api/trend-alerts[?insight=ID]`: the rules, each with its alert `rule` name (`trend.<id>`), its `state` now
  (`firing`, `pending`, `ok`, or `disabled`), the firing lines, the last evaluation and its error (from the
  evaluator's tables). The history is `GET /api/alerts/history?rule=trend.<id>`.
- `POST /api/trend-alerts` `{"name", "insight_id", "series": 0, "breakdown"?: "FR", "mode": "threshold" |
  "anomaly", "op": ">" | ">=" | "<" | "<=" (threshold) | "outside" | "above" | "below" (anomaly), "threshold"?: 10,
  "interval"?: "hour" | "day" | "week" | "month", "webhook"?: "https://...", "severity": "warning", "enabled":
  true}`: 201; 400 naming the field when a value is wrong or does not fit the saved trend.
- `GET / PUT / DELETE /api/trend-alerts/{id}` (a PUT without `webhook` keeps the rule's).
- `POST /api/trend-alerts/{id}/evaluate`: a dry run now (nothing recorded or sent): per line the interval judged,
  its value, band and whether the rule holds; `would_fire`; the SQL run.
Webhook URLs are shown to callers with `manage` only (they may carry tokens); others see whether one is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.alerts.egress import WebhookGuard
from headwater.alerts.store import AlertStore
from headwater.alerts.trends import TrendAlertSpec, TrendAlertStore, TrendCondition, check_rule
from headwater.api.audit import record
from headwater.api.principal import Principal, guarded
from headwater.api.responses import error_response, json_object, json_response
from headwater.auth.audit import ACTIONS
from headwater.core.errors import AlertError, QueryError
from headwater.core.validation import field_errors


def trend_alert_routes(services: Callable[[], Any]) -> list[Route]:
    """`services()` gives the opened Services (`settings`, `boards`, `insights`, `query_slots`, `audit`)."""
    opened: dict[str, Any] = {}
    lock = threading.Lock()

    def stores(s: Any) -> tuple[TrendAlertStore, AlertStore]:
        with lock:  # opened on first use: rules in the app store, alert state in the catalog database
            if not opened:
                from headwater.lake.coordination import open_engine

                opened["rules"] = TrendAlertStore(s.settings.store_uri("app"))
                opened["alerts"] = AlertStore(open_engine(s.settings.effective_catalog_uri))
            return opened["rules"], opened["alerts"]

    def rule_id(request: Request) -> int | Response:
        raw = request.path_params["id"]
        return int(raw) if raw.isdigit() else error_response("id: the number of a trend alert", 404)

    async def spec_of(request: Request, s: Any, webhook: str | None = None) -> TrendAlertSpec | Response:
        """The validated body, checked against its saved trend; the 400 response otherwise. `webhook`: the one kept
        when the body has none (a PUT from someone who is not shown the URL)."""
        try:
            doc = await json_object(request, "a JSON object")
        except QueryError as exc:
            return error_response(str(exc), 400)
        if webhook is not None:
            doc.setdefault("webhook", webhook)
        try:
            spec = TrendAlertSpec.model_validate(doc)
        except ValidationError as exc:
            return error_response(field_errors(exc), 400)
        try:
            saved = await run_in_threadpool(s.boards.insight, spec.insight_id)
        except QueryError as exc:
            return error_response(f"insight_id: {exc}", 400 if exc.status == 404 else exc.status)
        try:
            check_rule(spec, saved)
        except AlertError as exc:
            return error_response(str(exc), 400)
        if spec.webhook:  # an analyst may not aim the ops worker at internal services (alerts/egress.py)
            guard = WebhookGuard(s.settings.webhook_allowed_hosts)
            refusal = await run_in_threadpool(guard.refusal, spec.webhook)
            if refusal:
                return error_response(refusal, 400)
        return spec

    def shown(rule: dict[str, Any], who: Principal, alerts: list[dict[str, Any]], last: dict[str, Any] | None) -> Any:
        name = f"trend.{rule['id']}"
        mine = [a for a in alerts if a["rule"] == name]
        state = "disabled" if not rule["enabled"] else "firing" if any(a["state"] == "firing" for a in mine) else \
            "pending" if mine else "ok"  # fmt: skip
        keep = ("state", "labels", "value", "summary", "fired_at")
        out = {**rule, "rule": name, "state": state, "evaluated_at": (last or {}).get("evaluated_at"),
               "error": (last or {}).get("error"), "alerts": [{k: a[k] for k in keep} for a in mine]}  # fmt: skip
        if "manage" not in who.permissions:
            out["webhook"] = bool(rule["webhook"])
        return out

    async def listing(request: Request, s: Any, who: Principal) -> Response:
        insight = request.query_params.get("insight")
        if insight is not None and not insight.isdigit():
            return error_response("insight: the number of a saved insight", 400)

        def read() -> list[dict[str, Any]]:
            rules, alerts = stores(s)
            found = [r for r in rules.list() if insight is None or r["insight_id"] == int(insight)]
            current = alerts.current()
            last = {r["name"]: r for r in alerts.rules()}
            return [shown(r, who, current, last.get(f"trend.{r['id']}")) for r in found]

        return json_response({"trend_alerts": await run_in_threadpool(read)}, headers={"cache-control": "no-store"})

    async def one(request: Request, s: Any, who: Principal) -> Response:
        found_id = rule_id(request)
        if isinstance(found_id, Response):
            return found_id

        def read() -> dict[str, Any] | None:
            rules, alerts = stores(s)
            rule = rules.get(found_id)
            if rule is None:
                return None
            last = {r["name"]: r for r in alerts.rules()}.get(f"trend.{found_id}")
            return shown(rule, who, alerts.current(), last)

        found = await run_in_threadpool(read)
        return json_response(found) if found is not None else error_response(f"no trend alert {found_id}", 404)

    async def audit(request: Request, s: Any, who: Principal, action: str, target: int, details: Any = None) -> None:
        if action in ACTIONS:  # the audit log learns these actions when the lead adds them
            await record(s.audit, request, who, action, str(target), details)

    async def create(request: Request, s: Any, who: Principal) -> Response:
        spec = await spec_of(request, s)
        if isinstance(spec, Response):
            return spec
        saved = await run_in_threadpool(lambda: stores(s)[0].save(spec, who.name))
        assert saved is not None
        await audit(request, s, who, "trend_alert.created", saved["id"], {"name": spec.name})
        return json_response(saved, 201, headers={"location": f"/api/trend-alerts/{saved['id']}"})

    async def replace(request: Request, s: Any, who: Principal) -> Response:
        found_id = rule_id(request)
        if isinstance(found_id, Response):
            return found_id
        existing = await run_in_threadpool(lambda: stores(s)[0].get(found_id))
        if existing is None:
            return error_response(f"no trend alert {found_id}", 404)
        spec = await spec_of(request, s, existing["webhook"])
        if isinstance(spec, Response):
            return spec
        saved = await run_in_threadpool(lambda: stores(s)[0].save(spec, who.name, found_id))
        if saved is None:
            return error_response(f"no trend alert {found_id}", 404)
        await audit(request, s, who, "trend_alert.updated", found_id, {"name": spec.name})
        if "manage" not in who.permissions:  # the kept URL was never shown to this caller
            saved = {**saved, "webhook": bool(saved["webhook"])}
        return json_response(saved)

    async def delete(request: Request, s: Any, who: Principal) -> Response:
        found_id = rule_id(request)
        if isinstance(found_id, Response):
            return found_id
        if not await run_in_threadpool(lambda: stores(s)[0].delete(found_id)):
            return error_response(f"no trend alert {found_id}", 404)
        await audit(request, s, who, "trend_alert.deleted", found_id)
        return json_response({"deleted": found_id})

    async def evaluate(request: Request, s: Any, who: Principal) -> Response:
        found_id = rule_id(request)
        if isinstance(found_id, Response):
            return found_id
        rule = await run_in_threadpool(lambda: stores(s)[0].get(found_id))
        if rule is None:
            return error_response(f"no trend alert {found_id}", 404)
        condition = TrendCondition(rule, s.boards.insight, s.insights.run)
        try:
            seen = await s.query_slots.run(condition.check, time.time())
        except AlertError as exc:
            return error_response(str(exc), 400)
        except QueryError as exc:
            return error_response(str(exc), exc.status)
        return json_response(seen, headers={"cache-control": "no-store"})

    return [
        Route("/api/trend-alerts", guarded(services, "view", listing), methods=["GET"]),
        Route("/api/trend-alerts", guarded(services, "analyze", create), methods=["POST"]),
        Route("/api/trend-alerts/{id}", guarded(services, "view", one), methods=["GET"]),
        Route("/api/trend-alerts/{id}", guarded(services, "analyze", replace), methods=["PUT"]),
        Route("/api/trend-alerts/{id}", guarded(services, "analyze", delete), methods=["DELETE"]),
        Route("/api/trend-alerts/{id}/evaluate", guarded(services, "analyze", evaluate), methods=["POST"]),
    ]
