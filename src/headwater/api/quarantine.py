"""HTTP route for quarantine replay (admins only; the `manage` permission).

`POST /api/quarantine/replay` `{"reason": "plan shop@1-0-0", "since": "2d", "until": null, "source": null,
"dry_run": false}` appends the matching quarantined events to the event log again, exactly once (see
`headwater.plan.replay`), and answers with the counts: matched, replayed, already (replayed before), invalid
(still refused by the collector's checks; the reasons in `problems`), dropped (no consent). `since` / `until`:
ISO 8601 (UTC unless an offset is given), epoch ms, or an age (`90m`, `2h`, `7d`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.principal import Principal, guarded
from headwater.api.responses import error_response, json_response
from headwater.plan.replay import parse_when, replay

log = logging.getLogger(__name__)


def quarantine_routes(services: Callable[[], Any]) -> list[Route]:
    """`services()` gives the opened Services (with `settings`, `producer`, `collector` and `audit`)."""

    async def replay_route(request: Request, s: Any, who: Principal) -> Response:
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error_response(f"body is not valid JSON: {exc}", 400)
        if not isinstance(doc, dict):
            return error_response('body: send a JSON object, e.g. {"reason": "plan shop@1-0-0", "since": "1d"}', 400)
        reason, since, until, source = (doc.get(k) for k in ("reason", "since", "until", "source"))
        if not isinstance(reason, str) or not reason:
            return error_response("reason: required, text the quarantine reasons contain (e.g. 'plan shop@1-0-0')", 400)
        if not isinstance(since, str | int) or isinstance(since, bool):
            return error_response("since: required, an ISO 8601 time, epoch ms or an age (2h, 7d)", 400)
        if until is not None and not isinstance(until, str | int):
            return error_response("until: an ISO 8601 time, epoch ms or an age", 400)
        if source is not None and not isinstance(source, str):
            return error_response("source: a source name", 400)
        try:
            start = parse_when(str(since))
            end = parse_when(str(until)) if until is not None else None
        except ValueError as exc:
            return error_response(str(exc), 400)
        if end is not None and end <= start:
            return error_response("until: must be after since", 400)
        dry_run = doc.get("dry_run") is True

        def run() -> dict[str, Any]:
            transform = getattr(s.collector, "transform", None)  # personal data and consent, as at the collector
            found = replay(s.settings, reason, start, end, source, dry_run=dry_run, transform=transform,
                           producer=s.producer)  # fmt: skip
            result = found.public()
            if not dry_run and result["matched"]:
                address = request.client.host if request.client else ""
                details = {"reason": reason, "since": start.isoformat(), "until": end.isoformat() if end else None,
                           "source": source, **result}  # fmt: skip
                try:  # the events are appended: a failure to record it is logged, not raised
                    s.audit.record(who.name, "quarantine.replayed", target=reason, details=details, address=address,
                                   actor_kind=who.kind)  # fmt: skip
                except Exception:
                    log.exception("audit row not written: quarantine.replayed by %s (%s)", who.name, details)
            return result

        return json_response(await run_in_threadpool(run))

    return [Route("/api/quarantine/replay", guarded(services, "manage", replay_route), methods=["POST"])]
