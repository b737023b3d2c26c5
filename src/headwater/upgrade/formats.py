"""Format versions of what Headwater keeps on disk, and where each one is written down.

| component | what | marker |
|---|---|---|
| `data_dir` | the data directory as a whole | `<data_dir>/FORMAT.json` {"format", "components", "written_by"} |
| `log` | the embedded log and its offsets (`log/*.db`, `log/streams/*.db`) | SQLite `PRAGMA user_version` |
| `catalog` | Headwater's tables beside the Iceberg catalog (a cluster's is shared) | `headwater_format` row |
| `accounts` | keys, users and sessions, saved work (`keys.db`…, or `app_db_uri`) | `headwater_format` row |
| `settings` | the settings file | `config_version` (checked by `load_settings`) |

Processor state stores carry their own version in their manifest (headwater.processing).

Version 1 of every component is what Headwater wrote before versions were written down (up to d913ae1): a
marker-less file or database that holds data is at version 1. A marker of 0 (SQLite's default user_version) in a
data directory whose FORMAT.json is current means "created since by this format" (e.g. a processor's new stream).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from headwater import __version__
from headwater.core.errors import UpgradeError

DATA_DIR_FORMAT = 2
LOG_FORMAT = 2
CATALOG_FORMAT = 2
ACCOUNTS_FORMAT = 2
CURRENT = {"data_dir": DATA_DIR_FORMAT, "log": LOG_FORMAT, "catalog": CATALOG_FORMAT, "accounts": ACCOUNTS_FORMAT}
WRITTEN_BY = f"headwater {__version__}"
FORMAT_FILE = "FORMAT.json"

_METADATA = sa.MetaData()
FORMAT_TABLE = sa.Table(
    "headwater_format",
    _METADATA,
    sa.Column("component", sa.String(255), primary_key=True),  # a component, or `step:<id>` once a step is done
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("written_by", sa.String(255), nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class Found:
    """The version a component was found at (None: nothing there yet) and what wrote it, when known."""

    version: int | None
    written_by: str | None = None
    where: str = ""


def newer_message(component: str, where: str, found: Found, current: int) -> str:
    """The refusal of a newer format: what wrote it, what this is, what to do."""
    writer = found.written_by or "a newer Headwater"
    return (
        f"{where} is in {component} format {found.version}, written by {writer}; this is {WRITTEN_BY}, which "
        f"knows {component} formats up to {current}. Run {writer} (or newer) on it, or restore the backup taken "
        "before it was upgraded (<data_dir>/backups/); this version will not open it, so that nothing is misread."
    )


# --- FORMAT.json ----------------------------------------------------------------------------------------------
def read_format_file(data_dir: Path) -> dict[str, Any] | None:
    """FORMAT.json of the data directory (None when absent)."""
    path = data_dir / FORMAT_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        message = f"{path} cannot be read ({exc}); restore it from a backup or a copy of the directory"
        raise UpgradeError(message) from None
    if not isinstance(document, dict) or not isinstance(document.get("format"), int):
        raise UpgradeError(f"{path} has no format number; restore it from a backup or a copy of the directory")
    return document


def write_format_file(data_dir: Path, document: dict[str, Any]) -> None:
    """Replace FORMAT.json atomically and durably (temporary file, fsync, rename, fsync of the directory)."""
    path = data_dir / FORMAT_FILE
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as handle:
        handle.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    fsync_dir(data_dir)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- SQLite files of the embedded log -----------------------------------------------------------------------
def log_files(data_dir: Path) -> list[Path]:
    """The embedded log's databases: events and offsets, and every stream's."""
    folder = data_dir / "log"
    files = [folder / "events.db", folder / "offsets.db"]
    files += sorted((folder / "streams").glob("*.db"))
    return [f for f in files if f.is_file()]


def user_version(path: Path) -> int:
    """PRAGMA user_version of a SQLite file, read without writing."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def set_user_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA user_version = {int(version)}")
    finally:
        conn.close()


# --- headwater_format in a SQLAlchemy database (catalog, accounts) -------------------------------------------
def database_exists(uri: str) -> bool:
    """False for a SQLite URI whose file is missing (it is not created by looking); True for a server database."""
    url = sa.make_url(uri)
    if url.get_backend_name() != "sqlite":
        return True
    return url.database is not None and url.database != ":memory:" and Path(url.database).is_file()


def is_local_sqlite(uri: str) -> Path | None:
    """The file of a SQLite URI, else None."""
    url = sa.make_url(uri)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database)
    return None


@contextlib.contextmanager
def engine_on(uri: str) -> Any:
    """A short-lived engine on `uri` (connections checked; SQLite waits for locks)."""
    url = sa.make_url(uri)
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 30})
    else:
        args = {"connect_timeout": 10} if url.get_driver_name() in ("psycopg", "psycopg2") else {}
        engine = sa.create_engine(url, connect_args=args, pool_pre_ping=True)
    try:
        yield engine
    finally:
        engine.dispose()


def read_database_format(uri: str, component: str) -> Found:
    """The version of `component` in the database `uri`: its headwater_format row; 1 when the database holds
    tables but no row (written before versions were); None when it is missing or empty."""
    shown = _shown(uri)
    if not database_exists(uri):
        return Found(None, where=shown)
    with engine_on(uri) as engine, engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
        if FORMAT_TABLE.name in names:
            row = conn.execute(
                sa.select(FORMAT_TABLE.c.version, FORMAT_TABLE.c.written_by).where(
                    FORMAT_TABLE.c.component == component
                )
            ).first()
            if row is not None:
                return Found(int(row[0]), row[1], shown)
        return Found(1 if names - {FORMAT_TABLE.name} else None, where=shown)


def write_database_format(conn: sa.Connection, component: str, version: int) -> None:
    """Set `component`'s row (upsert that works on SQLite and PostgreSQL, inside the caller's transaction)."""
    values = {"version": version, "written_by": WRITTEN_BY, "updated_ms": int(time.time() * 1000)}
    done = conn.execute(FORMAT_TABLE.update().where(FORMAT_TABLE.c.component == component).values(**values))
    if not done.rowcount:
        conn.execute(FORMAT_TABLE.insert().values(component=component, **values))


def create_format_table(engine: sa.Engine) -> None:
    from headwater.core.database import create_tables

    create_tables(engine, _METADATA)


def _shown(uri: str) -> str:
    """A database named without its password."""
    url = sa.make_url(uri)
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)
