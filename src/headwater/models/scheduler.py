"""When models build: `ModelScheduler.tick(now)` (the ops worker, every `models_poll_s`) and `run(...)` (CLI, API).

A tick reloads the project when a file changed, then walks the models in dependency order; a model is due when
- it never built, its table is gone, or its definition (SQL, materialisation) changed since its last build;
- `schedule: on_change` (the default): an input table has a new version since its last build (a model rebuilt
  earlier in the same tick counts, so its downstream models follow at once);
- a cron schedule: a cron time (UTC) passed since its last build started;
- its last build failed: once the back-off (`models_poll_s` doubled per consecutive failure, at most 1 hour) has
  passed since then.
After each successful build the checks of that model's table run (`headwater.models.checks`), then the checks
with their own schedule that are due. State is only in the catalog's database (`headwater_model_runs`, the
checks' results), so a restart repeats nothing; nothing raises out of `tick`: failures are logged and recorded.
A file that cannot be used (bad header, cycle, unknown table) is recorded once as a failed run of that model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from croniter import croniter

from headwater.core.errors import ModelError
from headwater.core.settings import Settings
from headwater.lake.coordination import Lease, open_engine
from headwater.lake.tables import NAMESPACE
from headwater.models.build import build, input_snapshots, rows_removed
from headwater.models.project import BUILT_IN, ON_CHANGE, Model, Project, load_project, stamp
from headwater.models.runs import RunStore

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 3600.0
_LOCATIONS = sa.text(
    "SELECT table_name, metadata_location FROM iceberg_tables WHERE catalog_name = :catalog AND table_namespace = :ns"
)
Progress = Callable[[str, dict[str, Any]], None]  # ("start" | "done" | "skip" | "checks", details)


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


class ModelScheduler:
    """Builds the models of `settings.models_dir` (see the module docstring). `engine`: the catalog's database
    (opened from settings when None). Not thread-safe for concurrent runs: `busy` tells whether one is going."""

    def __init__(self, settings: Settings, engine: sa.Engine | None = None) -> None:
        self.settings = settings
        self._own_engine = engine is None
        self.engine = engine or open_engine(settings.effective_catalog_uri)
        self.runs = RunStore(self.engine)
        self._project: Project | None = None
        self._query: Any = None  # the models' QueryEngine, opened at the first build
        self._checks: Any = None  # CheckRunners: on the models' engine, and one that only reads results
        self._check_reader: Any = None
        self._lock = threading.Lock()

    # --- state

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def project(self) -> Project:
        """The models, reloaded when a file of the directory changed (not strict: broken files in `errors`)."""
        directory = self.settings.models_dir
        if self._project is None or self._project.stamp != stamp(directory) or self._project.directory != directory:
            self._project = load_project(directory, self.known_tables(), strict=False)
        return self._project

    def versions(self) -> dict[str, str]:
        """Every table of the lake's namespace and its current metadata version (one catalog query)."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(_LOCATIONS, {"catalog": NAMESPACE, "ns": NAMESPACE})
                return {str(name): str(location) for name, location in rows if location}
        except sa.exc.SQLAlchemyError:  # a catalog without tables yet
            return {}

    def known_tables(self) -> set[str]:
        """The names a model may read besides other models: lake tables and the catalog's SQL views."""
        from headwater.query.catalog_views import CATALOG_VIEWS

        return set(self.versions()) | set(BUILT_IN) | set(CATALOG_VIEWS)

    @property
    def query(self) -> Any:
        if self._query is None:
            from headwater.models.engine import build_engine

            self._query = build_engine(self.settings)
        return self._query

    def close(self) -> None:
        for runner in (self._checks, self._check_reader):
            if runner is not None:
                runner.close()
        self._checks = self._check_reader = None
        if self._query is not None:
            self._query.close()
            self._query = None
        if self._own_engine:
            self.engine.dispose()

    # --- when

    def _backoff(self, failures: int) -> float:
        return min(self.settings.models_poll_s * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)

    def reason(self, model: Model, last: dict[str, Any] | None, versions: dict[str, str], now: datetime) -> str | None:
        """Why `model` is due at `now` (its run's trigger: schedule | on_change), or None."""
        scheduled = "on_change" if model.schedule == ON_CHANGE else "schedule"
        if last is None or last["inputs"].get("definition") != model.definition:
            return scheduled
        if last["status"] != "ok":
            ready = last["finished_at"] + timedelta(seconds=self._backoff(int(last["failures"] or 1)))
            return scheduled if _naive(now) >= ready else None
        if model.name not in versions:  # the table was dropped
            return scheduled
        if model.schedule == ON_CHANGE:
            return "on_change" if self._inputs(model, versions)["tables"] != last["inputs"].get("tables") else None
        following = croniter(model.schedule, last["started_at"]).get_next(datetime)
        return "schedule" if following <= _naive(now) else None

    def next_run(self, model: Model, last: dict[str, Any] | None, now: datetime) -> str | None:
        """When a cron model builds next (None for on_change models)."""
        if model.schedule == ON_CHANGE:
            return None
        base = last["started_at"] if last else _naive(now)
        following = croniter(model.schedule, base).get_next(datetime)
        return _iso(max(following, _naive(now)))

    def _inputs(self, model: Model, versions: dict[str, str]) -> dict[str, Any]:
        tables = {ref: versions[ref] for ref in model.refs if ref in versions}
        return {"definition": model.definition, "tables": tables}

    # --- doing

    def tick(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Build the due models and run the due checks; return the runs (never raises)."""
        now = now or datetime.now(UTC)
        if self.settings.models_dir is None or not self._lock.acquire(blocking=False):
            return []
        try:
            return self._tick(now)
        except Exception:
            log.exception("models: the scheduler's tick failed")
            return []
        finally:
            self._lock.release()

    def _tick(self, now: datetime) -> list[dict[str, Any]]:
        project = self.project()
        latest = self.runs.latest()
        out = self._record_broken(project, latest, now)
        versions = self.versions()
        failed: set[str] = set()
        built: list[str] = []
        for model in project.models.values():
            if failed.intersection(model.deps):
                failed.add(model.name)
                continue
            trigger = self.reason(model, latest.get(model.name), versions, now)
            if trigger is None:
                continue
            run = self._build(model, trigger, versions, full_refresh=False, latest=latest, now=now)
            out.append(run)
            if run["status"] == "ok":
                built.append(model.name)
            else:
                failed.add(model.name)
        self._run_checks(project, built, now, scheduled=True)
        return out

    def run(
        self,
        names: list[str] | None = None,
        full_refresh: bool = False,
        downstream: bool = False,
        trigger: str = "manual",
        progress: Progress | None = None,
        checks: bool = True,
    ) -> list[dict[str, Any]]:
        """Build `names` (default: every model), with the models that read them when `downstream`, in dependency
        order; a model whose input failed is skipped, a file that cannot be used is reported failed (the tick
        records it). ModelError for unknown names."""
        with self._lock:
            project = self.project()
            unknown = sorted(set(names or ()) - set(project.models) - set(project.errors))
            if unknown:
                raise ModelError(f"no model named {', '.join(unknown)} in {self.settings.models_dir}")
            chosen = set(names) if names else set(project.models) | set(project.errors)
            if downstream:
                chosen = project.downstream(chosen)
            latest = self.runs.latest()
            versions = self.versions()
            failed: set[str] = set()
            out: list[dict[str, Any]] = []
            built: list[str] = []
            for name in sorted(chosen.intersection(project.errors)):  # files that cannot be used: reported
                failed.add(name)
                out.append({"model": name, "status": "failed", "error": project.errors[name]})
                if progress:
                    progress("done", out[-1])
            for model in project.models.values():
                if model.name not in chosen:
                    continue
                if failed.intersection(model.deps):
                    failed.add(model.name)
                    inputs = ", ".join(sorted(failed.intersection(model.deps)))
                    skipped = {"model": model.name, "status": "skipped", "error": f"input {inputs} failed"}
                    out.append(skipped)
                    if progress:
                        progress("skip", skipped)
                    continue
                if progress:
                    progress("start", {"model": model.name, "materialized": model.materialized})
                run = self._build(model, trigger, versions, full_refresh, latest, datetime.now(UTC))
                out.append(run)
                if progress:
                    progress("skip" if run["status"] == "skipped" else "done", run)
                if run["status"] == "skipped":
                    continue
                if run["status"] == "ok":
                    built.append(model.name)
                else:
                    failed.add(model.name)
            if checks:
                results = self._run_checks(project, built, datetime.now(UTC), scheduled=False)
                if progress and results:
                    progress("checks", {"results": results})
            return out

    def _build(
        self,
        model: Model,
        trigger: str,
        versions: dict[str, str],
        full_refresh: bool,
        latest: dict[str, Any],
        now: datetime,
    ) -> dict[str, Any]:
        """Build one model and record the run (started at the tick's `now`: the clock schedules are read with);
        `versions` gets the model's new table version. A model another process is building (the ops worker, the
        API in a server, another node) is skipped, not recorded: two builds of one table would fail each other."""
        with BuildLease(self.engine, model.name) as held:
            if not held:
                log.info("model %s is being built by another process: skipped", model.name)
                return {"model": model.name, "trigger": trigger, "status": "skipped",
                        "error": "being built by another process (the ops worker, a server, another node)",
                        "started_at": _iso(_naive(now))}  # fmt: skip
            return self._build_held(model, trigger, versions, full_refresh, latest, now)

    def _build_held(
        self,
        model: Model,
        trigger: str,
        versions: dict[str, str],
        full_refresh: bool,
        latest: dict[str, Any],
        now: datetime,
    ) -> dict[str, Any]:
        if self._query is None:  # opening the engine may create the lake's tables: read their versions after
            self.query  # noqa: B018
            versions.update(self.versions())
        inputs = self._inputs(model, versions)
        started = now
        clock = time.perf_counter()
        run: dict[str, Any] = {"model": model.name, "trigger": trigger, "started_at": _naive(started),
                               "inputs": inputs, "failures": 0}  # fmt: skip
        try:
            catalog = self.query.catalog
            if model.materialized == "incremental":
                inputs["snapshots"] = input_snapshots(catalog, list(model.refs))
                basis = None if full_refresh else self.runs.last_ok_run(model.name)
                lost = rows_removed(catalog, basis["inputs"].get("snapshots", {})) if basis else None
                if lost:
                    log.info("model %s: rows were deleted from %s: building every day", model.name, lost)
                    full_refresh = True
            done = build(model, self.query, catalog, full_refresh=full_refresh)
            run.update(status="ok", rows=done.rows, snapshot_id=done.snapshot_id, error=None, mode=done.mode)
            versions[model.name] = done.version
            self._tidy(model.name)
            log.info("model %s built (%s, %s): %d rows in %.1f s", model.name, trigger, done.mode, done.rows,
                     time.perf_counter() - clock)  # fmt: skip
        except Exception as exc:  # ModelError, or anything unexpected: recorded, never raised
            previous = latest.get(model.name)
            failures = (int(previous["failures"] or 1) if previous and previous["status"] != "ok" else 0) + 1
            run.update(status="failed", rows=None, snapshot_id=None, error=str(exc)[:4000], failures=failures)
            log.warning("model %s failed (%s): %s", model.name, trigger, exc)
        run["duration_s"] = round(time.perf_counter() - clock, 3)
        run["finished_at"] = _naive(started) + timedelta(seconds=run["duration_s"])
        try:
            run["run_id"] = self.runs.record(run)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("model %s: cannot record its run: %s", model.name, exc)
        return self._public(run)

    def _tidy(self, name: str) -> None:
        """Expire the model table's snapshots past `snapshot_retention_minutes` and delete the files none
        references any more (every build replaces files: without this a table's directory only grows)."""
        from headwater.lake.maintenance import Maintenance

        try:
            table = self.query.catalog.load_table((NAMESPACE, name))
            maintenance = Maintenance(self.settings, {name: table}, {})
            maintenance.expire(name)
            maintenance.sweep(name)
        except Exception as exc:  # the next build tries again
            log.warning("model %s: old snapshots not expired: %s", name, exc)

    def _record_broken(self, project: Project, latest: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
        """A failed run for each model file that cannot be used, once per distinct error."""
        out = []
        for name, error in sorted(project.errors.items()):
            digest = hashlib.sha256(error.encode()).hexdigest()[:16]
            last = latest.get(name)
            if last and last["status"] == "failed" and last["inputs"].get("definition") == digest:
                continue
            moment = _naive(now)
            failures = (int(last["failures"] or 1) if last and last["status"] != "ok" else 0) + 1
            run = {"model": name, "trigger": "schedule", "started_at": moment, "finished_at": moment,
                   "status": "failed", "rows": None, "duration_s": 0.0, "error": error, "snapshot_id": None,
                   "inputs": {"definition": digest}, "failures": failures}  # fmt: skip
            try:
                run["run_id"] = self.runs.record(run)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("model %s: cannot record its error: %s", name, exc)
            log.warning("model %s cannot be built: %s", name, error)
            out.append(self._public(run))
        return out

    def _public(self, run: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in run.items() if k != "inputs"}
        for key in ("started_at", "finished_at"):
            if isinstance(out.get(key), datetime):
                out[key] = _iso(out[key])
        return out

    # --- checks (headwater.models.checks, written beside this module)

    def _checker(self, run: bool) -> Any:
        """The CheckRunner that runs checks on the models' engine (`run`), or one that only reads results (so a
        tick with nothing to run opens no DuckDB)."""
        try:
            from headwater.models.checks import CheckRunner
        except ImportError:  # pragma: no cover - checks not installed
            return None
        if run:
            if self._checks is None:
                self._checks = CheckRunner(self.settings, self.engine, query=self.query)
            return self._checks
        if self._check_reader is None:
            self._check_reader = CheckRunner(self.settings, self.engine)
        return self._check_reader

    def _run_checks(self, project: Project, built: list[str], now: datetime, scheduled: bool) -> list[dict[str, Any]]:
        """The checks of the models just built, then (`scheduled`) the checks with a schedule that are due."""
        try:
            from headwater.models.checks import checks_on, load_checks

            declared = load_checks(self.settings.models_dir)
        except ImportError:  # pragma: no cover
            return []
        except Exception as exc:  # checks.toml cannot be read: say so each tick, build anyway
            log.warning("models: checks not run: %s", exc)
            return []
        if not declared:
            return []
        reader = self._checker(run=False)
        if reader is None:
            return []
        todo = checks_on([c for c in declared if c.schedule is None], built) if built else []
        if scheduled:
            names = {c.name for c in todo}
            todo += [c for c in reader.due_checks(now, declared, set(project.models)) if c.name not in names]
        if not todo:
            return []
        runner = self._checker(run=True)
        results = runner.run(todo, now)
        for result in results:
            if result.status != "pass":
                log.warning("check %s on %s: %s (%s)", result.check, result.table, result.status,
                            result.detail.get("message"))  # fmt: skip
        return [r.public() for r in results]

    # --- reading (API, CLI)

    def status(self, now: datetime | None = None) -> dict[str, Any]:
        """Every model with its SQL, configuration, inputs, last run and next run; broken files with their error."""
        now = now or datetime.now(UTC)
        project = self.project()
        latest = self.runs.latest()
        versions = self.versions()
        models = []
        for model in project.models.values():
            last = latest.get(model.name)
            due = self.reason(model, last, versions, now)
            models.append({
                "name": model.name, "file": model.path.name, "sql": model.sql, "config": model.config(),
                "deps": list(model.deps), "refs": list(model.refs), "description": model.description,
                "exists": model.name in versions, "last_run": self._public(last) if last else None,
                "next_run": self.next_run(model, last, now), "due": due is not None, "error": None,
            })  # fmt: skip
        for name, error in sorted(project.errors.items()):
            last = latest.get(name)
            models.append({"name": name, "file": f"{name}.sql", "sql": None, "config": None, "deps": [], "refs": [],
                           "description": "", "exists": name in versions, "next_run": None, "due": False,
                           "last_run": self._public(last) if last else None, "error": error})  # fmt: skip
        return {"models_dir": str(self.settings.models_dir) if self.settings.models_dir else None, "models": models}


class BuildLease:
    """The catalog lease `model:<name>` for the length of a build, renewed in the background (a build may take an
    hour; a process that dies holding it frees it within LEASE_TTL_S)."""

    LEASE_TTL_S = 120.0

    def __init__(self, engine: sa.Engine, model: str) -> None:
        holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.lease = Lease(engine, f"model:{model}", holder, self.LEASE_TTL_S)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> bool:
        if not self.lease.acquire():
            return False
        self._renewer = threading.Thread(target=self._renew, name="model-lease", daemon=True)
        self._renewer.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.LEASE_TTL_S / 4):
            try:
                self.lease.acquire()
            except sa.exc.SQLAlchemyError as exc:  # the catalog away for a moment: the next renewal may do
                log.warning("model lease not renewed: %s", exc)

    def __exit__(self, *_exc: object) -> None:
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            try:
                self.lease.release()
            except sa.exc.SQLAlchemyError:
                log.warning("model lease not released (it expires by itself)", exc_info=True)
