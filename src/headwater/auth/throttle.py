"""Throttling of failed sign-ins, per user name and per client address (web sign-in and the SQL server).

The first `free` failures of a name (or from an address) cost nothing; each further one makes the next attempt
wait 1 s, then 2, 4 … up to `max_wait_s`. While waiting, attempts are refused without checking the password
(429 with Retry-After over HTTP), so a guesser gets at most a handful of tries per hour and Argon2 is not run for
them. Counters live in the account database (`users.db` or `app_db_uri`), so every server process and every server
of a cluster counts the same failures. A success resets the user name's counter (not the address's: one valid
account must not buy an address fresh guesses at others). Counters are forgotten after a quiet day.
"""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from headwater.core.database import open_store

FORGET_MS = 24 * 3600 * 1000  # a counter with no failure for this long starts again from zero
_METADATA = sa.MetaData()
_FAILURES = sa.Table(
    "sign_in_failures",
    _METADATA,
    sa.Column("kind", sa.Text, primary_key=True),  # "user" or "address"
    sa.Column("subject", sa.Text, primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_ms", sa.BigInteger, nullable=False),
    sa.Column("blocked_until_ms", sa.BigInteger, nullable=False),
)


class SignInThrottle:
    """`db`: the account database (a SQLAlchemy URI or a SQLite file path)."""

    def __init__(self, db: str | Path, free: int = 5, max_wait_s: float = 900.0) -> None:
        self._engine = open_store(db, _METADATA)
        self.free = free
        self.max_wait_ms = int(max_wait_s * 1000)

    def _subjects(self, name: str, address: str) -> list[tuple[str, str]]:
        return [("user", name.lower()[:256])] + ([("address", address)] if address else [])

    def retry_after(self, name: str, address: str) -> float | None:
        """Seconds before `name` may try again from `address`, or None when it may try now."""
        now = int(time.time() * 1000)
        wait = 0
        with self._engine.connect() as conn:
            for kind, subject in self._subjects(name, address):
                until = conn.execute(
                    sa.select(_FAILURES.c.blocked_until_ms).where(
                        _FAILURES.c.kind == kind, _FAILURES.c.subject == subject
                    )
                ).scalar()
                if until is not None and until > now:
                    wait = max(wait, until - now)
        return wait / 1000 if wait else None

    def failed(self, name: str, address: str) -> float | None:
        """Count a failure; return the wait it imposes on the next attempt (None: the next one is free)."""
        try:
            return self._count(name, address)
        except sa.exc.IntegrityError:  # another server counted the first failure at the same moment
            return self._count(name, address)

    def _count(self, name: str, address: str) -> float | None:
        now = int(time.time() * 1000)
        imposed = 0
        with self._engine.begin() as conn:
            for kind, subject in self._subjects(name, address):
                where = (_FAILURES.c.kind == kind, _FAILURES.c.subject == subject)
                row = conn.execute(sa.select(_FAILURES.c.failures, _FAILURES.c.last_ms).where(*where)).first()
                failures = 1 if row is None or now - row[1] > FORGET_MS else row[0] + 1
                wait = 0 if failures < self.free else min(self.max_wait_ms, 1000 * 2 ** min(failures - self.free, 30))
                imposed = max(imposed, wait)
                values = {"failures": failures, "last_ms": now, "blocked_until_ms": now + wait}
                if row is None:
                    conn.execute(_FAILURES.insert().values(kind=kind, subject=subject, **values))
                else:
                    conn.execute(_FAILURES.update().where(*where).values(**values))
        return imposed / 1000 if imposed else None

    def succeeded(self, name: str) -> None:
        """Forget the failures of user `name`."""
        with self._engine.begin() as conn:
            conn.execute(_FAILURES.delete().where(_FAILURES.c.kind == "user", _FAILURES.c.subject == name.lower()))

    def close(self) -> None:
        self._engine.dispose()
