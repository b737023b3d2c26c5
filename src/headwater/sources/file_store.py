"""Which dropped files a source has taken, and how far it got: a table in the catalog database.

In the catalog database (SQLite or PostgreSQL) so that a source moved to another machine, with a
shared catalog and an S3 drop, carries on where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from headwater.core.database import open_store

METADATA = sa.MetaData()
FILES = sa.Table(
    "headwater_source_files",
    METADATA,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("file_key", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # reading | done | failed
    sa.Column("records", sa.BigInteger, nullable=False, default=0),  # acknowledged records (resume point)
    sa.Column("rejected", sa.BigInteger, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
)

_ROW_COLUMNS = [c for c in FILES.c if c.name != "source"]
"""The columns of a FileRow, in its field order."""


@dataclass(slots=True)
class FileRow:
    file_key: str
    path: str
    size: int
    state: str
    records: int
    rejected: int
    error: str | None
    started_at: float
    finished_at: float | None


class FileStore:
    """Rows of `headwater_source_files` for one source."""

    def __init__(self, uri: str, source: str) -> None:
        self.engine = open_store(uri, METADATA)
        self.source = source

    def known(self) -> dict[str, str]:
        """file_key -> state for every file this source has seen."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(FILES.c.file_key, FILES.c.state).where(FILES.c.source == self.source))
            return {key: state for key, state in rows}

    def get(self, file_key: str) -> FileRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(*_ROW_COLUMNS).where(FILES.c.source == self.source, FILES.c.file_key == file_key)
            ).first()
        return FileRow(*row) if row is not None else None

    def start(self, file_key: str, path: str, size: int) -> FileRow:
        """The file's row, created in state `reading` when new."""
        row = self.get(file_key)
        if row is not None:
            return row
        values: dict[str, Any] = {
            "source": self.source, "file_key": file_key, "path": path, "size": size, "state": "reading",
            "records": 0, "rejected": 0, "started_at": time.time(),
        }  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(FILES.insert().values(**values))
        return FileRow(file_key, path, size, "reading", 0, 0, None, values["started_at"], None)

    def update(self, file_key: str, more_rejected: int = 0, **values: Any) -> None:
        """Set `values` on the file's row; `more_rejected` is added to its count of quarantined records."""
        if more_rejected:
            values["rejected"] = FILES.c.rejected + more_rejected
        with self.engine.begin() as conn:
            conn.execute(
                FILES.update().where(FILES.c.source == self.source, FILES.c.file_key == file_key).values(**values)
            )

    def recent(self, limit: int = 20) -> list[FileRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*_ROW_COLUMNS)
                .where(FILES.c.source == self.source)
                .order_by(FILES.c.started_at.desc())
                .limit(limit)
            )
            return [FileRow(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(FILES.c.state, sa.func.count()).where(FILES.c.source == self.source).group_by(FILES.c.state)
            )
            return {state: n for state, n in rows}

    def close(self) -> None:
        self.engine.dispose()
