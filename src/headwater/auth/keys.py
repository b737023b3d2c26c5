"""API keys stored hashed in the account database (`keys.db`, or `app_db_uri`), with roles write / read / admin.

Keys are 32 random bytes, so a single SHA-256 is enough to store them (no password-style
stretching is needed for high-entropy secrets, and lookups stay on the hot path's budget).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from headwater.core.database import open_store
from headwater.core.errors import AuthError

ROLES = ("write", "read", "admin")
_METADATA = sa.MetaData()
_KEYS = sa.Table(
    "api_keys",
    _METADATA,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("revoked_ms", sa.BigInteger),
)
_COLUMNS = (_KEYS.c.name, _KEYS.c.role, _KEYS.c.prefix, _KEYS.c.created_ms, _KEYS.c.revoked_ms)
_BY_HASH = sa.select(*_COLUMNS).where(_KEYS.c.key_hash == sa.bindparam("key_hash"))


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    role: str
    prefix: str
    created_ms: int
    revoked_ms: int | None

    def can_write(self) -> bool:
        return self.role in ("write", "admin")

    def can_read(self) -> bool:
        return self.role in ("read", "admin")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """Create, list, revoke and look up keys; lookups are cached for `cache_s` seconds.

    `db` is a SQLAlchemy URI (every server sharing one database sees the same keys) or the path of a SQLite file.
    """

    def __init__(self, db: str | Path, cache_s: float = 2.0) -> None:
        self._engine = open_store(db, _METADATA)
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._cache_s = cache_s

    def create(self, name: str, role: str) -> str:
        if role not in ROLES:
            raise AuthError(f"role must be one of {', '.join(ROLES)}, got {role!r}", 400)
        if not name or len(name) > 100:
            raise AuthError("key name must be 1 to 100 characters", 400)
        key = f"hw_{role[0]}_" + secrets.token_urlsafe(32)
        row = {"name": name, "role": role, "key_hash": hash_key(key), "prefix": key[:9]}
        try:
            with self._engine.begin() as conn:
                conn.execute(_KEYS.insert().values(**row, created_ms=int(time.time() * 1000), revoked_ms=None))
        except sa.exc.IntegrityError:
            raise AuthError(f"a key named {name!r} already exists; pick another name or revoke it", 409) from None
        return key

    def list(self) -> list[ApiKey]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(*_COLUMNS).order_by(_KEYS.c.created_ms)).all()
        return [ApiKey(*row) for row in rows]

    def revoke(self, name: str) -> None:
        update = (
            _KEYS.update()
            .where(_KEYS.c.name == name, _KEYS.c.revoked_ms.is_(None))
            .values(revoked_ms=int(time.time() * 1000))
        )
        with self._engine.begin() as conn:
            revoked = conn.execute(update).rowcount
        if revoked == 0:
            raise AuthError(f"no active key named {name!r}", 404)
        self._cache.clear()

    def lookup(self, key: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        try:
            with self._engine.connect() as conn:
                row = conn.execute(_BY_HASH, {"key_hash": hash_key(key)}).first()
        except sa.exc.OperationalError as exc:  # the shared database is down: retryable, like a full log
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise AuthError(f"account database unavailable, retry later: {reason}", 503) from None
        found = ApiKey(*row) if row and row[4] is None else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now, found)
        return found

    def require(self, key: str | None, *, write: bool = False, read: bool = False) -> ApiKey:
        """The key's record, or AuthError with 401 (none/unknown) or 403 (wrong role)."""
        if not key:
            raise AuthError("missing API key: send it as x-api-key, HTTP Basic user or Bearer token", 401)
        found = self.lookup(key)
        if found is None:
            raise AuthError("unknown or revoked API key", 401)
        if write and not found.can_write():
            raise AuthError(
                f"key {found.name!r} has role {found.role!r}; sending events needs write or admin",
                403,
            )
        if read and not found.can_read():
            raise AuthError(f"key {found.name!r} has role {found.role!r}; querying needs read or admin", 403)
        return found

    def close(self) -> None:
        self._engine.dispose()
