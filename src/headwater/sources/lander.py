"""A table-bound source's feed stream into its own Iceberg table (runs beside the source).

Rows are the records' top-level fields (nested values as JSON text) plus `_source_id` (the stable
id of the upstream record) and `_received_at` (the table is partitioned by its day). New fields add
nullable columns, recorded as a new schema version of the table; a value of a type that cannot be
cast to its column goes to `quarantine` with the reason, the rest of its batch lands. Exactly once
through the stream offsets each snapshot records (`headwater.lake.stream_table`).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
from pyiceberg.catalog import Catalog

from headwater.core.erasure import is_erased
from headwater.core.settings import Settings
from headwater.core.source_settings import SourceSettings
from headwater.lake.stream_table import StreamTableWriter, json_cell, normalise_types, rows_table
from headwater.lake.tables import open_catalog
from headwater.log.base import EventLog, Record
from headwater.sources.formats import json_default, to_json

log = logging.getLogger(__name__)
LAND_EVERY_S = 0.3
_RECEIVED = pa.timestamp("us", tz="UTC")
DECIMAL_KEY = "$decimal"


def feed_json(value: Any) -> bytes:
    """A record for a feed stream: Decimal kept exact as {"$decimal": "12.50"} (JSON numbers are floats)."""

    def default(item: Any) -> Any:
        return {DECIMAL_KEY: str(item)} if isinstance(item, Decimal) else json_default(item)

    return orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS)


def column_name(name: str, row: dict[str, Any]) -> str:
    """A record field's column: `_field` for an empty name, a trailing `_` where it would clash with a
    column Headwater adds (`_source_id`, `_received_at`) or a field seen already."""
    name = name or "_field"
    while name in row:
        name += "_"
    return name


def _cell(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1 and DECIMAL_KEY in value:
        return Decimal(value[DECIMAL_KEY])  # written by feed_json: an exact decimal
    return json_cell(value)


class SourceLander(StreamTableWriter):
    time_column = "_received_at"

    def __init__(self, catalog: Catalog, event_log: EventLog, source: SourceSettings) -> None:
        assert source.table is not None and source.feed_stream is not None
        self.source = source
        self.quarantine = event_log.producer()
        super().__init__(catalog, event_log, source.feed_stream, source.table)

    def rows_from(self, records: list[Record]) -> pa.Table:
        rows = []
        for record in records:
            envelope = orjson.loads(record.value)
            if is_erased(envelope):
                continue  # a privacy deletion erased it
            row: dict[str, Any] = {
                "_source_id": envelope["id"],
                "_received_at": datetime.fromtimestamp(envelope["m"]["ra"] / 1000, tz=UTC),
            }
            for name, value in envelope["r"].items():
                row[column_name(str(name), row)] = _cell(value)
            rows.append(row)
        try:
            table = self._typed(rows)
        except (pa.ArrowException, OverflowError, ValueError, TypeError):
            rows = self._split_mixed(rows)  # values that do not fit their column: quarantined, not a stuck batch
            try:
                table = self._typed(rows)
            except (pa.ArrowException, OverflowError, ValueError, TypeError) as exc:
                self._quarantine_rows(rows, [f"cannot be landed in table {self.table_name}: {exc}"] * len(rows))
                rows = []
                table = self._typed(rows)
        return table

    def _typed(self, rows: list[dict[str, Any]]) -> pa.Table:
        if not rows:  # every row quarantined: an empty batch still records how far the stream was read
            return pa.table({"_source_id": pa.array([], pa.string()), "_received_at": pa.array([], _RECEIVED)})
        table = rows_table(rows)
        known = set(self.table.schema().column_names) if self.table is not None else set()
        empty = [f.name for f in table.schema if pa.types.is_null(f.type) and f.name not in known]
        return normalise_types(table.drop_columns(empty), self.time_column)  # an all-null column waits for a value

    def _split_mixed(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each value cast to its column's type (the table's, else that of the batch's first value, as tables
        keep it: int64, float64, decimal(38, s)); rows with a value that does not cast go to quarantine."""
        existing = {f.name: f.type for f in self.table.schema().as_arrow()} if self.table is not None else {}
        names = {name for row in rows for name in row} - {"_source_id", "_received_at"}
        bad: dict[int, str] = {}
        for name in names:
            values = [row.get(name) for row in rows]
            expected = existing.get(name)
            if expected is None:
                first = next((v for v in values if v is not None), None)
                if first is None:
                    continue
                try:
                    expected = normalise_types(pa.table({name: pa.array([first])})).schema.field(name).type
                except (pa.ArrowException, OverflowError, ValueError, TypeError) as exc:
                    expected = None
                    reason = f"column {name}: {first!r:.60} has no column type ({exc})"
                    bad.update({i: reason for i, v in enumerate(values) if v is not None and i not in bad})
                    continue
            for index, value in enumerate(values):
                if value is None or index in bad:
                    continue
                try:
                    rows[index][name] = pa.array([value]).cast(expected).to_pylist()[0]
                except (pa.ArrowException, OverflowError, ValueError, TypeError):
                    bad[index] = (
                        f"column {name} is {expected} in table {self.table_name}; got {value!r:.60}, "
                        "which cannot be cast"
                    )
        if bad:
            self._quarantine_rows([rows[i] for i in sorted(bad)], [bad[i] for i in sorted(bad)])
        return [row for index, row in enumerate(rows) if index not in bad]

    def on_conflict(self, rows: pa.Table, reasons: list[str]) -> None:
        self._quarantine_rows(rows.to_pylist(), reasons)

    def _quarantine_rows(self, rows: list[dict[str, Any]], reasons: list[str]) -> None:
        envelopes: list[tuple[bytes | None, bytes]] = []
        keys: list[tuple[str, str] | None] = []
        for row, reason in zip(rows, reasons, strict=True):
            meta = orjson.dumps(
                {"src": self.source.name, "ep": f"source.{self.source.kind}",
                 "ra": int(row["_received_at"].timestamp() * 1000)}
            )  # fmt: skip
            fields = {k: v for k, v in row.items() if k != "_received_at" and v is not None}
            try:
                raw = to_json(fields).decode()
            except (TypeError, ValueError):  # an integer over 64 bits
                raw = repr(fields)
            body = b'{"m":' + meta + b',"q":' + orjson.dumps(reason) + b',"raw":' + orjson.dumps(raw) + b"}"
            envelopes.append((None, body))
            keys.append((self.source.name, f"{row['_source_id']}#schema"))
        self.quarantine.append(envelopes, keys).result()
        log.warning("table %s: %d rows quarantined (%s)", self.table_name, len(envelopes), reasons[0])

    def close(self) -> None:
        super().close()
        self.quarantine.close()


class LanderThread:
    """Runs a SourceLander until stopped, then lands what is left once."""

    def __init__(self, lander: SourceLander, stop: threading.Event) -> None:
        self.lander = lander
        self.thread = threading.Thread(target=lander.run, args=(stop, LAND_EVERY_S), name="lander", daemon=True)
        self.thread.start()

    @property
    def rows(self) -> int:
        return self.lander.rows

    def finish(self) -> None:
        self.thread.join(timeout=30)
        try:
            while self.lander.poll(timeout_s=0.2):
                pass
        except Exception:
            log.exception("table %s: last landing failed; it resumes on the next start", self.lander.table_name)
        self.lander.close()


def start_lander(
    settings: Settings, source: SourceSettings, event_log: EventLog, stop: threading.Event
) -> LanderThread:
    """The lander of a table-bound source, running in a thread of the source's process."""
    return LanderThread(SourceLander(open_catalog(settings), event_log, source), stop)
