"""Batch stages: the work the lake writer runs on each batch of normalised events before it lands.

The tracking plan's enforcement (`headwater.plan`), the enrichments (`headwater.enrich`) and identity stitching
(`headwater.lake.identity`) are stages. They are built where settings are read (`headwater.runtime`) and handed
to the writer, so that `lake` imports neither `plan` nor `enrich`. Stages run in order, each on the output of
the one before, once per flush, and must be vectorised over the batch (no per-event Python loop on this path).

A stage may:
- add columns to `events` (new lake columns: the writer adds them to the table by schema evolution; names must
  be lower-case identifiers not starting with `_`, types any Arrow scalar type the lake stores);
- replace columns (e.g. `properties` with undeclared properties removed);
- move rows to quarantine (`quarantine(...)`: the writer stores them there with the reason, never in `events`);
- record side effects (violation counts, identity links, session state) — idempotently: after a crash the same
  batch is read again from the log and passes through every stage again before it lands;
- clean what quarantine keeps: a stage with a method `clean_raw(raw: pa.Array) -> pa.Array` gets the `raw`
  column (events as sent, JSON text) of every quarantine row the batch writes (e.g. the IP setting applied there
  too).

Columns starting with `_` are inputs for stages and never stored:
`_ip`, `_user_agent`, `_url`, `_referrer` (strings pulled out of the event during normalisation: `context.ip` or
the request's client address, `context.userAgent` or the request's User-Agent header, `context.page.url` or a
page call's `properties.url`, and the referrer likewise), `_endpoint` (`track-raw` for `POST /track`, else the
Segment call), `_log_partition` (int32) and `_log_offset` (int64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

HIDDEN_PREFIX = "_"
INPUT_COLUMNS = {
    "_ip": pa.string(),
    "_user_agent": pa.string(),
    "_url": pa.string(),
    "_referrer": pa.string(),
    "_endpoint": pa.string(),
    "_log_partition": pa.int32(),
    "_log_offset": pa.int64(),
}


@dataclass
class StageBatch:
    """One batch on its way to the lake: `events` rows, and the rows stages sent to quarantine."""

    events: pa.Table
    # row index in `events` (as handed to the first stage) -> reason; the writer moves these rows to quarantine,
    # with the event as it was sent (`raw`), its source, endpoint and log position
    quarantined: dict[int, str] = field(default_factory=dict)

    def quarantine(self, rows: list[int], reasons: list[str]) -> None:
        """Send rows (indices into `events`) to quarantine, each with its reason."""
        for row, reason in zip(rows, reasons, strict=True):
            self.quarantined.setdefault(row, reason)


class BatchStage(Protocol):
    """One step of the writer's pipeline. `apply` returns the batch (the same object or a new one); the number
    of rows of `events` must not change (rows leave only through `quarantine`)."""

    name: str

    def apply(self, batch: StageBatch) -> StageBatch: ...

    def close(self) -> None: ...


def stored_columns(table: pa.Table) -> pa.Table:
    """`table` without the stage inputs (the columns starting with `_`)."""
    hidden = [name for name in table.column_names if name.startswith(HIDDEN_PREFIX)]
    return table.drop_columns(hidden) if hidden else table
