"""Sessions by inactivity → `session_id` (settings `enrich_sessions`, `session_timeout_minutes`).

A session belongs to a *person key*: `anonymous_id` when the event has one, else `user_id` — the device's
session, which stays one session across `identify` (the identify call carries both ids). Events without either
id (empty ones count as none) get no session. Within a key, events (by event time, `timestamp`) belong to one
session while no gap between consecutive events exceeds the timeout (a gap of exactly the timeout continues it).

Computed on the stream, batch by batch (one lake-writer flush), without a Python loop per event:
- The batch is sorted by (key, time) and cut where the gap to the running end of the key's previous events
  exceeds the timeout (numpy: a running maximum over key-offset times, `_running_end`).
- Sessions seen before live in the catalog database, table `headwater_sessions` (key_hash, session_start,
  first_seen, last_seen; times in epoch ms; the key is stored as a 128-bit BLAKE2b hash, never the raw id). The
  ones of the batch's keys that lie near the batch's time range are read in one round trip and take part in the
  cut as intervals [first_seen, last_seen]: an event within [first_seen - timeout, last_seen + timeout] of a known
  session, directly or through other events of the batch, joins it and extends it.
- After the cut, new sessions are inserted and extended ones updated in one round trip (upsert: times only
  grow outward), before the batch lands.
- `session_id` = `<first 12 hex digits of the key hash>-<session_start in epoch ms>`: deterministic, no raw id.
  `session_start` is fixed when the session is first stored; a late event before it extends `first_seen`, not
  the id.
Consequences:
- Replay-safe: a batch read again after a crash (its session rows already written) finds its sessions stored
  and gets the same ids.
- Late and out-of-order events join the known session they fall near; older ones form sessions of their own
  (stored too, so a later late event can join them). Stored sessions are never renumbered: an event bridging
  two joins the earlier one (events already in the lake keep their ids; later events near both take the
  earlier id).
- The log is partitioned by `user_id`, else `anonymous_id`, so an identified visitor's events may reach another
  partition than their anonymous ones. With several writers, two may then handle one key at the same moment:
  their upserts only widen sessions, but each may start one for the same visit (a split session).
- Sessions that started and ended more than `STATE_DAYS` before the newest event this writer saw are pruned
  every `PRUNE_EVERY_S`; events later than that start a new session.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from headwater.core.database import create_tables
from headwater.core.stages import StageBatch
from headwater.enrich.common import flat, set_column

STATE_DAYS = 4
HASH_CACHE = 1 << 18  # person keys whose hash is kept (about 50 MB at most)
PRUNE_EVERY_S = 600.0
_DAY_MS = 86_400_000
_METADATA = sa.MetaData()
SESSIONS = sa.Table(
    "headwater_sessions",
    _METADATA,
    sa.Column("key_hash", sa.String(32), primary_key=True),
    sa.Column("session_start", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("first_seen", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.BigInteger, nullable=False),
    # for pruning; session_start never changes, so the upserts that extend a session leave this index alone
    sa.Index("headwater_sessions_start", "session_start"),
    sqlite_with_rowid=False,  # one B-tree keyed by (key_hash, session_start): upserts touch fewer pages
)
# one statement each way per batch, whatever its size: the keys and the rows travel as one JSON text (SQLite) or
# as arrays (PostgreSQL)
_READ = {  # in the driver's own parameter style, on its cursor; one row of four arrays comes back
    "sqlite": "SELECT json_group_array(s.key_hash), json_group_array(s.session_start), "
    "json_group_array(s.first_seen), json_group_array(s.last_seen) FROM json_each(?) AS k "
    "CROSS JOIN headwater_sessions AS s ON s.key_hash = k.value WHERE s.last_seen >= ? AND s.first_seen <= ?",
    "postgresql": "SELECT array_agg(key_hash), array_agg(session_start), array_agg(first_seen), array_agg(last_seen) "
    "FROM headwater_sessions WHERE key_hash = ANY(%s::varchar[]) AND last_seen >= %s AND first_seen <= %s",
}
_UPSERT = {
    "sqlite": "INSERT INTO headwater_sessions (key_hash, session_start, first_seen, last_seen) "
    "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(:rows) WHERE true "
    "ON CONFLICT (key_hash, session_start) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen), "
    "last_seen = max(last_seen, excluded.last_seen)",
    "postgresql": "INSERT INTO headwater_sessions (key_hash, session_start, first_seen, last_seen) "
    "SELECT * FROM unnest(CAST(:keys AS varchar[]), CAST(:starts AS bigint[]), CAST(:firsts AS bigint[]), "
    "CAST(:lasts AS bigint[])) ON CONFLICT (key_hash, session_start) DO UPDATE SET "
    "first_seen = LEAST(headwater_sessions.first_seen, EXCLUDED.first_seen), "
    "last_seen = GREATEST(headwater_sessions.last_seen, EXCLUDED.last_seen)",
}  # `WHERE true`: SQLite's parser needs it between a SELECT and ON CONFLICT


@functools.lru_cache(maxsize=HASH_CACHE)
def key_hash(key: str) -> str:
    """The stored form of a person key: 32 hex digits of BLAKE2b-128."""
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


class SessionStage:
    """Adds `session_id`; keeps session state in `headwater_sessions`."""

    name = "enrich_sessions"

    def __init__(self, engine: sa.Engine, timeout_minutes: float) -> None:
        self.engine = engine
        self.timeout_ms = round(timeout_minutes * 60_000)
        self.describe = f"sessions ({timeout_minutes:g} min inactivity)"
        create_tables(engine, _METADATA)
        self.dialect = "postgresql" if engine.dialect.name == "postgresql" else "sqlite"
        self._last_prune = time.monotonic()
        self._newest_ms: int | None = None

    def apply(self, batch: StageBatch) -> StageBatch:
        events = batch.events
        key = pc.coalesce(_id(events, "anonymous_id"), _id(events, "user_id"))
        valid = pc.is_valid(key).to_numpy(zero_copy_only=False)
        if not valid.any():
            batch.events = set_column(events, "session_id", pa.nulls(events.num_rows, pa.string()))
            return batch
        encoded = pc.dictionary_encode(key)
        hashes = [key_hash(k) for k in encoded.dictionary.to_pylist()]  # per distinct key (cached)
        key_index = pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        micros = pc.cast(flat(events.column("timestamp")), pa.int64()).to_numpy(zero_copy_only=False)
        millis = np.floor_divide(micros, 1000)
        rows = np.flatnonzero(valid)
        start_ms = self._assign(hashes, key_index[rows], millis[rows])
        starts = np.zeros(events.num_rows, dtype=np.int64)
        starts[rows] = start_ms
        prefixes = pc.utf8_slice_codeunits(pa.array(hashes, pa.string()), 0, 12)
        prefix = pc.take(prefixes, pa.array(key_index, mask=~valid))
        start_text = pc.cast(pa.array(starts, pa.int64(), mask=~valid), pa.string())
        batch.events = set_column(events, "session_id", pc.binary_join_element_wise(prefix, start_text, "-"))
        return batch

    def _assign(self, hashes: list[str], keys: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Session start (ms) of each event (`keys`, `times`), reading and updating the stored sessions."""
        timeout = self.timeout_ms
        low, high = int(times.min()) - timeout, int(times.max()) + timeout
        stored_hashes, s_start, s_first, s_last = self._read(hashes, low, high)  # every key is in the batch
        s_key = pc.index_in(stored_hashes, value_set=pa.array(hashes, pa.string())).to_numpy(zero_copy_only=False)
        s_key = s_key.astype(np.int64)
        n_events, n_stored = len(times), len(s_start)
        # elements: the events (an instant each) and the stored sessions (an interval each)
        key = np.concatenate([keys, s_key])
        begin = np.concatenate([times, s_first])
        end = np.concatenate([times, s_last])
        is_stored = np.concatenate([np.zeros(n_events, bool), np.ones(n_stored, bool)])
        order = np.lexsort((~is_stored, begin, key))  # by key, then time; a stored interval before an event
        key, begin, end, is_stored = key[order], begin[order], end[order], is_stored[order]
        new = np.ones(len(key), dtype=bool)
        if len(key) > 1:
            previous_end = _running_end(key, end, low, high)
            new[1:] = (key[1:] != key[:-1]) | (begin[1:] - previous_end > timeout)
        group = np.cumsum(new) - 1
        first = np.flatnonzero(new)
        big = np.iinfo(np.int64).max
        positions = np.where(is_stored, np.arange(len(key)), big)
        stored_at = np.minimum.reduceat(positions, first)  # first stored session in each group, if any
        has_stored = stored_at != big
        stored_pos = np.where(has_stored, stored_at, 0)
        stored_start = np.concatenate([np.zeros(n_events, np.int64), s_start])[order]
        session_start = np.where(has_stored, stored_start[stored_pos], begin[first])
        # where each event went
        event_sorted = np.flatnonzero(~is_stored)
        result = np.empty(n_events, dtype=np.int64)
        result[order[event_sorted]] = session_start[group[event_sorted]]
        # what to store: groups with events, new or extending their stored session
        event_min = np.minimum.reduceat(np.where(is_stored, big, begin), first)
        event_max = np.maximum.reduceat(np.where(is_stored, -big, end), first)
        with_events = event_min != big
        stored_first = np.where(has_stored, begin[stored_pos], big)
        stored_last = np.where(has_stored, end[stored_pos], -big)
        changed = with_events & ((event_min < stored_first) | (event_max > stored_last))
        new_first = np.minimum(event_min, stored_first)
        new_last = np.maximum(event_max, stored_last)
        groups = np.flatnonzero(changed)
        names = np.array(hashes, dtype=object)[key[first[groups]]].tolist()  # per session that changed
        rows = (names, session_start[groups].tolist(), new_first[groups].tolist(), new_last[groups].tolist())
        self._write(rows, int(times.max()))
        return result

    def _read(self, wanted: list[str], low: int, high: int) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]:
        """Stored sessions of these key hashes overlapping [low, high] (hashes, starts, first and last seen), in
        one round trip."""
        keys: Any = orjson.dumps(wanted).decode() if self.dialect == "sqlite" else wanted
        with self.engine.connect() as conn:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(_READ[self.dialect], (keys, low, high))
                found = cursor.fetchone()
            finally:
                cursor.close()
        if self.dialect == "sqlite":
            found = [orjson.loads(column) for column in found]
        hashes, starts, firsts, lasts = (column or [] for column in found)
        return (
            pa.array(hashes, pa.string()),
            np.array(starts, dtype=np.int64),
            np.array(firsts, dtype=np.int64),
            np.array(lasts, dtype=np.int64),
        )

    def _write(self, rows: tuple[list[str], list[int], list[int], list[int]], newest: int) -> None:
        """Upsert the new and extended sessions (one round trip); prune old state now and then."""
        self._newest_ms = newest if self._newest_ms is None else max(self._newest_ms, newest)
        prune = time.monotonic() - self._last_prune >= PRUNE_EVERY_S
        if not rows[0] and not prune:
            return
        with self.engine.begin() as conn:
            if rows[0]:
                if self.dialect == "sqlite":
                    params: dict[str, Any] = {"rows": orjson.dumps(list(zip(*rows, strict=True))).decode()}
                else:
                    params = dict(zip(("keys", "starts", "firsts", "lasts"), rows, strict=True))
                conn.execute(sa.text(_UPSERT[self.dialect]), params)
            if prune:
                cutoff = self._newest_ms - STATE_DAYS * _DAY_MS
                old = sa.and_(SESSIONS.c.session_start < cutoff, SESSIONS.c.last_seen < cutoff)
                conn.execute(sa.delete(SESSIONS).where(old))
        if prune:
            self._last_prune = time.monotonic()

    def close(self) -> None:
        pass


def _running_end(key: np.ndarray, end: np.ndarray, low: int, high: int) -> np.ndarray:
    """For elements 1..n-1 (sorted by key, then begin), the largest `end` among the earlier elements of the same
    key (meaningless where the key changes). A running maximum over `key * span + end`, so that keys never mix.

    Ends are clipped to [low, high]: none is below `low`, and every begin is at most `high`, so an end clipped
    down to `high` still leaves no gap. When `key * span` could overflow int64 (a batch spanning centuries),
    ranks of the ends replace them."""
    top = int(key[-1])
    span = high - low + 1
    if top < np.iinfo(np.int64).max // span - 1:
        running = np.maximum.accumulate(key * np.int64(span) + (np.clip(end, low, high) - low))
        return running[:-1] - key[1:] * np.int64(span) + low
    values = np.unique(end)
    width = np.int64(len(values))
    running = np.maximum.accumulate(key * width + np.searchsorted(values, end))
    return values[np.clip(running[:-1] - key[1:] * width, 0, width - 1)]


def _id(events: pa.Table, name: str) -> pa.Array:
    """An id column with empty strings as NULL (no id)."""
    column = flat(events.column(name))
    return pc.if_else(pc.equal(column, ""), pa.nulls(len(column), pa.string()), column)


def forget_sessions(engine: sa.Engine, ids: Iterable[str]) -> int:
    """A privacy deletion: the session state of `ids` (their key hashes) deleted; returns rows deleted."""
    hashes = sorted({key_hash(i) for i in ids})
    deleted = 0
    if not hashes or not sa.inspect(engine).has_table(SESSIONS.name):
        return 0
    for start in range(0, len(hashes), 500):
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.execute(sa.text("PRAGMA secure_delete = ON"))
            result = conn.execute(sa.delete(SESSIONS).where(SESSIONS.c.key_hash.in_(hashes[start : start + 500])))
            deleted += result.rowcount or 0
    return deleted
