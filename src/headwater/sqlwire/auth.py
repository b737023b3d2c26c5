"""Who may connect to the SQL server: a read or admin key (user = the key's name, password = the key) or a web
user allowed SQL (analyst, admin; user = their name, password = theirs). Write-only keys and viewers are refused.
"""

from __future__ import annotations

import math

from headwater.auth.audit import AuditLog
from headwater.auth.keys import KeyStore
from headwater.auth.throttle import SignInThrottle
from headwater.auth.users import UserStore
from headwater.core.errors import AuthError


class SqlLogin:
    """Checks the cleartext password a client sent (over TLS when the server has a certificate); failures are
    throttled per user name and address like the web sign-in's, and every sign-in is audited (`via: sql`)."""

    def __init__(self, keys: KeyStore, users: UserStore, throttle: SignInThrottle, audit: AuditLog) -> None:
        self.keys = keys
        self.users = users
        self.throttle = throttle
        self.audit = audit

    def check(self, user: str, password: str, address: str = "") -> str:
        """The principal's description ("key NAME (role)" or "user NAME (role)"), or AuthError."""
        if not user or not password:
            raise AuthError("password authentication failed: user name and password are required")
        wait = self.throttle.retry_after(user, address)
        if wait is not None:
            raise AuthError(f"too many failed sign-ins: try again in {max(1, math.ceil(wait))} s", 429)
        try:
            who, kind = self._check(user, password)
        except AuthError as exc:
            if exc.status == 401:
                self.throttle.failed(user, address)
                self.audit.record(user[:256], "login.failed", user[:256], {"via": "sql"}, address, "user")
            raise
        self.throttle.succeeded(user)
        self.audit.record(user, "login.succeeded", user, {"via": "sql"}, address, kind)
        return who

    def _check(self, user: str, password: str) -> tuple[str, str]:
        if password.startswith("hw_"):
            key = self.keys.lookup(password)
            if key is not None and key.name == user:
                if not key.can_read():
                    raise AuthError(f"key {user!r} has role {key.role!r}; SQL needs a read or admin key", 403)
                return f"key {key.name} ({key.role})", "key"
        try:
            token, session = self.users.login(user, password)
        except AuthError:
            raise AuthError(f'password authentication failed for user "{user}"') from None
        self.users.logout(token)  # the session was only the proof of the password
        if "sql" not in session.user.permissions:
            raise AuthError(f"user {user!r} has role {session.user.role!r}; SQL needs analyst or admin", 403)
        return f"user {user} ({session.user.role})", "user"
