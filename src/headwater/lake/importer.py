"""`headwater import`: backfill NDJSON / JSON / CSV / Parquet files into the lake.

Rows go through the same validation and normalisation as live events (lolscale `/track`
mapping, or Segment's when a row has a Segment `type`). Invalid rows go to `quarantine`.
Each commit records how many rows of the file it covers, so re-running an interrupted import
resumes where it stopped instead of duplicating rows.

With `stages` (a factory such as `headwater.runtime.stages.build_stages`, handed in by the caller: `lake` does not
import `runtime`), each chunk goes through the lake writer's stages before its commit, so imported history gets
the same plan enforcement, enrichments and identity links as live events. The stage inputs (`_ip`, `_user_agent`,
...) come from the rows as RowBuilder pulls them out; `_log_partition` is 0 and `_log_offset` the row number in
the file. Rows a stage quarantines go to `quarantine` (rebuilt from the normalised row) unless an earlier run of
the same file committed them there already.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from headwater.core.errors import ImportFileError
from headwater.core.events import (
    QUARANTINE_SCHEMA,
    RAW_TRACK,
    SEGMENT_TYPES,
    InvalidEvent,
    RowBuilder,
    check_raw_track,
    check_segment,
)
from headwater.core.settings import Settings
from headwater.core.stages import BatchStage, StageBatch, stored_columns
from headwater.lake.columns import add_missing_columns, quarantine_rows
from headwater.lake.coordination import open_engine
from headwater.lake.layout import file_writers
from headwater.lake.maintenance import Maintenance
from headwater.lake.tables import carried_offsets, ensure_tables, open_catalog

BLOCK_ROWS = 50_000  # rows per worker task
CHUNK_ROWS = 1_000_000  # rows per Iceberg commit
_JSON_TYPES = (str, int, float, bool, dict, list, type(None))
PROGRESS_PROPERTY = "headwater.import."


def fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_blocks(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield blocks of about BLOCK_ROWS rows: ("lines", [bytes]), ("batch", RecordBatch), ("objects", [obj])."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BLOCK_ROWS):
            yield "batch", batch
    elif suffix in (".csv", ".csv.gz"):
        options = pacsv.ReadOptions(block_size=8 << 20)
        reader = pacsv.open_csv(
            path, read_options=options, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)
        )
        for batch in reader:
            yield "csv", batch
    elif suffix == ".json":
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, list | dict):
            items = doc if isinstance(doc, list) else [doc]
            for offset in range(0, len(items), BLOCK_ROWS):
                yield "objects", items[offset : offset + BLOCK_ROWS]
        else:  # NDJSON named .json
            yield from _ndjson_blocks(path)
    elif suffix in (".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz", ".json.gz", ".log"):
        yield from _ndjson_blocks(path)
    else:
        raise ImportFileError(f"{path}: unknown format {suffix!r}; use .ndjson, .jsonl, .json, .csv or .parquet")


def _ndjson_blocks(path: Path) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    block: list[bytes] = []
    with opener(path, "rb") as handle:
        for line in handle:
            line = line.strip()
            if line:
                block.append(line)
                if len(block) >= BLOCK_ROWS:
                    yield "lines", block
                    block = []
    if block:
        yield "lines", block


def block_rows(kind: str, payload: Any) -> Iterator[tuple[Any, bytes | None]]:
    """(object, raw bytes or None) per row of a block; an undecodable line gives (None, raw)."""
    if kind == "lines":
        for line in payload:
            try:
                yield orjson.loads(line), line
            except orjson.JSONDecodeError:
                yield None, line
    elif kind == "batch":
        yield from ((row, None) for row in payload.to_pylist())
    elif kind == "csv":
        yield from (({k: v for k, v in row.items() if v is not None}, None) for row in payload.to_pylist())
    else:
        yield from ((obj, None) for obj in payload)


@dataclass(frozen=True)
class BlockJob:
    """One block for a worker process; `floors` are per-table rows already committed."""

    kind: str
    payload: Any
    first_row: int
    floors: dict[str, int]
    key: str
    source: str
    received_ms: int
    inputs: bool = False  # also collect the stage inputs (headwater.core.stages.INPUT_COLUMNS)


StageFactory = Callable[[Settings, sa.Engine], list[BatchStage]]


def normalise_block(job: BlockJob) -> tuple[pa.Table, pa.Table]:
    """Validate and map one block (runs in a worker process)."""
    builder = RowBuilder(inputs=job.inputs)
    meta = {"src": job.source, "ep": RAW_TRACK, "ra": job.received_ms}
    seg_meta = {"src": job.source, "ep": "batch", "ra": job.received_ms}
    log_id = f"import:{job.key}"
    for index, (obj, raw) in enumerate(block_rows(job.kind, job.payload)):
        _add(builder, obj, raw, meta, seg_meta, log_id, job.first_row + index, job.floors)
    return builder.tables()


def _add(
    builder: RowBuilder, obj: Any, raw: bytes | None, meta: dict[str, Any],
    seg_meta: dict[str, Any], log_id: str, row_number: int, floors: dict[str, int],
) -> None:  # fmt: skip
    if obj is None:
        if row_number > floors["quarantine"]:
            text = (raw or b"").decode("utf-8", "backslashreplace")
            builder.add({"m": meta, "q": "invalid JSON", "raw": text}, log_id, 0, row_number)
        return
    if isinstance(obj, dict) and any(not isinstance(v, _JSON_TYPES) for v in obj.values()):
        obj = orjson.loads(orjson.dumps(obj, default=_json_default))  # dates from Parquet/CSV
    segment = isinstance(obj, dict) and obj.get("type") in SEGMENT_TYPES
    try:
        if segment:
            check_segment(obj, None)
        else:
            check_raw_track(obj)
    except InvalidEvent as exc:
        if row_number > floors["quarantine"]:
            text = raw.decode("utf-8", "backslashreplace") if raw else orjson.dumps(obj, default=_json_default).decode()
            builder.add({"m": meta, "q": str(exc), "raw": text}, log_id, 0, row_number)
        return
    if row_number > floors["events"]:
        builder.add({"m": seg_meta if segment else meta, "e": obj}, log_id, 0, row_number)


def _as_sent(events: pa.Table, row: int) -> dict[str, Any]:
    """An event row back in the Segment shape (what quarantine keeps of a row a stage refused)."""
    values = {name: events.column(name)[row].as_py() for name in events.column_names}
    out: dict[str, Any] = {"type": values.get("type") or "track", "messageId": values.get("event_id")}
    for column, name in (("event", "event"), ("user_id", "userId"), ("anonymous_id", "anonymousId")):
        if values.get(column) is not None:
            out[name] = values[column]
    if values.get("timestamp") is not None:
        out["timestamp"] = values["timestamp"].isoformat()
    for column in ("properties", "context", "traits"):
        if values.get(column):
            out[column] = orjson.loads(values[column])
    return out


class Importer:
    def __init__(
        self, settings: Settings, source: str = "import", workers: int | None = None,
        stages: StageFactory | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None
        self.source = source
        self.catalog = open_catalog(settings)
        self.tables = ensure_tables(self.catalog)
        self.engine = open_engine(settings.effective_catalog_uri)
        self.files = file_writers(settings, self.engine)
        self.stages: list[BatchStage] = stages(settings, self.engine) if stages is not None else []

    def done_rows(self, table: Table, key: str) -> int:
        best = 0
        for snapshot in table.metadata.snapshots:
            summary: Any = snapshot.summary
            value = summary.additional_properties.get(PROGRESS_PROPERTY + key) if summary else None
            if value:
                best = max(best, int(value))
        return best

    def import_file(self, path: Path, progress: Callable[[int], None] | None = None) -> dict[str, int]:
        """Import one file; blocks are normalised in worker processes, committed in file order."""
        if not path.exists():
            raise ImportFileError(f"{path}: no such file")
        key = fingerprint(path)
        # per table, rows up to its recorded progress are in it already (see module docstring)
        floors = {name: self.done_rows(self.tables[name], key) for name in ("events", "quarantine")}
        skip = min(floors.values())
        counts = {"rows": 0, "events": 0, "quarantined": 0, "skipped": skip}
        received_ms = int(time.time() * 1000)

        def jobs() -> Iterator[BlockJob]:
            first = 1
            for kind, payload in read_blocks(path):
                size = len(payload) if isinstance(payload, list) else payload.num_rows
                if first + size - 1 > skip:
                    yield BlockJob(kind, payload, first, floors, key, self.source, received_ms, bool(self.stages))
                first += size
            counts["rows"] = first - 1

        pending: list[tuple[pa.Table, pa.Table]] = []
        pending_rows = 0
        rows_done = skip
        for job, (events, quarantine) in self._normalised(jobs()):
            pending.append((events, quarantine))
            size = len(job.payload) if isinstance(job.payload, list) else job.payload.num_rows
            pending_rows += events.num_rows + quarantine.num_rows
            rows_done = job.first_row + size - 1
            if pending_rows >= CHUNK_ROWS:
                self._commit(pending, key, rows_done, counts, floors["quarantine"])
                if progress:
                    progress(pending_rows)
                pending, pending_rows = [], 0
        if pending:
            self._commit(pending, key, rows_done, counts, floors["quarantine"])
            if progress:
                progress(pending_rows)
        return counts

    def import_rows(
        self, rows: Iterator[pa.Table], key: str, progress: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        """Import rows already normalised by a trusted producer (EVENTS_SCHEMA, plus the stage inputs when
        stages run; `_log_offset` numbering the rows from 1), as one import named `key`: committed in chunks that
        record their progress, so running it again with the same rows resumes (rows up to the recorded
        progress are skipped)."""
        done = {name: self.done_rows(self.tables[name], key) for name in ("events", "quarantine")}
        counts = {"rows": 0, "events": 0, "quarantined": 0, "skipped": 0}
        pending: list[tuple[pa.Table, pa.Table]] = []
        pending_rows = 0
        empty = pa.Table.from_pylist([], schema=QUARANTINE_SCHEMA)
        for table in rows:
            counts["rows"] += table.num_rows
            if counts["rows"] <= done["events"]:
                counts["skipped"] += table.num_rows
                continue
            fresh = table.filter(pc.greater(table.column("_log_offset"), done["events"]))
            counts["skipped"] += table.num_rows - fresh.num_rows
            pending.append((fresh if self.stages else stored_columns(fresh), empty))
            pending_rows += fresh.num_rows
            if pending_rows >= CHUNK_ROWS:
                self._commit(pending, key, counts["rows"], counts, done["quarantine"])
                if progress:
                    progress(pending_rows)
                pending, pending_rows = [], 0
        if pending:
            self._commit(pending, key, counts["rows"], counts, done["quarantine"])
            if progress:
                progress(pending_rows)
        return counts

    def _normalised(self, jobs: Iterator[BlockJob]) -> Iterator[tuple[BlockJob, tuple[pa.Table, pa.Table]]]:
        """Results in job order; up to 2 blocks per worker in flight (bounded memory)."""
        first = next(jobs, None)
        if first is None:
            return
        second = next(jobs, None)
        if second is None or self.workers <= 1:  # small file: no process start-up cost
            for job in itertools.chain([first], [second] if second else [], jobs):
                yield job, normalise_block(job)
            return
        if self._pool is None:  # one pool for every file of this importer (starting one costs seconds)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        pool = self._pool
        window: collections.deque[tuple[BlockJob, Future[tuple[pa.Table, pa.Table]]]] = collections.deque()
        for job in itertools.chain([first, second], jobs):
            window.append((job, pool.submit(normalise_block, job)))
            if len(window) >= 2 * self.workers:
                done_job, future = window.popleft()
                yield done_job, future.result()
        while window:
            done_job, future = window.popleft()
            yield done_job, future.result()

    def _commit(
        self, parts: list[tuple[pa.Table, pa.Table]], key: str, rows_done: int, counts: dict[str, int],
        quarantine_floor: int = 0,
    ) -> None:  # fmt: skip
        events = pa.concat_tables([p[0] for p in parts])
        quarantine = pa.concat_tables([p[1] for p in parts])
        if self.stages and events.num_rows:
            events, quarantine = self._run_stages(events, quarantine, quarantine_floor)
            if events.num_rows:
                add_missing_columns(self.tables["events"], events)
        props = {PROGRESS_PROPERTY + key: str(rows_done)}
        for name, table in (("quarantine", quarantine), ("events", events)):
            if table.num_rows:
                self._append(name, table, props)
        counts["events"] += events.num_rows
        counts["quarantined"] += quarantine.num_rows

    def _run_stages(self, events: pa.Table, quarantine: pa.Table, floor: int) -> tuple[pa.Table, pa.Table]:
        """The chunk through every stage (as the lake writer runs them); the rows they quarantine move to
        `quarantine`, except those an earlier run of the file committed there (row number <= `floor`)."""
        batch = StageBatch(events)
        for stage in self.stages:
            batch = stage.apply(batch)
            if batch.events.num_rows != events.num_rows:
                raise ImportFileError(f"stage {stage.name} changed the number of rows")
        if not batch.quarantined:
            return stored_columns(batch.events), quarantine
        offsets = batch.events.column("_log_offset").to_numpy()
        pending = {row: reason for row, reason in batch.quarantined.items() if offsets[row] > floor}
        if pending:
            values = [b""] * batch.events.num_rows
            for row in pending:
                values[row] = orjson.dumps({"e": _as_sent(batch.events, row)})
            moved = quarantine_rows(batch.events, pending, values)
            quarantine = pa.concat_tables([quarantine, moved.cast(quarantine.schema)])
        keep = np.ones(batch.events.num_rows, dtype=bool)
        keep[list(batch.quarantined)] = False
        return stored_columns(batch.events).filter(pa.array(keep)), quarantine

    def _append(self, name: str, data: pa.Table, props: dict[str, str]) -> None:
        files = self.files[name].write(self.tables[name], data)
        for attempt in range(10):
            try:
                table = self.tables[name]
                self.files[name].append(table, files, {**carried_offsets(table), **props})
                return
            except CommitFailedException:  # the live writer committed meanwhile
                self.tables[name] = self.catalog.load_table(f"headwater.{name}")
                time.sleep(0.05 * (attempt + 1))
        raise ImportFileError(f"could not commit to {name} after 10 attempts: the table is busy")

    def compact(self) -> int:
        """Merge the small files the import left in each day partition (the layout live ingestion reaches
        by compaction); return partitions compacted. Losing a race with the live writer's own
        maintenance is harmless: it compacts them instead."""
        done = 0
        for name in self.tables:
            for attempt in range(5):
                maintenance = Maintenance(self.settings, self.tables, self.files)
                try:
                    done += maintenance.compact(name, force=True)
                    break
                except CommitFailedException:
                    self.tables[name] = self.catalog.load_table(f"headwater.{name}")
                    time.sleep(0.1 * (attempt + 1))
        return done

    def close(self) -> None:
        for stage in self.stages:
            stage.close()
        self.stages = []
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self.engine.dispose()
