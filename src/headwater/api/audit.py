"""The audit trail over HTTP, for admins, and what the other routes call to record an action.

`GET /api/audit` answers the rows newest first; parameters (all optional):

- `since`, `until`: an ISO 8601 time (UTC when no offset) or milliseconds since the epoch; since inclusive,
  until exclusive.
- `action`: an action (`key.created`) or a prefix of whole parts (`key`), several separated by commas.
- `actor`: a user name, key name, `cli:user@host` or `system`; a prefix when it ends with `*`.
- `limit`: most rows (JSON: default 1000, at most 100000; exports: every matching row unless given).
- `before_id`: the rows older than this id (the next page: JSON answers carry `next_before_id`).
- `format`: `json` (`{"rows": [...], "next_before_id": ...}`), `csv` or `ndjson` (downloads).

Admin users and admin keys only (the `manage` permission); anyone else gets 403.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from headwater.api.principal import Principal, authenticate
from headwater.api.responses import error_response, json_response
from headwater.auth.audit import MAX_LIMIT, AuditLog, csv_lines, ndjson_lines, parse_time_ms
from headwater.core.errors import AuthError

log = logging.getLogger(__name__)
PARAMS = ("since", "until", "action", "actor", "limit", "before_id", "format")
FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
DEFAULT_LIMIT = 1000


def client_address(request: Request) -> str:
    """The caller's IP address as the server sees it (behind a proxy on this host: X-Forwarded-For, as uvicorn
    trusts it from 127.0.0.1)."""
    return request.client.host if request.client else ""


async def record(
    audit: AuditLog,
    request: Request,
    who: Principal,
    action: str,
    target: str = "",
    details: Mapping[str, Any] | None = None,
) -> None:
    """Record an action done through the API by `who`. The action has already happened: when the row cannot be
    written, the failure and the row go to the error log rather than turn a done change into an error."""
    address = client_address(request)
    try:
        await run_in_threadpool(audit.record, who.name, action, target, details, address, who.kind)
    except Exception:
        log.exception(
            "audit row not written: %s by %s %s from %s on %r %s", action, who.kind, who.name, address, target, details
        )


def parse_query(params: Mapping[str, str]) -> dict[str, Any]:
    """The filters of a GET /api/audit; ValueError naming the parameter when one is wrong."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown parameter (known: {', '.join(PARAMS)})")
    out: dict[str, Any] = {"format": params.get("format") or "json"}
    if out["format"] not in FORMATS:
        raise ValueError(f"format: json, csv or ndjson, got {out['format']!r}")
    for name in ("since", "until"):
        if params.get(name):
            try:
                out[f"{name}_ms"] = parse_time_ms(params[name])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    for name in ("limit", "before_id"):
        value = params.get(name)
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}: a positive integer, got {value!r}")
            out[name] = int(value)
    if out.get("limit", 0) > MAX_LIMIT:
        raise ValueError(f"limit: at most {MAX_LIMIT} (page on with before_id)")
    for name in ("action", "actor"):
        if params.get(name):
            out[name] = params[name].strip()
    return out


def audit_routes(services: Callable[[], Any]) -> list[Route]:
    """`services()` gives the opened Services (with `.audit`)."""

    async def audit(request: Request) -> Response:
        s = services()
        try:
            authenticate(request, s.keys, s.users, "manage")
        except AuthError as exc:
            message = str(exc)
            if exc.status == 403:
                message = f"the audit trail is for admins (admin users and admin keys): {message}"
            return error_response(message, exc.status)
        try:
            query = parse_query(request.query_params)
        except ValueError as exc:
            return error_response(str(exc), 400)
        output = query.pop("format")
        limit = query.pop("limit", DEFAULT_LIMIT if output == "json" else None)
        try:  # JSON: the page; exports: a first look, so that an unreachable database is a 503, not a cut file
            rows = await run_in_threadpool(lambda: s.audit.query(limit=limit or 1, **query))
        except SQLAlchemyError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return error_response(f"catalog database unavailable, retry later: {reason}", 503, {"retry-after": "2"})
        if output == "json":
            next_id = rows[-1]["id"] if len(rows) == limit else None
            return json_response({"rows": rows, "next_before_id": next_id}, headers={"cache-control": "no-store"})
        rows_iter = s.audit.pages(limit=limit, **query)
        body = csv_lines(rows_iter) if output == "csv" else ndjson_lines(rows_iter)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        headers = {
            "content-disposition": f'attachment; filename="headwater-audit-{stamp}.{output}"',
            "cache-control": "no-store",
        }
        return StreamingResponse(body, media_type=FORMATS[output], headers=headers)

    return [Route("/api/audit", audit, methods=["GET"])]
