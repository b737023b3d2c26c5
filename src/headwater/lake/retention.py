"""Retention by whole day partitions, and the count of late events.

Retention: `events` (`events_retention_days`, partitioned by event day), `quarantine`
(`quarantine_retention_days`, by received day) and any other table of the namespace named in
`table_retention_days` (processor outputs by `event_time_day`, sources' own tables by `_received_at_day`).
A day partition goes when the whole day is older than now minus the retention; the day that holds the
cutoff is kept whole. The files of the partitions that go leave the table in ONE overwrite snapshot that
adds no file (nothing is rewritten) and carries the table's log offsets, so exactly-once bookkeeping holds;
the files disappear from disk with the usual snapshot expiry and sweep (`headwater.lake.maintenance`), and
the rollups of `events` files with them. A concurrent commit makes the drop fail harmlessly: the next
maintenance round tries again. A check costs one manifest list read when nothing is due: the partition
bounds of each manifest say whether it can hold an old day, and only those manifests are read.

Late events: an event is late by `received_at - timestamp` (event time after clock-skew correction). The
lake writer counts what it commits per age bucket (`record_late`): 1h-6h, 6h-24h, 24h up to the lateness
bound, and `beyond` it; less than an hour is not late. Late events are stored like any other, in their own
day: nothing clamps an event time.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.manifest import DataFile, ManifestContent
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DateType

from headwater.core import metrics
from headwater.core.settings import Settings
from headwater.lake.tables import NAMESPACE, SPECS, carried_offsets

log = logging.getLogger(__name__)
DAY_S = 86_400
US_PER_HOUR = 3_600_000_000
LATE_EDGES_H = (1.0, 6.0, 24.0)
RETENTION_PROPERTY = "headwater.retention-dropped-before"
"""Snapshot summary property of a retention drop: the first day kept (ISO date)."""


@dataclass
class Dropped:
    """What one retention drop removed from a table."""

    table: str
    first_kept: date
    partitions: int
    files: int
    rows: int


def retention_days(settings: Settings) -> dict[str, int]:
    """Retention in days per table name (tables kept forever are left out).

    `table_retention_days` names the other tables; `events` and `quarantine` have settings of their own."""
    days = {name: n for name, n in settings.table_retention_days.items() if name not in SPECS}
    days["events"] = settings.events_retention_days
    days["quarantine"] = settings.quarantine_retention_days
    return {name: n for name, n in days.items() if n > 0}


def first_kept_day(days: int, now_s: float) -> int:
    """Days since 1970-01-01 of the oldest partition kept: the day holding the cutoff `now - days`."""
    return math.floor((now_s - days * DAY_S) / DAY_S)


def _day_positions(table: Table) -> dict[int, int]:
    """Per partition spec id, the position of its day field (files of specs without one are kept)."""
    positions: dict[int, int] = {}
    for spec_id, spec in table.specs().items():
        for position, field in enumerate(spec.fields):
            if isinstance(field.transform, DayTransform):
                positions[spec_id] = position
                break
    return positions


def expired_files(table: Table, first_kept: int) -> dict[int, list[DataFile]]:
    """Data files of the current snapshot whose day partition is before `first_kept`, by day."""
    snapshot = table.current_snapshot()
    found: dict[int, list[DataFile]] = defaultdict(list)
    if snapshot is None:
        return found
    positions = _day_positions(table)
    for manifest in snapshot.manifests(table.io):
        position = positions.get(manifest.partition_spec_id)
        if position is None or manifest.content != ManifestContent.DATA:
            continue
        summaries = manifest.partitions or []
        lower = summaries[position].lower_bound if position < len(summaries) else None
        if lower is not None and int(from_bytes(DateType(), lower)) >= first_kept:
            continue  # no old day in this manifest: not read
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            day = entry.data_file.partition[position]
            if day is not None and day < first_kept:
                found[day].append(entry.data_file)
    return found


def drop_files(table: Table, files: list[DataFile], properties: dict[str, str]) -> None:
    """One overwrite snapshot removing `files` and adding none."""
    with table.transaction() as tx, tx.update_snapshot(snapshot_properties=properties).overwrite() as overwrite:
        for data_file in files:
            overwrite.delete_data_file(data_file)


class Retention:
    """Drops the day partitions past each table's retention; run by the writer's maintenance."""

    def __init__(self, settings: Settings, tables: dict[str, Table]) -> None:
        self.settings = settings
        self.tables = tables  # the lake writer's own (events, quarantine), refreshed by maintenance
        self.others: dict[str, Table] = {}
        """Other tables with a retention, as last loaded (maintenance expires and sweeps them)."""

    def run(self, now: float | None = None) -> list[Dropped]:
        """Drop what is due in every table with a retention; return what went."""
        now = time.time() if now is None else now
        done: list[Dropped] = []
        for name, days in retention_days(self.settings).items():
            table = self._table(name)
            if table is None:
                continue
            try:
                dropped = self.drop(name, table, first_kept_day(days, now))
            except CommitFailedException:
                log.info("retention of %s lost a race with a commit; it runs again next round", name)
                table.refresh()
                continue
            if dropped is not None:
                done.append(dropped)
        return done

    def drop(self, name: str, table: Table, first_kept: int) -> Dropped | None:
        """Remove the files of `table`'s day partitions before `first_kept` (days since 1970-01-01)."""
        by_day = expired_files(table, first_kept)
        if not by_day:
            return None
        files = [data_file for day_files in by_day.values() for data_file in day_files]
        kept = date(1970, 1, 1) + timedelta(days=first_kept)
        drop_files(table, files, {**carried_offsets(table), RETENTION_PROPERTY: kept.isoformat()})
        rows = sum(data_file.record_count for data_file in files)
        metrics.RETENTION_PARTITIONS.labels(name).inc(len(by_day))
        metrics.RETENTION_ROWS.labels(name).inc(rows)
        oldest = date(1970, 1, 1) + timedelta(days=min(by_day))
        log.info(
            "retention: dropped %d day partitions of %s (%s to %s; %d files, %d rows); kept from %s on",
            len(by_day), name, oldest, kept - timedelta(days=1), len(files), rows, kept,
        )  # fmt: skip
        return Dropped(name, kept, len(by_day), len(files), rows)

    def _table(self, name: str) -> Table | None:
        """The writer's table, or another table of the namespace loaded afresh (None when there is none)."""
        if name in self.tables:
            return self.tables[name]
        catalog = next(iter(self.tables.values())).catalog
        try:
            self.others[name] = catalog.load_table((NAMESPACE, name))
        except NoSuchTableError:
            self.others.pop(name, None)
            return None
        return self.others[name]


def late_buckets(bound_hours: float) -> list[tuple[float, str]]:
    """(lowest age in hours, label) of each late bucket, youngest first; the last is `beyond` the bound."""
    edges = [edge for edge in LATE_EDGES_H if edge < bound_hours]
    highs = [*edges[1:], bound_hours][: len(edges)]
    buckets = [(low, f"{low:g}h-{high:g}h") for low, high in zip(edges, highs, strict=True)]
    return [*buckets, (max(bound_hours, LATE_EDGES_H[0]), "beyond")]


def count_late(events: pa.Table, bound_hours: float) -> dict[str, int]:
    """Rows of `events` by how late they arrived: age bucket -> count (buckets without rows left out)."""
    if events.num_rows == 0:
        return {}
    received = pc.cast(events.column("received_at"), pa.int64()).to_numpy()
    happened = pc.cast(events.column("timestamp"), pa.int64()).to_numpy()
    buckets = late_buckets(bound_hours)
    lows = np.array([low * US_PER_HOUR for low, _ in buckets])
    index = np.searchsorted(lows, received - happened, side="right") - 1  # -1: under an hour, not late
    counts = np.bincount(index[index >= 0], minlength=len(buckets))
    return {label: int(n) for (_, label), n in zip(buckets, counts.tolist(), strict=True) if n}


def record_late(events: pa.Table, bound_hours: float, table: str = "events") -> None:
    """Add the committed rows of `events` to the late-events metric."""
    for age, n in count_late(events, bound_hours).items():
        metrics.LATE_EVENTS.labels(table, age).inc(n)
