"""Replay from the lake: a run that starts with the `events` table, then reads the log from where
the table ends — Klarna's "replay past events", including what log retention already removed.

The plan is fixed when the run starts (stored in its manifest): the table's current snapshot,
the log offsets that snapshot covers (next offset per partition) and the earliest event time
wanted. Rows are routed to the partition the log would have put their key in, and given
offsets just below the snapshot's offset in (timestamp, event id) order, so a crash during the
replay resumes it at the same place and the output fence still drops what was written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.errors import ProcessingError
from headwater.core.settings import Settings
from headwater.log.base import EventLog

LakeRows = dict[int, list[tuple[str | None, dict[str, Any], int]]]


def plan(settings: Settings, event_log: EventLog, since_ms: int | None) -> dict[str, Any]:
    """What a lake replay reads: {"snapshot", "offsets", "since"}."""
    from headwater.lake.tables import NAMESPACE, open_catalog, snapshot_offsets

    table = open_catalog(settings).load_table((NAMESPACE, "events"))
    snapshot = table.current_snapshot()
    return {
        "snapshot": snapshot.snapshot_id if snapshot is not None else None,
        "offsets": {str(p): o for p, o in snapshot_offsets(table, event_log.offsets_key).items()},
        "since": since_ms,
    }


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


def load_rows(settings: Settings, event_log: EventLog, lake_plan: dict[str, Any]) -> LakeRows:
    """The plan's rows, per partition, in (timestamp, event_id) order, decoded as processors see events."""
    from headwater.lake.tables import NAMESPACE, open_catalog

    if lake_plan["snapshot"] is None:
        return {}
    table = open_catalog(settings).load_table((NAMESPACE, "events"))
    if table.snapshot_by_id(lake_plan["snapshot"]) is None:
        raise ProcessingError(f"lake replay: snapshot {lake_plan['snapshot']} has expired; request the replay again")
    arrow: pa.Table = table.scan(snapshot_id=lake_plan["snapshot"]).to_arrow()
    if lake_plan.get("since") is not None:
        since = datetime.fromtimestamp(lake_plan["since"] / 1000, tz=UTC)
        arrow = arrow.filter(
            pc.greater_equal(arrow["timestamp"], pa.scalar(since, arrow.schema.field("timestamp").type))
        )
    arrow = arrow.sort_by([("timestamp", "ascending"), ("event_id", "ascending")])
    rows: LakeRows = {}
    for row in arrow.to_pylist():
        key = row["user_id"] or row["anonymous_id"]
        partition = event_log.partition_for(key.encode()) if key else 0
        value = {
            "event_id": row["event_id"], "type": row["type"], "event": row["event"], "user_id": row["user_id"],
            "anonymous_id": row["anonymous_id"], "timestamp": _iso(row["timestamp"]),
            "received_at": _iso(row["received_at"]), "source": row["source"],
            "properties": _json(row["properties"]) or {}, "context": _json(row["context"]),
            "traits": _json(row["traits"]),
        }  # fmt: skip
        rows.setdefault(partition, []).append((key, value, int(row["timestamp"].timestamp() * 1000)))
    return rows
