"""Tables of the catalog's database exposed to SQL, and `person_id` on `events`.

Small side tables (identities, person merges, tracking-plan violations…) live in the catalog's database
(SQLite or PostgreSQL), not in the lake. The query engine copies each into its DuckDB database and exposes it as
a view: `CATALOG_VIEWS` maps a view name to a SELECT on the catalog's database (an SQLAlchemy Core select, whose
column types give the view's, or SQL text). A view is loaded when a query first names it, and copied again when
a query names it and the copy is older than `refresh_s` (whole: these tables are small).

Identities are copied incrementally (rows whose `seq` grew since the last copy, everything again after a
deletion; `headwater.lake.identity`) into `hw_identities`, exposed as `persons` (id, person_id, linked_at,
reason). `events` itself stays a plain scan: a join in that view would cost every query (DuckDB does not drop
an unused join). A query that names a column `person_id` runs instead with the schema `hw_persons` first on its
search path, where a view `events` adds
`coalesce(p.person_id, coalesce(e.user_id, e.anonymous_id)) AS person_id`, joined on
`coalesce(user_id, anonymous_id)`: the user id's person when the user id is set, else the anonymous id's (an
anonymous id linked before its events carried a user id resolves too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import sqlalchemy as sa
import sqlglot
from sqlglot import exp

from headwater.core.database import create_tables
from headwater.lake.identity import IDENTITIES, PERSON_MERGES, IdentityMap, among
from headwater.lake.persons import PERSON_KEYS

log = logging.getLogger(__name__)
PERSON_SCHEMA = "hw_persons"
IDENTITY_TABLE = "hw_identities"
CATALOG_VIEWS: dict[str, sa.Select[Any] | str] = {
    "person_merges": sa.select(
        PERSON_MERGES.c.from_person,
        PERSON_MERGES.c.into_person,
        PERSON_MERGES.c.merged_at,
        PERSON_MERGES.c.reason,
        PERSON_MERGES.c.event_id,
    ),
    # tracking-plan violations counted by the lake writer (headwater.plan.violations), typed here without importing
    # `plan`; an empty view until the first violation
    "plan_violations": sa.select(
        sa.table(
            "headwater_plan_violations",
            sa.column("source", sa.String),
            sa.column("event", sa.String),
            sa.column("plan_version", sa.String),
            sa.column("path", sa.String),
            sa.column("rule", sa.String),
            sa.column("expected", sa.Text),
            sa.column("got", sa.Text),
            sa.column("count", sa.BigInteger),
            sa.column("first_seen", sa.DateTime),
            sa.column("last_seen", sa.DateTime),
        )
    ),
    # data-check results (headwater.models.checks); `check` and `table` renamed: reserved words in DuckDB
    "check_results": sa.select(
        (
            results := sa.table(
                "headwater_check_results",
                sa.column("run_id", sa.String),
                sa.column("check", sa.String),
                sa.column("table", sa.String),
                sa.column("kind", sa.String),
                sa.column("severity", sa.String),
                sa.column("status", sa.String),
                sa.column("failing", sa.BigInteger),
                sa.column("detail", sa.Text),
                sa.column("started_at", sa.DateTime),
                sa.column("duration_s", sa.Float),
            )
        ).c.run_id,
        results.c["check"].label("check_name"),
        results.c["table"].label("table_name"),
        results.c.kind,
        results.c.severity,
        results.c.status,
        results.c.failing,
        results.c.detail,
        results.c.started_at,
        results.c.duration_s,
    ),
    # SQL model builds (headwater.models.runs)
    "model_runs": sa.select(
        sa.table(
            "headwater_model_runs",
            sa.column("run_id", sa.Integer),
            sa.column("model", sa.String),
            sa.column("trigger", sa.String),
            sa.column("started_at", sa.DateTime),
            sa.column("finished_at", sa.DateTime),
            sa.column("status", sa.String),
            sa.column("rows", sa.BigInteger),
            sa.column("duration_s", sa.Float),
            sa.column("error", sa.Text),
            sa.column("snapshot_id", sa.BigInteger),
        )
    ),
    # alert transitions (headwater.alerts); times in unix seconds; webhook URLs left out (they may hold tokens)
    "alert_history": sa.select(
        sa.table(
            "headwater_alert_history",
            sa.column("id", sa.Integer),
            sa.column("at", sa.Float),
            sa.column("rule", sa.String),
            sa.column("labels", sa.Text),
            sa.column("state", sa.String),
            sa.column("severity", sa.String),
            sa.column("summary", sa.Text),
            sa.column("value", sa.Float),
            sa.column("since", sa.Float),
            sa.column("silenced", sa.Boolean),
            sa.column("delivery", sa.String),
            sa.column("attempts", sa.Integer),
            sa.column("delivered_at", sa.Float),
        )
    ),
}
"""View name -> its rows, a SELECT on the catalog's database. Other packages add theirs here (before a
QueryEngine starts); a typed select needs no import of the table's owner, e.g.
`sa.select(sa.table("headwater_plan_violations", sa.column("count", sa.BigInteger), ...))`, and reads as an
empty view of those types until its table exists."""
_IDENTITY_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("person_id", pa.string()),
        pa.field("linked_at", pa.timestamp("us")),
        pa.field("reason", pa.string()),
        pa.field("person_key", pa.int64()),
    ]
)
_IDENTITY_ROWS = sa.select(
    IDENTITIES.c.id, IDENTITIES.c.person_id, IDENTITIES.c.linked_at, IDENTITIES.c.reason, PERSON_KEYS.c.person_key
).select_from(IDENTITIES.outerjoin(PERSON_KEYS, PERSON_KEYS.c.person_id == IDENTITIES.c.id))
_PERSON_EVENTS = (
    f"CREATE OR REPLACE VIEW {PERSON_SCHEMA}.events AS SELECT e.*, "
    "coalesce(p.person_id, coalesce(e.user_id, e.anonymous_id)) AS person_id FROM main.events e "
    f"LEFT JOIN (SELECT id, person_id FROM main.{IDENTITY_TABLE} WHERE id <> person_id) p "
    "ON p.id = coalesce(e.user_id, e.anonymous_id)"
)
_UNLINKED_EVENTS = (  # no id is linked to another: every id is its own person, and the join is skipped
    f"CREATE OR REPLACE VIEW {PERSON_SCHEMA}.events AS SELECT e.*, "
    "coalesce(e.user_id, e.anonymous_id) AS person_id FROM main.events e"
)
_LINKED = f"SELECT EXISTS (SELECT 1 FROM {IDENTITY_TABLE} WHERE id <> person_id)"
_REMAP = (
    "SELECT person_key, rep FROM (SELECT person_key, min(person_key) OVER (PARTITION BY person_id) AS rep "
    f"FROM {IDENTITY_TABLE} WHERE person_key IS NOT NULL) WHERE person_key <> rep ORDER BY person_key"
)
ARROW_TYPES: list[tuple[type[Any], pa.DataType]] = [
    (sa.Boolean, pa.bool_()),
    (sa.Integer, pa.int64()),  # BigInteger and SmallInteger are Integers
    (sa.DateTime, pa.timestamp("us")),
    (sa.Date, pa.date32()),
    (sa.Float, pa.float64()),
    (sa.Numeric, pa.float64()),
    (sa.LargeBinary, pa.binary()),
]


class Remap(NamedTuple):
    """Person keys to map (`keys`, sorted) and what each maps to (`reps`), as of `key`."""

    key: tuple[Any, ...]
    keys: np.ndarray
    reps: np.ndarray


def arrow_type(kind: Any) -> pa.DataType:
    """The Arrow type of an SQLAlchemy column type (text for anything else)."""
    for sa_type, arrow in ARROW_TYPES:
        if isinstance(kind, sa_type):
            return arrow
    return pa.string()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class CatalogViews:
    """The catalog's tables copied into one DuckDB database, and the `person_id` view of `events`."""

    def __init__(
        self, db: duckdb.DuckDBPyConnection, engine: sa.Engine, views: dict[str, sa.Select[Any] | str] | None = None,
        refresh_s: float = 1.0,
    ) -> None:  # fmt: skip
        self.db = db
        self.engine = engine
        self.views = dict(CATALOG_VIEWS if views is None else views)
        self.refresh_s = refresh_s
        self.identities = IdentityMap(engine)
        create_tables(engine, PERSON_KEYS.metadata)  # joined to the identities for their keys
        self._lock = threading.Lock()
        self._loaded: dict[str, float] = {}  # view -> monotonic time of its last copy
        self._identity_state: tuple[int, int] | None = None  # (seq, resets) of the copy
        self._identity_checked = 0.0
        self._linked: bool | None = None  # whether `hw_persons.events` joins the identities
        self._remap: Remap | None = None
        schema = ", ".join(f"{_ident(f.name)} {_duck_type(f.type)}" for f in _IDENTITY_SCHEMA)
        db.execute(f"CREATE TABLE IF NOT EXISTS {IDENTITY_TABLE} ({schema})")
        db.execute(f"CREATE OR REPLACE VIEW persons AS SELECT id, person_id, linked_at, reason FROM {IDENTITY_TABLE}")
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {PERSON_SCHEMA}")

    def person_view(self, cursor: duckdb.DuckDBPyConnection | None = None) -> None:
        """(Re)create `hw_persons.events` (once `main.events` exists): with the join to the identities when an id
        is linked to another, else without."""
        cursor = cursor or self.db
        row = cursor.execute(_LINKED).fetchone()
        linked = bool(row and row[0])
        if linked != self._linked:
            cursor.execute(_PERSON_EVENTS if linked else _UNLINKED_EVENTS)
            self._linked = linked

    # --- what a query needs
    def needs(self, sql: str) -> tuple[set[str], bool]:
        """(catalog views the query names, whether it names a column `person_id`): a cheap text test first,
        then sqlglot to be sure (a statement sqlglot cannot parse keeps the text test's answer)."""
        lowered = sql.lower()
        names = {name for name in (*self.views, "persons") if name in lowered}
        person = "person_id" in lowered
        if not names and not person:
            return set(), False
        try:
            tree = sqlglot.parse_one(sql, read="duckdb")
        except sqlglot.errors.SqlglotError:
            return names, person
        tables = {table.name.lower() for table in tree.find_all(exp.Table)}
        columns = {column.name.lower() for column in tree.find_all(exp.Column)}
        return names & tables, "person_id" in columns

    def prepare(self, sql: str) -> bool:
        """Copy what `sql` needs; True when it must run with `person_id` on `events` (`search_path`)."""
        names, person = self.needs(sql)
        if person or "persons" in names:
            self.refresh_identities()
        for name in names - {"persons"}:
            self.refresh_view(name)
        return person

    # --- identities
    def refresh_identities(self, force: bool = False) -> tuple[int, int]:
        """Copy the identity rows changed since the last copy (at most every `refresh_s` unless `force`)."""
        with self._lock:
            now = time.monotonic()
            if not force and self._identity_state is not None and now - self._identity_checked < self.refresh_s:
                return self._identity_state
            state = self.identities.state()
            self._identity_checked = now
            if state == self._identity_state:
                return state
            old = self._identity_state
            query = _IDENTITY_ROWS
            full = old is None or old[1] != state[1]
            if not full:
                assert old is not None
                query = query.where(IDENTITIES.c.seq > old[0])
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            batch = _columns(rows, _IDENTITY_SCHEMA)
            cursor = self.db.cursor()
            try:
                cursor.register("hw_identity_batch", batch)
                cursor.begin()
                if full:
                    cursor.execute(f"DELETE FROM {IDENTITY_TABLE}")
                else:
                    cursor.execute(f"DELETE FROM {IDENTITY_TABLE} WHERE id IN (SELECT id FROM hw_identity_batch)")
                cursor.execute(f"INSERT INTO {IDENTITY_TABLE} SELECT * FROM hw_identity_batch")
                cursor.commit()
                self.person_view(cursor)
            finally:
                cursor.close()
            self._identity_state = state
            log.debug("identities: %d rows copied (%s)", len(rows), "all" if full else f"seq > {old}")
            return state

    def identity_version(self) -> str:
        """The identities queries see (checked at most every `refresh_s`): part of a result cache's key."""
        seq, resets = self.refresh_identities()
        return f"{resets}.{seq}"

    def person_remap(self, events_version: str = "") -> Remap:
        """The person key (`headwater.lake.persons`) of every linked id whose person is represented by another
        key (the smallest key among the person's ids), sorted, with that key. Kept per identities and
        `events_version`: an id is linked before the writer gives it a key (in the same flush), so ids copied
        without a key are looked up again when the events change."""
        state = self.refresh_identities()
        with self._lock:
            if self._remap is not None and self._remap.key == (state, events_version):
                return self._remap
            cursor = self.db.cursor()
            try:
                self._fill_keys(cursor)
                table = cursor.execute(_REMAP).to_arrow_table()
            finally:
                cursor.close()
            keys = table.column(0).to_numpy().astype(np.uint32)
            reps = table.column(1).to_numpy().astype(np.uint32)
            self._remap = Remap((state, events_version), keys, reps)
            return self._remap

    def _fill_keys(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """The keys of copied ids that had none, from the catalog's database (read only: never assigned here)."""
        missing = [
            str(r[0]) for r in cursor.execute(f"SELECT id FROM {IDENTITY_TABLE} WHERE person_key IS NULL").fetchall()
        ]
        if not missing:
            return
        with self.engine.connect() as conn:
            query = sa.select(PERSON_KEYS.c.person_id, PERSON_KEYS.c.person_key).where(
                among(conn, PERSON_KEYS.c.person_id, missing)
            )
            found = conn.execute(query).all()
        if not found:
            return
        batch = pa.table({"id": [str(r[0]) for r in found], "person_key": [int(r[1]) for r in found]})
        cursor.register("hw_key_batch", batch)
        table = IDENTITY_TABLE
        cursor.execute(f"UPDATE {table} SET person_key = b.person_key FROM hw_key_batch b WHERE {table}.id = b.id")
        cursor.unregister("hw_key_batch")

    # --- other catalog tables
    def refresh_view(self, name: str, force: bool = False) -> None:
        """Copy the catalog table behind view `name` (whole), unless copied less than `refresh_s` ago."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._loaded.get(name, -1e9) < self.refresh_s:
                return
            batch = self._read(name, self.views[name])
            if batch is None:
                return
            table = _ident(f"hw_catalog_{name}")
            cursor = self.db.cursor()
            try:
                cursor.register("hw_catalog_batch", batch)
                cursor.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM hw_catalog_batch")
                cursor.execute(f"CREATE OR REPLACE VIEW {_ident(name)} AS SELECT * FROM {table}")
            finally:
                cursor.close()
            self._loaded[name] = now

    def _read(self, name: str, select: sa.Select[Any] | str) -> pa.Table | None:
        """The rows of a view from the catalog's database; a typed select whose table is missing reads as
        empty, SQL text then gives None (no view)."""
        if isinstance(select, str):
            try:
                with self.engine.connect() as conn:
                    result = conn.execute(sa.text(select))
                    columns, rows = list(result.keys()), result.all()
            except sa.exc.DBAPIError as exc:
                log.warning("cannot read the catalog table of view %s: %s", name, exc)
                return None
            if not rows:
                return pa.table({c: pa.array([], pa.string()) for c in columns})
            return pa.Table.from_pylist([dict(zip(columns, r, strict=True)) for r in rows])
        schema = pa.schema([pa.field(c.name, arrow_type(c.type)) for c in select.selected_columns])
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select).all()
        except sa.exc.DBAPIError:
            with self.engine.connect() as conn:  # its table not created yet: an empty view; else the error
                inspector = sa.inspect(conn)
                tables = [t for t in select.get_final_froms() if isinstance(t, sa.TableClause)]
                if all(inspector.has_table(t.name) for t in tables):
                    raise
            log.debug("view %s: its catalog table does not exist yet", name)
            rows = []
        return _columns(rows, schema)


def _columns(rows: Sequence[Any], schema: pa.Schema) -> pa.Table:
    """Rows (tuples) as an Arrow table, column by column."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pa.table([pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema)


def _duck_type(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind):
        return "TIMESTAMP"
    if pa.types.is_integer(kind):
        return "BIGINT"
    return "VARCHAR"
