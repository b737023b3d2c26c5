"""What BI tools and psql ask about the database: answered from a small DuckDB of empty look-alike tables.

The query engine's tables are views (DuckDB's `pg_class` says `relkind = 'v'`), and `psql`'s `\\dt`, Metabase and
Superset list tables (`relkind = 'r'`). So a query that reads only catalog relations (`pg_catalog.*`,
`information_schema.*`, unqualified `pg_*`) or no relation at all (`SELECT version()`) runs on a separate in-memory
DuckDB holding one empty table per engine table, with the same columns and types; every other query goes to the
sandboxed query engine. Schema `hwpg` (first on that database's search path) adds what DuckDB's `pg_catalog` lacks
or says differently: a PostgreSQL `version()`, `current_schema()` = `main`, `pg_namespace` without `hwpg`, and the
catalogs psql reads that DuckDB does not have; there `~` and `!~` search (as in PostgreSQL) instead of matching
the whole text (DuckDB), for patterns such as Metabase's `nspname !~ '^information_schema|pg_'`. The catalog
database has external access disabled and its configuration locked, like the engine's, and it holds no data.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import duckdb
import orjson

from headwater import __version__
from headwater.core.errors import QueryError
from headwater.query.engine import QueryEngine, QueryResult

SERVER_VERSION = "14.0"
VERSION_TEXT = f"PostgreSQL {SERVER_VERSION} (Headwater {__version__}; DuckDB {duckdb.__version__})"
CATALOG_SCHEMAS = {"pg_catalog", "information_schema", "hwpg"}
_COLUMNS = (
    "SELECT table_name, column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
)
_PG_TYPES = [  # DuckDB's format_type name, PostgreSQL OID, PostgreSQL's format_type
    ("int2", 21, "smallint"), ("int4", 23, "integer"), ("int8", 20, "bigint"), ("varchar", 25, "text"),
    ("timestamp", 1114, "timestamp without time zone"), ("timestamptz", 1184, "timestamp with time zone"),
    ("float4", 700, "real"), ("float8", 701, "double precision"), ("bool", 16, "boolean"), ("date", 1082, "date"),
    ("time", 1083, "time without time zone"), ("bytea", 17, "bytea"), ("uuid", 2950, "uuid"),
    ("interval", 1186, "interval"), ("list", 1009, "text[]"), ("json", 114, "json"),
]  # fmt: skip
_TO_OID = " ".join(f"WHEN '{duck}' THEN {oid}" for duck, oid, _ in _PG_TYPES)
_OID_NAME = " ".join(f"WHEN {oid} THEN '{name}'" for _, oid, name in _PG_TYPES)
_OVERRIDES = {
    "pg_attribute": "SELECT * REPLACE (CASE WHEN pg_catalog.format_type(atttypid, atttypmod) LIKE 'numeric%' THEN 1700 "
    f"ELSE CASE pg_catalog.format_type(atttypid, atttypmod) {_TO_OID} ELSE 25 END END AS atttypid) "
    "FROM pg_catalog.pg_attribute",
    "pg_namespace": "SELECT * FROM pg_catalog.pg_namespace WHERE nspname <> 'hwpg'",
    "pg_class": "SELECT *, false AS relforcerowsecurity, NULL::VARCHAR[] AS reloptions, NULL::VARCHAR[] AS relacl "
    "FROM pg_catalog.pg_class WHERE relnamespace NOT IN (SELECT oid FROM pg_catalog.pg_namespace "
    "WHERE nspname = 'hwpg')",
    "pg_roles": "SELECT 10::BIGINT AS oid, current_user AS rolname, true AS rolsuper, false AS rolinherit, "
    "false AS rolcreaterole, false AS rolcreatedb, true AS rolcanlogin, false AS rolreplication, "
    "-1 AS rolconnlimit, NULL::VARCHAR AS rolvaliduntil, false AS rolbypassrls, NULL::VARCHAR[] AS rolconfig",
    "pg_user": "SELECT current_user AS usename, 10::BIGINT AS usesysid, false AS usecreatedb, true AS usesuper",
    "pg_description": "SELECT 0::BIGINT AS objoid, 0::BIGINT AS classoid, 0 AS objsubid, ''::VARCHAR AS description "
    "WHERE false",
    "pg_collation": "SELECT 0::BIGINT AS oid, 'default'::VARCHAR AS collname, 0::BIGINT AS collnamespace WHERE false",
    "pg_inherits": "SELECT 0::BIGINT AS inhrelid, 0::BIGINT AS inhparent, 0 AS inhseqno, false AS inhdetachpending "
    "WHERE false",
    "pg_policy": "SELECT 0::BIGINT AS oid, ''::VARCHAR AS polname, 0::BIGINT AS polrelid, '' AS polcmd, "
    "true AS polpermissive, NULL::BIGINT[] AS polroles, '' AS polqual, '' AS polwithcheck WHERE false",
    "pg_statistic_ext": "SELECT 0::BIGINT AS oid, 0::BIGINT AS stxrelid, '' AS stxname, 0::BIGINT AS stxnamespace, "
    "[]::INTEGER[] AS stxkeys, []::VARCHAR[] AS stxkind, -1 AS stxstattarget WHERE false",
    "pg_publication": "SELECT 0::BIGINT AS oid, '' AS pubname, false AS puballtables WHERE false",
    "pg_publication_rel": "SELECT 0::BIGINT AS prpubid, 0::BIGINT AS prrelid WHERE false",
    "pg_publication_namespace": "SELECT 0::BIGINT AS pnpubid, 0::BIGINT AS pnnspid WHERE false",
    "pg_trigger": "SELECT 0::BIGINT AS oid, 0::BIGINT AS tgrelid, '' AS tgname, false AS tgisinternal, "
    "0::BIGINT AS tgparentid, '' AS tgenabled WHERE false",
    "pg_opclass": "SELECT 0::BIGINT AS oid, '' AS opcname, 0::BIGINT AS opcnamespace, true AS opcdefault, "
    "0::BIGINT AS opcmethod WHERE false",
    "pg_stat_user_tables": "SELECT 0::BIGINT AS relid, '' AS schemaname, '' AS relname, 0::BIGINT AS n_live_tup "
    "WHERE false",
    "pg_rewrite": "SELECT 0::BIGINT AS oid, '' AS rulename, 0::BIGINT AS ev_class WHERE false",
    "pg_foreign_table": "SELECT 0::BIGINT AS ftrelid, 0::BIGINT AS ftserver WHERE false",
    "pg_partitioned_table": "SELECT 0::BIGINT AS partrelid, '' AS partstrat WHERE false",
}
_MACROS = {
    "regexp_full_match": "(text, pattern) AS regexp_matches(text, pattern)",  # `~` matches anywhere, as in PG
    "format_type": f"(type_oid, modifier) AS CASE type_oid {_OID_NAME} WHEN 1700 THEN 'numeric' ELSE 'text' END",
    "version": f"() AS '{VERSION_TEXT}'",
    "current_schema": "() AS 'main'",
    "current_schemas": "(implicit) AS CASE WHEN implicit THEN ['pg_catalog', 'main'] ELSE ['main'] END",
    "pg_get_userbyid": "(id) AS current_user",
    "obj_description": "(id, kind := NULL) AS NULL::VARCHAR",
    "col_description": "(id, column_number) AS NULL::VARCHAR",
    "pg_get_statisticsobjdef_columns": "(id) AS NULL::VARCHAR",
    "pg_encoding_to_char": "(id) AS 'UTF8'",
    "pg_get_expr": "(node, relation, pretty := false) AS NULL::VARCHAR",
    "pg_relation_is_publishable": "(relation) AS false",
    "pg_get_serial_sequence": "(relation, column_name) AS NULL::VARCHAR",
    "to_regtype": "(wanted) AS (SELECT min(oid) FROM pg_catalog.pg_type WHERE typname = wanted)",
    "to_regclass": "(wanted) AS (SELECT min(oid) FROM pg_catalog.pg_class "
    "WHERE relname = trim(split_part(wanted, '.', -1), '\"'))",
    "pg_get_indexdef": "(index, column_number := 0, pretty := false) AS NULL::VARCHAR",
    "pg_get_constraintdef": "(constraint_oid, pretty := false) AS NULL::VARCHAR",
    "pg_get_triggerdef": "(trigger, pretty := false) AS NULL::VARCHAR",
    "pg_get_viewdef": "(view_oid, pretty := false) AS NULL::VARCHAR",
    "pg_total_relation_size": "(relation) AS 0::BIGINT",
    "pg_relation_size": "(relation) AS 0::BIGINT",
    "has_schema_privilege": "(a, b, c := NULL) AS true",
    "has_database_privilege": "(a, b, c := NULL) AS true",
}
_OID_TYPES = ("oid", "regclass", "regtype", "regproc", "regprocedure", "regnamespace", "regrole")
_QUALIFIED_CALL = re.compile(r"\bpg_catalog\s*\.\s*(\w+)\s*\(", re.I)
_QUALIFIED = re.compile(r"\bpg_catalog\s*\.\s*(\w+)\b(?!\s*\()", re.I)


def _walk(node: Any, refs: list[dict[str, Any]], ctes: set[str]) -> None:
    if isinstance(node, dict):
        if node.get("type") in ("BASE_TABLE", "TABLE_FUNCTION"):
            refs.append(node)
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                ctes.add(str(entry.get("key", "")).lower())
        for value in node.values():
            _walk(value, refs, ctes)
    elif isinstance(node, list):
        for value in node:
            _walk(value, refs, ctes)


class CatalogDB:
    """The look-alike catalog; `sync()` copies the engine's table shapes when its data version changes."""

    def __init__(self, engine: QueryEngine) -> None:
        self.engine = engine
        self._db = duckdb.connect(":memory:")
        self._db.execute("SET TimeZone = 'UTC'")
        self._db.execute("CREATE SCHEMA hwpg")
        for name in _OID_TYPES:  # `CAST(x AS regclass)` as SQLAlchemy writes it: OIDs are numbers here
            self._db.execute(f"CREATE TYPE hwpg.{name} AS BIGINT")
        for name, body in _MACROS.items():
            self._db.execute(f"CREATE MACRO hwpg.{name}{body}")
        for name, select in _OVERRIDES.items():
            self._db.execute(f"CREATE VIEW hwpg.{name} AS {select}")
        self._db.execute("SET search_path = 'hwpg,main'")
        self._db.execute("SET enable_external_access = false")
        self._db.execute("SET autoinstall_known_extensions = false")
        self._db.execute("SET autoload_known_extensions = false")
        self._db.execute("SET lock_configuration = true")
        self._lock = threading.Lock()
        self._version: tuple[str, ...] | None = None
        self.tables: set[str] = set()

    def sync(self) -> None:
        """Recreate the empty tables when the engine's tables changed."""
        version = self.engine.data_version()
        if version == self._version:
            return
        shapes: dict[str, list[tuple[str, str]]] = {}
        for table, column, kind in self.engine.execute(_COLUMNS, max_rows=100_000).rows:
            if not str(table).startswith("hw_"):  # the engine's own copies (behind views such as `persons`)
                shapes.setdefault(str(table), []).append((str(column), str(kind)))
        with self._lock:
            for gone in self.tables - set(shapes):
                self._db.execute(f"DROP TABLE IF EXISTS main.{_ident(gone)}")
            for table, columns in shapes.items():
                body = ", ".join(f"{_ident(c)} {_type(k)}" for c, k in columns)
                self._db.execute(f"CREATE OR REPLACE TABLE main.{_ident(table)} ({body})")
            self.tables = set(shapes)
            self._version = version

    def rewrite(self, sql: str) -> str:
        """Qualified catalog names towards `hwpg` where it overrides them; qualified calls resolved on the path."""
        sql = _QUALIFIED_CALL.sub(lambda m: m.group(1) + "(", sql)
        return _QUALIFIED.sub(lambda m: f"hwpg.{m.group(1)}" if m.group(1).lower() in _OVERRIDES else m.group(0), sql)

    def answers(self, sql: str) -> bool:
        """Whether `sql` reads only catalog relations (or none), so the look-alike catalog answers it."""
        with self._lock:
            row = self._db.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
        tree = orjson.loads(row[0]) if row else {"error": True}
        if tree.get("error"):
            return False
        refs: list[dict[str, Any]] = []
        ctes: set[str] = set()
        _walk(tree.get("statements", []), refs, ctes)
        for ref in refs:
            if ref.get("type") == "TABLE_FUNCTION":
                return False
            schema, name = str(ref.get("schema_name", "")).lower(), str(ref.get("table_name", "")).lower()
            if schema in CATALOG_SCHEMAS or (not schema and (name in ctes or name.startswith("pg_"))):
                continue
            return False
        return True

    def execute(self, sql: str, max_rows: int, timeout_s: float) -> QueryResult:
        """Run one SELECT on the look-alike catalog (checked by the engine's rules first)."""
        self.engine.check(sql)
        with self._lock:  # one connection (the search path is per connection): catalog queries are tiny
            timer = threading.Timer(timeout_s, self._db.interrupt)
            timer.start()
            try:
                relation = self._db.execute(sql)
                columns = [d[0] for d in relation.description or []]
                types = [str(d[1]) for d in relation.description or []]
                rows = relation.fetchmany(max_rows + 1)
            except duckdb.InterruptException:
                raise QueryError(f"query cancelled after the {timeout_s:g} s time limit", 408) from None
            except duckdb.Error as exc:
                raise QueryError(str(exc).strip().replace("\n", " ")) from None
            finally:
                timer.cancel()
        return QueryResult(columns, [list(r) for r in rows[:max_rows]], len(rows) > max_rows, types=types)

    def close(self) -> None:
        self._db.close()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _type(kind: str) -> str:
    """A column type from information_schema.columns, usable in CREATE TABLE (struct/map types become JSON)."""
    upper = kind.upper()
    if upper.startswith(("STRUCT", "MAP", "UNION")) or ("(" in upper and not upper.startswith("DECIMAL")):
        return "JSON"
    return kind
