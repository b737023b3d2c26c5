"""`headwater sql-server`: accept PostgreSQL clients, negotiate TLS, sign them in, hand them to a Session.

Start-up: the query engine (built on a query thread, as the HTTP server does, so DuckDB's threads get
`query_nice`), the account stores, the look-alike catalog; then the socket listens, the port file is written and
`report_ready()` tells `headwater up`. With `sql_tls_cert`/`sql_tls_key` set, clients must use TLS (the password
travels in clear inside it); without, the server answers plain connections only and refuses TLS requests, as a
PostgreSQL server without ssl does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import ssl
import struct
from pathlib import Path

from headwater.auth.audit import AuditLog
from headwater.auth.keys import KeyStore
from headwater.auth.throttle import SignInThrottle
from headwater.auth.users import UserStore
from headwater.core.errors import AuthError, ConfigError
from headwater.core.settings import Settings
from headwater.query.engine import QueryEngine, QueryResult
from headwater.query.slots import QuerySlots
from headwater.sqlwire import messages as m
from headwater.sqlwire.auth import SqlLogin
from headwater.sqlwire.catalog import CatalogDB
from headwater.sqlwire.session import DEFAULTS, STATUS_NAMES, ProtocolError, Session
from headwater.sqlwire.sqltext import rewrite

log = logging.getLogger(__name__)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context from `sql_tls_cert` and `sql_tls_key` (both or neither)."""
    cert, key = settings.sql_tls_cert, settings.sql_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("sql_tls_cert and sql_tls_key: set both (a PEM certificate and its private key) or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"sql_tls_cert / sql_tls_key: cannot load {cert} and {key}: {exc}") from None
    return context


class SqlServer:
    """The engine, the stores and the catalog one `sql-server` process serves from."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tls = tls_context(settings)
        self.slots = QuerySlots(
            settings.query_concurrency, settings.query_queue, settings.query_queue_wait_s, settings.query_nice
        )
        self.engine = self.slots.build(lambda: QueryEngine(settings))
        self.keys = KeyStore(settings.store_uri("keys"))
        self.users = UserStore(settings.store_uri("users"), settings.session_hours)
        self.audit = AuditLog(settings.effective_catalog_uri)
        free, wait = settings.login_free_failures, settings.login_backoff_max_s
        throttle = SignInThrottle(settings.store_uri("users"), free, wait)
        self.login = SqlLogin(self.keys, self.users, throttle, self.audit)
        self.catalog = CatalogDB(self.engine)

    def query(self, sql: str) -> QueryResult:
        """One statement on the look-alike catalog when it reads only catalog relations, else on the engine."""
        sql = rewrite(sql)
        if self.catalog.answers(sql):
            self.catalog.sync()
            limit, timeout = self.settings.query_max_rows, self.settings.query_timeout_s
            return self.catalog.execute(self.catalog.rewrite(sql), limit, timeout)
        return self.engine.execute(sql)

    async def run(self, sql: str) -> QueryResult:
        return await self.slots.run(self.query, sql)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        try:
            user = await self._start(reader, writer, address)
            if user is not None:
                await Session(reader, writer, self.run, user).serve()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client went away
        except (ProtocolError, ValueError, struct.error) as exc:  # malformed messages end the connection
            log.info("SQL client %s: %s", address, exc)
            with contextlib.suppress(ConnectionError):
                writer.write(m.error("08P01", f"protocol violation: {exc}", "FATAL"))
        except Exception:
            log.exception("SQL client %s: unexpected error; connection closed", address)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _start(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> str | None:
        """Startup, TLS and password; the signed-in user name, or None when the connection ends here."""
        tls = False
        while True:
            length = struct.unpack("!i", await reader.readexactly(4))[0]
            if length < 8 or length > 10_000:
                raise ProtocolError("invalid startup packet length")
            body = await reader.readexactly(length - 4)
            code = struct.unpack("!i", body[:4])[0]
            if code == m.SSL_REQUEST and self.tls is not None and not tls:
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.tls)
                tls = True
            elif code in (m.SSL_REQUEST, m.GSS_REQUEST):
                writer.write(b"N")
                await writer.drain()
            elif code == m.CANCEL_REQUEST:
                return None  # queries stop at the time limit; cancelling is not supported
            elif code == m.PROTOCOL_3:
                break
            else:
                raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
        fields = body[4:].split(b"\x00")
        params = {k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2], strict=False) if k}
        user = params.get("user", "")
        if not user:
            writer.write(m.error("28000", "no user name given in the startup packet", "FATAL"))
            return None
        if self.tls is not None and not tls:
            writer.write(m.error("28000", "this server requires TLS: connect with sslmode=require", "FATAL"))
            return None
        writer.write(m.authentication(3))  # cleartext password (inside TLS when configured)
        await writer.drain()
        head = await reader.readexactly(5)
        size = struct.unpack("!i", head[1:])[0]
        if head[:1] != b"p" or not 4 < size <= 10_000:
            raise ProtocolError("expected a password message")
        password = (await reader.readexactly(size - 4)).rstrip(b"\x00").decode()
        try:
            who = await asyncio.get_running_loop().run_in_executor(None, self.login.check, user, password, address)
        except AuthError as exc:
            log.info("SQL sign-in refused from %s for %r: %s", address, user, exc)
            writer.write(m.error("28P01" if exc.status == 401 else "28000", str(exc), "FATAL"))
            return None
        log.info("SQL client %s signed in as %s", address, who)
        out = [m.authentication(0)]
        out += [m.parameter_status(name, _status(name, params)) for name in STATUS_NAMES]
        out += [m.parameter_status("application_name", params.get("application_name", ""))]
        out += [m.backend_key(os.getpid() & 0x7FFFFFFF, secrets.randbits(32)), m.ready(b"I")]
        writer.write(b"".join(out))
        await writer.drain()
        return user

    def close(self) -> None:
        self.catalog.close()
        self.engine.close()
        self.keys.close()
        self.users.close()
        self.login.throttle.close()
        self.audit.close()
        self.slots.close()


def _status(name: str, params: dict[str, str]) -> str:
    return DEFAULTS[name.lower()] if name.lower() in DEFAULTS else params.get(name, "")


async def _serve(server: SqlServer, host: str, port: int, port_file: Path | None) -> None:
    from headwater.runtime.readiness import report_ready

    listener = await asyncio.start_server(server.handle, host, port)
    bound = listener.sockets[0].getsockname()[1]
    if port_file is not None:
        port_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(bound))
        tmp.replace(port_file)
    log.info("SQL server listening on %s:%d%s", host, bound, " (TLS required)" if server.tls else "")
    report_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with listener:
        await stop.wait()


def serve(settings: Settings, port: int, port_file: Path | None = None) -> None:
    """Run the SQL server on `settings.host`:`port` until SIGTERM/SIGINT."""
    server = SqlServer(settings)
    try:
        asyncio.run(_serve(server, settings.host, port, port_file))
    except OSError as exc:
        raise ConfigError(f"sql_port: cannot listen on {settings.host}:{port}: {exc.strerror or exc}") from None
    finally:
        server.close()
