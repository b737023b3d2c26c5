"""Who is calling: an API key (header) or a signed-in web user (session cookie + CSRF header)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from headwater.api.responses import error_response
from headwater.auth.keys import KeyStore
from headwater.auth.users import PERMISSIONS, UserStore
from headwater.collector.routes import request_key
from headwater.core.errors import AuthError

SESSION_COOKIE = "hw_session"
CSRF_HEADER = "x-csrf-token"
KEY_PERMISSIONS = {"write": frozenset[str](), "read": PERMISSIONS["analyst"], "admin": PERMISSIONS["admin"]}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: str  # "key" or "user"
    role: str
    permissions: frozenset[str]


def authenticate(request: Request, keys: KeyStore, users: UserStore, permission: str) -> Principal:
    """The caller, if allowed `permission`; AuthError 401 (nobody) or 403 (not allowed, or CSRF)."""
    key = request_key(request.headers)
    if key is not None:
        found = keys.lookup(key)
        if found is None:
            raise AuthError("unknown or revoked API key", 401)
        principal = Principal(found.name, "key", found.role, KEY_PERMISSIONS[found.role])
    else:
        session = users.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise AuthError("sign in, or send an API key as a Bearer token", 401)
        if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != session.csrf:
            raise AuthError(f"missing or wrong {CSRF_HEADER} header (it comes with the session)", 403)
        principal = Principal(session.user.name, "user", session.user.role, session.user.permissions)
    if permission not in principal.permissions:
        raise AuthError(f"{principal.kind} {principal.name!r} ({principal.role}) may not {permission}", 403)
    return principal


Handler = Callable[[Request, Any, Principal], Awaitable[Response]]


def guarded(services: Callable[[], Any], permission: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that lets through only callers allowed `permission` (401 / 403 as JSON otherwise), then
    awaits `handler(request, services(), principal)`."""

    async def endpoint(request: Request) -> Response:
        s = services()
        try:
            who = authenticate(request, s.keys, s.users, permission)
        except AuthError as exc:
            return error_response(str(exc), exc.status)
        return await handler(request, s, who)

    return endpoint
