"""Sandboxed DuckDB over the Iceberg tables.

File lists come from pyiceberg's scan planning (cached per table metadata version) and are
exposed as views `events` and `quarantine`, and one view per other table of the `headwater`
namespace (processor outputs such as `processor_late`), reading its files by column name since
their schema grows as new fields appear. Small tables of the catalog's database (identities, person merges,
plan violations) are copied in and exposed as views, and a query that names `person_id` sees `events` with that
column (`headwater.query.catalog_views`). The database then has external access disabled
except for the warehouse directory, its configuration locked, and every statement is checked to
be a single SELECT before it runs; a timer interrupts queries past the time limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
import sqlalchemy as sa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, Table

from headwater.core import metrics
from headwater.core.errors import QueryError
from headwater.core.settings import Settings
from headwater.enrich.common import ENRICHED_COLUMNS
from headwater.lake.coordination import open_engine
from headwater.lake.rollups import RollupStore
from headwater.lake.shredding import Added, empty_exprs, shreds, view_sql
from headwater.lake.tables import (
    JSON_COLUMNS,
    NAMESPACE,
    SPECS,
    close_catalog,
    ensure_tables,
    open_catalog,
    warehouse_uri,
)
from headwater.query.catalog_views import PERSON_SCHEMA, CatalogViews
from headwater.query.fast_path import LRU, Bucket, FastPath, remap_persons
from headwater.query.shapes import Unsupported

log = logging.getLogger(__name__)
T = TypeVar("T")
_LOCATIONS = sa.text(
    "SELECT table_name, metadata_location FROM iceberg_tables "
    "WHERE catalog_name = :catalog AND table_namespace = :namespace"
)
DUCK_TYPES = {"string": "VARCHAR", "timestamp": "TIMESTAMP", "int": "INTEGER", "long": "BIGINT"}
# the columns the writer's stages add to `events` when they first run (enrichment, plans): until then the view
# gives them as NULL, so a breakdown by `country` without a GeoIP database answers "no value" instead of failing
STAGE_COLUMNS = {**dict.fromkeys((*ENRICHED_COLUMNS, "plan_version"), "VARCHAR"), "is_bot": "BOOLEAN"}
OUTPUT_TYPES = {
    **DUCK_TYPES, "timestamptz": "TIMESTAMPTZ", "double": "DOUBLE", "float": "FLOAT", "boolean": "BOOLEAN",
    "date": "DATE", "binary": "BLOB",
}  # fmt: skip


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False
    elapsed_ms: float = 0.0
    types: list[str] = field(default_factory=list)
    answered_by: str = "raw"  # raw | rollup | metadata: which path answered (headwater.query.fast_path)

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "types": self.types,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "elapsed_ms": round(self.elapsed_ms, 2),
            "answered_by": self.answered_by,
        }


def added_columns(fixed: Schema, current: Schema) -> list[Added]:
    """The columns stages added to `events` (not fixed, not shredded), with the SQL type the view gives them."""
    known = {f.name for f in fixed.columns}
    for shred in shreds(current).values():
        known.update(n for n in (shred.text, shred.number) if n)
    return [
        Added(f.name, f.field_id, OUTPUT_TYPES.get(str(f.field_type), "VARCHAR"))
        for f in current.columns
        if f.name not in known and f.field_type.is_primitive
    ]


def _local_path(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme in ("", "file") else uri


class QueryEngine:
    """One DuckDB database per engine; each query runs on its own cursor."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self._owns_catalog = catalog is None
        self.catalog = catalog or open_catalog(settings)
        ensure_tables(self.catalog)
        config: dict[str, Any] = {"memory_limit": settings.query_memory_limit}
        if settings.query_threads:
            config["threads"] = settings.query_threads
        self._db = duckdb.connect(":memory:", config=config)
        self._db.execute("SET TimeZone = 'UTC'")
        self._db.execute("SET enable_object_cache = true")
        warehouse = _local_path(warehouse_uri(settings)).rstrip("/") + "/"
        if urlparse(warehouse).scheme in ("s3", "s3a"):
            _open_object_store(self._db, settings)
        self._db.execute("SET allowed_directories = [?]", [warehouse])
        self._db.execute("SET enable_external_access = false")
        self._db.execute("SET autoinstall_known_extensions = false")
        self._db.execute("SET autoload_known_extensions = false")
        self._db.execute("SET lock_configuration = true")
        self._views: dict[str, str] = {}  # table -> metadata location the view was built from
        self._tasks: list[FileScanTask] = []  # the files the `events` view reads
        self._seen: dict[str, str] | None = None  # metadata locations at the last refresh
        self._store = open_engine(settings.effective_catalog_uri) if settings.query_fast_path else None
        self.fast = FastPath(RollupStore(self._store, settings.rollup_cache_mb << 20)) if self._store else None
        self._side_db = self._store or open_engine(settings.effective_catalog_uri)
        self.catalog_views = CatalogViews(self._db, self._side_db)  # side tables of the catalog's database
        self._stitched: LRU[tuple[Any, ...], dict[tuple[int, object], Bucket]] = LRU(16)  # day_buckets(persons)
        self._lock = threading.Lock()
        self.refresh()
        self.catalog_views.person_view()

    def _load(self, name: str) -> Table | None:
        try:
            return self.catalog.load_table(f"headwater.{name}")
        except NoSuchTableError:
            return None

    def _locations(self) -> dict[str, str] | None:
        """Every table's current metadata location in one catalog query (None: not an SQL catalog)."""
        engine = getattr(self.catalog, "engine", None)
        if engine is None:
            return None
        with engine.connect() as conn:
            rows = conn.execute(_LOCATIONS, {"catalog": self.catalog.name, "namespace": NAMESPACE})
            return {str(name): str(location) for name, location in rows if location}

    def refresh(self) -> None:
        """Rebuild a view when its table has a new metadata version (checked with one catalog query;
        only changed tables are loaded)."""
        with self._lock:
            locations = self._locations()
            if locations is not None and locations == self._seen:
                return
            for name in SPECS:
                if locations is not None and self._views.get(name) == locations.get(name):
                    continue
                table = self._load(name)
                if table is None or self._views.get(name) == table.metadata_location:
                    continue
                tasks = list(table.scan().plan_files())
                self._db.execute(self._view_sql(name, table, tasks))
                self._views[name] = table.metadata_location
                if name == "events":
                    self._tasks = tasks
            self._refresh_outputs(locations)
            self._seen = locations

    def _refresh_outputs(self, locations: dict[str, str] | None) -> None:
        """Views over the namespace's other tables: created, rebuilt on a new version, dropped when gone."""
        if locations is not None:
            listed = set(locations) - set(SPECS)
        else:
            try:
                listed = {ident[-1] for ident in self.catalog.list_tables(NAMESPACE)} - set(SPECS)
            except NoSuchNamespaceError:
                listed = set()
        for name in [n for n in self._views if n not in SPECS and n not in listed]:
            self._db.execute(f"DROP VIEW IF EXISTS {_ident(name)}")
            del self._views[name]
        for name in sorted(listed):
            if locations is not None and self._views.get(name) == locations.get(name):
                continue
            table = self._load(name)
            if table is None or self._views.get(name) == table.metadata_location:
                continue
            try:
                self._db.execute(self._output_view_sql(name, table))
            except duckdb.Error as exc:  # one unreadable table must not stop queries of the others
                log.warning("cannot expose table %s to SQL: %s", name, _clean(exc))
                continue
            self._views[name] = table.metadata_location

    def _output_view_sql(self, name: str, table: Table) -> str:
        files = [_local_path(task.file.file_path) for task in table.scan().plan_files()]
        if not files:
            empty = ", ".join(
                f"CAST(NULL AS {OUTPUT_TYPES.get(str(c.field_type), 'VARCHAR')}) AS {_ident(c.name)}"
                for c in table.schema().columns
            )
            return f"CREATE OR REPLACE VIEW {_ident(name)} AS SELECT {empty} WHERE false"
        listed = ", ".join(_quote(f) for f in files)  # the folders are named like hive partitions: ignore that
        source = f"read_parquet([{listed}], union_by_name = true, hive_partitioning = false)"
        return f"CREATE OR REPLACE VIEW {_ident(name)} AS SELECT * FROM {source}"

    def _refresh_or_refuse(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # the catalog database or the storage is away
            log.warning("cannot refresh the tables: %s", exc)
            raise QueryError(
                f"the lake's catalog or storage is unavailable, retry shortly: {_clean(exc)[:300]}", 503
            ) from exc

    def data_version(self) -> tuple[str, ...]:
        """The table versions queries currently see (refreshed first), and the identities': a cache key for
        results."""
        self.refresh()
        identities = self._side_call(self.catalog_views.identity_version)
        with self._lock:
            return (*(self._views.get(name, "") for name in SPECS), identities)

    def _side_call(self, call: Any, *args: Any) -> Any:
        """A call that reads the catalog's database; its absence is a 503 as for the tables."""
        try:
            return call(*args)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("cannot read the catalog's side tables: %s", exc)
            raise QueryError(f"the catalog database is unavailable, retry shortly: {_clean(exc)[:300]}", 503) from exc

    def _view_sql(self, name: str, table: Table, tasks: list[FileScanTask]) -> str:
        """The view of `events` / `quarantine`: the fixed columns, typed, plus the shredded property
        columns of `events` (`headwater.lake.shredding`: read where a file has them, else computed)."""
        schema = SPECS[name][0]
        json_columns = JSON_COLUMNS.get(name, ())
        columns = []
        for column in schema.columns:
            duck = DUCK_TYPES[str(column.field_type)]
            expr = f'CAST("{column.name}" AS {duck})'
            if column.name in json_columns:
                expr = f'CAST("{column.name}" AS JSON)'
            columns.append(f'{expr} AS "{column.name}"')
        added = added_columns(schema, table.schema()) if name == "events" else []
        present = {f.name for f in table.schema().columns} if name == "events" else set(STAGE_COLUMNS)
        absent = [f'CAST(NULL AS {t}) AS "{c}"' for c, t in STAGE_COLUMNS.items() if c not in present]
        columns += absent
        shredded = name == "events" and (bool(shreds(table.schema())) or bool(added))
        if not tasks:
            empty = [
                f'CAST(NULL AS {"JSON" if c.name in json_columns else DUCK_TYPES[str(c.field_type)]}) AS "{c.name}"'
                for c in schema.columns
            ]
            empty += absent
            if shredded:
                empty += empty_exprs(table.schema(), added)
            return f'CREATE OR REPLACE VIEW "{name}" AS SELECT {", ".join(empty)} WHERE false'
        if shredded:
            files = [(_local_path(t.file.file_path), t.file) for t in tasks]
            return f'CREATE OR REPLACE VIEW "{name}" AS {view_sql(table.schema(), files, columns, added)}'
        listed = ", ".join(_quote(_local_path(t.file.file_path)) for t in tasks)
        return f'CREATE OR REPLACE VIEW "{name}" AS SELECT {", ".join(columns)} FROM read_parquet([{listed}])'

    def check(self, sql: str) -> None:
        """Refuse anything but exactly one SELECT."""
        if not sql or not sql.strip():
            raise QueryError("sql: empty query")
        try:
            statements = self._db.cursor().extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryError(f"sql: {_clean(exc)}") from None
        if len(statements) != 1:
            raise QueryError(f"sql: send exactly one statement, got {len(statements)}")
        kind = statements[0].type
        if kind != duckdb.StatementType.SELECT:
            raise QueryError(f"sql: only SELECT queries are allowed, got {kind.name}", 403)

    def execute(self, sql: str, max_rows: int | None = None, timeout_s: float | None = None) -> QueryResult:
        started = time.perf_counter()
        try:
            self.check(sql)
            self._refresh_or_refuse()
            limit = max_rows or self.settings.query_max_rows
            persons = bool(self._side_call(self.catalog_views.prepare, sql))
            timeout = timeout_s or self.settings.query_timeout_s
            result = (None if persons else self._fast(sql, limit)) or self._run(sql, limit, timeout, persons)
        except QueryError as exc:
            metrics.QUERY_ERRORS.labels("refused" if exc.status == 403 else "invalid").inc()
            raise
        result.elapsed_ms = (time.perf_counter() - started) * 1000
        metrics.QUERY_SECONDS.observe(result.elapsed_ms / 1000)
        return result

    def arrow(self, sql: str, timeout_s: float | None = None) -> pa.Table:
        """The whole answer of one SELECT as an Arrow table (model builds and data checks; no row limit)."""
        self.check(sql)
        self._refresh_or_refuse()
        persons = bool(self._side_call(self.catalog_views.prepare, sql))
        timeout = timeout_s or self.settings.query_timeout_s
        return self._on_cursor(sql, timeout, persons, lambda relation: relation.to_arrow_table())

    def _events_snapshot(self) -> tuple[list[FileScanTask], str]:
        """The files the `events` view reads and the table version they belong to."""
        with self._lock:
            return self._tasks, self._views.get("events", "")

    def _fast(self, sql: str, max_rows: int) -> QueryResult | None:
        """The answer from rollups or metadata when the query has a shape they hold (None: run it raw)."""
        if self.fast is None:
            return None
        tasks, version = self._events_snapshot()
        cursor = self._db.cursor()
        try:
            answer = self.fast.answer(cursor, sql, version, tasks, max_rows)
        except duckdb.Error as exc:  # e.g. the query does not bind: the raw path reports it
            log.debug("fast path skipped: %s", exc)
            return None
        finally:
            cursor.close()
        if answer is None:
            return None
        rows = [list(r) for r in answer.rows[:max_rows]]
        metrics.QUERY_FAST_PATH.labels(answer.answered_by).inc()
        return QueryResult(answer.columns, rows, len(answer.rows) > max_rows, types=answer.types,
                           answered_by=answer.answered_by)  # fmt: skip

    def day_buckets(self, events: set[str], persons: bool = False) -> dict[tuple[int, object], Bucket] | None:
        """Rows and people per (day, event) for `events` over the whole `events` table, from rollups (as
        of the version queries see now); None when rollups cannot answer (the caller scans raw data).
        `persons`: people are persons (`person_id`: the ids' keys mapped through the identities), not ids."""
        if self.fast is None:
            return None
        self._refresh_or_refuse()
        tasks, version = self._events_snapshot()
        try:
            found = self.fast.buckets(tasks, "day", by_event=True, people=True, events=events, version=version)
        except Unsupported:
            return None
        if not persons:
            return found
        remap = self._side_call(self.catalog_views.person_remap, version)
        key = (remap.key, frozenset(events))
        stitched = self._stitched.get(key)
        if stitched is None:
            stitched = remap_persons(found, remap.keys, remap.reps)
            self._stitched.put(key, stitched)
        return stitched

    def _run(self, sql: str, max_rows: int, timeout_s: float, persons: bool = False) -> QueryResult:
        """Run `sql`; `persons`: with `events` seen through the view that adds `person_id`."""

        def fetch(relation: duckdb.DuckDBPyConnection) -> tuple[list[str], list[str], list[Any]]:
            columns = [d[0] for d in relation.description or []]
            types = [str(d[1]) for d in relation.description or []]
            return columns, types, relation.fetchmany(max_rows + 1)

        columns, types, rows = self._on_cursor(sql, timeout_s, persons, fetch)
        truncated = len(rows) > max_rows
        return QueryResult(columns, [list(r) for r in rows[:max_rows]], truncated, types=types)

    def _on_cursor(
        self, sql: str, timeout_s: float, persons: bool, fetch: Callable[[duckdb.DuckDBPyConnection], T]
    ) -> T:
        """`fetch` of `sql` run on a cursor of its own, cancelled after `timeout_s`; DuckDB's errors as QueryError."""
        cursor = self._db.cursor()
        if persons:
            cursor.execute(f"SET search_path = '{PERSON_SCHEMA},main'")
        timer = threading.Timer(timeout_s, cursor.interrupt)
        timer.start()
        try:
            return fetch(cursor.execute(sql))
        except duckdb.InterruptException:
            metrics.QUERY_ERRORS.labels("timeout").inc()
            raise QueryError(f"query cancelled after the {timeout_s:g} s time limit", 408) from None
        except duckdb.PermissionException as exc:
            raise QueryError(f"not allowed: {_clean(exc)}", 403) from None
        except duckdb.Error as exc:
            raise QueryError(_clean(exc)) from None
        finally:
            timer.cancel()
            cursor.close()

    def close(self) -> None:
        self._db.close()
        self._side_db.dispose()
        if self._owns_catalog:
            close_catalog(self.catalog)


def _open_object_store(db: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Load httpfs from its PyPI package (no network) and give it the warehouse's S3 credentials."""
    import duckdb_extension_httpfs  # the extension binary ships in this package

    root = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    db.execute(f"LOAD '{root / 'httpfs.duckdb_extension'}'")
    db.execute("SET enable_http_metadata_cache = true")  # files never change once written (Iceberg)
    parts = ["TYPE s3", f"REGION {_quote(settings.s3_region)}", "URL_STYLE 'path'"]
    if settings.s3_access_key_id:
        parts += [f"KEY_ID {_quote(settings.s3_access_key_id)}", f"SECRET {_quote(settings.s3_secret_access_key)}"]
    else:
        parts.append("PROVIDER credential_chain")
    if settings.s3_endpoint:
        endpoint = urlparse(settings.s3_endpoint)
        parts += [f"ENDPOINT {_quote(endpoint.netloc)}", f"USE_SSL {str(endpoint.scheme == 'https').lower()}"]
    body = ", ".join(parts)
    db.execute(f"CREATE SECRET headwater_warehouse ({body})")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _clean(exc: Exception) -> str:
    return str(exc).strip().replace("\n", " ")
