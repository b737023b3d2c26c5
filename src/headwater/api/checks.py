"""HTTP routes for data checks (reading: the `view` permission; running: admins, `manage`).

- `GET /api/checks[?table=orders][&history=20]`: every check declared in `<models_dir>/checks.toml` with its
  declaration, its last result and its recent results (newest first, up to `history`, 20 by default, at most
  200): `{"configured": bool, "error": null | "checks.toml: ...", "checks": [{"name", "table", "kind",
  "severity", "schedule", ..., "last": result | null, "history": [result, ...]}]}`. A result is
  `{"run_id", "check", "table", "kind", "severity", "status": "pass" | "fail" | "error", "failing", "detail":
  {"message", "items", "sample", "query", "error"?}, "started_at", "duration_s"}`.
- `POST /api/checks/run` `{"checks": ["name", ...]}` (absent or empty: every check; `"table": "orders"`: the
  checks of that table): runs them now, one after the other, and answers `{"results": [result, ...]}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.principal import Principal, guarded
from headwater.api.responses import error_response, json_response
from headwater.core.errors import CheckError
from headwater.models.checks import Check, CheckRunner, load_checks

log = logging.getLogger(__name__)
HISTORY = 20
MAX_HISTORY = 200


def check_routes(services: Callable[[], Any]) -> list[BaseRoute]:
    """`services()` gives the opened Services (only `settings` is used; the catalog database is opened here)."""
    catalogs: dict[str, sa.Engine] = {}

    def catalog(s: Any) -> sa.Engine:
        uri = s.settings.effective_catalog_uri
        if uri not in catalogs:
            from headwater.lake.coordination import open_engine

            catalogs[uri] = open_engine(uri)
        return catalogs[uri]

    async def listing(request: Request, s: Any, who: Principal) -> Response:
        table = request.query_params.get("table")
        depth = request.query_params.get("history", str(HISTORY))
        if not depth.isdigit() or int(depth) > MAX_HISTORY:
            return error_response(f"history: a whole number from 0 to {MAX_HISTORY}", 400)

        def read() -> dict[str, Any]:
            settings = s.settings
            out: dict[str, Any] = {"configured": settings.models_dir is not None, "error": None, "checks": []}
            try:
                checks = load_checks(settings.models_dir)
            except CheckError as exc:
                out["error"] = str(exc)
                return out
            if table:
                checks = [c for c in checks if c.table == table]
            runner = CheckRunner(settings, catalog(s))
            try:
                history = runner.history([c.name for c in checks], max(int(depth), 1)) if checks else {}
            finally:
                runner.close()
            for check in checks:
                results = [r.public() for r in history.get(check.name, [])]
                out["checks"].append({**check.public(), "last": results[0] if results else None,
                                      "history": results[: int(depth)]})  # fmt: skip
            return out

        return json_response(await run_in_threadpool(read), headers={"cache-control": "no-store"})

    async def run(request: Request, s: Any, who: Principal) -> Response:
        raw = await request.body()
        try:
            doc = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            return error_response(f"body is not valid JSON: {exc}", 400)
        if not isinstance(doc, dict):
            return error_response('body: a JSON object, {"checks": ["name", ...]}', 400)
        names, table = doc.get("checks") or [], doc.get("table")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return error_response("checks: a list of check names (empty: every check)", 400)
        if table is not None and not isinstance(table, str):
            return error_response("table: a table name", 400)
        if s.settings.models_dir is None:
            return error_response("no checks: set models_dir and declare checks in <models_dir>/checks.toml", 404)
        try:
            declared = await run_in_threadpool(load_checks, s.settings.models_dir)
        except CheckError as exc:
            return error_response(str(exc), 400)
        by_name = {c.name: c for c in declared}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            known = ", ".join(sorted(by_name)) or "none"
            return error_response(f"unknown check {unknown[0]!r} (declared: {known})", 404)
        todo: list[Check] = [by_name[n] for n in dict.fromkeys(names)] if names else declared
        if table is not None:
            todo = [c for c in todo if c.table == table]
        log.info("%s %s runs %d checks", who.kind, who.name, len(todo))

        def execute() -> list[dict[str, Any]]:
            with CheckRunner(s.settings, catalog(s)) as runner:
                return [r.public() for r in runner.run(todo)]

        return json_response({"results": await s.query_slots.run(execute)})

    return [
        Route("/api/checks", guarded(services, "view", listing), methods=["GET"]),
        Route("/api/checks/run", guarded(services, "manage", run), methods=["POST"]),
    ]
