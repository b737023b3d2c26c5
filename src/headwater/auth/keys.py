"""API keys stored hashed in SQLite, with roles write / read / admin.

Keys are 32 random bytes, so a single SHA-256 is enough to store them (no password-style
stretching is needed for high-entropy secrets, and lookups stay on the hot path's budget).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from headwater.core.errors import AuthError
from headwater.core.sqlite import open_store

ROLES = ("write", "read", "admin")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,
    created_ms INTEGER NOT NULL, revoked_ms INTEGER
);
"""


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
    """Create, list, revoke and look up keys; lookups are cached for `cache_s` seconds."""

    def __init__(self, path: Path, cache_s: float = 2.0) -> None:
        self._conn = open_store(path, _SCHEMA)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._cache_s = cache_s

    def create(self, name: str, role: str) -> str:
        if role not in ROLES:
            raise AuthError(f"role must be one of {', '.join(ROLES)}, got {role!r}", 400)
        if not name or len(name) > 100:
            raise AuthError("key name must be 1 to 100 characters", 400)
        key = f"hw_{role[0]}_" + secrets.token_urlsafe(32)
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                    (name, role, hash_key(key), key[:9], int(time.time() * 1000)),
                )
            except sqlite3.IntegrityError:
                raise AuthError(f"a key named {name!r} already exists; pick another name or revoke it", 409) from None
        return key

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, role, prefix, created_ms, revoked_ms FROM api_keys ORDER BY created_ms"
            ).fetchall()
        return [ApiKey(*row) for row in rows]

    def revoke(self, name: str) -> None:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE api_keys SET revoked_ms = ? WHERE name = ? AND revoked_ms IS NULL",
                (int(time.time() * 1000), name),
            )
        if cur.rowcount == 0:
            raise AuthError(f"no active key named {name!r}", 404)
        self._cache.clear()

    def lookup(self, key: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        with self._lock:
            row = self._conn.execute(
                "SELECT name, role, prefix, created_ms, revoked_ms FROM api_keys WHERE key_hash = ?",
                (hash_key(key),),
            ).fetchone()
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
        self._conn.close()
