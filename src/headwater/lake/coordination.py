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
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from headwater.core.database import open_store

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
_BATCH_TABLE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS hw_claim_batch "
    "(source VARCHAR(255), message_id VARCHAR(255), log_partition INTEGER, log_offset BIGINT)"
)
_CLAIM = (
    "INSERT INTO headwater_message_claims (source, message_id, log_id, log_partition, log_offset, claimed_ms) "
    "SELECT source, message_id, :log_id, log_partition, log_offset, :now FROM hw_claim_batch WHERE true "
    "ON CONFLICT DO NOTHING"
)  # `WHERE true`: SQLite's parser needs it between a SELECT and ON CONFLICT
_TAKEN = (
    "SELECT b.source, b.message_id FROM hw_claim_batch b JOIN headwater_message_claims c "
    "ON c.source = b.source AND c.message_id = b.message_id "
    "WHERE c.log_id <> :log_id OR c.log_partition <> b.log_partition OR c.log_offset <> b.log_offset"
)


def open_engine(uri: str) -> sa.Engine:
    """An engine on the catalog's database, with Headwater's coordination tables created (safely when
    several writers start at once)."""
    return open_store(uri, _METADATA)


class ClaimStore:
    """First-position claims of (source, message_id); see the module docstring."""

    def __init__(self, engine: sa.Engine, window_s: float, log_id: str) -> None:
        self.engine = engine
        self.log_id = log_id
        self.window_ms = int(window_s * 1000)

    def duplicates(self, claims: list[tuple[str, str, int, int]]) -> set[int]:
        """Indexes of `claims` (source, message_id, partition, offset) that repeat an earlier one.

        One round trip per step whatever the batch size: the batch goes into a temporary table
        (COPY on PostgreSQL), is claimed with one INSERT ... SELECT ... ON CONFLICT DO NOTHING, and
        the claims that name another position come back from one join.
        """
        if not claims:
            return set()
        first: dict[tuple[str, str], tuple[int, int]] = {}
        for source, message_id, partition, offset in claims:
            first.setdefault((source, message_id), (partition, offset))
        rows = [(s, m, p, o) for (s, m), (p, o) in first.items()]
        params = {"log_id": self.log_id, "now": int(time.time() * 1000)}
        with self.engine.begin() as conn:
            conn.execute(sa.text(_BATCH_TABLE))
            conn.execute(sa.text("DELETE FROM hw_claim_batch"))
            self._load(conn, rows)
            conn.execute(sa.text(_CLAIM), params)
            taken = {(s, m) for s, m in conn.execute(sa.text(_TAKEN), params)}
        return {
            index
            for index, (source, message_id, partition, offset) in enumerate(claims)
            if (source, message_id) in taken or first[(source, message_id)] != (partition, offset)
        }

    def _load(self, conn: sa.Connection, rows: list[tuple[str, str, int, int]]) -> None:
        if self.engine.dialect.name == "postgresql":
            driver: Any = conn.connection.driver_connection
            with (
                driver.cursor() as cursor,
                cursor.copy("COPY hw_claim_batch (source, message_id, log_partition, log_offset) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            return
        insert = sa.text("INSERT INTO hw_claim_batch VALUES (:s, :m, :p, :o)")
        conn.execute(insert, [{"s": s, "m": m, "p": p, "o": o} for s, m, p, o in rows])

    def purge(self) -> int:
        """Delete claims older than the window; return how many."""
        cutoff = int(time.time() * 1000) - self.window_ms
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(CLAIMS).where(CLAIMS.c.claimed_ms < cutoff)).rowcount or 0


OPS_LEASE = "ops"  # held by the acting ops worker (models, checks, alerts, table maintenance)


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

    def held_elsewhere(self) -> bool:
        """Whether another holder has the lease now (not expired)."""
        now = int(time.time() * 1000)
        with self.engine.connect() as conn:
            holder = conn.execute(
                sa.select(LEASES.c.holder).where(LEASES.c.name == self.name).where(LEASES.c.expires_ms >= now)
            ).scalar()
        return holder is not None and holder != self.holder
