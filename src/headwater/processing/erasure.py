"""Erasing people from processor state: key-value stores (process() state, windows, joins, timers) and
served state tables.

A state entry goes when its key or its value holds one of the ids: a string equal to one anywhere in it
(tuples such as window keys `(key, start)` and timer keys included; dicts, lists, sets and the fields of
objects are walked), or JSON text inside a string holding one as a token. A served row goes when its key
is an id or its JSON value holds one.

A running processor (`ProcessorErasures`, driven by the runner) asks the erasure board every
`POLL_S` seconds for erasures ready after the last one it applied, deletes the matching entries between
two batches through the stores' normal delete path, and checkpoints at once: the deletions, the served
table deletions, the changelog tombstones (Kafka) and each partition's applied sequence number (kept in
the state store `__erasure`) commit together. Then it acknowledges (`processor:<name>`). kill -9 before
that checkpoint: nothing was applied durably, and the restarted processor applies it again; after it and
before the acknowledgement: the restarted processor acknowledges what it finds applied but not
acknowledged.

A processor that is not running is handled by `erase_stopped_processors` (the privacy worker calls it,
and may call it again while it waits: it is idempotent): every state file no running process holds (see
`StateLock`) is purged directly (old runs' files too), and the processor is acknowledged when none of
its files is in use.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import struct
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from headwater.core.erasure import Erasure, ErasureBoard, ErasureSet, json_tokens, open_board, trie_pattern_bytes
from headwater.core.settings import Settings
from headwater.log.erase import TokenMatcher
from headwater.processing.state import StateLock, StateStore
from headwater.processing.task import Task

log = logging.getLogger(__name__)
ERASURE_STORE = "__erasure"
"""Key-value store (per partition) holding the sequence number of the last erasure applied."""
APPLIED = "applied"
POLL_S = 2.0
_MAX_DEPTH = 64


def consumer_name(processor: str) -> str:
    """The name a processor acknowledges erasures under."""
    return f"processor:{processor}"


def pickle_tokens(value: str) -> set[bytes]:
    """How pickle (protocols 3 to 5) writes `value` as a str (SHORT_BINUNICODE, BINUNICODE) or as its UTF-8
    bytes (SHORT_BINBYTES, BINBYTES)."""
    raw = value.encode("utf-8", "surrogatepass")
    out = {b"X" + struct.pack("<I", len(raw)) + raw, b"B" + struct.pack("<I", len(raw)) + raw}
    if len(raw) < 256:
        out |= {b"\x8c" + bytes([len(raw)]) + raw, b"C" + bytes([len(raw)]) + raw}
    return out


class StateMatcher:
    """Matches the ids of an erasure in processor state: pickled entries (raw) and decoded values."""

    def __init__(self, ids: ErasureSet) -> None:
        self.ids = ids
        self.tokens = TokenMatcher(ids)
        words = {t for i in ids.ids for t in pickle_tokens(i)} | {t for i in ids.ids for t in json_tokens(i)}
        self._raw = re.compile(trie_pattern_bytes(words), re.DOTALL)

    def raw(self, data: bytes) -> bool:
        """Whether pickled (or JSON) bytes may hold an id: a pickled string equal to one, or a JSON token.
        A pickled string equal to an id is written whole (later references to the same object are
        memo lookups), so this finds every one; a match is confirmed by `holds` where the value decodes."""
        return bool(self.ids) and self._raw.search(data) is not None

    def holds(self, value: Any, depth: int = 0) -> bool:
        """Whether a decoded key or value holds an id (see the module docstring)."""
        if isinstance(value, str):
            return self.tokens.holds(value)
        if isinstance(value, bytes | bytearray):
            return self.tokens.holds(bytes(value).decode(errors="replace"))
        if value is None or isinstance(value, int | float | bool) or depth > _MAX_DEPTH:
            return False
        if isinstance(value, Mapping):
            return any(self.holds(k, depth + 1) or self.holds(v, depth + 1) for k, v in value.items())
        if isinstance(value, list | tuple | set | frozenset | deque):
            return any(self.holds(v, depth + 1) for v in value)
        fields = getattr(value, "__dict__", None)  # objects: their fields (dataclasses, plain classes)
        if isinstance(fields, dict) and self.holds(fields, depth + 1):
            return True
        for cls in type(value).__mro__:
            slots = getattr(cls, "__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if self.holds(getattr(value, slot, None), depth + 1):
                    return True
        return False

    def served(self, key: str, value: str | bytes | None) -> bool:
        """Whether a served row (key, JSON value) holds an id."""
        if key in self.ids:
            return True
        if value is None:
            return False
        raw = value.encode() if isinstance(value, str) else value
        return self.tokens.search(raw) and self.holds(orjson.loads(raw))


# -- a running processor ------------------------------------------------------------------------------
def applied_seq(task: Task) -> int:
    return int(task.store(ERASURE_STORE).get(APPLIED, 0))


def erase_task(task: Task, state: StateStore, matcher: StateMatcher) -> dict[str, int]:
    """Delete the matching entries of one partition (in memory until the next checkpoint)."""
    counts = {"state": 0, "served": 0}
    names = ({s.name for s in task.stores()} | set(state.store_names(task.partition))) - {ERASURE_STORE}
    for name in sorted(names):
        counts["state"] += task.store(name).erase_where(matcher.raw, matcher.holds)
    pending: dict[tuple[str, str], bool] = {}
    for table in task.served():
        for key, (value, _) in table.pending().items():
            pending[(table.name, key)] = value is not None and matcher.served(key, value)
    for name, key, text, event_time in state.served_rows(task.partition):
        if (name, key) not in pending and matcher.served(key, text):
            task.served_table(name).delete(key, event_time)
            counts["served"] += 1
    for (name, key), hit in pending.items():
        if hit:
            task.served_table(name).delete(key, 0)
            counts["served"] += 1
    return counts


class ProcessorErasures:
    """The erasure side of a running processor (see the module docstring); the runner calls `due`
    between batches, then `apply`, checkpoints, and calls `acknowledge`."""

    def __init__(self, processor: str, catalog_uri: str, poll_s: float = POLL_S) -> None:
        self.processor, self.catalog_uri, self.poll_s = processor, catalog_uri, poll_s
        self.consumer = consumer_name(processor)
        self._board: ErasureBoard | None = None
        self._next = 0.0
        self._partitions: frozenset[int] = frozenset()
        self._reacked = False

    def board(self) -> ErasureBoard:
        if self._board is None:
            self._board = ErasureBoard(open_board(self.catalog_uri))
        return self._board

    def due(self, tasks: Mapping[int, Task]) -> bool:
        """Time to ask the board (every `poll_s`, and at once when the partitions owned changed)."""
        now = time.monotonic()
        if not tasks or (now < self._next and frozenset(tasks) == self._partitions):
            return False
        self._next, self._partitions = now + self.poll_s, frozenset(tasks)
        return True

    def apply(self, tasks: Mapping[int, Task], state: StateStore) -> tuple[list[tuple[Erasure, dict[str, int]]], bool]:
        """Apply the erasures ready after what each partition applied: ([(erasure, counts)] to acknowledge
        after the next checkpoint, whether anything changed). Board errors are logged and retried later."""
        try:
            applied = {p: applied_seq(task) for p, task in tasks.items()}
            self._reacknowledge(min(applied.values()))
            erasures = self.board().ready_after(min(applied.values()))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("processor %s: cannot read the erasure board (%s); retrying", self.processor, exc)
            return [], False
        done: list[tuple[Erasure, dict[str, int]]] = []
        for erasure in erasures:
            counts = {"state": 0, "served": 0}
            matcher = StateMatcher(erasure.ids) if erasure.ids else None
            for partition, task in tasks.items():
                if applied[partition] >= erasure.seq:
                    continue
                if matcher is not None:
                    for name, n in erase_task(task, state, matcher).items():
                        counts[name] += n
                task.store(ERASURE_STORE).put(APPLIED, erasure.seq)
                applied[partition] = erasure.seq
            if erasure.ids:  # one that is closed already (ids forgotten) needs no acknowledgement
                done.append((erasure, counts))
        return done, bool(erasures)

    def acknowledge(self, done: list[tuple[Erasure, dict[str, int]]], partitions: list[int]) -> None:
        """Acknowledge erasures whose deletions are committed (after the checkpoint)."""
        for erasure, counts in done:
            detail = {**counts, "partitions": sorted(partitions)}
            try:
                self.board().ack(erasure.seq, self.consumer, json.dumps(detail))
            except sa.exc.SQLAlchemyError as exc:
                log.warning("processor %s: cannot acknowledge erasure %d (%s)", self.processor, erasure.seq, exc)
                self._reacked = False  # acknowledged by the next pass over what was applied
                continue
            log.info("processor %s: erasure %d applied (%s)", self.processor, erasure.seq, detail)

    def _reacknowledge(self, applied: int) -> None:
        """Once per start: erasures applied (committed) but not acknowledged, as after kill -9 between the
        checkpoint and the acknowledgement."""
        if self._reacked or applied <= 0:
            self._reacked = True
            return
        board = self.board()
        for erasure in board.ready_after(0):
            if erasure.seq > applied:
                break
            if erasure.ids and self.consumer not in board.acks(erasure.seq):
                board.ack(erasure.seq, self.consumer, json.dumps({"reacknowledged": True}))
                log.info("processor %s: erasure %d acknowledged after a restart", self.processor, erasure.seq)
        self._reacked = True


# -- processors that are not running ------------------------------------------------------------------
def erase_state_file(path: Path, erasure: Erasure) -> dict[str, int] | None:
    """Purge one state file no process uses (hold its StateLock exclusively); None when every partition
    had applied `erasure` already. Decided on the stored bytes alone (`StateMatcher.raw`): the pickled
    values of user classes need not be importable here, and nothing is unpickled."""
    matcher = StateMatcher(erasure.ids)
    applied_key = b"k" + ERASURE_STORE.encode() + b"\0" + pickle.dumps(APPLIED)
    store = StateStore(path)
    try:
        counts = {"state": 0, "served": 0}
        changes: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for partition in store.partitions():
            if int(store.key_value(partition, ERASURE_STORE).get(APPLIED, 0)) >= erasure.seq:
                continue
            records: list[tuple[bytes, bytes | None]] = []
            if erasure.ids:
                for name, raw_key, raw_value in store.kv_rows(partition):
                    if name != ERASURE_STORE and (matcher.raw(raw_key) or matcher.raw(raw_value)):
                        records.append((b"k" + name.encode() + b"\0" + raw_key, None))
                        counts["state"] += 1
                for table, key, text, _ in store.served_rows(partition):
                    if matcher.served(key, text):
                        records.append((b"s" + table.encode() + b"\0" + key.encode(), None))
                        counts["served"] += 1
            records.append((applied_key, pickle.dumps(erasure.seq, 5)))
            changes[partition] = records
        if not changes:
            return None
        store.apply(changes)
        store.truncate_wal()
        return counts
    finally:
        store.close()


def erase_stopped_processors(
    settings: Settings, erasure: Erasure, board: ErasureBoard | None = None
) -> dict[str, dict[str, Any]]:
    """Apply `erasure` to the state files of processors that are not running and acknowledge for them.

    Per processor: `state`/`served` entries deleted, `files` purged, `running` (runs whose file a running
    process holds: that process applies and acknowledges itself), `acked`. Files of old runs are purged
    even while the current run is running. On Kafka, state is rebuilt from changelog topics that cannot
    be rewritten here: nothing is done (`skipped`), the processor applies the erasure when it runs.
    """
    out: dict[str, dict[str, Any]] = {}
    folder = settings.processors_dir
    if not folder.is_dir():
        return out
    board = board or ErasureBoard(open_board(settings.effective_catalog_uri))
    for proc_dir in sorted(p for p in folder.iterdir() if (p / "manifest.json").exists()):
        name = proc_dir.name
        result: dict[str, Any] = {"state": 0, "served": 0, "files": 0, "running": [], "acked": False}
        out[name] = result
        if settings.log_backend == "kafka":
            result["skipped"] = "state is rebuilt from Kafka changelog topics: applied when the processor runs"
            continue
        for path in sorted(proc_dir.glob("state-*.db")):
            lock = StateLock(path)
            if not lock.acquire(exclusive=True, wait=False):
                result["running"].append(path.stem.removeprefix("state-"))
                continue
            try:
                counts = erase_state_file(path, erasure)
            finally:
                lock.release()
            if counts is not None:
                result["files"] += 1
                result["state"] += counts["state"]
                result["served"] += counts["served"]
        if not result["running"]:
            detail = {k: result[k] for k in ("state", "served", "files")}
            board.ack(erasure.seq, consumer_name(name), json.dumps({**detail, "stopped": True}))
            result["acked"] = True
    return out
