"""Model builds recorded in the catalog's database (`headwater_model_runs`; SQL view `model_runs`).

One row per finished build, ok or failed, written after the build (a build killed half-way leaves no row and no
commit). `inputs` keeps what the build read (the metadata version of each input table, and the model's definition
hash) so an `on_change` model is due when that changes; `failures` counts consecutive failed builds (0 when ok),
for the retry back-off.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from headwater.core.database import create_tables

METADATA = sa.MetaData()
RUNS = sa.Table(
    "headwater_model_runs",
    METADATA,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(63), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),  # manual | schedule | on_change
    sa.Column("started_at", sa.DateTime, nullable=False),  # UTC, naive
    sa.Column("finished_at", sa.DateTime, nullable=False),
    sa.Column("status", sa.String(8), nullable=False),  # ok | failed
    sa.Column("rows", sa.BigInteger),  # rows written by this build (incremental: the recomputed days)
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("snapshot_id", sa.BigInteger),  # the model table's Iceberg snapshot after the build
    sa.Column("inputs", sa.Text),  # JSON {"definition": hash, "tables": {name: metadata version}}
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Index("ix_headwater_model_runs_model", "model", "run_id"),
)
PUBLIC = ("run_id", "model", "trigger", "started_at", "finished_at", "status", "rows", "duration_s", "error",
          "snapshot_id")  # fmt: skip
VIEW_SQL = f"SELECT {', '.join(PUBLIC)} FROM headwater_model_runs"
"""The SELECT of the analysts' SQL view `model_runs` (query/catalog_views.py)."""


def _public(row: Any) -> dict[str, Any]:
    out = {name: getattr(row, name) for name in PUBLIC}
    out["inputs"] = orjson.loads(row.inputs) if row.inputs else {}
    out["failures"] = row.failures
    return out


class RunStore:
    """Reading and writing `headwater_model_runs` on the catalog's database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_tables(engine, METADATA)

    def record(self, run: dict[str, Any]) -> int:
        """Insert one finished build; return its run_id."""
        row = {**run, "inputs": orjson.dumps(run.get("inputs") or {}).decode()}
        with self.engine.begin() as conn:
            result = conn.execute(sa.insert(RUNS).values(**{k: v for k, v in row.items() if k in RUNS.c}))
            key = result.inserted_primary_key
        return int(key[0]) if key else 0

    def latest(self) -> dict[str, dict[str, Any]]:
        """The newest run of every model (one query)."""
        newest = sa.select(sa.func.max(RUNS.c.run_id)).group_by(RUNS.c.model).scalar_subquery()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(RUNS).where(RUNS.c.run_id.in_(newest))).all()
        return {row.model: _public(row) for row in rows}

    def history(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest runs first (of one model, or all)."""
        query = sa.select(RUNS).order_by(RUNS.c.run_id.desc()).limit(limit)
        if model:
            query = query.where(RUNS.c.model == model)
        with self.engine.connect() as conn:
            return [_public(row) for row in conn.execute(query)]

    def last_ok_run(self, model: str) -> dict[str, Any] | None:
        """The newest successful build of `model`."""
        query = sa.select(RUNS).where(RUNS.c.model == model, RUNS.c.status == "ok").order_by(RUNS.c.run_id.desc())
        with self.engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        return _public(row) if row is not None else None

    def last_ok(self) -> dict[str, datetime]:
        """When each model last built successfully (its started_at)."""
        query = sa.select(RUNS.c.model, sa.func.max(RUNS.c.started_at)).where(RUNS.c.status == "ok")
        with self.engine.connect() as conn:
            return {m: t for m, t in conn.execute(query.group_by(RUNS.c.model))}
