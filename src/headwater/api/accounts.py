"""Sign-in, sessions, and managing users and API keys over HTTP (admins only for management)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.audit import client_address, record
from headwater.api.principal import SESSION_COOKIE, Principal, authenticate
from headwater.core.errors import AuthError


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _error(exc: AuthError) -> Response:
    return _json({"success": False, "error": str(exc)}, exc.status)


async def _body(request: Request, *fields: str) -> dict[str, str]:
    try:
        doc = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise AuthError(f"body is not valid JSON: {exc}", 400) from None
    if not isinstance(doc, dict):
        raise AuthError("body: expected a JSON object", 400)
    for name in fields:
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise AuthError(f"{name}: required, a string", 400)
    return doc


def account_routes(services: Callable[[], Any]) -> list[Route]:
    """Routes for the web app's accounts; `services()` gives the opened Services."""

    async def login(request: Request) -> Response:
        """Sign in (throttled per user name and per address; every attempt checked is audited)."""
        s = services()
        try:
            doc = await _body(request, "name", "password")
        except AuthError as exc:
            return _error(exc)
        name, address = doc["name"], client_address(request)
        wait = await run_in_threadpool(s.sign_ins.retry_after, name, address)
        if wait is not None:
            seconds = str(max(1, math.ceil(wait)))
            message = f"too many failed sign-ins: try again in {seconds} s"
            response = _json({"success": False, "error": message, "retry_after": int(seconds)}, 429)
            response.headers["retry-after"] = seconds
            return response
        who = Principal(name[:256], "user", "", frozenset())
        try:
            token, session = await run_in_threadpool(s.users.login, name, doc["password"])
        except AuthError as exc:
            if exc.status != 401:
                return _error(exc)
            imposed = await run_in_threadpool(s.sign_ins.failed, name, address)
            await record(s.audit, request, who, "login.failed", name[:256], {"waits_s": imposed or 0})
            return _error(exc)
        await run_in_threadpool(s.sign_ins.succeeded, name)
        await record(s.audit, request, who, "login.succeeded", name, {"role": session.user.role})
        response = _json({"user": session.user.name, "role": session.user.role, "csrf": session.csrf})
        response.set_cookie(
            SESSION_COOKIE, token, max_age=s.users.session_ms // 1000, httponly=True, samesite="strict",
            secure=request.url.scheme == "https", path="/",
        )  # fmt: skip
        return response

    async def logout(request: Request) -> Response:
        s = services()
        try:
            authenticate(request, s.keys, s.users, "view")
        except AuthError as exc:
            return _error(exc)
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            s.users.logout(token)
        response = _json({"success": True})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def me(request: Request) -> Response:
        s = services()
        session = s.users.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return _json({"success": False, "error": "not signed in"}, 401)
        return _json({"user": session.user.name, "role": session.user.role, "csrf": session.csrf,
                      "permissions": sorted(session.user.permissions)})  # fmt: skip

    async def keys(request: Request) -> Response:
        s = services()
        try:
            who = authenticate(request, s.keys, s.users, "manage")
            if request.method == "GET":
                return _json([{"name": k.name, "role": k.role, "prefix": k.prefix, "created_ms": k.created_ms,
                               "revoked": k.revoked_ms is not None} for k in s.keys.list()])  # fmt: skip
            doc = await _body(request, "name", "role")
            key = s.keys.create(doc["name"], doc["role"])
        except AuthError as exc:
            return _error(exc)
        await record(s.audit, request, who, "key.created", doc["name"], {"role": doc["role"], "prefix": key[:9]})
        return _json({"name": doc["name"], "role": doc["role"], "key": key}, 201)

    async def users(request: Request) -> Response:
        s = services()
        try:
            who = authenticate(request, s.keys, s.users, "manage")
            if request.method == "GET":
                return _json([{"name": u.name, "role": u.role} for u in s.users.list()])
            doc = await _body(request, "name", "role", "password")
            user = await run_in_threadpool(s.users.create, doc["name"], doc["role"], doc["password"])
        except AuthError as exc:
            return _error(exc)
        await record(s.audit, request, who, "user.created", user.name, {"role": user.role})
        return _json({"name": user.name, "role": user.role}, 201)

    def remover(kind: str) -> Callable[[Request], Any]:
        """DELETE /api/keys/NAME (revoke) and /api/users/NAME (delete), for admins."""

        async def remove(request: Request) -> Response:
            s = services()
            try:
                who = authenticate(request, s.keys, s.users, "manage")
                store = s.keys if kind == "keys" else s.users
                (store.revoke if kind == "keys" else store.delete)(request.path_params["name"])
            except AuthError as exc:
                return _error(exc)
            action = "key.revoked" if kind == "keys" else "user.deleted"
            await record(s.audit, request, who, action, request.path_params["name"])
            return _json({"success": True})

        return remove

    async def change_user(request: Request) -> Response:
        """PATCH /api/users/NAME `{"role": ..., "password": ...}` (either or both), for admins."""
        s = services()
        name = request.path_params["name"]
        try:
            who = authenticate(request, s.keys, s.users, "manage")
            doc = await _body(request)
            role, password = doc.get("role"), doc.get("password")
            if role is None and password is None:
                raise AuthError("send role, password or both", 400)
            for field, value in (("role", role), ("password", password)):
                if value is not None and not isinstance(value, str):
                    raise AuthError(f"{field}: a string", 400)
            previous = s.users.set_role(name, role) if role is not None else None
            if password is not None:
                await run_in_threadpool(s.users.set_password, name, password)
        except AuthError as exc:
            return _error(exc)
        if role is not None and previous != role:
            await record(s.audit, request, who, "user.role_changed", name, {"from": previous, "to": role})
        if password is not None:
            await record(s.audit, request, who, "user.password_changed", name)
        return _json({"name": name, "role": role or previous, "success": True})

    return [
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/me", me, methods=["GET"]),
        Route("/api/keys", keys, methods=["GET", "POST"]),
        Route("/api/keys/{name}", remover("keys"), methods=["DELETE"]),
        Route("/api/users", users, methods=["GET", "POST"]),
        Route("/api/users/{name}", remover("users"), methods=["DELETE"]),
        Route("/api/users/{name}", change_user, methods=["PATCH"]),
    ]
