"""The embedded log's producer: group-committed appends, fences, de-duplication, retention, WAL checkpoints."""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import sqlite3
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from headwater.core.errors import LogError
from headwater.log.base import AppendResult
from headwater.log.sqlite_store import connect, encode_batch

if TYPE_CHECKING:
    from headwater.log.sqlite import SqliteLog

log = logging.getLogger(__name__)
_Fence = tuple[str | list[str | None], list[int]] | None
_Item = tuple[list[tuple[bytes | None, bytes]], list[tuple[str, str] | None] | None, Future[AppendResult], _Fence]


class SqliteProducer:
    """Appends with group commit (one fsync for many concurrent requests).

    Several processes may each hold a producer on the same log: offsets are read and advanced
    inside each write transaction, and SQLite serialises the transactions.
    """

    def __init__(
        self,
        log_: SqliteLog,
        group_commit_wait_ms: float = 1.0,
        dedupe_window_s: float = 86_400.0,
        retention_s: float = 86_400.0,
        retention_check_s: float = 10.0,
        retention_bytes: int | None = None,
    ) -> None:
        self.partitions = log_.partitions
        self._log = log_
        self._wait = group_commit_wait_ms / 1000
        self._dedupe_ms = int(dedupe_window_s * 1000)
        self._retention_ms = int(retention_s * 1000)
        self._retention_bytes = retention_bytes
        self._retention_check = retention_check_s
        self._round_robin = itertools.cycle(range(self.partitions))
        self._conn = connect(log_.path, writer=True)
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._closed = False
        self._write_lock = threading.RLock()
        self._last_retention = time.monotonic()
        self._pending: list[Any] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="log-append")
        self._thread = threading.Thread(target=self._run, name="log-appender", daemon=True)
        self._thread.start()
        # WAL checkpoints (copying committed pages into the database file) run in a thread of their
        # own: left to SQLite's auto-checkpoint, or done with retention, they ran inside an append
        # and held back every acknowledgement waiting on it (p99 in the hundreds of ms)
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="log-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self, interval_s: float = 0.5) -> None:
        """PASSIVE checkpoints from a separate connection: they never block appends."""
        conn = connect(self._log.path, writer=True)
        try:
            while not self._stop.wait(interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    log.exception("log checkpoint failed; retrying")
        finally:
            conn.close()

    def partition_for(self, key: bytes | None) -> int:
        if key is None:
            return next(self._round_robin)
        return zlib.crc32(key) % self.partitions

    def append(
        self,
        records: list[tuple[bytes | None, bytes]],
        idempotency_keys: list[tuple[str, str] | None] | None = None,
    ) -> Future[AppendResult]:
        future: Future[AppendResult] = Future()
        if self._closed:
            future.set_exception(LogError("the log is closed"))
            return future
        self._queue.put((records, idempotency_keys, future, None))
        return future

    def append_fenced(
        self,
        records: list[tuple[bytes | None, bytes]],
        fence: str | list[str | None],
        positions: list[int],
        idempotency_keys: list[tuple[str, str] | None] | None = None,
    ) -> Future[AppendResult]:
        """Like append(); records whose position is below their fence's mark were written before
        and are dropped (reported as duplicates), in the same transaction that moves the marks."""
        future: Future[AppendResult] = Future()
        if self._closed:
            future.set_exception(LogError("the log is closed"))
            return future
        if len(positions) != len(records):
            future.set_exception(LogError("append_fenced: one position per record"))
            return future
        self._queue.put((records, idempotency_keys, future, (fence, positions)))
        return future

    async def append_async(
        self, records: list[tuple[bytes | None, bytes]], idempotency_keys: list[tuple[str, str] | None] | None = None
    ) -> AppendResult:
        """Like append(), for asyncio callers: requests that arrive while a write is in flight are
        committed together by the next one (group commit without a timer or a thread hop per request)."""
        if self._closed:
            raise LogError("the log is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        self._pending.append((records, idempotency_keys, future, None))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush_pending(loop))
        return await future

    async def _flush_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while self._pending:
                items, self._pending = self._pending, []
                try:
                    results = await loop.run_in_executor(self._executor, self._write_locked, items)
                except Exception as exc:
                    log.exception("log append failed")
                    for *_, future, _fence in items:
                        if not future.done():
                            future.set_exception(LogError(f"log append failed: {exc}"))
                    continue
                for (*_, future, _fence), result in zip(items, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._flushing = False

    def in_flight(self) -> int:
        """Requests waiting for the next group commit."""
        return self._queue.qsize() + len(self._pending)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            self._executor.shutdown(wait=True)
            self._stop.set()
            self._checkpointer.join()
            self._conn.close()

    def _write_locked(self, items: list[Any]) -> list[AppendResult]:
        with self._write_lock:
            results = self._write(items)
            if time.monotonic() - self._last_retention > self._retention_check:
                self._last_retention = time.monotonic()
                try:
                    self.enforce_retention()
                except sqlite3.Error:
                    log.exception("log retention failed")
            return results

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            items = [first]
            deadline = time.monotonic() + self._wait
            while len(items) < 512:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            try:
                results = self._write_locked(items)
            except Exception as exc:
                log.exception("log append failed")
                for *_, future, _fence in items:
                    future.set_exception(LogError(f"log append failed: {exc}"))
            else:
                for (*_, future, _fence), result in zip(items, results, strict=True):
                    future.set_result(result)

    def _write(self, items: list[_Item]) -> list[AppendResult]:
        now = int(time.time() * 1000)
        cutoff = now - self._dedupe_ms
        conn = self._conn
        results: list[AppendResult] = []
        partitions, crc32 = self.partitions, zlib.crc32
        by_partition: list[list[tuple[bytes | None, bytes]]] = [[] for _ in range(partitions)]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for records, keys, _, fence in items:
                result = AppendResult()
                skip: set[int] = set()
                if fence is not None:
                    skip.update(self._fenced_out(conn, fence))
                if keys and self._dedupe_ms > 0 and any(keys):
                    for index, idem in enumerate(keys):
                        if idem is None:
                            continue
                        cur = conn.execute(
                            "INSERT INTO dedupe VALUES (?, ?, ?) ON CONFLICT (source, message_id) "
                            "DO UPDATE SET seen_ms = excluded.seen_ms WHERE seen_ms < ?",
                            (idem[0], idem[1], now, cutoff),
                        )
                        if cur.rowcount == 0:
                            skip.add(index)
                result.duplicates = sorted(skip)
                kept = [r for i, r in enumerate(records) if i not in skip] if skip else records
                for record in kept:
                    key = record[0]
                    by_partition[next(self._round_robin) if key is None else crc32(key) % partitions].append(record)
                result.written = len(records) - len(skip)
                results.append(result)
            # read inside the write transaction: several processes may append (SQLite serialises them)
            new_next = dict(conn.execute("SELECT partition, next_offset FROM partition_state").fetchall())
            for partition, batch in enumerate(by_partition):
                if not batch:
                    continue
                base = new_next[partition]
                conn.execute(
                    "INSERT INTO batches VALUES (?, ?, ?, ?, ?)",
                    (partition, base, len(batch), now, encode_batch(batch)),
                )
                new_next[partition] = base + len(batch)
                conn.execute(
                    "UPDATE partition_state SET next_offset = ? WHERE partition = ?",
                    (base + len(batch), partition),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results

    @staticmethod
    def _fenced_out(conn: sqlite3.Connection, fence: tuple[str | list[str | None], list[int]]) -> list[int]:
        """Indexes of records at positions their fence already passed; moves the fences past the rest."""
        names, positions = fence
        per_record: list[str | None] = [names] * len(positions) if isinstance(names, str) else names
        marks: dict[str, int | None] = {}
        highest: dict[str, int] = {}
        for name, position in zip(per_record, positions, strict=True):
            if name is None:
                continue
            if name not in marks:
                row = conn.execute("SELECT next_position FROM fences WHERE fence = ?", (name,)).fetchone()
                marks[name] = row[0] if row else None
            highest[name] = max(highest.get(name, position), position)
        conn.executemany(
            "INSERT INTO fences VALUES (?, ?) ON CONFLICT (fence) DO UPDATE SET next_position = "
            "max(next_position, excluded.next_position)",
            [(name, top + 1) for name, top in highest.items()],
        )
        out = []
        for index, (name, position) in enumerate(zip(per_record, positions, strict=True)):
            if name is None:
                continue
            mark = marks[name]
            if mark is not None and position < mark:
                out.append(index)
        return out

    def enforce_retention(self) -> int:
        """Delete batches every registered group has consumed and that are past retention."""
        with self._write_lock:
            return self._enforce_retention()

    def _enforce_retention(self) -> int:
        conn = self._conn
        admin = self._log.admin()
        try:
            groups = admin.retention_groups()
        finally:
            admin.close()
        now = int(time.time() * 1000)
        # no active group at all: everything counts as consumed
        ends = dict(conn.execute("SELECT partition, next_offset FROM partition_state").fetchall())
        floors = {p: min((g.get(p, 0) for g in groups.values()), default=ends[p]) for p in range(self.partitions)}
        conn.execute("BEGIN IMMEDIATE")  # one commit (one fsync) for all the deletes
        try:
            deleted = self._delete_expired(floors, now)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return deleted

    def _delete_expired(self, floors: dict[int, int], now: int) -> int:
        conn = self._conn
        deleted = 0
        for partition, floor in floors.items():  # by age: the oldest batches, up to the first one to keep
            # walks the primary key from the oldest batch and stops at the first one kept: a scan of
            # every batch (the condition is not indexable) took 160-190 ms on a 1.5 M-event log, every 10 s,
            # holding back every append meanwhile. Batches are appended in time order, so the
            # prefix is all there is to delete (up to clock steps; those go on a later pass).
            last = None
            for base, count, append_ms in conn.execute(
                "SELECT base_offset, count, append_ms FROM batches WHERE partition = ? ORDER BY base_offset",
                (partition,),
            ):
                if base + count > floor or append_ms >= now - self._retention_ms:
                    break
                last = base
            if last is not None:
                deleted += conn.execute(
                    "DELETE FROM batches WHERE partition = ? AND base_offset <= ?", (partition, last)
                ).rowcount
        while self._retention_bytes is not None and self._live_bytes() > self._retention_bytes:  # by size
            removed = 0
            for partition, floor in floors.items():  # oldest consumed batches first
                removed += conn.execute(
                    "DELETE FROM batches WHERE partition = ? AND base_offset IN (SELECT base_offset FROM batches "
                    "WHERE partition = ? AND base_offset + count <= ? ORDER BY base_offset LIMIT 256)",
                    (partition, partition, floor),
                ).rowcount
            deleted += removed
            if removed == 0:
                break  # what is left has not been consumed by every group: never deleted
        if self._dedupe_ms > 0:
            conn.execute("DELETE FROM dedupe WHERE seen_ms < ?", (now - self._dedupe_ms,))
        return deleted

    def _live_bytes(self) -> int:
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._conn.execute("PRAGMA page_size").fetchone()[0])
