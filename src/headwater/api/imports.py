"""HTTP routes about imports: the GA4 reconciliation.

- `GET /api/imports/ga4/reconcile?source=ga4&since=YYYYMMDD&until=YYYYMMDD`: per event_date, the rows the
  last import of that day held (`headwater_ga4_days`: rows in its files, quarantined, suppressed, expected)
  against the rows of that source and day in the lake now, the difference and the duplicates (identical
  rows sharing an id). `since` / `until` default to the recorded days. `mismatched` counts days that differ.

Reads need the `view` permission: read and admin keys, and every signed-in user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.principal import Principal, guarded
from headwater.api.responses import error_response, json_response
from headwater.core.errors import QueryError
from headwater.lake.ga4 import DayStore, day_text, reconciliation


def import_routes(services: Callable[[], Any]) -> list[Route]:
    """Routes reading the recorded GA4 imports and the lake through `services().query`."""
    stores: dict[str, DayStore] = {}

    def store() -> DayStore:
        uri = services().settings.effective_catalog_uri
        if uri not in stores:
            stores[uri] = DayStore(uri)
        return stores[uri]

    def answer(source: str, since: str | None, until: str | None) -> dict[str, Any]:
        expected = store().days(source, since, until)
        query = services().query
        return reconciliation(lambda sql: query.execute(sql).rows, source, expected, since, until)

    async def reconcile(request: Request, s: Any, who: Principal) -> Response:
        params = request.query_params
        source = params.get("source") or "ga4"
        try:
            since = day_text(params["since"]) if params.get("since") else None
            until = day_text(params["until"]) if params.get("until") else None
        except ValueError:
            return error_response("since, until: a day as YYYYMMDD or YYYY-MM-DD", 400)
        try:
            return json_response(await run_in_threadpool(answer, source, since, until))
        except QueryError as exc:
            return error_response(str(exc), exc.status)

    return [Route("/api/imports/ga4/reconcile", guarded(services, "view", reconcile), methods=["GET"])]
