"""Processor outputs into Iceberg tables: a stream's records appended to a table, exactly once.

Each commit records the stream's next offsets in the snapshot (`headwater.log-offsets.stream.<name>`)
and the writer resumes from them, as the lake writer does for `events`; since processors write
their streams exactly once (see `runtime`), the table holds each output once.

Columns: `key`, `event_time`, `output_id`, then the value's top-level fields (nested ones as JSON
text; a value that is not an object is the column `value`). A field seen for the first time adds
a column (Iceberg schema evolution); partitioned by day of `event_time`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform

from headwater.core import metrics
from headwater.core.errors import ProcessingError
from headwater.lake.tables import NAMESPACE, OFFSETS_PROPERTY, TABLE_PROPERTIES, offsets_property, snapshot_offsets
from headwater.log.base import Consumer, EventLog
from headwater.processing.records import decode_outputs

log = logging.getLogger(__name__)
FIXED = ("key", "event_time", "output_id")
SIDE_SCHEMA = pa.schema(
    [
        ("key", pa.string()), ("event_time", pa.timestamp("us", tz="UTC")), ("output_id", pa.string()),
        ("processor", pa.string()), ("value", pa.string()), ("reason", pa.string()),
        ("partition", pa.int64()), ("offset", pa.int64()),
    ]
)  # fmt: skip
"""Columns of `processor_late` and `processor_errors` (created empty, so they can be queried at once)."""


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    return value


def rows_to_arrow(records: list[tuple[str | None, Any, int, str]]) -> pa.Table:
    rows = []
    for key, value, ts, output_id in records:
        row: dict[str, Any] = {
            "key": key,
            "event_time": datetime.fromtimestamp(ts / 1000, tz=UTC),
            "output_id": output_id,
        }
        if isinstance(value, dict):
            for name, cell in value.items():
                if name not in FIXED:
                    row[str(name)] = _cell(cell)
        else:
            row["value"] = _cell(value)
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    fields = []
    for field in table.schema:
        kind = field.type
        if field.name == "event_time":
            kind = pa.timestamp("us", tz="UTC")
        elif pa.types.is_null(kind):
            kind = pa.string()
        elif pa.types.is_integer(kind):
            kind = pa.int64()
        elif pa.types.is_floating(kind):
            kind = pa.float64()
        fields.append(pa.field(field.name, kind, nullable=True))
    return table.cast(pa.schema(fields))


class StreamTableWriter:
    """Consumes `stream` and appends to the lake table `table_name`."""

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

    def _load(self) -> Table | None:
        try:
            return self.catalog.load_table((NAMESPACE, self.table_name))
        except NoSuchTableError:
            return None

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
            update.add_field("event_time", DayTransform(), "event_time_day")
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
        decoded = [
            (key, value, ts, orjson.loads(r.value)["id"])
            for r, (key, value, ts, _) in zip(records, decode_outputs(records), strict=True)
        ]
        rows = rows_to_arrow(decoded)
        if self.table is None:
            self.table = self._create(rows.schema)
        table = self.table
        existing = {f.name for f in table.schema().fields}
        new = [f for f in rows.schema if f.name not in existing]
        if new:
            with table.update_schema() as update:
                update.union_by_name(pa.schema(new))
        target = table.schema().as_arrow()
        columns = []
        for field in target:
            if field.name in rows.column_names:
                column = rows.column(field.name)
                try:
                    columns.append(column.cast(field.type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ProcessingError(
                        f"table {self.table_name}: column {field.name} is {field.type}, got {column.type} ({exc})"
                    ) from exc
            else:
                columns.append(pa.nulls(rows.num_rows, field.type))
        batch = pa.Table.from_arrays(columns, schema=target)
        merged = {**snapshot_offsets(table, self.offsets_key), **positions}
        table.append(batch, snapshot_properties=offsets_property(merged, self.offsets_key))
        self.consumer.commit(positions)
        metrics.LAKE_COMMITS.labels(self.table_name).inc()
        metrics.LAKE_ROWS.labels(self.table_name).inc(batch.num_rows)
        self.rows += batch.num_rows
        return batch.num_rows

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
