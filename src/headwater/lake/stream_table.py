"""A log stream appended to a lake table of its own, exactly once, its schema evolving with the records.

Each commit records the stream's next offsets in the snapshot (`headwater.log-offsets.stream.<name>`)
and the writer resumes from them, as the lake writer does for `events`; a crash between the Iceberg
commit and the group commit re-reads records the table already holds, and skips them. A field seen
for the first time adds a nullable column (Iceberg schema evolution); a value that cannot be cast to
its column's type (a type that cannot widen) makes its row a *conflict*, handed to `on_conflict`
(sources quarantine them) — or, with no handler, fails the batch.

Subclasses say how records become rows (`rows`): processor outputs (`processing.tables`) and
source feeds (`sources.lander`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import orjson
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform

from headwater.core import metrics
from headwater.core.errors import LakeError
from headwater.lake.tables import (
    MODEL_PROPERTY,
    NAMESPACE,
    OFFSETS_PROPERTY,
    TABLE_PROPERTIES,
    offsets_property,
    snapshot_offsets,
)
from headwater.log.base import Consumer, EventLog, Record

log = logging.getLogger(__name__)


def normalise_types(table: pa.Table, time_column: str | None = None) -> pa.Table:
    """Inferred Arrow types to the ones tables keep: int64, float64, decimal(38, s), strings for nulls."""
    fields = []
    for field in table.schema:
        kind = field.type
        if field.name == time_column:
            kind = pa.timestamp("us", tz="UTC")
        elif pa.types.is_null(kind):
            kind = pa.string()
        elif pa.types.is_integer(kind):
            kind = pa.int64()
        elif pa.types.is_floating(kind):
            kind = pa.float64()
        elif pa.types.is_decimal(kind):
            kind = pa.decimal128(38, kind.scale)
        fields.append(pa.field(field.name, kind, nullable=True))
    return table.cast(pa.schema(fields))


def json_cell(value: Any) -> Any:
    """A value as a table cell: objects and arrays as JSON text, anything else as it is."""
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    return value


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts) to a table with a column for every key of any row (pa.Table.from_pylist only
    looks at the first row's keys), each column's type inferred from all its values."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return pa.table({name: pa.array([row.get(name) for row in rows]) for name in names})


def _castable_rows(column: pa.ChunkedArray, kind: pa.DataType) -> list[bool]:
    """Per row: does this value cast to `kind` (slow path, only for a column whose cast failed)?"""
    ok = []
    for value in column.to_pylist():
        try:
            pa.array([value], type=column.type).cast(kind)
            ok.append(True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            ok.append(False)
    return ok


class StreamTableWriter:
    """Consumes `stream` and appends to the lake table `table_name`."""

    time_column = "event_time"
    """Column the table is partitioned by (day)."""

    def __init__(
        self, catalog: Catalog, event_log: EventLog, stream: str, table_name: str, schema: pa.Schema | None = None
    ) -> None:
        self.catalog, self.stream, self.table_name = catalog, stream, table_name
        self.offsets_key = f"{OFFSETS_PROPERTY}.stream.{stream}"
        self.log = event_log.stream(stream)
        self.consumer: Consumer = self.log.consumer(f"table.{table_name}.{stream}")
        self.table: Table | None = None
        self.rows = 0
        self.generation = -1
        self._resume()
        if self.table is None and schema is not None:
            self.table = self._create(schema)

    def rows_from(self, records: list[Record]) -> pa.Table:
        """The rows of a batch of stream records (types as `normalise_types` gives)."""
        raise NotImplementedError

    def on_conflict(self, rows: pa.Table, reasons: list[str]) -> None:
        """Rows whose values cannot be cast to the table's columns; by default the batch fails."""
        raise LakeError(f"table {self.table_name}: {reasons[0]}")

    def _load(self) -> Table | None:
        try:
            table = self.catalog.load_table((NAMESPACE, self.table_name))
        except NoSuchTableError:
            return None
        if MODEL_PROPERTY in table.properties:  # its next build would replace whatever landed here
            raise LakeError(
                f"table {self.table_name} is the SQL model {table.properties[MODEL_PROPERTY]!r}'s: give this "
                "processor output or source table another name"
            )
        return table

    def _resume(self) -> None:
        """Read on from the offsets the table's snapshots record (after a start, a failure or a
        rebalance: what the table holds decides, not the group's offsets)."""
        self.table = self._load()
        done = snapshot_offsets(self.table, self.offsets_key) if self.table is not None else {}
        for partition in self.consumer.assignment():
            self.consumer.seek(partition, done.get(partition, 0))
        self.generation = self.consumer.generation

    def _create(self, arrow_schema: pa.Schema) -> Table:
        with contextlib.suppress(Exception):
            self.catalog.create_namespace(NAMESPACE)
        try:
            table = self.catalog.create_table(
                (NAMESPACE, self.table_name), schema=arrow_schema, properties=TABLE_PROPERTIES
            )
        except TableAlreadyExistsError:
            return self.catalog.load_table((NAMESPACE, self.table_name))
        with table.update_spec() as update:
            update.add_field(self.time_column, DayTransform(), f"{self.time_column}_day")
        return table

    def poll(self, timeout_s: float = 0.2, max_records: int = 20_000) -> int:
        """Read a batch and commit it; return rows appended."""
        if self.generation != self.consumer.generation:
            self._resume()
        records = self.consumer.poll(max_records, timeout_s)
        if self.generation != self.consumer.generation:
            self._resume()  # the batch may straddle a rebalance: read it again from the table's offsets
            return 0
        if not records:
            return 0
        positions = self.consumer.positions()
        rows = self.rows_from(records)
        if self.table is None:
            self.table = self._create(rows.schema)
        table = self.table
        existing = {f.name for f in table.schema().fields}
        new = [f for f in rows.schema if f.name not in existing]
        if new:
            with table.update_schema() as update:
                update.union_by_name(pa.schema(new))
        batch = self._conform(rows, table.schema().as_arrow())
        merged = {**snapshot_offsets(table, self.offsets_key), **positions}
        table.append(batch, snapshot_properties=offsets_property(merged, self.offsets_key))
        self.consumer.commit(positions)
        metrics.LAKE_COMMITS.labels(self.table_name).inc()
        metrics.LAKE_ROWS.labels(self.table_name).inc(batch.num_rows)
        self.rows += batch.num_rows
        return batch.num_rows

    def _conform(self, rows: pa.Table, target: pa.Schema) -> pa.Table:
        """Cast `rows` to the table's schema; rows with a value that does not fit go to on_conflict."""
        keep = [True] * rows.num_rows
        reasons = [""] * rows.num_rows
        for field in target:
            if field.name not in rows.column_names:
                continue
            column = rows.column(field.name)
            try:
                column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                values = column.to_pylist()
                for row, fits in enumerate(_castable_rows(column, field.type)):
                    if not fits and keep[row]:
                        keep[row] = False
                        reasons[row] = (
                            f"column {field.name} is {field.type} in table {self.table_name}; "
                            f"got {values[row]!r:.60} ({column.type}), which cannot be cast"
                        )
        if not all(keep):
            mask = pa.array(keep)
            self.on_conflict(rows.filter(pa.array([not k for k in keep])), [r for r in reasons if r])
            rows = rows.filter(mask)
        columns: list[Any] = []
        for field in target:
            if field.name in rows.column_names:
                columns.append(rows.column(field.name).cast(field.type))
            else:
                columns.append(pa.nulls(rows.num_rows, field.type))
        return pa.Table.from_arrays(columns, schema=target)

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Commit about once per `interval_s` (fewer, larger files than one commit per poll)."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll(timeout_s=0.2)
            except Exception:
                log.exception("table %s from stream %s: commit failed; retrying", self.table_name, self.stream)
                self.table = None
                time.sleep(1)
                self._resume()
            stop.wait(max(0.0, interval_s - (time.monotonic() - started)))

    def close(self) -> None:
        self.consumer.close()
