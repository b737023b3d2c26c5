"""Opening the small account stores (keys, users, dashboards) on any SQLAlchemy database, the same way everywhere.

SQLite (the default: one file per store in the data directory) gets WAL and foreign keys on every connection;
another database (PostgreSQL, shared by every server through `app_db_uri`) gets its connections checked before use,
so a restarted database costs one failed ping rather than an error.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages (privacy)
    finally:
        cursor.close()


def open_store(target: str | Path, metadata: sa.MetaData) -> sa.Engine:
    """An engine on `target` (a URI, or a Path meaning a SQLite file) with `metadata`'s tables created.

    Callers `dispose()` the engine when done. Creating the tables is safe when several processes start together
    against one shared database.
    """
    url = sa.URL.create("sqlite", database=str(target)) if isinstance(target, Path) else sa.make_url(target)
    engine: sa.Engine
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        connect_args: dict[str, Any] = {}
        if url.get_driver_name() in ("psycopg", "psycopg2") and "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = 5  # an unreachable database fails requests fast, not after minutes
        engine = sa.create_engine(
            url, connect_args=connect_args, pool_size=2, max_overflow=8, pool_pre_ping=True, pool_recycle=3600
        )
    try:
        create_tables(engine, metadata)
    except BaseException:
        engine.dispose()
        raise
    return engine


def create_tables(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """CREATE TABLE for the missing tables; another process doing the same at once is waited for or retried."""
    lock_key = zlib.crc32(",".join(sorted(metadata.tables)).encode())
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":  # DDL is transactional there: serialise the creators
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
                metadata.create_all(conn)
            return
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
            if attempt == 2:  # e.g. a database without advisory locks where two processes raced
                raise
            time.sleep(0.2 * (attempt + 1))
