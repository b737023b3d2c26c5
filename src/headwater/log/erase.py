"""Erasing people from the embedded log: records that hold an id get the value ERASED, in place.

`SqliteLog.erase(ids)` runs `erase_log` over the events log and every named stream beside it (processor
outputs, source feeds: `streams/<name>.db`). A record is erased when its key equals an id, or its value
holds one: a string equal to an id anywhere in the decoded JSON, or an id as a JSON string token inside a
string that is itself JSON text (quarantined records keep the raw payload as such a string). "u1" never
matches "u10", nor a quoted "u1" in free text. The record's value becomes `ERASED` and its key is dropped
(keys are person ids too); offsets, batch counts and partition ends do not change, so every consumer
position stays valid. Readers skip erased records (`is_erased`). Payloads are stored uncompressed.

Speed: each batch is first searched for the ids' byte forms (`TokenMatcher`, regexes shaped as tries);
only the records of batches that match are decoded. 500,000 events (112 MB): 0.2 s for 1 id, 2.0 s for
1,000 ids spread over every batch (all rewritten). Locking: batches are read outside any write transaction
and rewritten up to REWRITE_BYTES per transaction, each checking inside it that the batch did not change
since it was read (another erasure), so an append (group commit) waits for milliseconds, not for the
whole erasure.

Batches appended while an erasure runs: each log's end offsets are taken when its scan starts and only
batches below them are scanned. Records appended later are not erased by this call (the suppression list
keeps a deleted id out of new appends; calling erase again is idempotent and only scans).

Bytes on disk: every log connection runs with `secure_delete=ON` (a rewritten batch's old pages, and
batches retention deletes, are zeroed), and a `wal_checkpoint(TRUNCATE)` after the erasure moves the new
pages into the database file and empties the WAL, where old page images would otherwise stay until
overwritten. Pages freed before secure_delete was on (logs written by an earlier version) are not zeroed.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from headwater.core.erasure import ERASED, ErasureSet, json_tokens, trie_pattern_bytes
from headwater.log.sqlite_store import connect, decode_batch, encode_batch

if TYPE_CHECKING:
    from headwater.log.sqlite import SqliteLog

log = logging.getLogger(__name__)
SCAN_BATCHES = 64
"""Batches read per query (each read is a short snapshot; no write lock is held)."""
REWRITE_BYTES = 4 << 20
"""Payload bytes rewritten per write transaction (keeps appends waiting for milliseconds)."""
CHECKPOINT_TRIES = 50
Progress = Callable[[str, int, int], None]
"""progress(log name, batches scanned so far, records erased so far)."""


class TokenMatcher:
    """Finds the ids of an ErasureSet in raw bytes: as JSON string tokens (as written, and escaped inside a
    JSON string: a raw payload kept as text), and, with `keys`, as a record key of a log batch (the key's
    length header, the value's length, then the id).

    Each pattern starts with a literal (the quote, or a key length) so that `re` skips ahead to it:
    1 id costs what a plain substring search does, 1,000 ids a pass that stops at every quote."""

    def __init__(self, ids: ErasureSet, keys: bool = False) -> None:
        self.ids = ids
        tokens = {t for i in ids.ids for t in json_tokens(i)}
        bodies = {t[1:-1] for t in tokens}
        self._text = re.compile(b'"' + trie_pattern_bytes(bodies) + b'"') if bodies else None
        # inside a JSON string (a raw payload kept as text) a token is `\"body\"`, its body escaped again
        nested = {orjson.dumps(t.decode())[3:-3] for t in tokens} | {
            json.dumps(t.decode())[3:-3].encode() for t in tokens
        }
        self._raw = [re.compile(b'"' + trie_pattern_bytes(bodies | nested) + b'(?:"|\\\\")')] if bodies else []
        if keys:
            by_length: dict[int, set[bytes]] = {}
            for item in ids.ids:
                raw = item.encode()
                by_length.setdefault(len(raw), set()).add(raw)
            for length, words in sorted(by_length.items()):
                pattern = re.escape(struct.pack("<i", length)) + b".{4}" + trie_pattern_bytes(words)
                self._raw.append(re.compile(pattern, re.DOTALL))

    def search(self, data: bytes) -> bool:
        """Whether `data` may hold an id (a quick test: a match is confirmed by decoding)."""
        return any(pattern.search(data) is not None for pattern in self._raw)

    def in_text(self, text: str) -> bool:
        """Whether a string that is JSON text (starts with '{' or '[': a raw payload kept as a string, even
        cut short) holds an id as a JSON string token. Other text is not searched: a quoted id in free text
        is not the person's id field."""
        if self._text is None or text.lstrip()[:1] not in ("{", "["):
            return False
        return self._text.search(text.encode(errors="surrogatepass")) is not None

    def holds(self, value: Any) -> bool:
        """Whether a decoded JSON value holds an id: a string equal to one, or a string of JSON text holding
        one as a token (`in_text`); dicts (keys too), lists and tuples are walked."""
        if isinstance(value, str):
            return value in self.ids or self.in_text(value)
        if isinstance(value, dict):
            return any(self.holds(k) or self.holds(v) for k, v in value.items())
        if isinstance(value, list | tuple):
            return any(self.holds(v) for v in value)
        return False

    def record(self, key: bytes | None, value: bytes) -> bool:
        """Whether a log record must be erased: its key is an id, or its value holds one."""
        if key is not None and key.decode(errors="replace") in self.ids:
            return True
        if value == ERASED or not self._raw or self._raw[0].search(value) is None:  # the value's tokens
            return False
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError:
            return True  # not JSON, but an id's token is in it: erased
        return self.holds(decoded)


def log_files(log_: SqliteLog) -> dict[str, Path]:
    """The log's own file and those of its named streams, by name ('events' for the main log)."""
    own = log_.path.stem if log_.path.parent.name == "streams" else "events"
    out = {own: log_.path}
    folder = log_.path.parent / "streams"
    if folder.is_dir():
        for path in sorted(folder.glob("*.db")):
            if not path.name.endswith(".offsets.db"):
                out[path.stem] = path
    return out


def erase_log(log_: SqliteLog, ids: ErasureSet, progress: Progress | None = None) -> dict[str, int]:
    """Erase the records holding `ids` from the log and its streams; records erased per log name."""
    if not ids:
        return {}
    matcher = TokenMatcher(ids, keys=True)
    return {name: erase_file(path, name, matcher, progress) for name, path in log_files(log_).items()}


def erase_file(path: Path, name: str, matcher: TokenMatcher, progress: Progress | None = None) -> int:
    """Erase matching records in one log file, up to its end offsets at the start; records erased."""
    conn = connect(path, writer=True)
    try:
        ends = dict(conn.execute("SELECT partition, next_offset FROM partition_state").fetchall())
        scanned = erased = 0
        for partition, end in sorted(ends.items()):
            after = -1
            while True:
                rows = conn.execute(
                    "SELECT base_offset, payload FROM batches WHERE partition = ? AND base_offset > ? "
                    "AND base_offset < ? ORDER BY base_offset LIMIT ?",
                    (partition, after, end, SCAN_BATCHES),
                ).fetchall()
                if not rows:
                    break
                after = rows[-1][0]
                hits = [(base, payload) for base, payload in rows if matcher.search(payload)]
                erased += _rewrite(conn, partition, hits, matcher)
                scanned += len(rows)
                if progress is not None:
                    progress(name, scanned, erased)
        truncate_wal(conn, path)  # also drops page images of batches deleted before (retention)
        if erased:
            log.info("log %s: %d records erased (%d batches scanned)", name, erased, scanned)
        return erased
    finally:
        conn.close()


def _erased_payload(payload: bytes, matcher: TokenMatcher) -> tuple[bytes, int]:
    """The batch with its matching records erased, and how many were."""
    records = decode_batch(payload)
    out: list[tuple[bytes | None, bytes]] = []
    count = 0
    for key, value in records:
        if matcher.record(key, value):
            out.append((None, ERASED))
            count += 1
        else:
            out.append((key, value))
    return (encode_batch(out) if count else payload), count


def _rewrite(conn: sqlite3.Connection, partition: int, hits: list[tuple[int, bytes]], matcher: TokenMatcher) -> int:
    """Write the erased batches, a few per transaction; a batch changed since it was read (another
    erasure) is recomputed inside the transaction, one deleted meanwhile (retention) is skipped."""
    changed = []
    for base, payload in hits:
        new, count = _erased_payload(payload, matcher)
        if count:
            changed.append((base, payload, new, count))
    erased = 0
    start = 0
    while start < len(changed):
        group: list[tuple[int, bytes, bytes, int]] = []
        size = 0
        while start < len(changed) and (not group or size < REWRITE_BYTES):
            group.append(changed[start])
            size += len(changed[start][1])
            start += 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            for base, old, new, count in group:
                row = conn.execute(
                    "SELECT payload FROM batches WHERE partition = ? AND base_offset = ?", (partition, base)
                ).fetchone()
                if row is None:
                    continue
                if row[0] != old:
                    new, count = _erased_payload(row[0], matcher)
                    if not count:
                        continue
                conn.execute(
                    "UPDATE batches SET payload = ? WHERE partition = ? AND base_offset = ?", (new, partition, base)
                )
                erased += count
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return erased


def truncate_wal(conn: sqlite3.Connection, path: Path, tries: int = CHECKPOINT_TRIES) -> bool:
    """Copy the WAL into the database file and truncate it (old page images gone); retried while
    readers hold older snapshots. False when it never completed (a later erasure or checkpoint will)."""
    for attempt in range(tries):
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return True
        time.sleep(min(0.5, 0.01 * (attempt + 1)))
    log.warning("log %s: the WAL could not be truncated after an erasure (readers kept it busy)", path)
    return False
