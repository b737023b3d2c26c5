"""Durable keyed state of a processor: one SQLite file per processor, rows per input partition.

SQLite (WAL, `synchronous=FULL`) and not RocksDB or LMDB: a checkpoint must write the state
changes, the served tables and the input offsets in one atomic transaction, and the HTTP server
(another process) must read served tables while the processor writes; SQLite does both with the
standard library. Reads go through an in-memory cache, writes stay in it until the checkpoint,
so the per-record cost is a dict lookup.
"""

from __future__ import annotations

import pickle
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    partition INTEGER NOT NULL, store TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (partition, store, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS served (
    name TEXT NOT NULL, key TEXT NOT NULL, partition INTEGER NOT NULL, value TEXT NOT NULL,
    event_time INTEGER NOT NULL, updated_ms INTEGER NOT NULL, PRIMARY KEY (name, key, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL, stream_time INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
"""
_MISSING = object()


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    if writer:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
    else:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class KeyValue:
    """One named store of one partition: get / put / delete / scan, cached, written at checkpoint."""

    __slots__ = ("_cache", "_conn", "_dirty", "name", "partition")

    def __init__(self, conn: sqlite3.Connection | None, partition: int, name: str) -> None:
        self._conn, self.partition, self.name = conn, partition, name
        self._cache: dict[Any, Any] = {}
        self._dirty: set[Any] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = None
            if self._conn is not None:
                row = self._conn.execute(
                    "SELECT value FROM kv WHERE partition = ? AND store = ? AND key = ?",
                    (self.partition, self.name, pickle.dumps(key)),
                ).fetchone()
                value = pickle.loads(row[0]) if row else None
            self._cache[key] = value
        return default if value is None else value

    def put(self, key: Any, value: Any) -> None:
        """Set `key` (None deletes it)."""
        self._cache[key] = value
        self._dirty.add(key)

    def delete(self, key: Any) -> None:
        self.put(key, None)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every live entry (stored merged with unsaved changes); used to rebuild timers at start."""
        seen: set[Any] = set()
        for key in list(self._dirty):
            seen.add(key)
            if self._cache.get(key) is not None:
                yield key, self._cache[key]
        if self._conn is None:
            for key, value in list(self._cache.items()):
                if key not in seen and value is not None:
                    yield key, value
            return
        rows = self._conn.execute(
            "SELECT key, value FROM kv WHERE partition = ? AND store = ?", (self.partition, self.name)
        ).fetchall()
        for raw_key, raw_value in rows:
            key = pickle.loads(raw_key)
            if key not in seen:
                yield key, self._cache.get(key, pickle.loads(raw_value))

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        out = []
        for key in self._dirty:
            value = self._cache.get(key)
            out.append((pickle.dumps(key), None if value is None else pickle.dumps(value, 5)))
        return out

    def saved(self, max_cached: int) -> None:
        self._dirty.clear()
        if len(self._cache) > max_cached and self._conn is not None:
            self._cache.clear()  # everything is on disk now: start the cache over


class ServedTable:
    """Latest value per key of a state table that the HTTP API serves (JSON, written at checkpoint)."""

    __slots__ = ("_pending", "name", "partition")

    def __init__(self, name: str, partition: int) -> None:
        self.name, self.partition = name, partition
        self._pending: dict[str, tuple[bytes | None, int]] = {}

    def put(self, key: str, value: Any, event_time: int) -> None:
        self._pending[key] = (None if value is None else orjson.dumps(value, default=str), event_time)

    def delete(self, key: str, event_time: int) -> None:
        self._pending[key] = (None, event_time)

    def pending(self) -> dict[str, tuple[bytes | None, int]]:
        return self._pending

    def saved(self) -> None:
        self._pending = {}


class StateStore:
    """The processor's state file; `path=None` keeps everything in memory (the test driver)."""

    def __init__(self, path: Path | None, max_cached: int = 200_000) -> None:
        self.path = path
        self.max_cached = max_cached
        self._conn = connect(path, writer=True) if path is not None else None

    def key_value(self, partition: int, name: str) -> KeyValue:
        return KeyValue(self._conn, partition, name)

    def checkpoint_of(self, partition: int) -> tuple[int, int] | None:
        """(next input offset, stream time) last committed for `partition`, or None."""
        if self._conn is None:
            return None
        row = self._conn.execute(
            "SELECT next_offset, stream_time FROM checkpoints WHERE partition = ?", (partition,)
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def commit(
        self,
        stores: list[KeyValue],
        served: list[ServedTable],
        checkpoints: dict[int, tuple[int, int]],
    ) -> int:
        """Write every change and the input offsets in one transaction; return rows written."""
        written = 0
        if self._conn is None:
            for store in stores:
                store.saved(max_cached=1 << 62)
            for table in served:
                table.saved()
            return 0
        now = int(time.time() * 1000)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for store in stores:
                changes = store.changes()
                if not changes:
                    continue
                upserts = [(store.partition, store.name, k, v) for k, v in changes if v is not None]
                deletes = [(store.partition, store.name, k) for k, v in changes if v is None]
                conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)", upserts)
                conn.executemany("DELETE FROM kv WHERE partition = ? AND store = ? AND key = ?", deletes)
                written += len(changes)
            for table in served:
                rows = table.pending()
                conn.executemany(
                    "INSERT OR REPLACE INTO served VALUES (?, ?, ?, ?, ?, ?)",
                    [(table.name, k, table.partition, v.decode(), t, now) for k, (v, t) in rows.items() if v],
                )
                conn.executemany(
                    "DELETE FROM served WHERE name = ? AND key = ? AND partition = ?",
                    [(table.name, k, table.partition) for k, (v, _) in rows.items() if v is None],
                )
                written += len(rows)
            conn.executemany(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
                [(p, offset, stream_time, now) for p, (offset, stream_time) in checkpoints.items()],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for store in stores:
            store.saved(self.max_cached)
        for table in served:
            table.saved()
        return written

    def size_bytes(self) -> int:
        if self.path is None or not self.path.exists():
            return 0
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ServedReader:
    """Reads served state tables from a processor's state file (the HTTP API's side)."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path, writer=False)

    def get(self, name: str, key: str) -> tuple[Any, int] | None:
        """(value, event time) of `key`; the newest when several partitions hold it."""
        row = self._conn.execute(
            "SELECT value, event_time FROM served WHERE name = ? AND key = ? ORDER BY event_time DESC LIMIT 1",
            (name, key),
        ).fetchone()
        return (orjson.loads(row[0]), int(row[1])) if row else None

    def scan(self, name: str, prefix: str = "", start: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Keys in order from `start` (exclusive) that begin with `prefix`."""
        low = max(prefix, start or "")
        op = ">" if start is not None and start >= prefix else ">="
        rows = self._conn.execute(
            f"SELECT key, value, event_time FROM served WHERE name = ? AND key {op} ? "
            "ORDER BY key, event_time DESC LIMIT ?",
            (name, low, limit * 4),
        ).fetchall()
        out: list[dict[str, Any]] = []
        for key, value, event_time in rows:
            if not key.startswith(prefix) or len(out) >= limit:
                break
            if out and out[-1]["key"] == key:
                continue
            out.append({"key": key, "value": orjson.loads(value), "event_time": int(event_time)})
        return out

    def count(self, name: str) -> int:
        return int(self._conn.execute("SELECT count(DISTINCT key) FROM served WHERE name = ?", (name,)).fetchone()[0])

    def close(self) -> None:
        self._conn.close()
