"""Saved insights, dashboards and share links in the account database (`app.db` in the data directory, or
`app_db_uri` shared by every server).

Share links are random 32-byte tokens stored hashed: unguessable, and revocable by deleting the
row, which a purely signed (stateless) link would not be.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from headwater.core.database import open_store
from headwater.core.errors import QueryError
from headwater.core.validation import field_errors
from headwater.insights.engine import parse
from headwater.insights.spec import Filter

_METADATA = sa.MetaData()
MAX_STATE_ROWS = 1000  # a state tile's rows (the most one scan of /api/state returns)


def _saved(name: str, column: str) -> sa.Table:
    """A table of saved things (insights: `query`, dashboards: `body`), ids given by the database."""
    return sa.Table(
        name,
        _METADATA,
        sa.Column("id", sa.Integer, primary_key=True),  # INTEGER PRIMARY KEY (rowid) on SQLite, SERIAL on PostgreSQL
        sa.Column("name", sa.Text, nullable=False),
        sa.Column(column, sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )


_INSIGHTS = _saved("insights", "query")
_DASHBOARDS = _saved("dashboards", "body")
_SHARES = sa.Table(
    "shares",
    _METADATA,
    sa.Column("token_hash", sa.Text, primary_key=True),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("dashboard_id", sa.Integer, sa.ForeignKey("dashboards.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)


class BoardError(QueryError):
    """A saved insight or dashboard request is invalid or names something missing."""


class LiveTile(BaseModel):
    """A real-time widget: the newest events, optionally of one event name; or, with `stream`, the
    newest records (key, value, event time) of a processor's output stream (kind `live.stream`)."""

    model_config = ConfigDict(extra="forbid")
    title: str = Field("Live events", min_length=1, max_length=100)
    event: str | None = None
    stream: str | None = Field(None, min_length=1, max_length=200)
    limit: int = Field(20, ge=1, le=200)

    @model_validator(mode="after")
    def _events_or_stream(self) -> LiveTile:
        if self.event is not None and self.stream is not None:
            raise ValueError("event filters raw events and a stream has none: give event or stream, not both")
        return self


FIELD_PATH = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$"


class StateTile(BaseModel):
    """The rows of a processor's served state table (`prefix` scan in key order, `limit` rows), as a
    table or as a bar chart of one number per key: `field` (a dotted path inside the value), by
    default the value itself when it is a number, else its `value` member (a window result's)."""

    model_config = ConfigDict(extra="forbid")
    title: str = Field("", max_length=100)  # empty: the table's name
    table: str = Field(min_length=1, max_length=200)
    prefix: str = Field("", max_length=200)
    limit: int = Field(20, ge=1, le=MAX_STATE_ROWS)
    chart: Literal["bar", "table"] = "bar"
    field: str | None = Field(None, max_length=200, pattern=FIELD_PATH)

    @model_validator(mode="after")
    def _default_title(self) -> StateTile:
        if not self.title:
            self.title = self.table
        return self


class Tile(BaseModel):
    """A saved insight (historical), a live feed (events or a processor's stream) or a processor's
    state table (real-time) on the grid."""

    model_config = ConfigDict(extra="forbid")
    insight_id: int | None = None
    live: LiveTile | None = None
    state: StateTile | None = None
    x: int = Field(0, ge=0, le=11)
    y: int = Field(0, ge=0, le=1000)
    w: int = Field(6, ge=1, le=12)  # grid columns of 12
    h: int = Field(4, ge=1, le=40)  # grid rows of ROW_PX pixels (the page's grid)
    display: Literal["chart", "number"] = "chart"  # number: a trend's value with its change vs the previous period

    @model_validator(mode="after")
    def _one_kind(self) -> Tile:
        if sum(kind is not None for kind in (self.insight_id, self.live, self.state)) != 1:
            raise ValueError(
                "a tile has either insight_id or live (events, or a processor's stream) or state "
                "(a processor's state table), exactly one of them"
            )
        if self.display == "number" and self.insight_id is None:
            raise ValueError("display: 'number' is for saved insights (trends)")
        return self


@dataclass(frozen=True)
class ProcessorOutputs:
    """What the running processors write, to check the processor tiles of a dashboard against."""

    streams: Collection[str]
    state_tables: Collection[str]


def _processor_refs(tiles: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The streams and state tables that a saved board's tiles show."""
    refs: set[tuple[str, str]] = set()
    for tile in tiles:
        if (tile.get("live") or {}).get("stream"):
            refs.add(("stream", tile["live"]["stream"]))
        if tile.get("state"):
            refs.add(("state", tile["state"]["table"]))
    return refs


def _upgrade(body: dict[str, Any]) -> dict[str, Any]:
    """A stored body in the current shape (boards saved before stream and state tiles lack their keys)."""
    body.setdefault("date_from", None)
    body.setdefault("date_to", None)
    for tile in body.get("tiles") or []:
        tile.setdefault("state", None)
        tile.setdefault("display", "chart")
        if tile.get("live") is not None:
            tile["live"].setdefault("stream", None)
    return body


def check_processor_tiles(
    tiles: list[Tile], outputs: ProcessorOutputs, already: Collection[tuple[str, str]] = ()
) -> None:
    """A stream tile must name a stream some processor writes, a state tile a state table some processor
    serves (BoardError 400 naming the field). References in `already` (the saved board's) pass: a board
    stays editable while one of its processors is stopped."""
    for index, tile in enumerate(tiles):
        stream = tile.live.stream if tile.live is not None else None
        if stream is not None and ("stream", stream) not in already and stream not in outputs.streams:
            names = ", ".join(sorted(outputs.streams)) or "none yet"
            raise BoardError(f"tiles.{index}.live.stream: no processor writes the stream {stream!r} (streams: {names})")
        table = tile.state.table if tile.state is not None else None
        if table is not None and ("state", table) not in already and table not in outputs.state_tables:
            names = ", ".join(sorted(outputs.state_tables)) or "none yet"
            raise BoardError(
                f"tiles.{index}.state.table: no processor serves the state table {table!r} (state tables: {names})"
            )


class BoardRange(BaseModel):
    """A board's shared date range and filters: the last `last_days` days, or `date_from`..`date_to` (both
    given: this wins over last_days), or neither (each insight's own range); filters add to every tile's."""

    model_config = ConfigDict(extra="forbid")
    last_days: int | None = Field(None, ge=1, le=3650)
    date_from: datetime | None = None
    date_to: datetime | None = None
    filters: list[Filter] = []

    @model_validator(mode="after")
    def _custom_range(self) -> BoardRange:
        if (self.date_from is None) != (self.date_to is None):
            raise ValueError("date_from and date_to: give both (a custom range) or neither")
        if self.date_from is not None and self.date_to is not None and self.date_to <= self.date_from:
            raise ValueError("date_to: must be after date_from")
        return self


class DashboardBody(BoardRange):
    """A grid of saved insights with a shared date range, shared filters and auto-refresh."""

    tiles: list[Tile] = []
    refresh_seconds: int = Field(0, ge=0, le=86400)  # 0: no auto-refresh


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validation_errors(exc: ValidationError) -> str:
    """A pydantic error as one line naming each field."""
    return field_errors(exc, "body")


class BoardStore:
    """`db` is a SQLAlchemy URI or the path of a SQLite file."""

    def __init__(self, db: str | Path) -> None:
        self._engine = open_store(db, _METADATA)

    def _upsert(self, table: sa.Table, column: str, name: str, text: str, user: str, row_id: int | None) -> int:
        """Insert a row (row_id None) or update it; returns its id."""
        now = int(time.time() * 1000)
        values = {"name": name, column: text, "updated_ms": now}
        with self._engine.begin() as conn:
            if row_id is None:
                insert = table.insert().values(**values, created_by=user, created_ms=now).returning(table.c.id)
                return int(conn.execute(insert).scalar_one())
            updated = conn.execute(table.update().where(table.c.id == row_id).values(**values)).rowcount
        if updated == 0:
            raise BoardError(f"no {'saved insight' if table is _INSIGHTS else 'dashboard'} {row_id}", 404)
        return row_id

    # --- saved insights
    def save_insight(
        self, name: str, query: dict[str, Any], user: str, insight_id: int | None = None
    ) -> dict[str, Any]:
        if not name:
            raise BoardError("name: required")
        parse(query)  # a saved insight must be runnable; errors name the field
        insight_id = self._upsert(_INSIGHTS, "query", name, orjson.dumps(query).decode(), user, insight_id)
        return self.insight(insight_id)

    def _insights(self, insight_id: int | None) -> list[dict[str, Any]]:
        t = _INSIGHTS
        query = sa.select(t.c.id, t.c.name, t.c.query, t.c.created_by, t.c.updated_ms).order_by(t.c.id)
        if insight_id is not None:
            query = query.where(t.c.id == insight_id)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            {"id": r[0], "name": r[1], "query": orjson.loads(r[2]), "created_by": r[3], "updated_ms": r[4]}
            for r in rows
        ]

    def insight(self, insight_id: int) -> dict[str, Any]:
        found = self._insights(insight_id)
        if not found:
            raise BoardError(f"no saved insight {insight_id}", 404)
        return found[0]

    def insights(self) -> list[dict[str, Any]]:
        return self._insights(None)

    def delete_insight(self, insight_id: int) -> None:
        with self._engine.begin() as conn:
            deleted = conn.execute(_INSIGHTS.delete().where(_INSIGHTS.c.id == insight_id)).rowcount
        if deleted == 0:
            raise BoardError(f"no saved insight {insight_id}", 404)

    # --- dashboards
    def save_dashboard(
        self,
        name: str,
        body: dict[str, Any],
        user: str,
        dashboard_id: int | None = None,
        outputs: ProcessorOutputs | None = None,
    ) -> dict[str, Any]:
        """Validate and store; with `outputs`, stream and state tiles must name what processors write."""
        if not name:
            raise BoardError("name: required")
        try:
            parsed = DashboardBody.model_validate(body)
        except ValidationError as exc:
            raise BoardError(validation_errors(exc)) from None
        for tile in parsed.tiles:
            if tile.insight_id is not None:
                self.insight(tile.insight_id)  # must exist
        if outputs is not None:
            already = _processor_refs(self.dashboard(dashboard_id)["tiles"]) if dashboard_id is not None else set()
            check_processor_tiles(parsed.tiles, outputs, already)
        dashboard_id = self._upsert(_DASHBOARDS, "body", name, parsed.model_dump_json(), user, dashboard_id)
        return self.dashboard(dashboard_id)

    def dashboard(self, dashboard_id: int) -> dict[str, Any]:
        t = _DASHBOARDS
        query = sa.select(t.c.id, t.c.name, t.c.body, t.c.created_by, t.c.updated_ms).where(t.c.id == dashboard_id)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise BoardError(f"no dashboard {dashboard_id}", 404)
        body = _upgrade(orjson.loads(row[2]))
        return {"id": row[0], "name": row[1], **body, "created_by": row[3], "updated_ms": row[4]}

    def dashboards(self) -> list[dict[str, Any]]:
        t = _DASHBOARDS
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.name, t.c.updated_ms).order_by(t.c.id)).all()
        return [{"id": r[0], "name": r[1], "updated_ms": r[2]} for r in rows]

    def delete_dashboard(self, dashboard_id: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(_SHARES.delete().where(_SHARES.c.dashboard_id == dashboard_id))  # also without foreign keys
            deleted = conn.execute(_DASHBOARDS.delete().where(_DASHBOARDS.c.id == dashboard_id)).rowcount
            if deleted == 0:
                raise BoardError(f"no dashboard {dashboard_id}", 404)

    # --- share links
    def share(self, dashboard_id: int, user: str) -> str:
        self.dashboard(dashboard_id)
        token = secrets.token_urlsafe(32)
        row = {"token_hash": _digest(token), "prefix": token[:8], "dashboard_id": dashboard_id, "created_by": user}
        try:
            with self._engine.begin() as conn:
                conn.execute(_SHARES.insert().values(**row, created_ms=int(time.time() * 1000)))
        except sa.exc.IntegrityError:  # deleted meanwhile (by another server)
            raise BoardError(f"no dashboard {dashboard_id}", 404) from None
        return token

    def shares(self, dashboard_id: int) -> list[dict[str, Any]]:
        t = _SHARES
        query = (
            sa.select(t.c.prefix, t.c.created_by, t.c.created_ms)
            .where(t.c.dashboard_id == dashboard_id)
            .order_by(t.c.created_ms)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{"prefix": r[0], "created_by": r[1], "created_ms": r[2]} for r in rows]

    def revoke_share(self, dashboard_id: int, prefix: str) -> None:
        t = _SHARES
        with self._engine.begin() as conn:
            deleted = conn.execute(t.delete().where(t.c.dashboard_id == dashboard_id, t.c.prefix == prefix)).rowcount
        if deleted == 0:
            raise BoardError(f"no share link {prefix!r} on dashboard {dashboard_id}", 404)

    def shared_dashboard(self, token: str) -> int | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(_SHARES.c.dashboard_id).where(_SHARES.c.token_hash == _digest(token))).first()
        return int(row[0]) if row else None

    def close(self) -> None:
        self._engine.dispose()
