"""GA4 / Firebase BigQuery export import: a day of a source replaced in one commit.

BigQuery holds one table per day (`events_YYYYMMDD`), an intraday table that is replaced as corrected rows
arrive until the daily table exists, and daily tables change for up to 72 hours. So importing is not
appending: importing the files of day D for source S *replaces* exactly S's rows whose GA4 `event_date` is D
(found by their `ga4-D-` event id prefix, headwater.lake.ga4_map), whatever imports came before:

- Files are grouped by the day in their name (BigQuery's table name, kept by every export path); a day
  with a daily table ignores its intraday files (superseded). Files without a day in their name form one
  group, which replaces the days its rows hold.
- A group's rows are read (headwater.lake.ga4_read), checked, mapped, and written as data files through
  the events table's FileWriter (sorted, with rollups and shredded properties), in chunks of CHUNK_ROWS.
  Then `headwater.lake.rewrite.Rewriter` swaps them in: ONE overwrite snapshot removes the day's old rows
  (from the files of day partitions D-1..D+1: event_date is local to the property's time zone, timestamps
  are UTC) and adds the new ones, retried over concurrent commits. A query sees the old day or the new day,
  never neither nor both; a re-run gives the same rows with the same ids.
- Rows that cannot be events (no event_name, a timestamp far from the event_date, a value of the wrong type,
  a line that is not JSON) go to `quarantine` with the file, the row and the reason, after the events commit.
  Rows of people under suppression (headwater.core.erasure: deleted, for a period) are dropped and counted.
- What each day's import held is recorded in `headwater_ga4_days` (catalog database): the reconciliation
  (`headwater import --format ga4 --report`, `GET /api/imports/ga4/reconcile`) compares it, or files given
  again, with the rows in the lake per day.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import StringType

from headwater.core.database import open_store
from headwater.core.erasure import Suppressor
from headwater.core.errors import ImportFileError
from headwater.core.events import QUARANTINE_SCHEMA
from headwater.core.settings import Settings
from headwater.lake.coordination import open_engine
from headwater.lake.ga4_map import date_days, invalid_rows, map_rows
from headwater.lake.ga4_read import Block, ExportFile, Rejected, read_export
from headwater.lake.layout import FileWriter, file_writers
from headwater.lake.rewrite import Rewriter, RewriteStats
from headwater.lake.tables import carried_offsets, close_catalog, ensure_tables, open_catalog

log = logging.getLogger(__name__)
CHUNK_ROWS = 200_000
"""Events rows mapped before they are written as data files (bounded memory for days of millions of rows)."""
ENDPOINT = "import.ga4"
IMPORT_PROPERTY = "headwater.ga4-import"
DAY = re.compile(r"^[0-9]{8}$")
SOURCE_FIELD_ID = 11
Progress = Callable[[str, int], None]
"""Called with a file name and the rows just read from it."""

METADATA = sa.MetaData()
DAYS = sa.Table(
    "headwater_ga4_days",
    METADATA,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("event_date", sa.String(8), primary_key=True),
    sa.Column("file_rows", sa.BigInteger, nullable=False),
    sa.Column("quarantined", sa.BigInteger, nullable=False),
    sa.Column("suppressed", sa.BigInteger, nullable=False),
    sa.Column("imported", sa.BigInteger, nullable=False),
    sa.Column("intraday", sa.Boolean, nullable=False),
    sa.Column("files", sa.Text, nullable=False),  # JSON: [{"name", "key"}] of the files the day came from
    sa.Column("imported_at", sa.Float, nullable=False),
    sa.Column("snapshot_id", sa.BigInteger),
)


@dataclass
class DayCount:
    """One event_date of an import: rows in its files, quarantined, suppressed, and imported as events."""

    event_date: str
    file_rows: int = 0
    quarantined: int = 0
    suppressed: int = 0
    imported: int = 0
    intraday: bool = False
    files: list[dict[str, str]] = field(default_factory=list)
    imported_at: float | None = None

    @property
    def expected(self) -> int:
        """Rows the lake should hold for the day."""
        return self.file_rows - self.quarantined - self.suppressed


@dataclass
class GroupResult:
    day: str | None
    files: list[str]
    superseded: list[str]
    days: dict[str, DayCount]
    undated: int
    """Rows quarantined without a known event_date (a line that cannot be read, an event_date that is not one)."""
    rewrite: dict[str, Any]
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["days"] = {d: {k: v for k, v in asdict(c).items() if k != "files"} for d, c in self.days.items()}
        return out


@dataclass
class Group:
    """Files replaced together: the files of one day (`day`), or the undated ones (day None)."""

    day: str | None
    files: list[ExportFile]
    superseded: list[ExportFile] = field(default_factory=list)


def plan(files: Iterable[ExportFile]) -> list[Group]:
    """Groups by the day in the file names, oldest first, undated files last; intraday files of a day that
    has a daily file are superseded."""
    by_day: dict[str | None, list[ExportFile]] = collections.defaultdict(list)
    for export in {f.key or id(f): f for f in files}.values():  # a file given twice is read once
        by_day[export.day].append(export)
    groups = []
    for day in sorted(d for d in by_day if d is not None):
        daily = [f for f in by_day[day] if not f.intraday]
        intraday = [f for f in by_day[day] if f.intraday]
        groups.append(Group(day, daily, intraday) if daily else Group(day, intraday))
    if None in by_day:
        groups.append(Group(None, by_day[None]))
    return groups


class DayRule:
    """The rows of a Rewriter run that go: source S's GA4 rows of the given event dates."""

    def __init__(self, source: str, days: Iterable[str]) -> None:
        self.source = source
        self.days = pa.array(sorted(days), pa.string())

    def columns(self, schema: pa.Schema) -> list[str]:
        """The columns that decide (a file is probed with these first)."""
        return [name for name in ("event_id", "source") if name in schema.names]

    def remove(self, rows: pa.Table) -> pa.Array | pa.ChunkedArray:
        ids = rows.column("event_id")
        ours = pc.and_(pc.equal(rows.column("source"), self.source), pc.starts_with(ids, "ga4-"))
        return pc.and_(ours, pc.is_in(pc.utf8_slice_codeunits(ids, 4, 12), value_set=self.days))

    def change(self, rows: pa.Table) -> tuple[pa.Table, int] | None:
        return None


def day_candidates(source: str, days: Iterable[str]) -> Callable[[Table, list[DataFile]], Iterator[DataFile]]:
    """Files that can hold rows of those event dates: day partitions D-1..D+1, and `source` within the file's
    bounds of the column when it has them."""
    numbers = pc.drop_null(date_days(pa.array(sorted(days), pa.string()))).to_pylist()
    window = {int(d) + k for d in numbers for k in (-1, 0, 1)}

    def pick(table: Table, live: list[DataFile]) -> Iterator[DataFile]:
        positions = {
            spec_id: position
            for spec_id, spec in table.specs().items()
            for position, part in enumerate(spec.fields)
            if isinstance(part.transform, DayTransform)
        }
        for data_file in live:
            position = positions.get(data_file.spec_id)
            if position is not None and data_file.partition[position] not in window:
                continue
            lower = (data_file.lower_bounds or {}).get(SOURCE_FIELD_ID)
            upper = (data_file.upper_bounds or {}).get(SOURCE_FIELD_ID)
            if lower is not None and source < str(from_bytes(StringType(), lower)):
                continue
            if upper is not None and source > str(from_bytes(StringType(), upper)):
                continue
            yield data_file

    return pick


class _Prewritten(FileWriter):
    """The events FileWriter, except that writing the rows the Rewriter adds also returns the data files
    written before for the same replace (a day too big to hold in memory is written chunk by chunk)."""

    def __init__(self, writer: FileWriter) -> None:
        super().__init__(writer.name, 0, writer.persons, writer.rollups, writer.shredder)
        self.target_bytes = writer.target_bytes
        self.earlier: list[DataFile] = []
        self.last: pa.Table | None = None

    def write(self, table: Table, rows: pa.Table, **options: Any) -> list[DataFile]:
        files = super().write(table, rows, **options)
        return [*self.earlier, *files] if rows is self.last else files


class DayStore:
    """`headwater_ga4_days`: per (source, event_date), what its last import held."""

    def __init__(self, uri: str) -> None:
        self.engine = open_store(uri, METADATA)

    def record(self, source: str, days: Iterable[DayCount], snapshot_id: int | None) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            for day in days:
                conn.execute(sa.delete(DAYS).where(DAYS.c.source == source, DAYS.c.event_date == day.event_date))
                conn.execute(sa.insert(DAYS).values(
                    source=source, event_date=day.event_date, file_rows=day.file_rows, quarantined=day.quarantined,
                    suppressed=day.suppressed, imported=day.imported, intraday=day.intraday,
                    files=orjson.dumps(day.files).decode(), imported_at=now, snapshot_id=snapshot_id,
                ))  # fmt: skip

    def days(self, source: str, since: str | None = None, until: str | None = None) -> list[DayCount]:
        query = sa.select(DAYS).where(DAYS.c.source == source).order_by(DAYS.c.event_date)
        if since:
            query = query.where(DAYS.c.event_date >= since)
        if until:
            query = query.where(DAYS.c.event_date <= until)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            DayCount(r.event_date, r.file_rows, r.quarantined, r.suppressed, r.imported, r.intraday,
                     orjson.loads(r.files), r.imported_at)
            for r in rows
        ]  # fmt: skip

    def files_of(self, source: str, event_date: str) -> list[dict[str, str]] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(DAYS.c.files).where(DAYS.c.source == source, DAYS.c.event_date == event_date)
            ).first()
        return orjson.loads(row[0]) if row is not None else None

    def close(self) -> None:
        self.engine.dispose()


class Ga4Importer:
    """Imports groups of export files for one source (see the module docstring)."""

    def __init__(self, settings: Settings, source: str = "ga4", endpoint: str = ENDPOINT) -> None:
        self.settings = settings
        self.source = source
        self.endpoint = endpoint
        self.catalog = open_catalog(settings)
        self.tables = ensure_tables(self.catalog)
        self.engine = open_engine(settings.effective_catalog_uri)
        self.files = file_writers(settings, self.engine)
        self.store = DayStore(settings.effective_catalog_uri)
        self.suppressor = Suppressor(self.engine, settings.privacy_salt or None, refresh_s=0.0)

    def import_files(self, files: list[ExportFile], progress: Progress | None = None) -> list[GroupResult]:
        """Import every group of `files`; an undated group that holds a day a dated group replaced is refused."""
        results: list[GroupResult] = []
        replaced: set[str] = set()
        for group in plan(files):
            result = self.import_group(group, progress, refuse=replaced if group.day is None else None)
            replaced.update(result.days)
            results.append(result)
        return results

    def import_group(
        self, group: Group, progress: Progress | None = None, refuse: set[str] | None = None
    ) -> GroupResult:
        """Read, map and write the group's rows, then replace its days in one commit."""
        started = time.monotonic()
        received_us = int(time.time() * 1_000_000)
        days: dict[str, DayCount] = {}
        quarantine: list[tuple[str, str, int]] = []
        self.tables["events"].refresh()
        table = self.tables["events"]
        writer = _Prewritten(self.files["events"])
        pending: list[pa.Table] = []
        pending_rows = undated = 0
        suppress = self.suppressor.active()
        for export in group.files:
            for item in read_export(export):
                if isinstance(item, Rejected):
                    quarantine.append((item.reason, item.raw, item.number))
                    undated += 1
                    continue
                events = self._block(item, export, days, quarantine, suppress, received_us)
                if events.num_rows and pending_rows >= CHUNK_ROWS:  # written ahead; the last chunk stays for `add`
                    writer.earlier += writer.write(table, pa.concat_tables(pending))
                    pending, pending_rows = [], 0
                if events.num_rows:
                    pending.append(events)
                    pending_rows += events.num_rows
                if progress is not None:
                    progress(export.name, item.rows.num_rows)
        for date in [d for d in days if not DAY.match(d)]:  # rows without an event_date: in quarantine only
            undated += days.pop(date).file_rows
        replaced = set(days) | ({group.day} if group.day else set())
        if refuse and replaced & refuse:
            raise ImportFileError(
                f"{', '.join(f.name for f in group.files)}: rows of {', '.join(sorted(replaced & refuse))}, a day "
                "imported from other files in this run; import the files of one day together"
            )
        intraday = bool(group.files) and all(f.intraday for f in group.files)
        sources = [{"name": f.name, "key": f.key} for f in group.files]
        for day in replaced:
            days.setdefault(day, DayCount(day))  # a day whose files hold no row now: emptied
            days[day].intraday, days[day].files = intraday, sources
        stats = RewriteStats()
        if replaced:
            writer.last = pa.concat_tables(pending) if pending else None
            rewriter = Rewriter(table, writer)
            properties = {IMPORT_PROPERTY: orjson.dumps({"source": self.source, "days": sorted(replaced)}).decode()}
            candidates = day_candidates(self.source, replaced)
            stats = rewriter.run(DayRule(self.source, replaced), candidates, writer.last, properties)
        self.quarantine_records(quarantine, received_us)
        self.store.record(self.source, days.values(), stats.snapshot_id)
        result = GroupResult(
            group.day, [f.name for f in group.files], [f.name for f in group.superseded], days, undated,
            stats.as_dict(), round(time.monotonic() - started, 3),
        )  # fmt: skip
        log.info("ga4 import %s: %s", self.source, orjson.dumps(result.as_dict()).decode())
        return result

    def _block(
        self, block: Block, export: ExportFile, days: dict[str, DayCount], quarantine: list[tuple[str, str, int]],
        suppress: bool, received_us: int,
    ) -> pa.Table:  # fmt: skip
        """The block's events; its bad rows added to `quarantine`, its counts to `days`."""
        rows = block.rows
        dates = rows.column("event_date")
        for date, n in zip(*_value_counts(dates), strict=True):
            days.setdefault(date or "", DayCount(date or "")).file_rows += n
        bad = {**invalid_rows(rows), **block.bad}
        for index, reason in sorted(bad.items()):
            quarantine.append((f"{export.name} {block.label(index)}: {reason}", block.raw(index), block.first + index))
            days[dates[index].as_py() or ""].quarantined += 1
        keep = _without(rows.num_rows, bad)
        blocked = blocked_rows(self.suppressor, rows) if suppress else None
        if blocked is not None:
            dropped = blocked if keep is None else pc.and_(keep, blocked)
            for date, n in zip(*_value_counts(pc.filter(dates, dropped)), strict=True):
                days[date or ""].suppressed += n
            keep = pc.invert(blocked) if keep is None else pc.and_(keep, pc.invert(blocked))
        good = rows if keep is None else rows.filter(keep)
        extras = block.extras if keep is None else block.extras.filter(keep)
        for date, n in zip(*_value_counts(good.column("event_date")), strict=True):
            days[date].imported += n
        return map_rows(good, extras, export.intraday, received_us, self.source)

    def quarantine_records(self, rows: list[tuple[str, str, int]], received_us: int) -> None:
        """Append (reason, raw, record number) rows to `quarantine` (one commit)."""
        if not rows:
            return
        n = len(rows)
        data = pa.Table.from_pydict({
            "received_at": pa.array([received_us] * n, pa.timestamp("us")), "source": [self.source] * n,
            "endpoint": [self.endpoint] * n, "reason": [r[0] for r in rows], "raw": [r[1] for r in rows],
            "log_partition": pa.array([0] * n, pa.int32()), "log_offset": pa.array([r[2] for r in rows], pa.int64()),
        }, schema=QUARANTINE_SCHEMA)  # fmt: skip
        writer = self.files["quarantine"]
        files = writer.write(self.tables["quarantine"], data)
        for attempt in range(20):
            table = self.tables["quarantine"]
            try:
                writer.append(table, files, carried_offsets(table))
                return
            except CommitFailedException:
                self.tables["quarantine"] = self.catalog.load_table("headwater.quarantine")
                time.sleep(0.05 * (attempt + 1))
        raise ImportFileError("could not commit to quarantine after 20 attempts: the table is busy")

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()
        close_catalog(self.catalog)


def _without(n: int, bad: dict[int, str]) -> pa.Array | None:
    """A mask of the rows not in `bad` (None when none is)."""
    if not bad:
        return None
    return pc.invert(pc.is_in(pa.array(range(n), pa.int64()), value_set=pa.array(sorted(bad), pa.int64())))


def blocked_rows(suppressor: Suppressor, rows: pa.Table) -> pa.Array | None:
    """Rows carrying a user_id or user_pseudo_id under suppression (None when none does); call
    `suppressor.active()` first."""
    masks = []
    for name in ("user_id", "user_pseudo_id"):
        column = rows.column(name)
        ids = [i for i in pc.unique(column).to_pylist() if i and suppressor.blocked(i)]
        if ids:
            masks.append(pc.fill_null(pc.is_in(column, value_set=pa.array(ids, pa.string())), False))
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else pc.or_(masks[0], masks[1])


def _value_counts(values: pa.Array | pa.ChunkedArray) -> tuple[list[Any], list[int]]:
    counts = pc.value_counts(values)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def lake_counts_sql(source: str, since: str, until: str) -> str:
    """SQL for the lake side of a reconciliation: rows and distinct ids per GA4 event_date of `source`."""
    start = dt.datetime.strptime(since, "%Y%m%d").date() - dt.timedelta(days=1)
    end = dt.datetime.strptime(until, "%Y%m%d").date() + dt.timedelta(days=2)
    quoted = source.replace("'", "''")
    return (
        "SELECT substr(event_id, 5, 8) AS event_date, count(*) AS lake_rows, count(DISTINCT event_id) AS ids "
        f"FROM events WHERE source = '{quoted}' AND starts_with(event_id, 'ga4-') "
        f"AND timestamp >= TIMESTAMP '{start}' AND timestamp < TIMESTAMP '{end}' "
        f"AND substr(event_id, 5, 8) BETWEEN '{since}' AND '{until}' GROUP BY 1 ORDER BY 1"
    )


def reconcile(expected: list[DayCount], lake: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """Per event_date (of either side): rows in the files, quarantined, suppressed, expected in the lake,
    in the lake, difference (lake - expected) and duplicates (identical rows sharing an id)."""
    by_day = {d.event_date: d for d in expected}
    out = []
    for day in sorted(set(by_day) | set(lake)):
        count = by_day.get(day, DayCount(day))
        rows, ids = lake.get(day, (0, 0))
        out.append({
            "event_date": day, "file_rows": count.file_rows, "quarantined": count.quarantined,
            "suppressed": count.suppressed, "expected": count.expected, "lake_rows": rows,
            "difference": rows - count.expected, "duplicates": rows - ids, "intraday": count.intraday,
            "imported_at": count.imported_at, "files": [f["name"] for f in count.files],
        })  # fmt: skip
    return out


def count_files(files: list[ExportFile], suppressor: Suppressor | None = None) -> list[DayCount]:
    """Per event_date, what importing `files` would give, without writing: rows, quarantined, suppressed."""
    days: dict[str, DayCount] = {}
    suppress = suppressor is not None and suppressor.active()
    for group in plan(files):
        intraday = all(f.intraday for f in group.files)
        for export in group.files:
            for item in read_export(export):
                if isinstance(item, Rejected):
                    continue
                rows = item.rows
                dates = rows.column("event_date")
                for date, n in zip(*_value_counts(dates), strict=True):
                    count = days.setdefault(date or "", DayCount(date or "", intraday=intraday))
                    count.file_rows += n
                    if {"name": export.name, "key": export.key} not in count.files:
                        count.files.append({"name": export.name, "key": export.key})
                bad = {**invalid_rows(rows), **item.bad}
                for index in bad:
                    days[dates[index].as_py() or ""].quarantined += 1
                blocked = blocked_rows(suppressor, rows) if suppress and suppressor is not None else None
                if blocked is not None:
                    keep = _without(rows.num_rows, bad)
                    blocked = blocked if keep is None else pc.and_(blocked, keep)
                    for date, n in zip(*_value_counts(pc.filter(dates, blocked)), strict=True):
                        days[date or ""].suppressed += n
    return sorted((d for d in days.values() if DAY.match(d.event_date)), key=lambda d: d.event_date)


def day_text(value: str) -> str:
    """A day given as YYYYMMDD or YYYY-MM-DD, as YYYYMMDD; ValueError otherwise."""
    text = value.replace("-", "")
    dt.datetime.strptime(text, "%Y%m%d")
    if len(text) != 8:
        raise ValueError(f"{value!r} is not a day (YYYYMMDD)")
    return text


def reconciliation(
    run_sql: Callable[[str], list[list[Any]]], source: str, expected: list[DayCount],
    since: str | None = None, until: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The reconciliation of `source` between `expected` (recorded imports, or files counted) and the lake
    (through `run_sql`, the query engine), per event_date from `since` to `until` (default: expected's days)."""
    dates = [d.event_date for d in expected]
    since = day_text(since) if since else (min(dates) if dates else None)
    until = day_text(until) if until else (max(dates) if dates else None)
    out: dict[str, Any] = {"source": source, "since": since, "until": until, "days": [], "mismatched": 0}
    if since is None or until is None:
        return out
    lake = {str(r[0]): (int(r[1]), int(r[2])) for r in run_sql(lake_counts_sql(source, since, until))}
    days = reconcile([d for d in expected if since <= d.event_date <= until], lake)
    totals = {k: sum(d[k] for d in days) for k in ("file_rows", "quarantined", "suppressed", "expected", "lake_rows")}
    totals["difference"] = totals["lake_rows"] - totals["expected"]
    out.update(days=days, totals=totals, mismatched=sum(1 for d in days if d["difference"]))
    return out
