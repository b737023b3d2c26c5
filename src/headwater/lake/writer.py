"""The lake writer: consumer group `lake` on the log, committing Iceberg snapshots exactly once.

Exactly-once across crashes, rebalances and concurrent writers:
- Every snapshot records, in its summary, the next log offset of *every* partition (the offsets the
  table held, updated with this writer's partitions), so the newest snapshot is the whole truth.
- Commit order: quarantine table, events table, then the group offsets. On start, after a failure
  or after a rebalance, the writer drops what it buffered, seeks back to the group offsets and, per
  table, skips records below that table's recorded offsets: a crash between any two steps neither
  loses nor duplicates a row. Valid events that a stage (a tracking plan) sends to quarantine are why
  quarantine goes first: read again after a crash between the two commits, they pass the stages again
  and only the ones quarantine does not hold yet are added to it.
- Before each Iceberg commit the writer checks that the table still records, for each of its
  partitions, the offset it last saw. If another writer took a partition over (after a rebalance
  this one did not notice yet) the check fails, the buffer is dropped and the writer re-reads the
  table. Iceberg's optimistic concurrency makes check-then-commit atomic: when another writer
  commits in between, the commit fails, the table is refreshed and the check runs again.
- When the log does not de-duplicate messageIds itself (Kafka), claims in the catalog database do
  (`headwater.lake.coordination`), written before the Iceberg commit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Collection

import numpy as np
import orjson
import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from headwater.core import metrics
from headwater.core.errors import LakeError
from headwater.core.events import RowBuilder, message_id_of
from headwater.core.settings import Settings
from headwater.core.stages import BatchStage, StageBatch, stored_columns
from headwater.lake.columns import add_missing_columns, quarantine_rows
from headwater.lake.coordination import OPS_LEASE, ClaimStore, Lease, open_engine
from headwater.lake.layout import file_writers
from headwater.lake.maintenance import Maintenance
from headwater.lake.retention import record_late
from headwater.lake.tables import ensure_tables, offsets_property, open_catalog, snapshot_offsets
from headwater.log.base import Consumer, EventLog, Record

log = logging.getLogger(__name__)
GROUP = "lake"
COMMIT_ATTEMPTS = 20
IDLE_COMMIT_S = 5.0


class PartitionTakenOver(LakeError):
    """Another writer committed one of this writer's partitions: it was reassigned."""


class LakeWriter:
    """Polls the log, buffers rows, commits by size or age, runs maintenance between flushes."""

    def __init__(
        self, settings: Settings, consumer: Consumer, event_log: EventLog, stages: list[BatchStage] | None = None
    ) -> None:
        self.settings = settings
        self.stages = list(stages or [])  # run on every batch before it lands (headwater.core.stages)
        self._values: list[bytes] = []  # with stages: the log record of each buffered event row
        self.consumer = consumer
        self.log_id = event_log.log_id
        self.offsets_key = event_log.offsets_key
        self.catalog = open_catalog(settings)
        self.tables: dict[str, Table] = ensure_tables(self.catalog)
        engine = open_engine(settings.effective_catalog_uri)
        self.claims = (
            None if event_log.deduplicates else ClaimStore(engine, settings.dedupe_window_hours * 3600, self.log_id)
        )
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        lease_s = max(60.0, settings.maintenance_interval_s * 3)
        self.files = file_writers(settings, engine)
        self.maintenance = Maintenance(
            settings, self.tables, self.files, Lease(engine, "maintenance", holder, lease_s), self.claims
        )
        self.ops_lease = Lease(engine, OPS_LEASE, holder, lease_s)  # only read: is an ops worker doing maintenance?
        self.table_offsets: dict[str, dict[int, int]] = {}
        self.commits = 0
        self.generation = -1
        self.broken = True
        self._builder = RowBuilder(inputs=bool(self.stages))
        self._claims: list[tuple[str, str, int, int]] = []
        self._claim_rows: list[int] = []
        self._buffer_started: float | None = None
        self.recover()

    def recover(self) -> None:
        """Drop the buffer, reload table offsets, seek owned partitions back to the group offsets.

        Until it has succeeded (`broken` is False again) the writer neither polls nor commits
        anything, not even group offsets: positions read before the failure must not be committed.
        """
        self.broken = True
        self._reset_buffer()
        for name in self.tables:  # in place: Maintenance shares this dict
            self.tables[name] = self.catalog.load_table(f"headwater.{name}")
            self.table_offsets[name] = snapshot_offsets(self.tables[name], self.offsets_key)
        self.generation = self.consumer.generation
        owned = self.consumer.assignment()
        if owned:
            committed = self.consumer.committed()
            for partition in owned:
                floor = min(offsets.get(partition, 0) for offsets in self.table_offsets.values())
                self.consumer.seek(partition, committed.get(partition, floor))
        self.broken = False

    def _try_recover(self) -> None:
        try:
            self.recover()
        except Exception:
            log.exception("recovery failed (catalog, storage or log unavailable?); will retry")

    def _reset_buffer(self) -> None:
        self._builder = RowBuilder(inputs=bool(self.stages))
        self._claims, self._claim_rows = [], []
        self._values = []
        self._buffer_started = None

    def add(self, records: list[Record]) -> None:
        events_from = self.table_offsets["events"]
        quarantine_from = self.table_offsets["quarantine"]
        builder = self._builder
        claims = self.claims is not None
        values = self._values.append if self.stages else None
        for record in records:
            envelope = orjson.loads(record.value)
            floor = quarantine_from if "q" in envelope else events_from
            if record.offset < floor.get(record.partition, 0):
                continue  # already in that table (crash after its commit)
            if (claims or values) and "e" in envelope:
                row = builder.event_count
                builder.add(envelope, self.log_id, record.partition, record.offset)
                if builder.event_count == row:
                    continue
                if values is not None:
                    values(record.value)
                if claims:
                    message_id = message_id_of(envelope["e"]) if isinstance(envelope["e"], dict) else None
                    if not message_id and "rp" in envelope["m"]:  # a replay from quarantine lands once
                        message_id = f"replay:{envelope['m']['rp']}"
                    if message_id:
                        self._claims.append((envelope["m"]["src"], message_id, record.partition, record.offset))
                        self._claim_rows.append(row)
            else:
                builder.add(envelope, self.log_id, record.partition, record.offset)
        if records and self._buffer_started is None:
            self._buffer_started = time.monotonic()

    def due(self) -> bool:
        if self._buffer_started is None:
            return False
        if self._builder.event_count + self._builder.quarantine_count >= self.settings.flush_events:
            return True
        return (time.monotonic() - self._buffer_started) * 1000 >= self.settings.flush_interval_ms

    def _drop_duplicates(self, events: pa.Table, quarantined: Collection[int] = ()) -> pa.Table:
        """`events` without the rows claimed before (Kafka), and without the rows stages quarantined (whose
        messageIds are not claimed: a replay of them must land)."""
        claims = [(c, row) for c, row in zip(self._claims, self._claim_rows, strict=True) if row not in quarantined]
        repeated = self.claims.duplicates([c for c, _ in claims]) if self.claims is not None and claims else set()
        if not repeated and not quarantined:
            return events
        if repeated:
            metrics.EVENTS_DUPLICATE.inc(len(repeated))
        keep = np.ones(events.num_rows, dtype=bool)
        keep[[claims[index][1] for index in repeated]] = False
        keep[list(quarantined)] = False
        return events.filter(pa.array(keep))

    def _run_stages(self, events: pa.Table, quarantine: pa.Table) -> tuple[pa.Table, pa.Table, dict[int, str]]:
        """Events through every stage; the rows they quarantined appended to `quarantine`."""
        batch = StageBatch(events)
        for stage in self.stages:
            batch = stage.apply(batch)
            if batch.events.num_rows != events.num_rows:
                raise LakeError(f"stage {stage.name} changed the number of rows; rows leave only by quarantine")
        floor = self.table_offsets["quarantine"]
        if batch.quarantined and floor:  # read again after a crash between the two commits: some are there already
            picked = batch.events.select(["_log_partition", "_log_offset"]).take(list(batch.quarantined))
            where = zip(picked.column(0).to_pylist(), picked.column(1).to_pylist(), strict=True)
            pending = {
                row: batch.quarantined[row]
                for row, (partition, offset) in zip(batch.quarantined, where, strict=True)
                if offset >= floor.get(partition, 0)
            }
        else:
            pending = batch.quarantined
        if pending:
            moved = quarantine_rows(batch.events, pending, self._values)
            quarantine = pa.concat_tables([quarantine, moved.cast(quarantine.schema)])
            metrics.EVENTS_QUARANTINED_BY_STAGE.inc(len(pending))
        return stored_columns(batch.events), quarantine, batch.quarantined

    def _clean_quarantine(self, quarantine: pa.Table) -> pa.Table:
        """Quarantine's `raw` through the stages that clean it (`clean_raw`, headwater.core.stages)."""
        cleaners = [stage.clean_raw for stage in self.stages if hasattr(stage, "clean_raw")]
        if not cleaners or quarantine.num_rows == 0:
            return quarantine
        raw = quarantine.column("raw").combine_chunks()
        for clean in cleaners:
            raw = clean(raw)
        return quarantine.set_column(quarantine.schema.get_field_index("raw"), quarantine.field("raw"), raw)

    def flush(self) -> int:
        """Commit the buffer; return rows written. On failure, recover and re-raise."""
        positions = self.consumer.positions()
        events, quarantine = self._builder.tables()
        try:
            quarantined: dict[int, str] = {}
            if self.stages and events.num_rows:
                events, quarantine, quarantined = self._run_stages(events, quarantine)
            quarantine = self._clean_quarantine(quarantine)
            events = self._drop_duplicates(events, quarantined)
            if events.num_rows:
                add_missing_columns(self.tables["events"], events)
            for name, table in (("quarantine", quarantine), ("events", events)):
                if table.num_rows:
                    self._commit(name, table, positions)
            self.consumer.commit(positions)
        except PartitionTakenOver as exc:
            log.warning("%s; dropping the buffer and re-reading the table", exc)
            self._try_recover()
            return 0
        except Exception as exc:
            log.exception("lake commit failed; recovering from the last committed state")
            self._try_recover()
            raise LakeError(f"lake commit failed: {exc}") from exc
        self._reset_buffer()
        return events.num_rows + quarantine.num_rows

    def _commit(self, name: str, rows: pa.Table, positions: dict[int, int]) -> None:
        """Append `rows` with the merged offsets, if this writer still owns its partitions there."""
        table = self.tables[name]
        files = None
        for attempt in range(COMMIT_ATTEMPTS):
            current = snapshot_offsets(table, self.offsets_key)
            known = self.table_offsets[name]
            moved = sorted(p for p in positions if current.get(p, 0) != known.get(p, 0))
            if moved:
                if files is not None:  # every append so far failed its commit: nothing references them
                    self.files[name].discard(table, files)
                raise PartitionTakenOver(f"{name}: partitions {moved} were committed by another writer")
            merged = {**current, **{p: max(o, current.get(p, 0)) for p, o in positions.items()}}
            started = time.perf_counter()
            if files is None:  # written once; a retry after a conflict commits the same files
                files = self.files[name].write(table, rows)
            try:
                self.files[name].append(table, files, offsets_property(merged, self.offsets_key))
            except CommitFailedException:
                metrics.LAKE_COMMIT_CONFLICTS.labels(name).inc()
                time.sleep(min(1.0, 0.01 * 2**attempt))
                table.refresh()  # another writer committed first: check and try again
                continue
            metrics.LAKE_COMMIT_SECONDS.observe(time.perf_counter() - started)
            metrics.LAKE_COMMITS.labels(name).inc()
            metrics.LAKE_ROWS.labels(name).inc(rows.num_rows)
            metrics.LAKE_LAST_COMMIT.labels(name).set(time.time())
            if name == "events":
                record_late(rows, self.settings.lateness_bound_hours)
            self.table_offsets[name] = merged
            self.commits += 1
            return
        if files is not None:
            self.files[name].discard(table, files)
        raise LakeError(f"{name}: gave up after {COMMIT_ATTEMPTS} conflicting commits")

    def poll(self, timeout_s: float) -> int:
        """Read and buffer one batch; return records read. After a rebalance, start over from the
        committed state (the batch may straddle the rebalance: it is read again from the offsets)."""
        batch = self.consumer.poll(min(50_000, self.settings.flush_events), timeout_s)
        if self.consumer.generation != self.generation:
            log.info("partitions now owned: %s", self.consumer.assignment())
            self.recover()
            return -1
        self.add(batch)
        return len(batch)

    def run(self, stop: threading.Event, idle_poll_s: float = 0.05) -> None:
        """Main loop until `stop` is set; flushes what it holds before returning."""
        last_maintenance = last_offsets = time.monotonic()
        while not stop.is_set():
            timeout = idle_poll_s
            if self._buffer_started is not None:
                age = time.monotonic() - self._buffer_started
                timeout = max(0.0, min(timeout, self.settings.flush_interval_ms / 1000 - age))
            if self.broken:
                self._try_recover()
                if self.broken:
                    stop.wait(1.0)
                    continue
            try:
                self.poll(timeout)
                if self.due():
                    self.flush()
            except LakeError:
                stop.wait(1.0)
                continue
            except Exception:
                log.exception("lake writer step failed; recovering from the last committed state")
                self.broken = True
                continue
            if self._buffer_started is None and time.monotonic() - last_offsets >= IDLE_COMMIT_S:
                last_offsets = time.monotonic()
                self.consumer.commit(self.consumer.positions())  # one refused during a rebalance is repeated
            if time.monotonic() - last_maintenance >= self.settings.maintenance_interval_s and not self.due():
                last_maintenance = time.monotonic()
                self.run_maintenance()
        self.drain()

    def drain(self) -> None:
        """Read everything available now and commit it (graceful shutdown)."""
        if self.broken:
            self._try_recover()
        if self.broken:
            log.error("not draining: the writer could not recover; the next start resumes from the offsets")
            return
        while self.poll(0.2) != 0:
            if self.due():
                self.flush()
        if self._buffer_started is not None:
            self.flush()

    def run_maintenance(self) -> None:
        """Table maintenance here, unless an ops worker (niced, its own process) is alive to do it."""
        try:
            if self.ops_lease.held_elsewhere():
                if self.maintenance.lease is not None:  # hand the maintenance lease over now, not when it expires
                    self.maintenance.lease.release()
                return
            self.maintenance.run()
        except CommitFailedException:
            log.info("table maintenance lost a race with a commit; it runs again next round")
            self._reload_tables()
        except Exception:
            log.exception("table maintenance failed; reloading the tables, will retry")
            self._reload_tables()

    def _reload_tables(self) -> None:
        try:
            for name in self.tables:  # in place: Maintenance shares this dict
                self.tables[name] = self.catalog.load_table(f"headwater.{name}")
        except Exception:
            log.exception("cannot reload the tables; recovering")
            self.broken = True
