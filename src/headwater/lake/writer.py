"""The lake writer: consumer group `lake` on the log, committing Iceberg snapshots exactly once.

Exactly-once across crashes: every snapshot records, in its summary, the next log offset per
partition it covers. Commit order is events table, quarantine table, then the group offsets.
On start (or after any failure) the writer resumes from the group offsets and, per table, skips
records below that table's recorded offsets, so a crash between any two steps neither loses nor
duplicates a row.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson
from pyiceberg.table import Table

from headwater.core import metrics
from headwater.core.errors import LakeError
from headwater.core.events import RowBuilder
from headwater.core.settings import Settings
from headwater.lake.maintenance import Maintenance
from headwater.lake.tables import ensure_tables, offsets_property, open_catalog, snapshot_offsets
from headwater.log.base import Consumer, Record

log = logging.getLogger(__name__)
GROUP = "lake"


class LakeWriter:
    """Polls the log, buffers rows, commits by size or age, runs maintenance between flushes."""

    def __init__(self, settings: Settings, consumer: Consumer, log_id: str, partitions: int) -> None:
        self.settings = settings
        self.consumer = consumer
        self.log_id = log_id
        self.partitions = partitions
        self.catalog = open_catalog(settings)
        self.tables: dict[str, Table] = ensure_tables(self.catalog)
        self.maintenance = Maintenance(settings, self.tables)
        self.table_offsets: dict[str, dict[int, int]] = {}
        self.commits = 0
        self._builder = RowBuilder()
        self._buffer_started: float | None = None
        self.recover()

    def recover(self) -> None:
        """Reload table offsets and seek the consumer back to the committed group offsets."""
        for name in self.tables:  # in place: Maintenance shares this dict
            self.tables[name] = self.catalog.load_table(f"headwater.{name}")
            self.table_offsets[name] = snapshot_offsets(self.tables[name])
        committed = self.consumer.committed()
        for partition in range(self.partitions):
            if partition in committed:
                self.consumer.seek(partition, committed[partition])
        self._builder = RowBuilder()
        self._buffer_started = None

    def add(self, records: list[Record]) -> None:
        events_from = self.table_offsets["events"]
        quarantine_from = self.table_offsets["quarantine"]
        builder = self._builder
        for record in records:
            envelope = orjson.loads(record.value)
            floor = quarantine_from if "q" in envelope else events_from
            if record.offset < floor.get(record.partition, 0):
                continue  # already in that table (crash after its commit)
            builder.add(envelope, self.log_id, record.partition, record.offset)
        if records and self._buffer_started is None:
            self._buffer_started = time.monotonic()

    def due(self) -> bool:
        if self._buffer_started is None:
            return False
        if self._builder.event_count + self._builder.quarantine_count >= self.settings.flush_events:
            return True
        return (time.monotonic() - self._buffer_started) * 1000 >= self.settings.flush_interval_ms

    def flush(self) -> int:
        """Commit the buffer; return rows written. On failure, recover and re-raise."""
        positions = {p: self.consumer.position(p) for p in range(self.partitions)}
        events, quarantine = self._builder.tables()
        props = offsets_property(positions)
        try:
            for name, table in (("events", events), ("quarantine", quarantine)):
                if table.num_rows:
                    started = time.perf_counter()
                    self.tables[name].append(table, snapshot_properties=props)
                    metrics.LAKE_COMMIT_SECONDS.observe(time.perf_counter() - started)
                    metrics.LAKE_COMMITS.labels(name).inc()
                    metrics.LAKE_ROWS.labels(name).inc(table.num_rows)
                    self.table_offsets[name] = dict(positions)
                    self.commits += 1
            self.consumer.commit(positions)
        except Exception as exc:
            log.exception("lake commit failed; recovering from the last committed state")
            self.recover()
            raise LakeError(f"lake commit failed: {exc}") from exc
        self._builder = RowBuilder()
        self._buffer_started = None
        return events.num_rows + quarantine.num_rows

    def run(self, stop: threading.Event, idle_poll_s: float = 0.05) -> None:
        """Main loop until `stop` is set; flushes what it holds before returning."""
        last_maintenance = time.monotonic()
        while not stop.is_set():
            timeout = idle_poll_s
            if self._buffer_started is not None:
                age = time.monotonic() - self._buffer_started
                timeout = max(0.0, min(timeout, self.settings.flush_interval_ms / 1000 - age))
            batch = self.consumer.poll(min(50_000, self.settings.flush_events), timeout)
            self.add(batch)
            if self.due():
                try:
                    self.flush()
                except LakeError:
                    stop.wait(1.0)
            if time.monotonic() - last_maintenance >= self.settings.maintenance_interval_s and not self.due():
                last_maintenance = time.monotonic()
                self.run_maintenance()
        self.drain()

    def drain(self) -> None:
        """Read everything available now and commit it (graceful shutdown)."""
        while True:
            batch = self.consumer.poll(50_000, 0)
            if not batch:
                break
            self.add(batch)
            if self.due():
                self.flush()
        if self._buffer_started is not None:
            self.flush()

    def run_maintenance(self) -> None:
        try:
            self.maintenance.run(self.table_offsets)
        except Exception:
            log.exception("table maintenance failed; reloading the tables, will retry")
            for name in self.tables:
                self.tables[name] = self.catalog.load_table(f"headwater.{name}")
