"""How rows become data files, the same way for the lake writer, import and compaction.

Rows are split by day partition, sorted within each day by the table's sort keys (declared as the
Iceberg sort order), cut into files of about `lake_file_target_mb`, and written with pyiceberg; for
`events` the rollup of each file is computed and stored before the commit that adds the file
(`headwater.lake.rollups`). Commits are made here too, so that every path adds files the same way.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    ParquetFormatModel,
    ParquetFormatWriter,
    _determine_partitions,
    _to_requested_schema,
    pyarrow_to_schema,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.schema import Schema, sanitize_column_names
from pyiceberg.table import Table, TableProperties, WriteTask
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.transforms import IdentityTransform
from pyiceberg.typedef import Record
from pyiceberg.utils.concurrent import ExecutorFactory

from headwater.core.settings import Settings
from headwater.lake.persons import PersonKeys
from headwater.lake.rollups import RollupStore, compute_rollup
from headwater.lake.shredding import Shredder

# Chosen by measurement (README, "Lake layout"): in time order, times and the sequential event ids that
# events without a messageId get delta-encode to almost nothing; sorting by event or person first
# scrambles both (14 B per lolscale event instead of 5). Rollups answer the per-person questions.
SORT_KEYS = {"events": ("timestamp", "event", "user_id"), "quarantine": ("received_at",)}
# Mostly unique per row: plain pages (zstd does the rest). DELTA_BYTE_ARRAY would save a little more, but
# Iceberg's vectorized Spark reader refuses it (tests/engines).
PLAIN_STRINGS = frozenset({"event_id", "user_id", "anonymous_id", "previous_id"})
DELTA_NUMBERS = frozenset({"timestamp", "received_at", "sent_at", "log_offset"})
ZSTD_LEVEL = 3
PARQUET = ParquetFormatModel()
DEFAULT_BYTES_PER_ROW = {"events": 12.0, "quarantine": 200.0}
MIN_FILE_ROWS = 10_000

log = logging.getLogger(__name__)


def declare_sort_order(table: Table, name: str) -> None:
    """Record the sort keys as the table's Iceberg sort order, when it is not declared yet."""
    wanted = SORT_KEYS[name]
    current = [table.schema().find_column_name(f.source_id) for f in table.sort_order().fields]
    if tuple(current) == wanted:
        return
    with table.transaction() as tx:
        update = tx.update_sort_order()
        for column in wanted:
            update = update.asc(column, IdentityTransform())
        update.commit()


def encodings(schema: Schema) -> dict[str, Any]:
    """pyarrow writer options per column, chosen by measurement (README, "Lake layout"): times
    delta-encoded (sorted, they shrink to a fraction of a byte), ids in plain pages, the rest with
    dictionaries (pyarrow falls back to plain pages for a column whose dictionary grows too large)."""
    delta = {f.name: "DELTA_BINARY_PACKED" for f in schema.columns if f.name in DELTA_NUMBERS}
    dictionary = [f.name for f in schema.columns if f.name not in delta and f.name not in PLAIN_STRINGS]
    return {"use_dictionary": dictionary, "column_encoding": delta, "compression_level": ZSTD_LEVEL}


class TunedParquetWriter(ParquetFormatWriter):
    """pyiceberg's Parquet writer with per-column encodings, which its table properties cannot express."""

    def __init__(self, output_file: Any, file_schema: Schema, properties: Any) -> None:
        super().__init__(output_file, file_schema, properties)
        self._parquet_writer_kwargs = {**self._parquet_writer_kwargs, **encodings(file_schema)}


def write_files(io: FileIO, metadata: TableMetadata, tasks: list[WriteTask]) -> list[DataFile]:
    """pyiceberg's `write_file` (one data file per task) with TunedParquetWriter; statistics, partition
    and paths exactly as pyiceberg makes them. (pyiceberg leaves DataFile.sort_order_id unset,
    apache/iceberg-python#271; the table's declared sort order says how files are sorted.)"""
    schema = metadata.schema()
    sanitized = sanitize_column_names(schema)
    locations = load_location_provider(table_location=metadata.location, table_properties=metadata.properties)

    def write(task: WriteTask) -> DataFile:
        batches = [
            _to_requested_schema(requested_schema=sanitized, file_schema=task.schema, batch=batch,
                                 include_field_ids=True, format_model=PARQUET)
            for batch in task.record_batches
        ]  # fmt: skip
        path = locations.new_data_location(
            data_file_name=task.generate_data_file_filename("parquet"), partition_key=task.partition_key
        )
        output = io.new_output(path)
        writer = TunedParquetWriter(output, sanitized, metadata.properties)
        with writer:
            writer.write(pa.Table.from_batches(batches))
        statistics = writer.result()
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=task.partition_key.partition if task.partition_key else Record(),
            file_size_in_bytes=len(output),
            sort_order_id=None,
            spec_id=metadata.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )

    return list(ExecutorFactory.get_or_create().map(write, tasks))


def file_writers(settings: Settings, engine: sa.Engine) -> dict[str, FileWriter]:
    """A FileWriter per table, sharing one person-key map and rollup store on the catalog's database."""
    persons, rollups = PersonKeys(engine), RollupStore(engine, settings.rollup_cache_mb << 20)
    return {
        "events": FileWriter("events", settings.lake_file_target_mb, persons, rollups, Shredder(settings)),
        "quarantine": FileWriter("quarantine", settings.lake_file_target_mb),
    }


class FileWriter:
    """Writes rows of one table as sorted, sized data files (with shredded properties and rollups for
    `events`) and commits them."""

    def __init__(
        self, name: str, target_mb: int, persons: PersonKeys | None = None, rollups: RollupStore | None = None,
        shredder: Shredder | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.target_bytes = target_mb * 1024 * 1024
        self.persons = persons
        self.rollups = rollups
        self.shredder = shredder

    def rows_per_file(self, table: Table) -> int:
        """Target rows per file from the table's own bytes per row (a default while it is empty)."""
        per_row = DEFAULT_BYTES_PER_ROW.get(self.name, 100.0)
        snapshot = table.current_snapshot()
        summary: Any = snapshot.summary if snapshot is not None else None
        if summary is not None:
            size = int(summary.additional_properties.get("total-files-size", 0) or 0)
            rows = int(summary.additional_properties.get("total-records", 0) or 0)
            if size and rows > 100_000:
                per_row = size / rows
        return max(MIN_FILE_ROWS, int(self.target_bytes / per_row))

    def write(
        self, table: Table, rows: pa.Table, *, presorted: bool = False, fill: bool = True,
        rollup: Callable[[pa.Table], bytes] | None = None, one_partition: bool = False,
    ) -> list[DataFile]:  # fmt: skip
        """Write `rows` as data files (not committed yet); store their rollups.

        A rewrite of a file read back (`headwater.lake.rewrite`) passes `presorted` (rows are in the file's order
        already), `one_partition` (they share the file's partition), `fill=False` when the rows carry every
        shredded column already, and `rollup` to derive each file's rollup instead of computing it anew."""
        if rows.num_rows == 0:
            return []
        if self.shredder is not None and fill:  # may add columns (a schema change), fills them in rows read back
            rows = self.shredder.apply(table, rows)
        metadata = table.metadata  # as the shredder left it: written with exactly these columns
        per_file = self.rows_per_file(table)
        sort = [(key, "ascending") for key in SORT_KEYS.get(self.name, ())]
        write_uuid = uuid.uuid4()
        tasks: list[WriteTask] = []
        slices: list[pa.Table] = []
        schema = metadata.schema()
        task_schema = pyarrow_to_schema(
            rows.schema, name_mapping=schema.name_mapping, format_version=metadata.format_version
        )
        if one_partition:  # a file read back: its rows share one partition; find its key from one row
            key = next(iter(_determine_partitions(metadata.spec(), schema, rows.slice(0, 1)))).partition_key
            partitions = [(key, rows)]
        else:
            partitions = [(p.partition_key, p.arrow_table_partition)
                          for p in _determine_partitions(metadata.spec(), schema, rows)]  # fmt: skip
        for partition_key, part in partitions:
            part = part if presorted else part.sort_by(sort)
            count = max(1, math.ceil(part.num_rows / per_file))
            size = math.ceil(part.num_rows / count)
            for start in range(0, part.num_rows, size):
                piece = part.slice(start, size)
                slices.append(piece)
                tasks.append(
                    WriteTask(
                        write_uuid=write_uuid,
                        task_id=len(tasks),
                        schema=task_schema,
                        record_batches=piece.to_batches(),
                        partition_key=partition_key,
                    )
                )
        files = write_files(table.io, metadata, tasks)
        if self.rollups is not None and self.persons is not None:
            persons = self.persons
            if rollup is None:
                persons.prepare(rows.column("user_id"), rows.column("anonymous_id"))

                def rollup(piece: pa.Table) -> bytes:
                    return compute_rollup(piece, persons)

            self.rollups.put(self.name, {f.file_path: rollup(piece) for f, piece in zip(files, slices, strict=True)})
        return files

    def discard(self, table: Table, files: list[DataFile]) -> None:
        """Delete files written but never committed (a lost commit race, a writer giving its partitions up) and
        their rollups at once: left for the sweep, they would keep their rows, a deleted person's included, for
        the sweep's grace period."""
        for data_file in files:
            try:
                table.io.delete(data_file.file_path)
            except (FileNotFoundError, OSError):
                log.warning("could not delete the uncommitted file %s; the sweep will", data_file.file_path)
        if self.rollups is not None and files:
            self.rollups.delete(f.file_path for f in files)

    def append(self, table: Table, files: list[DataFile], properties: dict[str, str]) -> None:
        """One snapshot adding `files` (manifests merged as the table's properties say)."""
        merge = table.properties.get(TableProperties.MANIFEST_MERGE_ENABLED, "false") == "true"
        with table.transaction() as tx:
            update = tx.update_snapshot(snapshot_properties=properties)
            with update.merge_append() if merge else update.fast_append() as adding:
                for data_file in files:
                    adding.append_data_file(data_file)

    def replace(self, table: Table, old: list[DataFile], new: list[DataFile], properties: dict[str, str]) -> None:
        """One snapshot swapping `old` files for `new` ones (compaction, rewrites)."""
        with table.transaction() as tx, tx.update_snapshot(snapshot_properties=properties).overwrite() as rewrite:
            for data_file in old:
                rewrite.delete_data_file(data_file)
            for data_file in new:
                rewrite.append_data_file(data_file)
