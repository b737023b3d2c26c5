"""Saved insights, dashboards and share links in SQLite (`app.db` in the data directory).

Share links are random 32-byte tokens stored hashed: unguessable, and revocable by deleting the
row, which a purely signed (stateless) link would not be.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from headwater.core.errors import QueryError
from headwater.core.sqlite import open_store
from headwater.insights.engine import parse
from headwater.insights.spec import Filter

_SCHEMA = """
CREATE TABLE IF NOT EXISTS insights (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, query TEXT NOT NULL, created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dashboards (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL, created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shares (
    token_hash TEXT PRIMARY KEY, prefix TEXT NOT NULL, dashboard_id INTEGER NOT NULL
        REFERENCES dashboards (id) ON DELETE CASCADE,
    created_by TEXT NOT NULL, created_ms INTEGER NOT NULL
);
"""


class BoardError(QueryError):
    """A saved insight or dashboard request is invalid or names something missing."""


class LiveTile(BaseModel):
    """A real-time widget: the newest events, optionally of one event name."""

    model_config = ConfigDict(extra="forbid")
    title: str = Field("Live events", min_length=1, max_length=100)
    event: str | None = None
    limit: int = Field(20, ge=1, le=200)


class Tile(BaseModel):
    """A saved insight (historical) or a live event feed (real-time) on the grid."""

    model_config = ConfigDict(extra="forbid")
    insight_id: int | None = None
    live: LiveTile | None = None
    x: int = Field(0, ge=0, le=11)
    y: int = Field(0, ge=0, le=1000)
    w: int = Field(6, ge=1, le=12)
    h: int = Field(4, ge=1, le=40)

    @model_validator(mode="after")
    def _one_kind(self) -> Tile:
        if (self.insight_id is None) == (self.live is None):
            raise ValueError("a tile has either insight_id or live")
        return self


class DashboardBody(BaseModel):
    """A grid of saved insights with a shared date range, shared filters and auto-refresh."""

    model_config = ConfigDict(extra="forbid")
    tiles: list[Tile] = []
    last_days: int | None = Field(None, ge=1, le=3650)  # shared relative range; None: each insight's own
    filters: list[Filter] = []
    refresh_seconds: int = Field(0, ge=0, le=86400)  # 0: no auto-refresh


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())


class BoardStore:
    def __init__(self, path: Path) -> None:
        self._conn = open_store(path, _SCHEMA)
        self._lock = threading.Lock()

    def _upsert(self, table: str, column: str, name: str, text: str, user: str, row_id: int | None) -> int:
        """Insert a row (row_id None) or update it; returns its id. `table`/`column` are constants."""
        now = int(time.time() * 1000)
        with self._lock:
            if row_id is None:
                cur = self._conn.execute(
                    f"INSERT INTO {table} (name, {column}, created_by, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?)",
                    (name, text, user, now, now),
                )
                return int(cur.lastrowid or 0)
            sql = f"UPDATE {table} SET name = ?, {column} = ?, updated_ms = ? WHERE id = ?"
            if self._conn.execute(sql, (name, text, now, row_id)).rowcount == 0:
                raise BoardError(f"no {'saved insight' if table == 'insights' else 'dashboard'} {row_id}", 404)
        return row_id

    # --- saved insights
    def save_insight(
        self, name: str, query: dict[str, Any], user: str, insight_id: int | None = None
    ) -> dict[str, Any]:
        if not name:
            raise BoardError("name: required")
        parse(query)  # a saved insight must be runnable; errors name the field
        insight_id = self._upsert("insights", "query", name, orjson.dumps(query).decode(), user, insight_id)
        return self.insight(insight_id)

    def insight(self, insight_id: int) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, name, query, created_by, updated_ms FROM insights WHERE id = ?", (insight_id,)
            ).fetchone()
        if row is None:
            raise BoardError(f"no saved insight {insight_id}", 404)
        return {"id": row[0], "name": row[1], "query": orjson.loads(row[2]), "created_by": row[3], "updated_ms": row[4]}

    def insights(self) -> list[dict[str, Any]]:
        with self._lock:
            ids = [r[0] for r in self._conn.execute("SELECT id FROM insights ORDER BY id").fetchall()]
        return [self.insight(i) for i in ids]

    def delete_insight(self, insight_id: int) -> None:
        with self._lock:
            if self._conn.execute("DELETE FROM insights WHERE id = ?", (insight_id,)).rowcount == 0:
                raise BoardError(f"no saved insight {insight_id}", 404)

    # --- dashboards
    def save_dashboard(
        self, name: str, body: dict[str, Any], user: str, dashboard_id: int | None = None
    ) -> dict[str, Any]:
        if not name:
            raise BoardError("name: required")
        try:
            parsed = DashboardBody.model_validate(body)
        except ValidationError as exc:
            raise BoardError(_errors(exc)) from None
        for tile in parsed.tiles:
            if tile.insight_id is not None:
                self.insight(tile.insight_id)  # must exist
        dashboard_id = self._upsert("dashboards", "body", name, parsed.model_dump_json(), user, dashboard_id)
        return self.dashboard(dashboard_id)

    def dashboard(self, dashboard_id: int) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, name, body, created_by, updated_ms FROM dashboards WHERE id = ?", (dashboard_id,)
            ).fetchone()
        if row is None:
            raise BoardError(f"no dashboard {dashboard_id}", 404)
        return {"id": row[0], "name": row[1], **orjson.loads(row[2]), "created_by": row[3], "updated_ms": row[4]}

    def dashboards(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT id, name, updated_ms FROM dashboards ORDER BY id").fetchall()
        return [{"id": r[0], "name": r[1], "updated_ms": r[2]} for r in rows]

    def delete_dashboard(self, dashboard_id: int) -> None:
        with self._lock:
            if self._conn.execute("DELETE FROM dashboards WHERE id = ?", (dashboard_id,)).rowcount == 0:
                raise BoardError(f"no dashboard {dashboard_id}", 404)

    # --- share links
    def share(self, dashboard_id: int, user: str) -> str:
        self.dashboard(dashboard_id)
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._conn.execute(
                "INSERT INTO shares VALUES (?, ?, ?, ?, ?)",
                (_digest(token), token[:8], dashboard_id, user, int(time.time() * 1000)),
            )
        return token

    def shares(self, dashboard_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT prefix, created_by, created_ms FROM shares WHERE dashboard_id = ? ORDER BY created_ms",
                (dashboard_id,),
            ).fetchall()
        return [{"prefix": r[0], "created_by": r[1], "created_ms": r[2]} for r in rows]

    def revoke_share(self, dashboard_id: int, prefix: str) -> None:
        with self._lock:
            cur = self._conn.execute("DELETE FROM shares WHERE dashboard_id = ? AND prefix = ?", (dashboard_id, prefix))
        if cur.rowcount == 0:
            raise BoardError(f"no share link {prefix!r} on dashboard {dashboard_id}", 404)

    def shared_dashboard(self, token: str) -> int | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT dashboard_id FROM shares WHERE token_hash = ?", (_digest(token),)
            ).fetchone()
        return int(row[0]) if row else None

    def close(self) -> None:
        self._conn.close()
