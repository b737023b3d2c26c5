"""One client connection after sign-in: the simple and extended query protocols over the read-only SQL surface."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from headwater.core.errors import HeadwaterError, QueryError
from headwater.query.engine import QueryResult
from headwater.sqlwire import messages as m
from headwater.sqlwire.catalog import SERVER_VERSION
from headwater.sqlwire.sqltext import Local, bind, code_only, count_params, local, split

log = logging.getLogger(__name__)
Runner = Callable[[str], Awaitable[QueryResult]]
DEFAULTS = {
    "server_version": SERVER_VERSION,
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "datestyle": "ISO, MDY",
    "timezone": "UTC",
    "intervalstyle": "postgres",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "is_superuser": "off",
    "transaction isolation level": "read committed",
    "transaction_isolation": "read committed",
    "transaction_read_only": "on",
    "default_transaction_read_only": "on",
    "search_path": "main",
    "max_identifier_length": "63",
    "extra_float_digits": "1",
    "lc_collate": "C",
    "lc_ctype": "C",
}
MAX_MESSAGE = 16 << 20  # bytes: a query text or a bound parameter set larger than this ends the connection
STATUS_NAMES = ("server_version", "server_encoding", "client_encoding", "DateStyle", "TimeZone", "IntervalStyle",
                "integer_datetimes", "standard_conforming_strings", "is_superuser")  # fmt: skip


class ProtocolError(HeadwaterError):
    """The client sent something this server does not understand; the connection ends."""


def sqlstate(exc: Exception) -> tuple[str, str]:
    """(SQLSTATE, message) for an error a query met."""
    text = str(exc)
    if isinstance(exc, QueryError):
        if exc.status == 403 and "only SELECT" in text:
            return "25006", f"Headwater's SQL server is read-only: {text}"
        codes = {403: "42501", 408: "57014", 429: "53000", 503: "57P03"}
        if exc.status in codes:
            return codes[exc.status], text
        if "Parser Error" in text or "syntax error" in text:
            return "42601", text
        if "Catalog Error" in text:
            return ("42P01" if "Table" in text else "42883"), text
        return "42000", text
    if isinstance(exc, ValueError):
        return "22023", str(exc)
    log.exception("SQL server: unexpected error", exc_info=exc)
    return "XX000", f"internal error: {type(exc).__name__}: {text}"


@dataclass
class Portal:
    sql: str
    local: Local | None
    formats: list[int]
    result: QueryResult | None = None
    sent: int = 0
    oids: list[int] = field(default_factory=list)


class Session:
    """Answers messages of one signed-in client; `run` executes one query on the engine or the look-alike catalog."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, run: Runner, user: str) -> None:
        self.reader = reader
        self.writer = writer
        self.run = run
        self.settings = {**DEFAULTS, "session_authorization": user}
        self.status = b"I"
        self.statements: dict[str, tuple[str, list[int]]] = {}
        self.portals: dict[str, Portal] = {}
        self.skipping = False  # after an error in the extended protocol, until Sync

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def serve(self) -> None:
        while True:
            head = await self.reader.readexactly(5)
            kind, length = head[:1], struct.unpack("!i", head[1:])[0]
            if length < 4 or length > MAX_MESSAGE:
                raise ProtocolError(f"message length {length} out of range")
            body = await self.reader.readexactly(length - 4)
            if kind == b"X":
                return
            if kind == b"Q":
                await self.simple(body[:-1].decode())
                self.send(m.ready(self.status))
            elif kind == b"S":
                self.skipping = False
                self.send(m.ready(self.status))
            elif kind == b"H":
                pass
            elif self.skipping:
                continue
            else:
                try:
                    await self.extended(kind, m.Reader(body))
                except Exception as exc:  # the error goes to the client, which then sends Sync
                    self.fail(exc)
                    self.skipping = True
            await self.writer.drain()

    def fail(self, exc: Exception) -> None:
        code, text = sqlstate(exc)
        self.send(m.error(code, text))
        if self.status == b"T":
            self.status = b"E"

    async def simple(self, sql: str) -> None:
        statements = _statements(sql)
        if not statements:
            self.send(m.EMPTY_QUERY)
        for statement in statements:
            try:
                portal = Portal(statement, local(statement), [])
                await self.prepare(portal)
                if portal.result is not None:
                    self.send(self.description(portal))
                self.finish(portal, 0)
            except Exception as exc:
                self.fail(exc)
                return

    async def prepare(self, portal: Portal) -> None:
        """Run the portal's statement unless it ran already (a Describe runs it to know its columns)."""
        if portal.result is not None:
            return
        if self.status == b"E" and (portal.local is None or portal.local.kind not in ("commit", "rollback")):
            raise QueryError("current transaction is aborted, commands ignored until end of transaction block")
        if portal.local is None:
            portal.result = await self.run(portal.sql)
        elif portal.local.kind == "show":
            name = portal.local.name
            if name == "all":
                rows = [[k, v, ""] for k, v in sorted(self.settings.items())]
                portal.result = QueryResult(["name", "setting", "description"], rows, types=["VARCHAR"] * 3)
            else:
                if name not in self.settings:
                    raise QueryError(f'unrecognized configuration parameter "{name}"')
                portal.result = QueryResult([name.split()[-1]], [[self.settings[name]]], types=["VARCHAR"])

    def description(self, portal: Portal) -> bytes:
        assert portal.result is not None
        portal.oids = [m.type_oid(t) for t in portal.result.types] or [m.TEXT_OID] * len(portal.result.columns)
        return m.row_description(portal.result.columns, portal.oids, self.formats(portal))

    def formats(self, portal: Portal) -> list[int]:
        count = len(portal.oids)
        asked = portal.formats * count if len(portal.formats) == 1 else portal.formats or [0] * count
        return [f if f == 0 or m.binary_ok(oid) else 0 for f, oid in zip(asked, portal.oids, strict=False)]

    def finish(self, portal: Portal, limit: int) -> None:
        """Send the rows (at most `limit`, 0: all) and the completion, or apply a session statement."""
        if portal.local is not None and portal.local.kind != "show":
            self.apply(portal.local)
            self.send(m.command_complete(portal.local.tag))
            return
        result = portal.result
        assert result is not None
        if not portal.oids:
            portal.oids = [m.type_oid(t) for t in result.types] or [m.TEXT_OID] * len(result.columns)
        formats = self.formats(portal)
        end = len(result.rows) if limit <= 0 else min(len(result.rows), portal.sent + limit)
        for row in result.rows[portal.sent : end]:
            self.send(m.data_row(row, portal.oids, formats))
        portal.sent = end
        if end < len(result.rows):
            self.send(m.PORTAL_SUSPENDED)
            return
        if result.truncated:
            self.send(m.notice(f"result truncated at {len(result.rows)} rows (the server's query_max_rows)"))
        self.send(m.command_complete(f"{'SHOW' if portal.local else 'SELECT'} {len(result.rows)}"))

    def apply(self, statement: Local) -> None:
        if statement.kind == "begin":
            self.status = b"T"
        elif statement.kind in ("commit", "rollback"):
            self.status = b"I"
        elif statement.kind == "savepoint" and statement.tag == "ROLLBACK" and self.status == b"E":
            self.status = b"T"
        elif statement.kind == "set" and statement.name:
            self.settings[statement.name] = statement.value
            if statement.name in ("application_name", "datestyle", "timezone", "client_encoding"):
                shown = {"datestyle": "DateStyle", "timezone": "TimeZone"}.get(statement.name, statement.name)
                if statement.name != "application_name":
                    return  # DuckDB's output does not follow these; keep announcing what we send
                self.send(m.parameter_status(shown, statement.value))

    async def extended(self, kind: bytes, r: m.Reader) -> None:
        if kind == b"P":
            name, sql = r.cstr(), r.cstr()
            oids = [r.int32() for _ in range(r.int16())]
            oids += [0] * (count_params(sql) - len(oids))
            self.statements[name] = (sql, oids)
            self.send(m.PARSE_COMPLETE)
        elif kind == b"B":
            self.bind(r)
            self.send(m.BIND_COMPLETE)
        elif kind == b"D":
            await self.describe(r.take(1), r.cstr())
        elif kind == b"E":
            name, limit = r.cstr(), r.int32()
            portal = self._portal(name)
            await self.prepare(portal)
            self.finish(portal, limit)
        elif kind == b"C":
            which, name = r.take(1), r.cstr()
            if which == b"S":
                self.statements.pop(name, None)
            else:
                self.portals.pop(name, None)
            self.send(m.CLOSE_COMPLETE)
        else:
            raise ProtocolError(f"unsupported message type {kind!r}")

    def bind(self, r: m.Reader) -> None:
        portal_name, statement = r.cstr(), r.cstr()
        if statement not in self.statements:
            raise QueryError(f'prepared statement "{statement}" does not exist')
        sql, oids = self.statements[statement]
        formats = [r.int16() for _ in range(r.int16())]
        values = []
        for i in range(r.int16()):
            size = r.int32()
            fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
            oid = oids[i] if i < len(oids) else 0
            values.append(m.decode_param(None if size < 0 else r.take(size), oid, fmt == 1))
        result_formats = [r.int16() for _ in range(r.int16())]
        bound = bind(sql, values, oids) if values or count_params(sql) else sql
        self.portals[portal_name] = Portal(bound, local(bound), result_formats)

    async def describe(self, which: bytes, name: str) -> None:
        if which == b"S":
            if name not in self.statements:
                raise QueryError(f'prepared statement "{name}" does not exist')
            sql, oids = self.statements[name]
            self.send(m.parameter_description([oid or m.TEXT_OID for oid in oids]))
            portal = Portal(bind(sql, [None] * len(oids), oids) if oids else sql, local(sql), [])
        else:
            portal = self._portal(name)
        if portal.local is not None and portal.local.kind != "show":
            self.send(m.NO_DATA)
            return
        if not code_only(portal.sql):
            self.send(m.NO_DATA)
            return
        await self.prepare(portal)
        self.send(self.description(portal))
        if which == b"S":
            portal.result = None

    def _portal(self, name: str) -> Portal:
        if name not in self.portals:
            raise QueryError(f'portal "{name}" does not exist')
        return self.portals[name]


def _statements(sql: str) -> list[str]:
    """The statements of a simple query, split at top-level semicolons (empty ones dropped)."""
    out, current = [], []
    for kind, text in split(sql):
        if kind == "code" and ";" in text:
            pieces = text.split(";")
            current.append(pieces[0])
            for piece in pieces[1:]:
                out.append("".join(current))
                current = [piece]
        else:
            current.append(text)
    out.append("".join(current))
    return [s for s in out if code_only(s)]
