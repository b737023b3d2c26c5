"""The audit trail: the product's one append-only table of who did what, when and from where.

`headwater_audit` lives in the catalog database (`settings.effective_catalog_uri`), shared by every process of a
deployment. Rows are only ever inserted: there is no update or delete API, and a database trigger refuses UPDATE
and DELETE (and TRUNCATE on PostgreSQL) whoever sends them. Other features record through `AuditLog.record`:

    AuditLog(settings.effective_catalog_uri).record("ana", "key.created", "ingest-web", {"role": "write"},
                                                    address="10.0.0.7", actor_kind="user")

`details` is a JSON object; it never holds a secret (a key, password or token: `record` refuses names and values
that look like one), and the ids of deleted people appear there only as the salted hashes the privacy code passes.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import sqlalchemy as sa

from headwater.core.database import create_tables, open_store
from headwater.core.settings import SECRET_FIELDS, SECRET_OPTION_WORDS, Settings

log = logging.getLogger(__name__)

ACTIONS = frozenset({
    "key.created", "key.revoked",
    "user.created", "user.role_changed", "user.deleted", "user.password_changed",
    "share.created", "share.revoked",
    "settings.started", "settings.changed",
    "privacy.deletion_requested", "privacy.deletion_completed", "privacy.deletion_failed",
    "plan.changed", "quarantine.replayed", "alert.silenced", "alert.unsilenced",
    "cohort.created", "cohort.updated", "cohort.deleted", "trend_alert.created", "trend_alert.updated",
    "trend_alert.deleted",
    "login.succeeded", "login.failed",
})  # fmt: skip
ACTOR_KINDS = ("user", "key", "cli", "system")
COLUMNS = ("id", "at", "at_ms", "actor", "actor_kind", "action", "target", "address", "details")
APPEND_ONLY = "headwater_audit is append-only"
MAX_LIMIT = 100_000

_METADATA = sa.MetaData()
AUDIT = sa.Table(
    "headwater_audit",
    _METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("actor_kind", sa.String(16), nullable=False),
    sa.Column("action", sa.String(64), nullable=False, index=True),
    sa.Column("target", sa.Text, nullable=False, default=""),
    sa.Column("address", sa.String(255), nullable=False, default=""),
    sa.Column("details", sa.Text, nullable=False, default="{}"),
)
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS headwater_audit_no_{op.lower()} BEFORE {op} ON headwater_audit "
    f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
    for op in ("UPDATE", "DELETE")
]
_PG_FUNCTION = f"""CREATE OR REPLACE FUNCTION headwater_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '{APPEND_ONLY}' USING ERRCODE = 'insufficient_privilege'; END $$"""
_PG_TRIGGERS = {
    "headwater_audit_no_change": "BEFORE UPDATE OR DELETE ON headwater_audit FOR EACH ROW",
    "headwater_audit_no_truncate": "BEFORE TRUNCATE ON headwater_audit FOR EACH STATEMENT",
}
_LOCK_KEY = zlib.crc32(b"headwater_audit")
_SECRET_NAME = re.compile(r"password|passwd|secret|token|credential|(^|_)key$", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"hw_[wra]_[A-Za-z0-9_-]{20,}")  # an API key (see auth/keys.py)
_SETTINGS_ROW = ("settings.started", "settings.changed")


class AuditLog:
    """Append rows to, and read, `headwater_audit`; `target` is an engine on the catalog database or its URI."""

    def __init__(self, target: sa.Engine | str) -> None:
        self._uri = target if isinstance(target, str) else ""
        self._engine = target if isinstance(target, sa.Engine) else None
        self._owned = self._engine is None
        self._ready = False
        self._opening = threading.Lock()

    @property
    def engine(self) -> sa.Engine:
        """The engine, with the table and its triggers created on first use (a server starts while the catalog
        database is away, and records once it is back)."""
        if not self._ready:
            with self._opening:
                if self._engine is None:
                    self._engine = open_store(self._uri, _METADATA)
                elif not self._ready:
                    create_tables(self._engine, _METADATA)  # idempotent, like the triggers
                if not self._ready:
                    _create_triggers(self._engine)
                    self._ready = True
        assert self._engine is not None
        return self._engine

    def record(
        self,
        actor: str,
        action: str,
        target: str = "",
        details: Mapping[str, Any] | None = None,
        address: str = "",
        actor_kind: str | None = None,
    ) -> int:
        """Append one row; returns its id. `actor_kind` defaults from the actor ("cli:…", "system", else user)."""
        if action not in ACTIONS:
            raise ValueError(f"audit action {action!r} is not one of {', '.join(sorted(ACTIONS))}")
        kind = actor_kind or ("cli" if actor.startswith("cli:") else "system" if actor == "system" else "user")
        if kind not in ACTOR_KINDS:
            raise ValueError(f"audit actor_kind {kind!r} is not one of {', '.join(ACTOR_KINDS)}")
        text = _details_text(details or {})
        row = {"at_ms": int(time.time() * 1000), "actor": actor[:255], "actor_kind": kind, "action": action,
               "target": target, "address": address[:255], "details": text}  # fmt: skip
        with self.engine.begin() as conn:
            key = conn.execute(AUDIT.insert().values(**row)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def query(
        self,
        since_ms: int | None = None,
        until_ms: int | None = None,
        action: str | None = None,
        actor: str | None = None,
        limit: int = 1000,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows newest first. `since_ms` inclusive, `until_ms` exclusive; `action` is an action or a prefix of
        whole parts ("key" matches key.created and key.revoked), several separated by commas; `actor` an exact
        name, or a prefix when it ends with `*`; `before_id` pages on (rows with a smaller id)."""
        query = sa.select(AUDIT).order_by(AUDIT.c.id.desc()).limit(max(0, min(limit, MAX_LIMIT)))
        if since_ms is not None:
            query = query.where(AUDIT.c.at_ms >= since_ms)
        if until_ms is not None:
            query = query.where(AUDIT.c.at_ms < until_ms)
        if before_id is not None:
            query = query.where(AUDIT.c.id < before_id)
        if action:
            names = [a.strip().rstrip(".") for a in action.split(",") if a.strip()]
            query = query.where(
                sa.or_(
                    *(sa.or_(AUDIT.c.action == a, AUDIT.c.action.startswith(a + ".", autoescape=True)) for a in names)
                )
            )
        if actor:
            exact = not actor.endswith("*")
            query = query.where(
                AUDIT.c.actor == actor if exact else AUDIT.c.actor.startswith(actor[:-1], autoescape=True)
            )
        with self.engine.connect() as conn:
            return [_row(r._mapping) for r in conn.execute(query)]

    def pages(self, page_size: int = 5_000, limit: int | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching row newest first (at most `limit`), read `page_size` rows at a time: for exports."""
        left = limit if limit is not None else -1
        before_id = filters.pop("before_id", None)
        while left != 0:
            size = page_size if left < 0 else min(page_size, left)
            rows = self.query(limit=size, before_id=before_id, **filters)
            yield from rows
            if len(rows) < size:
                return
            before_id = rows[-1]["id"]
            left = left - len(rows) if left > 0 else left

    def check_settings(self, settings: Settings, started_by: str = "") -> dict[str, Any] | None:
        """Compare the effective settings with the last recorded ones; record `settings.started` (the first time)
        or `settings.changed` (naming what changed) when they differ. Returns the row's details, or None."""
        snapshot = settings_snapshot(settings, self._fingerprint_key())
        digest = hashlib.sha256(orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS)).hexdigest()
        last = sa.select(AUDIT.c.details).where(AUDIT.c.action.in_(_SETTINGS_ROW)).order_by(AUDIT.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            _lock(conn)  # two servers starting at once record one change, not two
            found = conn.execute(last).scalar()
            previous = orjson.loads(found) if found else None
            if previous is not None and previous.get("digest") == digest:
                conn.rollback()
                return None
            details: dict[str, Any] = {"digest": digest, **snapshot}
            if previous is not None:
                details["changed"] = changed_settings(previous, snapshot)
            if started_by:
                details["started_by"] = started_by
            row = {
                "at_ms": int(time.time() * 1000),
                "actor": "system",
                "actor_kind": "system",
                "action": "settings.changed" if previous is not None else "settings.started",
                "target": "settings",
                "address": socket.gethostname()[:255],
                "details": orjson.dumps(details, default=str).decode(),
            }  # details: secrets masked by settings_snapshot
            conn.execute(AUDIT.insert().values(**row))
            conn.commit()
        return details

    def _fingerprint_key(self) -> str:
        from headwater.core.erasure import deployment_salt, ensure_tables  # numpy and Arrow: only when needed

        ensure_tables(self.engine)
        return deployment_salt(self.engine)  # the generated one: changing privacy_salt must not look like more

    def close(self) -> None:
        if self._owned and self._engine is not None:
            self._engine.dispose()


def cli_actor() -> str:
    """The actor of a command run on this machine: `cli:<os user>@<host>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        import os

        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def parse_time_ms(value: str) -> int:
    """Milliseconds since the epoch from digits (ms) or an ISO 8601 date or time (UTC when no offset)."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a time: give an ISO 8601 time (2024-05-01T12:00:00Z) or ms") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def csv_lines(rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> Iterator[str]:
    """The rows as CSV text, a header line first; `details` as JSON text."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([orjson.dumps(row[c]).decode() if c == "details" else row[c] for c in COLUMNS])
        if buffer.tell() > 65_536:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def ndjson_lines(rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> Iterator[bytes]:
    for row in rows:
        yield orjson.dumps(row) + b"\n"


def settings_snapshot(settings: Settings, key: str) -> dict[str, Any]:
    """`{"settings": masked settings, "fingerprints": {path: keyed hash}}`: secrets masked as `config show` masks
    them (and inside lists: sources' URLs and options too), each with a keyed fingerprint so that replacing one
    secret by another still shows as a change without the audit trail holding it."""
    fingerprints: dict[str, str] = {}

    def mask(path: str, value: Any) -> str:
        fingerprints[path] = hashlib.blake2b(_plain(value), key=key.encode()[:64], digest_size=8).hexdigest()
        return "****"

    def walk(path: str, value: Any, secret: bool) -> Any:
        if secret and value not in (None, "", {}, []):
            return mask(path, value)
        if isinstance(value, dict):
            return {k: walk(f"{path}.{k}", v, any(w in str(k).lower() for w in SECRET_OPTION_WORDS))
                    for k, v in value.items()}  # fmt: skip
        if isinstance(value, list | tuple):
            return [walk(f"{path}[{i}]", v, False) for i, v in enumerate(value)]
        if isinstance(value, str) and "://" in value:
            parts = urlsplit(value)
            if parts.password:
                mask(path, value)
                port = f":{parts.port}" if parts.port else ""
                netloc = f"{parts.username or ''}:****@{parts.hostname or ''}{port}"
                return urlunsplit(parts._replace(netloc=netloc))
        return str(value) if not isinstance(value, str | int | float | bool | None) else value

    values = settings.model_dump()
    out = {name: walk(name, value, name in SECRET_FIELDS) for name, value in values.items()}
    return {"settings": out, "fingerprints": fingerprints}


def changed_settings(previous: Mapping[str, Any], snapshot: Mapping[str, Any]) -> list[str]:
    """Names of the settings whose masked value or secret fingerprint differ between two snapshots."""
    before, after = previous.get("settings") or {}, snapshot["settings"]
    old_prints, new_prints = previous.get("fingerprints") or {}, snapshot["fingerprints"]
    names = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
    for path in old_prints.keys() | new_prints.keys():
        if old_prints.get(path) != new_prints.get(path):
            names.add(re.split(r"[.\[]", path, maxsplit=1)[0])
    return sorted(names)


def _plain(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS)


def _details_text(details: Mapping[str, Any]) -> str:
    """`details` as JSON text, refusing what looks like a secret (a secret's name with a value, or an API key)."""

    def check(path: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if _SECRET_NAME.search(str(k)) and isinstance(v, str) and v not in ("", "****"):
                    raise ValueError(f"audit details {path}{k}: looks like a secret; never record one")
                check(f"{path}{k}.", v)
        elif isinstance(value, list | tuple):
            for v in value:
                check(path, v)
        elif isinstance(value, str) and _SECRET_VALUE.search(value):
            raise ValueError(f"audit details {path.rstrip('.') or 'value'}: holds an API key; never record one")

    if not isinstance(details, Mapping):
        raise ValueError("audit details: a JSON object (dict) or None")
    check("", details)
    return orjson.dumps(details, default=str).decode()


def _row(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    row = dict(mapping)
    row["at"] = (
        datetime.fromtimestamp(row["at_ms"] / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    row["details"] = orjson.loads(row["details"] or "{}")
    return {c: row[c] for c in COLUMNS}


def _lock(conn: sa.Connection) -> None:
    """Serialise writers for the rest of this transaction (SQLite: a write lock; PostgreSQL: an advisory lock)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _create_triggers(engine: sa.Engine) -> None:
    """The triggers refusing UPDATE and DELETE (idempotent; concurrent creators are serialised)."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        with engine.begin() as conn:
            for statement in _SQLITE_TRIGGERS:
                conn.exec_driver_sql(statement)
    elif dialect == "postgresql":
        exists = sa.text("SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = 'headwater_audit'::regclass")
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            if all(conn.execute(exists, {"name": name}).first() for name in _PG_TRIGGERS):
                return
            conn.exec_driver_sql(_PG_FUNCTION)
            for name, when in _PG_TRIGGERS.items():
                if conn.execute(exists, {"name": name}).first() is None:
                    conn.exec_driver_sql(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION headwater_audit_append_only()")
    else:
        log.warning(
            "headwater_audit on %s: no trigger refuses UPDATE/DELETE there (SQLite and PostgreSQL only)", dialect
        )
