"""HTTP routes for SQL models (reading: the `view` permission; building: admins, `manage`).

- `GET /api/models`: every model in dependency order with its SQL, configuration (`materialized`,
  `partition_by`, `lookback_days`, `schedule`, `description`), `deps` (models it reads), `refs` (every table it
  reads), `last_run`, `next_run` (cron models), `due`, and `error` for a file that cannot be used; `running` says
  whether a build started here is going.
- `GET /api/models/runs?model=NAME&limit=100`: recorded builds, newest first.
- `POST /api/models/run` `{"models": ["a"], "full_refresh": false, "downstream": false, "wait": false}`: build now
  (all models when `models` is empty or absent) in this server process, with the models' bounded resources and at
  `background_nice`; 202 at once (`wait`: 200 with the runs when done), 409 while another build started here is
  going, 400 for unknown models or a model file that cannot be used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.principal import Principal, guarded
from headwater.api.responses import error_response, json_response
from headwater.core.errors import ModelError

log = logging.getLogger(__name__)
MAX_RUNS = 1000
_opening = threading.Lock()


def scheduler_of(s: Any) -> Any:
    """The Services' ModelScheduler (`s.models` when the app opened one; else opened here once, on first use)."""
    found = getattr(s, "models", None)
    if found is None:
        with _opening:
            found = getattr(s, "models", None)
            if found is None:
                from headwater.models.scheduler import ModelScheduler

                found = ModelScheduler(s.settings)
                s.models = found
    return found


def _niced(work: Callable[[], Any], nice: int) -> Callable[[], Any]:
    """`work` in a thread that the OS runs after ingestion when the cores are busy (Linux: niceness is per
    thread, and DuckDB's threads inherit it)."""

    def run() -> Any:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return work()

    return run


def model_routes(services: Callable[[], Any]) -> list[BaseRoute]:
    """`services()` gives the opened Services (with `settings`; `models`: a ModelScheduler, opened when absent)."""

    async def listing(request: Request, s: Any, who: Principal) -> Response:
        scheduler = scheduler_of(s)
        status = await run_in_threadpool(scheduler.status)
        return json_response({**status, "running": scheduler.busy}, headers={"cache-control": "no-store"})

    async def runs(request: Request, s: Any, who: Principal) -> Response:
        limit = request.query_params.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_RUNS:
            return error_response(f"limit: a whole number from 1 to {MAX_RUNS}", 400)
        model = request.query_params.get("model") or None
        scheduler = scheduler_of(s)
        found = await run_in_threadpool(scheduler.runs.history, model, int(limit))
        public = [{k: v for k, v in r.items() if k != "inputs"} for r in found]
        return json_response({"runs": public}, headers={"cache-control": "no-store"})

    async def start(request: Request, s: Any, who: Principal) -> Response:
        try:
            doc = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as exc:
            return error_response(f"body is not valid JSON: {exc}", 400)
        if not isinstance(doc, dict):
            return error_response("body: a JSON object", 400)
        names = doc.get("models") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return error_response('models: a list of model names (["a", "b"]; empty: all)', 400)
        flags = {k: doc.get(k, False) for k in ("full_refresh", "downstream", "wait")}
        if not all(isinstance(v, bool) for v in flags.values()):
            return error_response("full_refresh, downstream and wait: true or false", 400)
        if s.settings.models_dir is None:
            return error_response("no models: the models_dir setting is not set", 400)
        scheduler = scheduler_of(s)
        if scheduler.busy:
            return error_response("a model build is running; retry when it is done", 409, {"retry-after": "10"})

        def check() -> None:
            project = scheduler.project()
            broken = [project.errors[n] for n in names if n in project.errors]
            if broken:
                raise ModelError("; ".join(broken))
            unknown = sorted(set(names) - set(project.models))
            if unknown:
                raise ModelError(f"no model named {', '.join(unknown)}")

        try:
            await run_in_threadpool(check)
        except ModelError as exc:
            return error_response(str(exc), 400)
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["runs"] = scheduler.run(names or None, full_refresh=flags["full_refresh"],
                                                downstream=flags["downstream"])  # fmt: skip
            except ModelError as exc:
                outcome["error"] = str(exc)
            except Exception as exc:
                log.exception("models: a build asked by %s failed", who.name)
                outcome["error"] = f"{type(exc).__name__}: {exc}"

        log.info("models: %s asked to build %s", who.name, ", ".join(names) or "every model")
        thread = threading.Thread(target=_niced(work, s.settings.background_nice), name="model-build", daemon=True)
        thread.start()
        if not flags["wait"]:
            return json_response({"started": names or "all", "status": "started"}, 202)
        await run_in_threadpool(thread.join)
        if "error" in outcome:
            return error_response(outcome["error"], 400)
        return json_response({"runs": outcome["runs"]})

    return [
        Route("/api/models", guarded(services, "view", listing), methods=["GET"]),
        Route("/api/models/runs", guarded(services, "view", runs), methods=["GET"]),
        Route("/api/models/run", guarded(services, "manage", start), methods=["POST"]),
    ]
