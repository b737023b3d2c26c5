"""What lake writers share through the catalog's database: message-id claims and leases.

Both live beside the Iceberg catalog tables (PostgreSQL in a cluster, SQLite on one machine), so
several writers on several machines need nothing more than the catalog they already share.

**Claims** keep a repeated `messageId` out of the lake when the log cannot (Kafka keeps no index of
message ids). A claim maps (source, message_id) to the log position (log, partition, offset) of the first
record that carried it, and is written *before* the Iceberg commit of that record. A record is kept
when the claim names its own position, so:
- a retry of the same event (a later offset, or another partition) finds another position's claim
  and is dropped, whichever collector or writer saw it;
- a replay of the same record after a crash (before or after the Iceberg commit) finds its own
  claim and is kept once more: the lake writer's offsets then skip what the table already holds.
Claims older than the de-duplication window are deleted, so a repeat after that window is stored
again (as with the embedded log).

**Leases** elect one writer for table maintenance: a row (name, holder, expiry) taken with a
conditional UPDATE, renewed by its holder, taken over by another once it expired.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

log = logging.getLogger(__name__)
_METADATA = sa.MetaData()
CLAIMS = sa.Table(
    "headwater_message_claims",
    _METADATA,
    sa.Column("source", sa.String(255), primary_key=True),
    sa.Column("message_id", sa.String(255), primary_key=True),
    sa.Column("log_id", sa.String(255), nullable=False),
    sa.Column("log_partition", sa.Integer, nullable=False),
    sa.Column("log_offset", sa.BigInteger, nullable=False),
    sa.Column("claimed_ms", sa.BigInteger, nullable=False, index=True),
)
LEASES = sa.Table(
    "headwater_leases",
    _METADATA,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
)
_CHUNK = 500


def open_engine(uri: str) -> sa.Engine:
    """An engine on the catalog's database, with Headwater's coordination tables created."""
    engine = sa.create_engine(uri, pool_pre_ping=True)
    _METADATA.create_all(engine, checkfirst=True)
    return engine


class ClaimStore:
    """First-position claims of (source, message_id); see the module docstring."""

    def __init__(self, engine: sa.Engine, window_s: float, log_id: str) -> None:
        self.engine = engine
        self.log_id = log_id
        self.window_ms = int(window_s * 1000)
        self._insert = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(CLAIMS)

    def duplicates(self, claims: list[tuple[str, str, int, int]]) -> set[int]:
        """Indexes of `claims` (source, message_id, partition, offset) that repeat an earlier one."""
        if not claims:
            return set()
        first: dict[tuple[str, str], tuple[int, int]] = {}
        for source, message_id, partition, offset in claims:
            first.setdefault((source, message_id), (partition, offset))
        now = int(time.time() * 1000)
        rows = [
            {
                "source": s,
                "message_id": m,
                "log_id": self.log_id,
                "log_partition": p,
                "log_offset": o,
                "claimed_ms": now,
            }
            for (s, m), (p, o) in first.items()
        ]
        owners: dict[tuple[str, str], tuple[str, int, int]] = {}
        with self.engine.begin() as conn:
            for chunk in _chunks(rows, _CHUNK):
                conn.execute(self._insert.on_conflict_do_nothing(), chunk)
            keys = list(first)
            for part in _chunks(keys, _CHUNK):
                c = CLAIMS.c
                query = sa.select(c.source, c.message_id, c.log_id, c.log_partition, c.log_offset)
                query = query.where(sa.tuple_(c.source, c.message_id).in_(part))
                for source, message_id, log_id, partition, offset in conn.execute(query):
                    owners[(source, message_id)] = (log_id, partition, offset)
        return {
            index
            for index, (source, message_id, partition, offset) in enumerate(claims)
            if owners.get((source, message_id), (self.log_id, partition, offset)) != (self.log_id, partition, offset)
        }

    def purge(self) -> int:
        """Delete claims older than the window; return how many."""
        cutoff = int(time.time() * 1000) - self.window_ms
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(CLAIMS).where(CLAIMS.c.claimed_ms < cutoff)).rowcount or 0


class Lease:
    """A named lease: `acquire()` takes or renews it for `ttl_s`; one holder at a time."""

    def __init__(self, engine: sa.Engine, name: str, holder: str, ttl_s: float) -> None:
        self.engine, self.name, self.holder, self.ttl_ms = engine, name, holder, int(ttl_s * 1000)

    def acquire(self) -> bool:
        now = int(time.time() * 1000)
        with self.engine.begin() as conn:
            taken = conn.execute(
                sa.update(LEASES)
                .where(LEASES.c.name == self.name)
                .where(sa.or_(LEASES.c.holder == self.holder, LEASES.c.expires_ms < now))
                .values(holder=self.holder, expires_ms=now + self.ttl_ms)
            ).rowcount
        if taken:
            return True
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(LEASES).values(name=self.name, holder=self.holder, expires_ms=now + self.ttl_ms))
        except IntegrityError:
            return False  # another holder has it
        return True

    def release(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(LEASES).where(LEASES.c.name == self.name).where(LEASES.c.holder == self.holder))


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
