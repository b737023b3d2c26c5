"""On-disk format of the embedded log: schema, record-batch encoding, connections and batch reads."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

from headwater.log.base import Record

HEADER = struct.Struct("<iI")  # key length (-1 = no key), value length
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partition_state (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    partition INTEGER NOT NULL, base_offset INTEGER NOT NULL, count INTEGER NOT NULL,
    append_ms INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (partition, base_offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedupe (
    source TEXT NOT NULL, message_id TEXT NOT NULL, seen_ms INTEGER NOT NULL,
    PRIMARY KEY (source, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_seen ON dedupe (seen_ms);
CREATE TABLE IF NOT EXISTS fences (fence TEXT PRIMARY KEY, next_position INTEGER NOT NULL) WITHOUT ROWID;
"""
OFFSETS_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (group_id TEXT PRIMARY KEY, registered_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (
    group_id TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL, PRIMARY KEY (group_id, partition)
) WITHOUT ROWID;
"""


def encode_batch(records: list[tuple[bytes | None, bytes]]) -> bytes:
    parts: list[bytes] = []
    for key, value in records:
        if key is None:
            parts.append(HEADER.pack(-1, len(value)))
        else:
            parts.append(HEADER.pack(len(key), len(value)))
            parts.append(key)
        parts.append(value)
    return b"".join(parts)


def decode_batch(payload: bytes) -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    pos, end, size = 0, len(payload), HEADER.size
    while pos < end:
        klen, vlen = HEADER.unpack_from(payload, pos)
        pos += size
        key = None
        if klen >= 0:
            key = payload[pos : pos + klen]
            pos += klen
        out.append((key, payload[pos : pos + vlen]))
        pos += vlen
    return out


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL" if writer else "PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA secure_delete=ON")  # deleted or rewritten records are zeroed, not left in free pages
    return conn


def read_partition(conn: sqlite3.Connection, partition: int, position: int, max_records: int) -> list[Record]:
    """Records of one partition from `position` on (whole batches, at least max_records if there are).

    Starts at the batch holding `position`, or at the first batch after it when retention removed it.
    Batches are decoded straight into Records (the lake writer reads every event through here).
    """
    rows = conn.execute(
        "SELECT * FROM (SELECT base_offset, count, append_ms, payload FROM batches WHERE partition = ? "
        "AND base_offset <= ? ORDER BY base_offset DESC LIMIT 1) WHERE base_offset + count > ? "
        "UNION ALL SELECT * FROM (SELECT base_offset, count, append_ms, payload "
        "FROM batches WHERE partition = ? AND base_offset > ? ORDER BY base_offset LIMIT 64)",
        (partition, position, position, partition, position),
    ).fetchall()
    out: list[Record] = []
    add, new, unpack, size = out.append, tuple.__new__, HEADER.unpack_from, HEADER.size
    for offset, _count, append_ms, payload in rows:
        pos, end = 0, len(payload)
        while pos < end:
            klen, vlen = unpack(payload, pos)
            pos += size
            key = None
            if klen >= 0:
                key = payload[pos : pos + klen]
                pos += klen
            if offset >= position:  # tuple.__new__: a NamedTuple's own __new__ costs a Python call
                add(new(Record, (partition, offset, key, payload[pos : pos + vlen], append_ms)))
            pos += vlen
            offset += 1
        if len(out) >= max_records:
            break
    return out
