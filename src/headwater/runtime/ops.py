"""The ops worker: builds SQL models and runs data checks on their schedules, and evaluates alert rules.

One process beside the writer, niced (`background_nice`) so the OS serves ingestion first when the cores are busy.
In a cluster every node may run one; the catalog lease "ops" lets one act at a time (another takes over when the
holder stops renewing it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from headwater.core.settings import Settings

log = logging.getLogger(__name__)
LEASE_TTL_S = 60.0


class Ticking(Protocol):
    def tick(self, now: float) -> Any: ...


def lower_priority(settings: Settings) -> None:
    """Background work yields the cores to ingestion: niced (per process; raising it needs no privilege), and
    Arrow's compute pool of one thread (compaction and deletion rewrites read and write Parquet with it)."""
    import pyarrow as pa

    pa.set_cpu_count(1)
    if settings.background_nice:
        try:
            os.nice(settings.background_nice)
        except OSError as exc:
            log.warning("could not lower this process's priority: %s", exc)


class MaintenanceJob:
    """Table maintenance (retention, compaction, snapshot expiry, sweeps) away from the lake writer's loop.

    While an ops worker holds its lease the writers skip maintenance, so a compaction never pauses a flush; when the
    ops worker stops, its lease expires and the writers take maintenance back.
    """

    def __init__(self, settings: Settings) -> None:
        from headwater.lake.coordination import ClaimStore, Lease, open_engine
        from headwater.lake.layout import file_writers
        from headwater.lake.maintenance import Maintenance
        from headwater.lake.tables import ensure_tables, open_catalog
        from headwater.log import open_log
        from headwater.privacy.requests import DeletionStore

        self.catalog = open_catalog(settings)
        self.tables = ensure_tables(self.catalog)
        engine = open_engine(settings.effective_catalog_uri)
        event_log = open_log(settings)
        claims = None
        if not event_log.deduplicates:
            claims = ClaimStore(engine, settings.dedupe_window_hours * 3600, event_log.log_id)
        holder = f"ops:{socket.gethostname()}:{settings.data_dir.resolve()}"
        lease = Lease(engine, "maintenance", holder, max(60.0, settings.maintenance_interval_s * 3))
        self.maintenance = Maintenance(settings, self.tables, file_writers(settings, engine), lease, claims)
        self.deletions = DeletionStore(engine)

    def tick(self, now: float) -> None:
        from pyiceberg.exceptions import CommitFailedException

        if self.deletions.in_progress():  # its rewrite first: compacting the files it rewrites starves it
            log.info("table maintenance waits for the deletion in progress")
            return
        try:
            self.maintenance.run()
        except CommitFailedException:
            log.info("table maintenance lost a race with a commit; it runs again next round")
            self._reload()
        except Exception:
            self._reload()
            raise

    def _reload(self) -> None:
        for name in self.tables:  # in place: Maintenance shares this dict
            self.tables[name] = self.catalog.load_table(f"headwater.{name}")


class ModelJob:
    """The model scheduler on the ops clock (it takes the time as a datetime)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def tick(self, now: float) -> Any:
        return self.scheduler.tick(datetime.fromtimestamp(now, UTC))


def trend_alerts(settings: Settings) -> Any:
    """The trend alert rules (alerts/trends.py) as a condition source; their saved trends run in this process on an
    InsightEngine (with cohorts) opened at the first evaluation."""
    from headwater.alerts.evaluator import dashboard_base
    from headwater.alerts.trends import TrendAlertSource
    from headwater.boards.store import BoardStore

    def runner() -> Any:
        from headwater.cohorts.store import CohortStore
        from headwater.insights.engine import InsightEngine
        from headwater.query.engine import QueryEngine

        cohorts = CohortStore(settings.store_uri("app"))
        return InsightEngine(QueryEngine(settings), cache_entries=64, cohorts=cohorts.resolver).run

    boards = BoardStore(settings.store_uri("app"))
    return TrendAlertSource(settings, boards.insight, runner, dashboard_base(settings))


class OpsLoop:
    """Calls each job's `tick(now)` at its own interval while this node holds the ops lease."""

    def __init__(self, settings: Settings) -> None:
        from headwater.lake.coordination import OPS_LEASE, Lease, open_engine

        self.settings = settings
        self.engine = open_engine(settings.effective_catalog_uri)
        # the same holder after a restart on this node retakes the lease at once rather than wait for it to expire
        holder = f"{socket.gethostname()}:{settings.data_dir.resolve()}"
        self.lease = Lease(self.engine, OPS_LEASE, holder, LEASE_TTL_S)
        self.jobs: list[tuple[str, Ticking, float]] = [
            ("maintenance", MaintenanceJob(settings), settings.maintenance_interval_s)
        ]
        if settings.models_dir is not None:
            from headwater.models.scheduler import ModelScheduler

            self.jobs.append(("models", ModelJob(ModelScheduler(settings, self.engine)), settings.models_poll_s))
        if settings.alerts_enabled:
            from headwater.alerts.evaluator import AlertEvaluator

            evaluator = AlertEvaluator(settings, self.engine, extra_conditions=[trend_alerts(settings)])
            self.jobs.append(("alerts", evaluator, settings.alert_interval_s))
        self.last: dict[str, float] = {}

    def run(self, stop: threading.Event) -> None:
        holding = False
        lease_checked = 0.0
        while not stop.is_set():
            now = time.time()
            if now - lease_checked >= LEASE_TTL_S / 4:
                lease_checked = now
                try:
                    acquired = self.lease.acquire()
                except Exception as exc:  # the catalog database is away for a moment: try again later
                    log.warning("ops lease not renewed: %s", exc)
                    acquired = False
                if acquired != holding:
                    log.info("ops work %s on this node", "runs" if acquired else "runs elsewhere")
                    holding = acquired
            if holding:
                self.tick_due(now)
            stop.wait(min([1.0, *(interval for _, _, interval in self.jobs)]))
        if holding:
            try:
                self.lease.release()
            except Exception:
                log.warning("ops lease not released (it expires by itself)", exc_info=True)

    def tick_due(self, now: float) -> None:
        for name, job, interval in self.jobs:
            if now - self.last.get(name, 0.0) < interval:
                continue
            self.last[name] = now
            try:
                job.tick(now)
            except Exception:  # a job records its own failures; this keeps the others running
                log.exception("%s: tick failed", name)
