"""Reads the newest records of the log without a consumer group (nothing is committed).

With `stream=`, reads a processor's output stream instead of `events`: its records are
`{"k", "v", "t", "id"}` and come back as rows `{"key", "value", "time", "id"}` (`time` is the
record's event time, ISO-8601). Only streams that `streams()` names (those processors write) can
be read, so that a request cannot create a stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

import orjson

from headwater.core.erasure import ERASED
from headwater.core.events import RowBuilder
from headwater.log.base import EventLog, Record, TailReader

MAX_LIMIT = 1000


def parse_cursor(cursor: str, partitions: int) -> dict[int, int]:
    """'0:120,1:98' -> {0: 120, 1: 98}; a clear error for anything else."""
    positions: dict[int, int] = {}
    try:
        for part in filter(None, cursor.split(",")):
            partition, offset = part.split(":")
            positions[int(partition)] = int(offset)
    except ValueError:
        raise ValueError("cursor: expected the value returned by the previous call, like '0:120,1:98'") from None
    if any(p < 0 or p >= partitions or o < 0 for p, o in positions.items()):
        raise ValueError("cursor: partition or offset out of range")
    return positions


def format_cursor(positions: dict[int, int]) -> str:
    return ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _stream_row(record: Record) -> dict[str, Any]:
    position = {"partition": record.partition, "offset": record.offset}
    try:
        body = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or "v" not in body:  # not in the output-stream format: show it as it is
        key = record.key.decode(errors="replace") if record.key is not None else None
        value = body if body is not None else record.value.decode(errors="replace")
        body = {"k": key, "v": value, "t": record.timestamp_ms, "id": None}
    t = body.get("t")
    when = datetime.fromtimestamp(t / 1000, tz=UTC).isoformat() if isinstance(t, int | float) else None
    return {"key": body.get("k"), "value": body.get("v"), "time": when, "t": t, "id": body.get("id"), **position}


class LiveTail:
    def __init__(self, log: EventLog, streams: Callable[[], Collection[str]] | None = None) -> None:
        self.log = log
        self._reader = log.reader()
        self._streams = streams or (lambda: ())
        self._stream_readers: dict[str, TailReader] = {}
        self._lock = threading.Lock()  # one connection per stream, used from the server's thread pool

    def read(
        self,
        cursor: str | None = None,
        limit: int = 100,
        event: str | None = None,
        person: str | None = None,
        source: str | None = None,
        include_rejected: bool = True,
        stream: str | None = None,
    ) -> dict[str, Any]:
        """Without a cursor: the newest `limit` events. With one: events appended since, oldest first.
        With `stream`: records of that output stream (filtered by key when `person` is given)."""
        if stream is not None and stream != "events":
            known = self._streams()
            if stream not in known:
                names = ", ".join(sorted(known)) or "none yet"
                raise ValueError(f"stream {stream!r}: no processor writes it (streams: {names})")
        with self._lock:
            if stream is None or stream == "events":
                return self._read(self._reader, cursor, limit, event, person, source, include_rejected)
            reader = self._stream_readers.get(stream)
            if reader is None:
                reader = self._stream_readers[stream] = self.log.stream(stream).reader()
            page = self._read(reader, cursor, limit, None, None, None, True, _stream_row)
            if person is not None:
                page["events"] = [row for row in page["events"] if row["key"] == person]
            return page

    def _read(
        self, reader: TailReader, cursor: str | None, limit: int, event: str | None, person: str | None,
        source: str | None, include_rejected: bool, make_row: Callable[[Record], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        limit = max(1, min(limit, MAX_LIMIT))
        ends = reader.end_offsets()
        if cursor:
            start = parse_cursor(cursor, self.log.partitions)
        else:
            start = {p: max(0, end - limit) for p, end in ends.items()}
        records = []
        positions = dict(ends)
        for partition in range(self.log.partitions):
            begin = start[partition] if partition in start else int(ends.get(partition, 0))
            got = reader.read(partition, begin, limit)
            records.extend(got)
            positions[partition] = got[-1].offset + 1 if got else begin
        records = [r for r in records if r.value != ERASED]  # a privacy deletion erased them
        records.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset))
        if not cursor:
            records = records[-limit:]
        elif len(records) > limit:  # deliver the oldest first; the cursor resumes after them
            records = records[:limit]
            positions = dict(start)
            for record in records:
                positions[record.partition] = max(positions.get(record.partition, 0), record.offset + 1)
        if make_row is not None:
            rows = [make_row(r) for r in records]
            if not cursor:
                rows.reverse()
            return {"events": rows, "cursor": format_cursor(positions)}
        rows = self._rows(records)
        rows = [
            row for row in rows
            if (event is None or row["event"] == event)
            and (person is None or person in (row["user_id"], row["anonymous_id"]))
            and (source is None or row["source"] == source)
            and (include_rejected or row["rejected"] is None)
        ]  # fmt: skip
        if not cursor:
            rows.reverse()  # newest first
        return {"events": rows, "cursor": format_cursor(positions)}

    def _rows(self, records: list[Record]) -> list[dict[str, Any]]:
        """The records as lake rows (or quarantine rows), in order: one RowBuilder for the whole page."""
        builder = RowBuilder()
        placed: list[tuple[bool, int]] = []  # (went to events, its index there)
        for r in records:
            events_before, quarantine_before = builder.event_count, builder.quarantine_count
            builder.add(orjson.loads(r.value), self.log.log_id, r.partition, r.offset)
            if builder.event_count > events_before:
                placed.append((True, events_before))
            elif builder.quarantine_count > quarantine_before:
                placed.append((False, quarantine_before))
            else:
                placed.append((False, -1))  # erased
        events, quarantine = builder.tables()
        event_rows, quarantine_rows = events.to_pylist(), quarantine.to_pylist()
        rows = []
        for record, (is_event, index) in zip(records, placed, strict=True):
            position = {"partition": record.partition, "offset": record.offset}
            if is_event:
                row = {k: _iso(v) for k, v in event_rows[index].items()}
                for name in ("properties", "context", "traits"):
                    row[name] = _json(row[name])
                rows.append({**row, **position, "rejected": None})
            elif index >= 0:
                q = quarantine_rows[index]
                rows.append({
                    "event_id": None, "type": None, "event": None, "user_id": None, "anonymous_id": None,
                    "timestamp": None, "received_at": _iso(q["received_at"]), "source": q["source"],
                    "rejected": q["reason"], "raw": q["raw"], **position,
                })  # fmt: skip
        return rows

    def close(self) -> None:
        self._reader.close()
        for reader in self._stream_readers.values():
            reader.close()
