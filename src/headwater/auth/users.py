"""Web users with roles, argon2-hashed passwords, and server-side sessions with CSRF tokens."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from headwater.core.errors import AuthError
from headwater.core.sqlite import open_store

USER_ROLES = ("admin", "analyst", "viewer")
PERMISSIONS = {
    "admin": frozenset({"view", "analyze", "sql", "manage"}),
    "analyst": frozenset({"view", "analyze", "sql"}),
    "viewer": frozenset({"view"}),
}
MIN_PASSWORD = 10
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf TEXT NOT NULL, created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str

    @property
    def permissions(self) -> frozenset[str]:
        return PERMISSIONS[self.role]


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    expires_ms: int


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserStore:
    def __init__(self, path: Path, session_hours: float = 12.0) -> None:
        self._conn = open_store(path, _SCHEMA)
        self._lock = threading.Lock()
        self._hasher = PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_hex(16))  # equalises timing for unknown users
        self.session_ms = int(session_hours * 3_600_000)

    def create(self, name: str, role: str, password: str) -> User:
        if role not in USER_ROLES:
            raise AuthError(f"role: must be one of {', '.join(USER_ROLES)}, got {role!r}", 400)
        if not name or len(name) > 100 or not name.isprintable():
            raise AuthError("name: 1 to 100 printable characters", 400)
        if len(password) < MIN_PASSWORD:
            raise AuthError(f"password: at least {MIN_PASSWORD} characters", 400)
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?)",
                    (name, role, self._hasher.hash(password), int(time.time() * 1000)),
                )
            except sqlite3.IntegrityError:
                raise AuthError(f"a user named {name!r} already exists", 409) from None
        return User(name, role)

    def list(self) -> list[User]:
        with self._lock:
            rows = self._conn.execute("SELECT name, role FROM users ORDER BY created_ms").fetchall()
        return [User(*row) for row in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM users").fetchone()[0])

    def delete(self, name: str) -> None:
        with self._lock:
            if self._conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise AuthError(f"no user named {name!r}", 404)

    def login(self, name: str, password: str) -> tuple[str, Session]:
        """Check the password and open a session; returns (token for the cookie, session)."""
        with self._lock:
            row = self._conn.execute("SELECT role, password_hash FROM users WHERE name = ?", (name,)).fetchone()
        try:
            self._hasher.verify(row[1] if row else self._dummy, password)
        except VerificationError:
            row = None
        if row is None:
            raise AuthError("wrong user name or password", 401)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = int(time.time() * 1000)
        session = Session(User(name, row[0]), csrf, now + self.session_ms)
        with self._lock:
            self._conn.execute("DELETE FROM sessions WHERE expires_ms < ?", (now,))
            self._conn.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (_digest(token), name, csrf, now, session.expires_ms)
            )
        return token, session

    def session(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT u.name, u.role, s.csrf, s.expires_ms FROM sessions s JOIN users u ON u.name = s.user "
                "WHERE s.token_hash = ?",
                (_digest(token),),
            ).fetchone()
        if row is None or row[3] < time.time() * 1000:
            return None
        return Session(User(row[0], row[1]), row[2], row[3])

    def logout(self, token: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_digest(token),))

    def close(self) -> None:
        self._conn.close()
