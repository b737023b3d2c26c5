"""Web users with roles, argon2-hashed passwords, and server-side sessions with CSRF tokens.

Stored in the account database (`users.db`, or `app_db_uri` shared by every server), so a session opened on one
server is valid on the others.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from headwater.core.database import open_store
from headwater.core.errors import AuthError

USER_ROLES = ("admin", "analyst", "viewer")
PERMISSIONS = {
    "admin": frozenset({"view", "analyze", "sql", "manage"}),
    "analyst": frozenset({"view", "analyze", "sql"}),
    "viewer": frozenset({"view"}),
}
MIN_PASSWORD = 10
_METADATA = sa.MetaData()
_USERS = sa.Table(
    "users",
    _METADATA,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)
_SESSIONS = sa.Table(
    "sessions",
    _METADATA,
    sa.Column("token_hash", sa.Text, primary_key=True),
    sa.Column("user", sa.Text, sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=False),  # quoted on PG
    sa.Column("csrf", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
)


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
    """`db` is a SQLAlchemy URI or the path of a SQLite file."""

    def __init__(self, db: str | Path, session_hours: float = 12.0) -> None:
        self._engine = open_store(db, _METADATA)
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
        row = {"name": name, "role": role, "password_hash": self._hasher.hash(password)}
        try:
            with self._engine.begin() as conn:
                conn.execute(_USERS.insert().values(**row, created_ms=int(time.time() * 1000)))
        except sa.exc.IntegrityError:
            raise AuthError(f"a user named {name!r} already exists", 409) from None
        return User(name, role)

    def list(self) -> list[User]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(_USERS.c.name, _USERS.c.role).order_by(_USERS.c.created_ms)).all()
        return [User(*row) for row in rows]

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_USERS)).scalar_one())

    def delete(self, name: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(_SESSIONS.delete().where(_SESSIONS.c.user == name))  # also where foreign keys are off
            deleted = conn.execute(_USERS.delete().where(_USERS.c.name == name)).rowcount
        if deleted == 0:
            raise AuthError(f"no user named {name!r}", 404)

    def set_role(self, name: str, role: str) -> str:
        """Give user `name` another role; returns the previous one. The last admin cannot lose the role."""
        if role not in USER_ROLES:
            raise AuthError(f"role: must be one of {', '.join(USER_ROLES)}, got {role!r}", 400)
        with self._engine.begin() as conn:
            previous = conn.execute(sa.select(_USERS.c.role).where(_USERS.c.name == name)).scalar()
            if previous is None:
                raise AuthError(f"no user named {name!r}", 404)
            admins = conn.execute(sa.select(sa.func.count()).where(_USERS.c.role == "admin")).scalar_one()
            if previous == "admin" and role != "admin" and admins <= 1:
                raise AuthError(f"{name!r} is the only admin: make another user admin first", 409)
            conn.execute(_USERS.update().where(_USERS.c.name == name).values(role=role))
        return str(previous)

    def set_password(self, name: str, password: str) -> None:
        """Replace user `name`'s password and end their sessions."""
        if len(password) < MIN_PASSWORD:
            raise AuthError(f"password: at least {MIN_PASSWORD} characters", 400)
        digest = self._hasher.hash(password)
        with self._engine.begin() as conn:
            changed = conn.execute(_USERS.update().where(_USERS.c.name == name).values(password_hash=digest)).rowcount
            conn.execute(_SESSIONS.delete().where(_SESSIONS.c.user == name))
        if changed == 0:
            raise AuthError(f"no user named {name!r}", 404)

    def login(self, name: str, password: str) -> tuple[str, Session]:
        """Check the password and open a session; returns (token for the cookie, session)."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(_USERS.c.role, _USERS.c.password_hash).where(_USERS.c.name == name)).first()
        try:
            self._hasher.verify(row[1] if row else self._dummy, password)
        except VerificationError:
            row = None
        if row is None:
            raise AuthError("wrong user name or password", 401)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = int(time.time() * 1000)
        session = Session(User(name, row[0]), csrf, now + self.session_ms)
        insert = _SESSIONS.insert().values(
            token_hash=_digest(token), user=name, csrf=csrf, created_ms=now, expires_ms=session.expires_ms
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(_SESSIONS.delete().where(_SESSIONS.c.expires_ms < now))
                conn.execute(insert)
        except sa.exc.IntegrityError:  # the user was deleted meanwhile (by another server)
            raise AuthError("wrong user name or password", 401) from None
        return token, session

    def session(self, token: str | None) -> Session | None:
        if not token:
            return None
        query = (
            sa.select(_USERS.c.name, _USERS.c.role, _SESSIONS.c.csrf, _SESSIONS.c.expires_ms)
            .select_from(_SESSIONS.join(_USERS, _USERS.c.name == _SESSIONS.c.user))
            .where(_SESSIONS.c.token_hash == _digest(token))
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or row[3] < time.time() * 1000:
            return None
        return Session(User(row[0], row[1]), row[2], row[3])

    def logout(self, token: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(_SESSIONS.delete().where(_SESSIONS.c.token_hash == _digest(token)))

    def close(self) -> None:
        self._engine.dispose()
