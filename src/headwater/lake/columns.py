"""Columns that stages add to `events` (plan version, enrichments, user functions), and rows they quarantine.

A stage's new column becomes an optional Iceberg column the first time a batch carries it (schema evolution,
committed at once, retried when another writer changes the schema at the same moment). Files written before
simply lack it: Iceberg readers (Trino, Spark) see NULL, and the query view says so per file group
(`headwater.lake.shredding.view_sql`).
"""

from __future__ import annotations

import logging
import time

import orjson
import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from headwater.core.errors import LakeError
from headwater.core.events import QUARANTINE_SCHEMA

log = logging.getLogger(__name__)
ATTEMPTS = 8


def add_missing_columns(table: Table, rows: pa.Table) -> list[str]:
    """Add to `table` the columns of `rows` it lacks (optional, at the end); returns their names."""
    for attempt in range(ATTEMPTS):
        known = {f.name.lower() for f in table.schema().columns}
        missing = [f for f in rows.schema if f.name.lower() not in known]
        if not missing:
            return []
        try:
            with table.update_schema() as update:
                update.union_by_name(pa.schema([f.with_nullable(True) for f in missing]))
            log.info("events: added columns %s", ", ".join(f.name for f in missing))
            return [f.name for f in missing]
        except CommitFailedException:
            time.sleep(0.05 * (attempt + 1))
            table.refresh()  # another writer changed the schema: look again
    raise LakeError(f"could not add columns {[f.name for f in rows.schema]} to events after {ATTEMPTS} attempts")


def quarantine_rows(events: pa.Table, reasons: dict[int, str], values: list[bytes]) -> pa.Table:
    """Quarantine rows (QUARANTINE_SCHEMA) for the event rows a stage sent there: the event as it was sent (from
    its log record `values[row]`), the reason, and where it came from (a replay re-reads it from here)."""
    rows = sorted(reasons)
    picked = events.take(pa.array(rows, pa.int64())).select(
        ["received_at", "source", "_endpoint", "_log_partition", "_log_offset"]
    )
    raw = [orjson.dumps(orjson.loads(values[row])["e"]).decode() for row in rows]
    return pa.table(
        {
            "received_at": picked.column("received_at"),
            "source": picked.column("source"),
            "endpoint": picked.column("_endpoint"),
            "reason": pa.array([reasons[row] for row in rows], pa.string()),
            "raw": pa.array(raw, pa.string()),
            "log_partition": picked.column("_log_partition"),
            "log_offset": picked.column("_log_offset"),
        },
        schema=QUARANTINE_SCHEMA,
    )
