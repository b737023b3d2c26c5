"""Durable keyed state of a processor: one SQLite file per processor, rows per input partition.

SQLite (WAL, `synchronous=FULL`) and not RocksDB or LMDB: a checkpoint must write the state
changes, the served tables and the input offsets in one atomic transaction, and the HTTP server
(another process) must read served tables while the processor writes; SQLite does both with the
standard library. Reads go through an in-memory cache, writes stay in it until the checkpoint,
so the per-record cost is a dict lookup.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

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
    updated_ms INTEGER NOT NULL, changelog_offset INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_MISSING = object()
_EVENT_TIME = struct.Struct("<q")
NO_TIME = -(1 << 62)
NO_OFFSET = -(1 << 62)
"""No checkpoint yet (offsets may be negative: rows replayed from the lake come before the log's)."""


STATE_VERSION = "state_version"
"""`meta` row: the pipeline's `state_version` the file's entries were written with."""
MIGRATE_BATCH = 2000


class StateKey(NamedTuple):
    """What `migrate_state` gets as `key`: the operator's store (`process1`, `window2`, `join3.left`,
    `process1.timers`...), the key in it (for `process()` state: the record's key), the `ctx.state`
    name (None in other stores), the input partition and the processor (a repartition stage has its own)."""

    store: str
    key: Any
    name: Any
    partition: int
    processor: str = ""


def state_key(store: str, raw_key: Any, partition: int) -> StateKey:
    """`process<n>` stores hold (record key, state name) pairs: split them; others keep their key whole."""
    if store.startswith("process") and store[7:].isdigit() and isinstance(raw_key, tuple) and len(raw_key) == 2:
        return StateKey(store, raw_key[0], raw_key[1], partition)
    return StateKey(store, raw_key, None, partition)


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    if writer:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")  # deleted entries (erasures) are zeroed, not left in free pages
        conn.executescript(_SCHEMA)
    else:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class StateLock:
    """`state-<run>.lock` beside a state file: a running processor holds it shared (several workers may share
    a file), an eraser of stopped processors' state exclusively; the kernel drops it when a process dies."""

    def __init__(self, state_path: Path) -> None:
        self.path = state_path.with_suffix(".lock")
        self._fd: int | None = None

    def acquire(self, exclusive: bool = False, wait: bool = True) -> bool:
        """Take the lock; False when `wait` is off and another process holds it (in the other mode)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


class KeyValue:
    """One named store of one partition: get / put / delete / scan, cached, written at checkpoint."""

    __slots__ = ("_cache", "_complete", "_conn", "_dirty", "name", "partition")

    def __init__(self, conn: sqlite3.Connection | None, partition: int, name: str) -> None:
        self._conn, self.partition, self.name = conn, partition, name
        self._cache: dict[Any, Any] = {}
        self._dirty: set[Any] = set()
        # the cache holds every entry there is (a store that started empty): a miss needs no read
        self._complete = conn is None or (
            conn.execute("SELECT 1 FROM kv WHERE partition = ? AND store = ? LIMIT 1", (partition, name)).fetchone()
            is None
        )

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = None
            if not self._complete and self._conn is not None:
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

    def erase_where(self, raw_test: Callable[[bytes], bool], test: Callable[[Any], bool]) -> int:
        """Delete every entry whose key or value passes `test` (a privacy erasure); `raw_test` on the stored
        bytes (pickles) spares decoding rows that cannot match. Deleted through `delete`: the checkpoint
        writes them, with changelog tombstones when state is changelogged. Returns entries deleted."""
        doomed = [k for k in self._dirty if self._cache.get(k) is not None and (test(k) or test(self._cache[k]))]
        if self._conn is None:
            doomed += [
                k for k, v in self._cache.items() if k not in self._dirty and v is not None and (test(k) or test(v))
            ]
        else:
            rows = self._conn.execute(
                "SELECT key, value FROM kv WHERE partition = ? AND store = ?", (self.partition, self.name)
            )
            for raw_key, raw_value in rows:
                if not (raw_test(raw_key) or raw_test(raw_value)):
                    continue
                key = pickle.loads(raw_key)
                if key not in self._dirty and (test(key) or test(pickle.loads(raw_value))):
                    doomed.append(key)
        for key in doomed:
            self.delete(key)
        return len(doomed)

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
            self._complete = False


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

    # -- the state version ------------------------------------------------------------------------
    def state_version(self) -> int | None:
        """The version recorded; a file from before versions that holds anything is version 1; None: empty."""
        if self._conn is None:
            return None
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (STATE_VERSION,)).fetchone()
        if row is not None:
            return int(row[0])
        held = self._conn.execute("SELECT 1 FROM kv UNION ALL SELECT 1 FROM checkpoints LIMIT 1").fetchone()
        return 1 if held else None

    def set_state_version(self, version: int) -> None:
        if self._conn is not None:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (STATE_VERSION, str(version)))

    def migrate(
        self,
        to_version: int,
        fn: Callable[[int, StateKey, Any], Any],
        skip_stores: frozenset[str] = frozenset(),
        progress: Callable[[int], None] | None = None,
    ) -> tuple[int, int] | None:
        """Rewrite every entry with fn(from_version, key, value) and record `to_version`, in one transaction
        (kill -9 midway leaves the file as it was: the next start migrates again). Returns (from version,
        entries seen), or None when another process migrated it first."""
        assert self._conn is not None
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = self.state_version()
            if found is None or found == to_version:
                conn.execute("ROLLBACK")
                return None
            seen, last = 0, (-(1 << 62), "", b"")
            while True:
                rows = conn.execute(
                    "SELECT partition, store, key, value FROM kv WHERE (partition, store, key) > (?, ?, ?) "
                    "ORDER BY partition, store, key LIMIT ?",
                    (*last, MIGRATE_BATCH),
                ).fetchall()
                if not rows:
                    break
                last = rows[-1][:3]
                puts, deletes = [], []
                for partition, store, raw_key, raw_value in rows:
                    if store in skip_stores:
                        continue
                    new = fn(found, state_key(store, pickle.loads(raw_key), partition), pickle.loads(raw_value))
                    if new is None:
                        deletes.append((partition, store, raw_key))
                    else:
                        puts.append((pickle.dumps(new, 5), partition, store, raw_key))
                conn.executemany("UPDATE kv SET value = ? WHERE partition = ? AND store = ? AND key = ?", puts)
                conn.executemany("DELETE FROM kv WHERE partition = ? AND store = ? AND key = ?", deletes)
                seen += len(rows)
                if progress is not None:
                    progress(seen)
            self.set_state_version(to_version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return found, seen

    def backup_to(self, target: Path) -> None:
        """A consistent copy of the file (SQLite's online backup), synced to disk."""
        assert self._conn is not None
        dest = sqlite3.connect(target)
        try:
            self._conn.backup(dest)
        finally:
            dest.close()
        with open(target, "rb") as f:
            os.fsync(f.fileno())

    def checkpoint_of(self, partition: int) -> tuple[int, int] | None:
        """(next input offset, stream time) last committed for `partition`, or None."""
        if self._conn is None:
            return None
        row = self._conn.execute(
            "SELECT next_offset, stream_time FROM checkpoints WHERE partition = ?", (partition,)
        ).fetchone()
        return (int(row[0]), int(row[1])) if row and row[0] != NO_OFFSET else None

    def partitions(self) -> list[int]:
        """Partitions the file holds anything of."""
        if self._conn is None:
            return []
        rows = self._conn.execute(
            "SELECT partition FROM kv UNION SELECT partition FROM served UNION SELECT partition FROM checkpoints"
        )
        return sorted(int(p) for (p,) in rows)

    def kv_rows(self, partition: int) -> Iterator[tuple[str, bytes, bytes]]:
        """(store, pickled key, pickled value) of every stored entry of `partition`."""
        if self._conn is None:
            return
        yield from self._conn.execute("SELECT store, key, value FROM kv WHERE partition = ?", (partition,))

    def store_names(self, partition: int) -> list[str]:
        """Names of the key-value stores that hold rows of `partition`."""
        if self._conn is None:
            return []
        rows = self._conn.execute("SELECT DISTINCT store FROM kv WHERE partition = ?", (partition,))
        return [str(name) for (name,) in rows]

    def served_rows(self, partition: int) -> list[tuple[str, str, str, int]]:
        """(table, key, value as JSON text, event time) of every served row of `partition`."""
        if self._conn is None:
            return []
        rows = self._conn.execute("SELECT name, key, value, event_time FROM served WHERE partition = ?", (partition,))
        return [(str(n), str(k), str(v), int(t)) for n, k, v, t in rows]

    def truncate_wal(self, tries: int = 20) -> bool:
        """Checkpoint the WAL into the file and truncate it (after an erasure: no old page image stays)."""
        if self._conn is None:
            return True
        for attempt in range(tries):
            if not self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                return True
            time.sleep(min(0.2, 0.01 * (attempt + 1)))
        return False

    def changelog_offset(self, partition: int) -> int:
        """Next changelog offset this file has applied for `partition` (0: none)."""
        if self._conn is None:
            return 0
        row = self._conn.execute(
            "SELECT changelog_offset FROM checkpoints WHERE partition = ?", (partition,)
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def collect(
        stores: list[KeyValue], served: list[ServedTable], checkpoint: tuple[int, int] | None
    ) -> list[tuple[bytes, bytes | None]]:
        """One partition's unsaved changes as changelog records (key, value or None to delete)."""
        out: list[tuple[bytes, bytes | None]] = []
        for store in stores:
            prefix = b"k" + store.name.encode() + b"\0"
            out.extend((prefix + key, value) for key, value in store.changes())
        for table in served:
            prefix = b"s" + table.name.encode() + b"\0"
            for key, (value, event_time) in table.pending().items():
                out.append((prefix + key.encode(), None if value is None else _EVENT_TIME.pack(event_time) + value))
        if checkpoint is not None:
            out.append((b"c", pickle.dumps(checkpoint)))
        return out

    def apply(
        self, changes: dict[int, list[tuple[bytes, bytes | None]]], changelog_ends: dict[int, int] | None = None
    ) -> int:
        """Write changelog records per partition in one transaction (a checkpoint, or a restore).

        With `changelog_ends`, a partition whose stored changelog offset is already there or past
        it is skipped: a worker that lost the partition never overwrites the new owner's state.
        """
        if self._conn is None:
            return 0
        ends = changelog_ends or {}
        now = int(time.time() * 1000)
        conn = self._conn
        written = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for partition, records in changes.items():
                end = ends.get(partition)
                if end is not None:
                    row = conn.execute(
                        "SELECT changelog_offset FROM checkpoints WHERE partition = ?", (partition,)
                    ).fetchone()
                    if row is not None and row[0] >= end:
                        continue
                self._apply_records(conn, partition, records, now)
                written += len(records)
                if end is not None:
                    conn.execute(
                        "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?) ON CONFLICT (partition) "
                        "DO UPDATE SET changelog_offset = excluded.changelog_offset",
                        (partition, NO_OFFSET, NO_TIME, now, end),
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return written

    @staticmethod
    def _apply_records(
        conn: sqlite3.Connection, partition: int, records: list[tuple[bytes, bytes | None]], now: int
    ) -> None:
        """Sort changelog records by kind and write each kind with one executemany."""
        kv_put, kv_del, served_put, served_del = [], [], [], []
        checkpoint = None
        latest = dict(records)  # a restore batch may change a key several times: the last one wins
        for key, value in latest.items():
            kind = key[:1]
            if kind == b"c":
                checkpoint = value if value is not None else checkpoint
                continue
            name, _, rest = key[1:].partition(b"\0")
            if kind == b"k":
                if value is None:
                    kv_del.append((partition, name.decode(), rest))
                else:
                    kv_put.append((partition, name.decode(), rest, value))
            elif value is None:
                served_del.append((name.decode(), rest.decode(), partition))
            else:
                (event_time,) = _EVENT_TIME.unpack_from(value)
                served_put.append(
                    (name.decode(), rest.decode(), partition, value[_EVENT_TIME.size :].decode(), event_time, now)
                )
        conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)", kv_put)
        conn.executemany("DELETE FROM kv WHERE partition = ? AND store = ? AND key = ?", kv_del)
        conn.executemany("INSERT OR REPLACE INTO served VALUES (?, ?, ?, ?, ?, ?)", served_put)
        conn.executemany("DELETE FROM served WHERE name = ? AND key = ? AND partition = ?", served_del)
        if checkpoint is not None:
            offset, stream_time = pickle.loads(checkpoint)
            conn.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, 0) ON CONFLICT (partition) DO UPDATE SET "
                "next_offset = excluded.next_offset, stream_time = excluded.stream_time, updated_ms = ?",
                (partition, offset, stream_time, now, now),
            )

    def forget(self, partition: int) -> None:
        """Drop a partition's state, served rows and checkpoint (before a full restore)."""
        if self._conn is None:
            return
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in ("kv", "served", "checkpoints"):
                conn.execute(f"DELETE FROM {table} WHERE partition = ?", (partition,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def saved(self, stores: list[KeyValue], served: list[ServedTable]) -> None:
        """Mark changes written (after apply succeeded)."""
        for store in stores:
            store.saved(self.max_cached if self._conn is not None else 1 << 62)
        for table in served:
            table.saved()

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
