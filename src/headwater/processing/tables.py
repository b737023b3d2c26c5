"""Processor outputs into Iceberg tables: a stream's records appended to a table, exactly once.

Each commit records the stream's next offsets in the snapshot (`headwater.log-offsets.stream.<name>`)
and the writer resumes from them, as the lake writer does for `events`; since processors write
their streams exactly once (see `runtime`), the table holds each output once.

Columns: `key`, `event_time`, `output_id`, then the value's top-level fields (nested ones as JSON
text; a value that is not an object is the column `value`). A field seen for the first time adds
a column (Iceberg schema evolution); partitioned by day of `event_time`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from headwater.core.erasure import ERASED
from headwater.lake.stream_table import StreamTableWriter, json_cell, normalise_types, rows_table
from headwater.log.base import Record
from headwater.processing.records import decode_outputs

FIXED = ("key", "event_time", "output_id")
SIDE_SCHEMA = pa.schema(
    [
        ("key", pa.string()), ("event_time", pa.timestamp("us", tz="UTC")), ("output_id", pa.string()),
        ("processor", pa.string()), ("value", pa.string()), ("reason", pa.string()),
        ("partition", pa.int64()), ("offset", pa.int64()),
    ]
)  # fmt: skip
"""Columns of `processor_late` and `processor_errors` (created empty, so they can be queried at once)."""


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
                    row[str(name)] = json_cell(cell)
        else:
            row["value"] = json_cell(value)
        rows.append(row)
    return normalise_types(rows_table(rows), "event_time")


class OutputTableWriter(StreamTableWriter):
    """A processor's output stream into its table."""

    def rows_from(self, records: list[Record]) -> pa.Table:
        records = [r for r in records if r.value != ERASED]  # a privacy deletion erased them
        if not records:  # an empty batch still records how far the stream was read
            return SIDE_SCHEMA.empty_table().select(list(FIXED))
        decoded = [
            (key, value, ts, orjson.loads(r.value)["id"])
            for r, (key, value, ts, _) in zip(records, decode_outputs(records), strict=True)
        ]
        return rows_to_arrow(decoded)
