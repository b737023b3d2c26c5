"""`headwater import`: backfill NDJSON / JSON / CSV / Parquet files into the lake.

Rows go through the same validation and normalisation as live events (lolscale `/track`
mapping, or Segment's when a row has a Segment `type`). Invalid rows go to `quarantine`.
Each commit records how many rows of the file it covers, so re-running an interrupted import
resumes where it stopped instead of duplicating rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from headwater.core.errors import ImportFileError
from headwater.core.events import (
    RAW_TRACK,
    SEGMENT_TYPES,
    InvalidEvent,
    RowBuilder,
    check_raw_track,
    check_segment,
)
from headwater.core.settings import Settings
from headwater.lake.tables import ensure_tables, open_catalog

CHUNK_ROWS = 250_000
_JSON_TYPES = (str, int, float, bool, dict, list, type(None))
PROGRESS_PROPERTY = "headwater.import."


def fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_rows(path: Path) -> Iterator[tuple[Any, bytes | None]]:
    """Yield (object, raw bytes or None) per row; undecodable lines yield (None, raw)."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
            yield from ((row, None) for row in batch.to_pylist())
    elif suffix in (".csv", ".csv.gz"):
        reader = pacsv.open_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        for batch in reader:
            for row in batch.to_pylist():
                yield ({k: v for k, v in row.items() if v is not None}, None)
    elif suffix == ".json":
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            doc = None
        if doc is None or not isinstance(doc, list | dict):  # maybe NDJSON named .json
            yield from _ndjson(path)
        else:
            yield from ((obj, None) for obj in (doc if isinstance(doc, list) else [doc]))
    elif suffix in (".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz", ".json.gz", ".log"):
        yield from _ndjson(path)
    else:
        raise ImportFileError(f"{path}: unknown format {suffix!r}; use .ndjson, .jsonl, .json, .csv or .parquet")


def _ndjson(path: Path) -> Iterator[tuple[Any, bytes | None]]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield orjson.loads(line), line
            except orjson.JSONDecodeError:
                yield None, line


class Importer:
    def __init__(self, settings: Settings, source: str = "import") -> None:
        self.settings = settings
        self.source = source
        self.catalog = open_catalog(settings)
        self.tables = ensure_tables(self.catalog)

    def done_rows(self, table: Table, key: str) -> int:
        best = 0
        for snapshot in table.metadata.snapshots:
            summary: Any = snapshot.summary
            value = summary.additional_properties.get(PROGRESS_PROPERTY + key) if summary else None
            if value:
                best = max(best, int(value))
        return best

    def import_file(self, path: Path, progress: Callable[[int], None] | None = None) -> dict[str, int]:
        if not path.exists():
            raise ImportFileError(f"{path}: no such file")
        key = fingerprint(path)
        # per table, rows up to its recorded progress are in it already (see module docstring)
        floors = {name: self.done_rows(self.tables[name], key) for name in ("events", "quarantine")}
        skip = min(floors.values())
        counts = {"rows": 0, "events": 0, "quarantined": 0, "skipped": skip}
        builder = RowBuilder()
        received_ms = int(time.time() * 1000)
        meta = {"src": self.source, "ep": RAW_TRACK, "ra": received_ms}
        seg_meta = {"src": self.source, "ep": "batch", "ra": received_ms}
        row_number = 0
        for row_number, (obj, raw) in enumerate(read_rows(path), start=1):
            if row_number <= skip:
                continue
            self._add(builder, obj, raw, meta, seg_meta, key, row_number, floors)
            if builder.event_count + builder.quarantine_count >= CHUNK_ROWS:
                self._commit(builder, key, row_number, counts)
                if progress:
                    progress(builder.event_count + builder.quarantine_count)
                builder = RowBuilder()
        pending = builder.event_count + builder.quarantine_count
        if pending:
            self._commit(builder, key, row_number, counts)
            if progress:
                progress(pending)
        counts["rows"] = row_number
        return counts

    def _add(
        self, builder: RowBuilder, obj: Any, raw: bytes | None, meta: dict[str, Any],
        seg_meta: dict[str, Any], key: str, row_number: int, floors: dict[str, int],
    ) -> None:  # fmt: skip
        log_id = f"import:{key}"
        if obj is None:
            if row_number <= floors["quarantine"]:
                return
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
            if row_number <= floors["quarantine"]:
                return
            text = raw.decode("utf-8", "backslashreplace") if raw else orjson.dumps(obj, default=_json_default).decode()
            builder.add({"m": meta, "q": str(exc), "raw": text}, log_id, 0, row_number)
            return
        if row_number <= floors["events"]:
            return
        builder.add({"m": seg_meta if segment else meta, "e": obj}, log_id, 0, row_number)

    def _commit(self, builder: RowBuilder, key: str, rows_done: int, counts: dict[str, int]) -> None:
        events, quarantine = builder.tables()
        props = {PROGRESS_PROPERTY + key: str(rows_done)}
        for name, table in (("events", events), ("quarantine", quarantine)):
            if table.num_rows == 0:
                continue
            self._append(name, table, props)
        counts["events"] += events.num_rows
        counts["quarantined"] += quarantine.num_rows

    def _append(self, name: str, data: pa.Table, props: dict[str, str]) -> None:
        for attempt in range(10):
            try:
                self.tables[name].append(data, snapshot_properties=props)
                return
            except CommitFailedException:  # the live writer committed meanwhile
                self.tables[name] = self.catalog.load_table(f"headwater.{name}")
                time.sleep(0.05 * (attempt + 1))
        raise ImportFileError(f"could not commit to {name} after 10 attempts: the table is busy")
