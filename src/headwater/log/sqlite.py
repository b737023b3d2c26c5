"""The embedded event log: SQLite in WAL mode, one row per record batch, group-committed.

Why SQLite and not a hand-rolled segment file: it gives crash-safe atomic transactions (the
batch rows, the partition high-water marks and the de-duplication index commit together or not
at all), fsync on commit (`synchronous=FULL`), and concurrent readers while one thread writes.
Record batches keep Kafka's model: each partition has dense, ordered offsets; a batch row holds
records [base_offset, base_offset + count).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headwater.core.errors import LogError
from headwater.core.settings import Settings
from headwater.log.base import OutputRecord, Record
from headwater.log.sqlite_producer import SqliteProducer
from headwater.log.sqlite_store import OFFSETS_SCHEMA, SCHEMA, connect, decode_batch, encode_batch, read_partition

if TYPE_CHECKING:
    from headwater.core.erasure import ErasureSet
    from headwater.log.erase import Progress

__all__ = [
    "GROUP_EXPIRY_MS", "STREAM_NAME", "SqliteAdmin", "SqliteCheckpointer", "SqliteConsumer", "SqliteLog",
    "SqliteProducer", "SqliteReader", "decode_batch", "encode_batch", "read_partition",
]  # fmt: skip

log = logging.getLogger(__name__)
GROUP_EXPIRY_MS = 7 * 86_400_000  # a group idle this long no longer holds back retention
STREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


class SqliteLog:
    """Opens (creating if needed) the embedded log at `path`, offsets in `offsets_path`."""

    backend = "embedded"
    deduplicates = True
    erasable = True
    offsets_key = "headwater.log-offsets"

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteLog:
        log_ = cls(settings.log_path, settings.offsets_path, settings.log_partitions)
        log_.producer_options = {
            "group_commit_wait_ms": settings.group_commit_wait_ms,
            "dedupe_window_s": settings.dedupe_window_hours * 3600,
            "retention_s": settings.log_retention_hours * 3600,
            "retention_bytes": settings.log_retention_mb * 1024 * 1024,
        }
        return log_

    def __init__(self, path: Path, offsets_path: Path, partitions: int = 4) -> None:
        self.producer_options: dict[str, Any] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.offsets_path = path, offsets_path
        conn = connect(path, writer=True)
        try:
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('partitions', ?)", (str(partitions),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', lower(hex(randomblob(8))))")
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            self.partitions = int(meta["partitions"])
            self.log_id = meta["log_id"]
            if self.partitions != partitions:
                log.warning("log has %d partitions; ignoring log_partitions=%d", self.partitions, partitions)
            conn.executemany(
                "INSERT OR IGNORE INTO partition_state VALUES (?, 0)",
                [(p,) for p in range(self.partitions)],
            )
        finally:
            conn.close()
        oconn = connect(offsets_path, writer=True)
        try:
            oconn.executescript(OFFSETS_SCHEMA)
        finally:
            oconn.close()

    def producer(self, **kwargs: Any) -> SqliteProducer:
        return SqliteProducer(self, **{**self.producer_options, **kwargs})

    def consumer(self, group: str) -> SqliteConsumer:
        return SqliteConsumer(self, group)

    def reader(self) -> SqliteReader:
        return SqliteReader(self)

    def admin(self) -> SqliteAdmin:
        return SqliteAdmin(self)

    def partition_for(self, key: bytes) -> int:
        return zlib.crc32(key) % self.partitions

    def checkpointer(self, name: str, consumer: Any) -> SqliteCheckpointer:
        return SqliteCheckpointer(self, name)

    def erase(self, ids: ErasureSet, progress: Progress | None = None) -> dict[str, int]:
        """Erase records holding `ids` from this log and its streams, in place (see `headwater.log.erase`);
        records erased per log ('events') and stream name."""
        from headwater.log.erase import erase_log

        return erase_log(self, ids, progress)

    def stream(self, name: str) -> SqliteLog:
        """The stream `name`: its own SQLite file beside the events log (one writer lock per stream)."""
        if not STREAM_NAME.match(name):
            raise LogError(f"stream name {name!r}: use lower-case letters, digits, '_', '.' and '-'")
        folder = self.path.parent / "streams"
        other = SqliteLog(folder / f"{name}.db", folder / f"{name}.offsets.db", self.partitions)
        other.producer_options = dict(self.producer_options)
        return other


class SqliteAdmin:
    """Read-only views: end offsets, committed offsets per group, lag, size."""

    def __init__(self, log_: SqliteLog) -> None:
        self.partitions = log_.partitions
        self._conn = connect(log_.path, writer=False)
        self._oconn = connect(log_.offsets_path, writer=False)
        self._lock = threading.Lock()

    def end_offsets(self) -> dict[int, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT partition, next_offset FROM partition_state").fetchall())

    def group_offsets(self, active_within_ms: int | None = None) -> dict[str, dict[int, int]]:
        """Committed offsets per group; with `active_within_ms`, only groups that registered or
        committed within that time (like Kafka's offsets.retention.minutes)."""
        out: dict[str, dict[int, int]] = {}
        since = int(time.time() * 1000) - active_within_ms if active_within_ms is not None else 0
        with self._lock:
            active = self._oconn.execute(
                "SELECT g.group_id FROM groups g LEFT JOIN offsets o ON o.group_id = g.group_id "
                "GROUP BY g.group_id HAVING max(coalesce(o.updated_ms, 0), g.registered_ms) >= ?",
                (since,),
            ).fetchall()
            for (group,) in active:
                out[group] = {}
            rows = self._oconn.execute("SELECT group_id, partition, next_offset FROM offsets").fetchall()
        for group, partition, offset in rows:
            if group in out:
                out[group][partition] = offset
        return out

    def retention_groups(self) -> dict[str, dict[int, int]]:
        """Committed offsets of the groups that still hold back retention (active within GROUP_EXPIRY_MS)."""
        return self.group_offsets(active_within_ms=GROUP_EXPIRY_MS)

    def lag(self, group: str) -> int:
        ends = self.end_offsets()
        committed = self.group_offsets().get(group, {})
        return sum(max(0, end - committed.get(p, 0)) for p, end in ends.items())

    def size_bytes(self) -> int:
        """Live bytes in the log (freed pages are reused, so this is what counts against the budget)."""
        with self._lock:
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * page_size)

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        self._conn.close()
        self._oconn.close()


class SqliteReader:
    """Reads records by position without a group (live tail)."""

    def __init__(self, log_: SqliteLog) -> None:
        self._conn = connect(log_.path, writer=False)

    def end_offsets(self) -> dict[int, int]:
        return dict(self._conn.execute("SELECT partition, next_offset FROM partition_state").fetchall())

    def read(self, partition: int, position: int, max_records: int) -> list[Record]:
        return read_partition(self._conn, partition, position, max_records)

    def close(self) -> None:
        self._conn.close()


class SqliteConsumer:
    """A member of a consumer group; owns every partition (one member per group in embedded mode)."""

    generation = 0  # the only member: never rebalanced

    def __init__(self, log_: SqliteLog, group: str) -> None:
        self.group = group
        self.partitions = log_.partitions
        self._conn = connect(log_.path, writer=False)
        self._oconn = connect(log_.offsets_path, writer=True)
        self._oconn.execute("INSERT OR IGNORE INTO groups VALUES (?, ?)", (group, int(time.time() * 1000)))
        committed = self.committed()
        self._positions = {p: committed.get(p, self._earliest(p)) for p in range(self.partitions)}

    def _earliest(self, partition: int) -> int:
        row = self._conn.execute("SELECT MIN(base_offset) FROM batches WHERE partition = ?", (partition,)).fetchone()
        if row[0] is not None:
            return int(row[0])
        end = self._conn.execute("SELECT next_offset FROM partition_state WHERE partition = ?", (partition,))
        return int(end.fetchone()[0])

    def assignment(self) -> list[int]:
        return list(range(self.partitions))

    def committed(self) -> dict[int, int]:
        rows = self._oconn.execute(
            "SELECT partition, next_offset FROM offsets WHERE group_id = ?", (self.group,)
        ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def seek(self, partition: int, offset: int) -> None:
        self._positions[partition] = offset

    def positions(self) -> dict[int, int]:
        return dict(self._positions)

    def end_offsets(self) -> dict[int, int]:
        return dict(self._conn.execute("SELECT partition, next_offset FROM partition_state").fetchall())

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        while True:
            ends = self.end_offsets()
            ready = [p for p in range(self.partitions) if self._positions[p] < ends.get(p, 0)]
            if ready:
                return self._read(ready, max_records)
            if time.monotonic() >= deadline:
                return []
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

    def _read(self, partitions: list[int], max_records: int) -> list[Record]:
        out: list[Record] = []
        per_partition = max(1, max_records // len(partitions))
        for partition in partitions:
            records = read_partition(self._conn, partition, self._positions[partition], per_partition)
            if records:
                if records[0].offset > self._positions[partition]:
                    log.warning(
                        "group %s partition %d: offsets %d..%d are no longer in the log",
                        self.group, partition, self._positions[partition], records[0].offset,
                    )  # fmt: skip
                self._positions[partition] = records[-1].offset + 1
                out.extend(records)
        return out

    def commit(self, offsets: dict[int, int] | None = None) -> None:
        offsets = dict(self._positions) if offsets is None else offsets
        now = int(time.time() * 1000)
        with self._oconn:
            self._oconn.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?, ?) ON CONFLICT (group_id, partition) "
                "DO UPDATE SET next_offset = excluded.next_offset, updated_ms = excluded.updated_ms",
                [(self.group, p, o, now) for p, o in offsets.items()],
            )

    def close(self) -> None:
        self._conn.close()
        self._oconn.close()


class SqliteCheckpointer:
    """Outputs are appended fenced, per (stream, input partition): a re-run after a crash writes
    nothing twice. One consumer owns every partition, so state never moves: no changelog, and the
    processor's state store keeps the input offsets."""

    offsets_in_log = False
    changelog = False

    def __init__(self, log_: SqliteLog, name: str) -> None:
        self._log, self.name = log_, name
        self._producers: dict[str, SqliteProducer] = {}

    def _producer(self, stream: str) -> SqliteProducer:
        if stream not in self._producers:
            self._producers[stream] = self._log.stream(stream).producer()
        return self._producers[stream]

    def write(
        self,
        outputs: dict[str, list[OutputRecord]],
        changes: dict[int, list[tuple[bytes, bytes | None]]],
        offsets: dict[int, int],
    ) -> dict[int, int]:
        """One append per stream, records in the order given (event time, across input partitions),
        each under the fence of its input partition."""
        futures = []
        for stream, items in outputs.items():
            keys = [item.idempotency for item in items]
            futures.append(
                self._producer(stream).append_fenced(
                    [(item.key, item.value) for item in items],
                    # wall-clock timer outputs are kept once by their idempotency key, not the fence
                    [None if item.idempotency else f"{self.name}/{item.partition}" for item in items],
                    [item.position for item in items],
                    keys if any(keys) else None,
                )
            )
        for future in futures:
            future.result()
        return {}

    def restore(self, partition: int, start: int) -> Iterator[tuple[int, list[tuple[bytes, bytes | None]]]]:
        return iter(())

    def changelog_end(self, partition: int) -> int:
        return 0

    def committed(self) -> dict[int, int]:
        return {}

    def close(self) -> None:
        for producer in self._producers.values():
            producer.close()
