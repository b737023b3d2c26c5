"""Violations of tracking plans, counted: `headwater_plan_violations` in the catalog's database.

One row per (source, event, plan_version, path, rule) with the `expected` text, the last example `got`, a
`count`, and the first and last time seen (the events' `received_at`, UTC). The lake writer's enforcement adds
each batch's violations in one round trip (an INSERT ... ON CONFLICT DO UPDATE of the batch's rows, grouped
first; SQLite and PostgreSQL alike, and safe with several writers at once).

Counts are at-least-once: a batch the writer reads again after a crash between this update and its Iceberg
commit is counted again. They say how often and since when a plan is broken, not an exact tally (that is
`SELECT count(*) FROM events WHERE plan_violations IS NOT NULL`).

In SQL it is the view `plan_violations` (VIEW_SELECT, registered by the query engine).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from headwater.core.database import create_tables

_METADATA = sa.MetaData()
VIOLATIONS = sa.Table(
    "headwater_plan_violations",
    _METADATA,
    sa.Column("source", sa.String(255), primary_key=True),
    sa.Column("event", sa.String(255), primary_key=True),
    sa.Column("plan_version", sa.String(140), primary_key=True),
    sa.Column("path", sa.String(500), primary_key=True),
    sa.Column("rule", sa.String(64), primary_key=True),
    sa.Column("expected", sa.Text, nullable=False, default=""),
    sa.Column("got", sa.Text, nullable=False, default=""),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("first_seen", sa.DateTime, nullable=False),
    sa.Column("last_seen", sa.DateTime, nullable=False),
)
KEY = ("source", "event", "plan_version", "path", "rule")
VIEW_SELECT = sa.select(
    VIOLATIONS.c.source, VIOLATIONS.c.event, VIOLATIONS.c.plan_version, VIOLATIONS.c.path, VIOLATIONS.c.rule,
    VIOLATIONS.c.expected, VIOLATIONS.c.got, VIOLATIONS.c["count"], VIOLATIONS.c.first_seen, VIOLATIONS.c.last_seen,
)  # fmt: skip
"""The rows of the SQL view `plan_violations`."""
_JSON_TYPES = {'"': "string", "{": "object", "[": "array", "t": "boolean", "f": "boolean", "n": "null"}
_ROWS_PER_STATEMENT = 500  # 10 parameters a row: under SQLite's 32,766
_LIMITS = {"source": 255, "event": 255, "plan_version": 140, "path": 500, "rule": 64}


def create_violation_tables(engine: sa.Engine) -> None:
    create_tables(engine, _METADATA)


class ViolationCounts:
    """Adds batches of violation rows to `headwater_plan_violations`."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_violation_tables(engine)

    def add(self, rows: pa.Table, personal: Collection[tuple[str, str]] = ()) -> int:
        """Count `rows` (columns source, event, plan_version, path, rule, expected, got, received_at: one per
        violation seen); returns the number of keys updated.

        The example `got` is kept for the plan's own checks (a wrong type, a value out of its enum...), but not
        for what the plan says nothing about (properties an object closed by `additionalProperties: false` does
        not declare: their JSON type instead; undeclared ones have none) nor for the
        properties `personal` names ((plan_version, path) pairs: `x-personal`): this table outlives the events,
        and privacy deletions do not read it."""
        if rows.num_rows == 0:
            return 0
        grouped = rows.group_by(list(KEY), use_threads=False).aggregate(
            [
                ("expected", "last"), ("got", "last"), ("received_at", "min"), ("received_at", "max"),
                ("rule", "count"),
            ]
        )  # fmt: skip
        values = [
            {
                **{k: _cut(r[k] or "", _LIMITS[k]) for k in KEY},
                "expected": r["expected_last"] or "", "got": _example(r, personal), "count": r["rule_count"],
                "first_seen": _naive(r["received_at_min"]), "last_seen": _naive(r["received_at_max"]),
            }
            for r in grouped.to_pylist()
        ]  # fmt: skip
        with self.engine.begin() as conn:
            for start in range(0, len(values), _ROWS_PER_STATEMENT):
                conn.execute(self._upsert(conn, values[start : start + _ROWS_PER_STATEMENT]))
        return len(values)

    def _upsert(self, conn: sa.Connection, values: list[dict[str, Any]]) -> Any:
        module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
        insert = module.insert(VIOLATIONS).values(values)
        new, old = insert.excluded, VIOLATIONS.c
        return insert.on_conflict_do_update(
            index_elements=list(KEY),
            set_={
                "count": old["count"] + new["count"],
                "expected": new.expected,
                "got": sa.case((new.last_seen >= old.last_seen, new.got), else_=old.got),
                "first_seen": sa.case((new.first_seen < old.first_seen, new.first_seen), else_=old.first_seen),
                "last_seen": sa.case((new.last_seen > old.last_seen, new.last_seen), else_=old.last_seen),
            },
        )

    def read(self, source: str | None = None, event: str | None = None) -> list[dict[str, Any]]:
        """The counted rows (newest first), for a source and event when given."""
        query = VIEW_SELECT.order_by(VIOLATIONS.c.last_seen.desc())
        if source is not None:
            query = query.where(VIOLATIONS.c.source == source)
        if event is not None:
            query = query.where(VIOLATIONS.c.event == event)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


def _example(row: dict[str, Any], personal: Collection[tuple[str, str]]) -> str:
    got = row["got_last"] or ""
    if personal and (row["plan_version"], re.sub(r"\[\d+\]", "[]", row["path"])) in personal:
        return "(personal data)"
    if row["rule"] == "additionalProperties":  # its type, not the value
        return _JSON_TYPES.get(got[:1], "number") if got else ""
    return str(got)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _naive(value: datetime) -> datetime:
    """A UTC time without zone (as every Headwater timestamp column)."""
    return value.replace(tzinfo=None)
