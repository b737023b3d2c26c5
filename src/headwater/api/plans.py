"""HTTP routes for tracking plans (reading: the `view` permission; publishing and activating: admins, `manage`).

- `GET /api/plans`: every pushed version (newest first per plan, with the sources it is active for) and the
  active version per source.
- `GET /api/plans/{name}/{version}`: one version: settings, events, their properties (types, required,
  description, personal data) and resolved schemas; `?files=1` adds the files as pushed. `{version}` may be
  `active` (the version active for `*`, else the newest pushed).
- `GET /api/plans/diff?a=shop@1-0-0&b=shop@2-0-0`: every change with its SchemaVer class (`a`/`b` may be a bare
  version of the plan active for `*`).
- `GET /api/plans/catalog[?days=30]`: planned events and events seen but not planned over the last days, with
  volumes per source, events checked by a plan (`plan_version` set), flagged with violations and quarantined by
  the plan; the violation rate (flagged + quarantined over checked + quarantined: None before any plan checked
  the event), and the most frequent violations (the counts `plan_violations` shows in SQL).
- `POST /api/plans` `{"files": {"plan.json": "...", "events/x.json": "..."}, "activate": "*", "force": false}`:
  check and publish a version (201; 200 when the same files were pushed already; 400 with `problems`).
- `POST /api/plans/activate` `{"plan": "shop@2-0-0", "source": "*"}` (or `name` and `version`), and
  `POST /api/plans/deactivate` `{"source": "web"}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.principal import Principal, guarded
from headwater.api.responses import error_response, json_response
from headwater.core.errors import QueryError
from headwater.plan.compat import bump, check_version, diff, top_level
from headwater.plan.load import PlanError
from headwater.plan.store import DEFAULT_SOURCE, PlanNotFound, PlanStore, plan_json, publish, split_ref

log = logging.getLogger(__name__)
MAX_FILES = 2000
MAX_DAYS = 366
TOP_VIOLATIONS = 5  # per event in the catalog


def plan_routes(services: Callable[[], Any]) -> list[Route]:
    """`services()` gives the opened Services (with `plans`: a PlanStore, `query` and `settings`)."""

    def store(s: Any) -> PlanStore:
        plans: PlanStore = s.plans
        return plans

    def problem_response(exc: PlanError) -> Response:
        status = 404 if isinstance(exc, PlanNotFound) else 400
        body = {"success": False, "error": str(exc), "problems": [p.public() for p in exc.problems]}
        return json_response(body, status)

    async def body_of(request: Request) -> dict[str, Any] | Response:
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error_response(f"body is not valid JSON: {exc}", 400)
        if not isinstance(doc, dict):
            return error_response("body: a JSON object", 400)
        return doc

    async def listing(request: Request, s: Any, who: Principal) -> Response:
        plans = store(s)

        def read() -> dict[str, Any]:
            return {"versions": plans.versions(), "active": plans.active()}

        return json_response(await run_in_threadpool(read), headers={"cache-control": "no-store"})

    async def one(request: Request, s: Any, who: Principal) -> Response:
        plans = store(s)
        name, version = request.path_params["name"], request.path_params["version"]

        def read() -> dict[str, Any]:
            nonlocal version
            active = plans.active()
            if version == "active":
                rows = [r for src, r in active.items() if r["name"] == name and src == DEFAULT_SOURCE]
                rows = rows or [{"version": v["version"]} for v in plans.versions(name)[:1]]
                if not rows:
                    raise PlanNotFound(f"no plan {name!r}")
                version = rows[0]["version"]
            plan = plans.get(name, version)
            sources = sorted(src for src, r in active.items() if (r["name"], r["version"]) == (name, version))
            doc = plan_json(plan, sources)
            if request.query_params.get("files") in ("1", "true"):
                doc["files"] = plans.files(name, version)
            return doc

        try:
            return json_response(await run_in_threadpool(read))
        except PlanError as exc:
            return problem_response(exc)

    async def difference(request: Request, s: Any, who: Principal) -> Response:
        plans = store(s)
        a, b = request.query_params.get("a"), request.query_params.get("b")
        if not a or not b:
            return error_response("give ?a=name@M-R-A&b=name@M-R-A (or bare versions of the active plan)", 400)

        def compare() -> dict[str, Any]:
            old, new = plans.get(*plans.resolve(a)), plans.get(*plans.resolve(b))
            changes = diff(old, new)
            level = top_level(changes)
            verdict = check_version(old, new, changes)
            return {"a": f"{old.name}@{old.version}", "b": f"{new.name}@{new.version}", "level": level,
                    "needs": bump(old.version, level) if level else None, "version_ok": verdict is None,
                    "problem": verdict, "changes": [c.public() for c in changes]}  # fmt: skip

        try:
            return json_response(await run_in_threadpool(compare))
        except PlanError as exc:
            return problem_response(exc)

    async def create(request: Request, s: Any, who: Principal) -> Response:
        doc = await body_of(request)
        if isinstance(doc, Response):
            return doc
        files = doc.get("files")
        if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
            return error_response('files: {"plan.json": "<text>", "events/<name>.json": "<text>", ...}', 400)
        if len(files) > MAX_FILES:
            return error_response(f"files: at most {MAX_FILES}", 400)
        activate = doc.get("activate")
        if activate is not None and (not isinstance(activate, str) or not activate):
            return error_response("activate: a source name, or * for every source", 400)
        address = request.client.host if request.client else ""
        try:
            done = await run_in_threadpool(
                lambda: publish(store(s), files, activate=activate, force=bool(doc.get("force")), actor=who.name,
                                address=address, actor_kind=who.kind)
            )  # fmt: skip
        except PlanError as exc:
            return problem_response(exc)
        url = f"/api/plans/{done['name']}/{done['version']}"
        return json_response({**done, "url": url}, 201 if done["stored"] else 200, headers={"location": url})

    async def activate(request: Request, s: Any, who: Principal) -> Response:
        doc = await body_of(request)
        if isinstance(doc, Response):
            return doc
        source = doc.get("source", DEFAULT_SOURCE)
        if not isinstance(source, str) or not source:
            return error_response("source: a source name, or * for every source", 400)
        address = request.client.host if request.client else ""

        def run() -> dict[str, Any]:
            plans = store(s)
            if isinstance(doc.get("plan"), str):
                name, version = plans.resolve(doc["plan"])
            elif isinstance(doc.get("name"), str) and isinstance(doc.get("version"), str):
                name, version = doc["name"], doc["version"]
                split_ref(version)
            else:
                raise PlanError('give {"plan": "name@M-R-A", "source": "*"} (or "name" and "version")')
            plans.activate(source, name, version, actor=who.name, address=address, actor_kind=who.kind)
            return {"source": source, "plan": f"{name}@{version}", "active": plans.active()}

        try:
            return json_response(await run_in_threadpool(run))
        except ValueError as exc:
            return error_response(f"version: {exc}", 400)
        except PlanError as exc:
            return problem_response(exc)

    async def deactivate(request: Request, s: Any, who: Principal) -> Response:
        doc = await body_of(request)
        if isinstance(doc, Response):
            return doc
        source = doc.get("source")
        if not isinstance(source, str) or not source:
            return error_response("source: the source whose plan stops (* for the default plan)", 400)
        address = request.client.host if request.client else ""
        plans = store(s)
        removed = await run_in_threadpool(
            lambda: plans.deactivate(source, actor=who.name, address=address, actor_kind=who.kind)
        )
        return json_response({"source": source, "deactivated": removed, "active": plans.active()})

    async def catalog_view(request: Request, s: Any, who: Principal) -> Response:
        days = request.query_params.get("days", "30")
        if not days.isdigit() or not 1 <= int(days) <= MAX_DAYS:
            return error_response(f"days: a whole number of days from 1 to {MAX_DAYS}", 400)
        try:
            return json_response(await run_in_threadpool(catalog, s, store(s), int(days)))
        except QueryError as exc:
            return error_response(str(exc), exc.status)

    return [
        Route("/api/plans", guarded(services, "view", listing), methods=["GET"]),
        Route("/api/plans", guarded(services, "manage", create), methods=["POST"]),
        Route("/api/plans/catalog", guarded(services, "view", catalog_view), methods=["GET"]),
        Route("/api/plans/diff", guarded(services, "view", difference), methods=["GET"]),
        Route("/api/plans/activate", guarded(services, "manage", activate), methods=["POST"]),
        Route("/api/plans/deactivate", guarded(services, "manage", deactivate), methods=["POST"]),
        Route("/api/plans/{name}/{version}", guarded(services, "view", one), methods=["GET"]),
    ]


def _top_violations(engine: sa.Engine, since: str) -> list[tuple[str, str, str, int]] | None:
    """(event, path, rule, count) seen since `since`, most frequent first, from the violation counts in the
    catalog database (what the SQL view `plan_violations` shows); None when no plan was ever enforced."""
    from headwater.plan.violations import VIOLATIONS

    v = VIOLATIONS.c
    total = sa.func.sum(v["count"]).label("n")
    query = (
        sa.select(v.event, v.path, v.rule, total)
        .where(v.last_seen >= datetime.fromisoformat(since))
        .group_by(v.event, v.path, v.rule)
        .order_by(total.desc())
        .limit(2000)
    )
    try:
        with engine.connect() as conn:
            return [(r.event, r.path, r.rule, int(r.n)) for r in conn.execute(query)]
    except SQLAlchemyError as exc:  # no table yet
        log.debug("plan catalog: no violation counts: %s", exc)
        return None


def catalog(s: Any, plans: PlanStore, days: int) -> dict[str, Any]:
    """Planned and seen events over the last `days` (see the module docstring)."""
    since = (datetime.now(UTC) - timedelta(days=days)).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")
    active = plans.active_plans()
    fallback = active.get(DEFAULT_SOURCE)

    def plan_for(source: str) -> Any:
        return active.get(source, fallback)

    def rows(sql: str) -> list[list[Any]] | None:
        try:
            return list(s.query.execute(sql, s.settings.query_max_rows).rows)
        except QueryError as exc:
            log.debug("plan catalog: %s (%s)", exc, sql)
            return None

    window = f"received_at >= TIMESTAMP '{since}'"
    tracks = f"FROM events WHERE {window} AND type = 'track' AND event IS NOT NULL GROUP BY ALL"
    seen = rows(
        "SELECT event, source, count(*), count(*) FILTER (WHERE plan_version IS NOT NULL), "
        f"count(*) FILTER (WHERE plan_violations IS NOT NULL), max(received_at) {tracks}"
    )
    if seen is None:  # no `plan_version` / `plan_violations` columns yet (no plan ever enforced)
        seen = rows(f"SELECT event, source, count(*), 0, 0, max(received_at) {tracks}")
        if seen is None:
            raise QueryError("the events table cannot be read now", 503)
    quarantined = rows(
        "SELECT json_extract_string(raw, '$.event'), source, count(*) FROM quarantine "
        f"WHERE {window} AND reason LIKE 'plan %' GROUP BY ALL"
    )
    top = _top_violations(plans.engine, since)
    entries: dict[str, dict[str, Any]] = {}

    def entry(event: str) -> dict[str, Any]:
        if event not in entries:
            entries[event] = {"event": event, "events": 0, "checked": 0, "flagged": 0, "quarantined": 0,
                              "last_seen": None, "sources": {}, "plans": set(), "violations": []}  # fmt: skip
        return entries[event]

    def source_row(e: dict[str, Any], source: str) -> dict[str, Any]:
        if source not in e["sources"]:
            plan = plan_for(source)
            e["sources"][source] = {
                "source": source, "events": 0, "checked": 0, "flagged": 0, "quarantined": 0,
                "planned": plan is not None and e["event"] in plan.events,
                "plan": f"{plan.name}@{plan.version}" if plan else None,
            }  # fmt: skip
        row: dict[str, Any] = e["sources"][source]
        return row

    for event, source, count, checked, flagged, last in seen:
        e = entry(event)
        e["events"] += count
        e["checked"] += checked or 0
        e["flagged"] += flagged or 0
        e["last_seen"] = max(str(last), e["last_seen"] or "")
        row = source_row(e, source)
        row["events"], row["checked"], row["flagged"] = count, checked or 0, flagged or 0
    for event, source, count in quarantined or []:
        if isinstance(event, str):
            e = entry(event)
            e["quarantined"] += count
            source_row(e, source)["quarantined"] += count
    for plan in active.values():
        for event in plan.events:
            entry(event)["plans"].add(f"{plan.name}@{plan.version}")
    for event, path, rule, count in top or []:
        if event in entries and len(entries[event]["violations"]) < TOP_VIOLATIONS:
            entries[event]["violations"].append({"path": path, "rule": rule, "count": count})
    out = []
    for e in entries.values():
        sources = sorted(e["sources"].values(), key=lambda r: -(r["events"] + r["quarantined"]))
        planned_in = [r["planned"] for r in sources]
        if not sources:
            status = "planned, not seen"
        elif all(planned_in):
            status = "planned"
        elif any(planned_in):
            status = "partly planned"
        else:
            status = "not planned"
        validated = e["checked"] + e["quarantined"]  # events a plan checked: stored with a plan_version, or quarantined
        rate = round((e["flagged"] + e["quarantined"]) / validated, 6) if validated else None
        out.append({**e, "sources": sources, "plans": sorted(e["plans"]), "status": status, "violation_rate": rate})
    out.sort(key=lambda e: (e["status"] == "not planned", -(e["events"] + e["quarantined"]), e["event"]))
    return {
        "days": days, "since": since.replace(" ", "T") + "Z",
        "active": {src: f"{p.name}@{p.version}" for src, p in active.items()},
        "events": out, "violations_table": top is not None,
        "planned_not_seen": sorted(e["event"] for e in out if e["status"] == "planned, not seen"),
        "seen_not_planned": sorted(e["event"] for e in out if e["status"] == "not planned"),
    }  # fmt: skip
