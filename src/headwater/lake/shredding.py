"""Shredding: frequently used top-level properties copied out of the `properties` JSON into columns.

Wide events (AT Internet's carry 200+ dimensions) make every filter, breakdown or sum on a property
parse a JSON string per row per query. The lake writer therefore copies each frequently seen property
into its own Iceberg column, added by schema evolution (optional, so earlier files simply lack it):

- `p_<name>` (string) holds exactly what `json_extract_string(properties, '$."<name>"')` returns:
  the text the insights already compare against, so answers cannot change. It is NULL exactly when
  that is NULL (property absent or JSON null), for every row of every file that has the column.
- `n_<name>` (double), for properties whose sampled values are all numbers, holds
  `TRY_CAST(p_<name> AS DOUBLE)`: sums, averages and comparisons read it without parsing text.

Both hold by construction, whatever later events send (a string in a numeric property gives the
same NULL `TRY_CAST` gives on the JSON path), so a query never needs a per-row fallback to the JSON
(measured in bench/wide.py: a `coalesce(column, json)` fallback still reads the whole `properties`
column and is as slow as the JSON path). Files written before a column existed are answered by the
query view computing the same expression from their JSON (`view_sql`), file group by file group.
`properties` itself stays whole: user SQL, the timeline, the property catalog and other engines
(Trino, Spark, Athena) keep seeing every property.

Which properties: top-level keys whose values are scalars (nested objects and arrays stay JSON) seen
in at least `shred_min_share` of a batch's sampled events, most frequent first, while the table has
fewer than `shred_max_columns` shredded columns; keys listed in `shred_properties` whenever seen.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import DoubleType, StringType

from headwater.core.settings import Settings

TEXT_DOC = "shredded property: "
NUMBER_DOC = "shredded property as a number: "
SAMPLE_ROWS = 2048
COMMIT_ATTEMPTS = 8
NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_$ .:-]{0,127}$")  # what an insight may name (insights/spec.py)
NUMBERS = {"BIGINT", "UBIGINT", "HUGEINT", "DOUBLE"}
SCALARS = NUMBERS | {"VARCHAR", "BOOLEAN", "JSON"}


@dataclass(frozen=True)
class Shred:
    """One shredded property: its text column and, for numeric properties, its number column."""

    key: str
    text: str
    number: str | None = None


def shreds(schema: Schema) -> dict[str, Shred]:
    """The shredded properties of a table schema, by property name (read from the columns' docs)."""
    text: dict[str, str] = {}
    number: dict[str, str] = {}
    for field in schema.columns:
        doc = field.doc or ""
        if doc.startswith(TEXT_DOC):
            text[doc[len(TEXT_DOC) :]] = field.name
        elif doc.startswith(NUMBER_DOC):
            number[doc[len(NUMBER_DOC) :]] = field.name
    return {key: Shred(key, column, number.get(key)) for key, column in text.items()}


def json_path(key: str) -> str:
    """The SQL literal of the JSON path of a top-level key, as insights/sql.py writes it."""
    path = '$."' + key + '"'
    return "'" + path.replace("'", "''") + "'"


def text_from_json(key: str) -> str:
    return f"json_extract_string(properties, {json_path(key)})"


def column_name(key: str, prefix: str, taken: set[str]) -> str:
    """`p_<key>` lower-cased, other characters as `_`, unique among `taken` (compared lower-case:
    DuckDB identifiers are case-insensitive); the name is added to `taken`."""
    base = prefix + (re.sub(r"[^a-z0-9_]", "_", key.lower())[:56] or "_")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


class Shredder:
    """Adds shredded columns to the events table as properties qualify, and fills them in batches."""

    def __init__(self, settings: Settings) -> None:
        self.max_columns = settings.shred_max_columns
        self.min_share = settings.shred_min_share
        self.always = {k for k in settings.shred_properties if NAME.match(k)}
        self._db = duckdb.connect(":memory:", config={"threads": 1})
        self._lock = threading.Lock()

    def apply(self, table: Table, rows: pa.Table) -> pa.Table:
        """Evolve the table schema when new properties qualify (committed at once; a conflicting
        commit of another writer is reloaded and retried), then return `rows` with every shredded
        column of the table's schema filled from `properties`, in the schema's column order.
        Write the result with `table.metadata` as it is now (do not refresh the table in between:
        a column added meanwhile would be written as all NULL)."""
        if self.max_columns > 0 and rows.num_rows:
            self.evolve(table, rows)
        return self.fill(table.schema(), rows)

    # --- schema evolution
    def evolve(self, table: Table, rows: pa.Table) -> list[Shred]:
        """Add the columns of newly qualifying properties; returns what was added."""
        stats = self.sample(rows)
        for attempt in range(COMMIT_ATTEMPTS):
            existing = shreds(table.schema())
            wanted = self.qualifying(stats, existing)
            if not wanted:
                return []
            taken = {f.name.lower() for f in table.schema().columns}
            added = []
            try:
                with table.update_schema() as update:
                    for key, numeric in wanted:
                        shred = Shred(
                            key,
                            column_name(key, "p_", taken),
                            column_name(key, "n_", taken) if numeric else None,
                        )
                        update.add_column(shred.text, StringType(), doc=TEXT_DOC + key)
                        if shred.number:
                            update.add_column(shred.number, DoubleType(), doc=NUMBER_DOC + key)
                        added.append(shred)
                return added
            except CommitFailedException:  # another writer changed the table: see what it did
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                table.refresh()
        return []

    def sample(self, rows: pa.Table) -> dict[str, tuple[int, str]]:
        """Per top-level key of up to SAMPLE_ROWS evenly spaced events: in how many it is, and its
        merged JSON structure (a type name such as VARCHAR or DOUBLE, "JSON" for mixed kinds, an
        object or list for nested values); under the key '' the number of events sampled."""
        step = max(1, rows.num_rows // SAMPLE_ROWS)
        picked = rows.select(["properties"]).take(pa.array(range(0, rows.num_rows, step)))
        counts = self._query(
            "SELECT k, count(*) AS n FROM (SELECT unnest(json_keys(json_merge_patch('{}', properties))) AS k "
            "FROM shred_rows) GROUP BY k",  # merge_patch drops null members: count values, not keys
            picked,
        ).to_pylist()
        merged = self._query("SELECT json_group_structure(properties::JSON) AS s FROM shred_rows", picked)
        structure = orjson.loads(merged.column("s")[0].as_py() or "{}")
        if not isinstance(structure, dict):
            structure = {}
        stats = {r["k"]: (int(r["n"]), _kind(structure.get(r["k"]))) for r in counts}
        stats[""] = (picked.num_rows, "")
        return stats

    def qualifying(self, stats: Mapping[str, tuple[int, str]], existing: Mapping[str, Shred]) -> list[tuple[str, bool]]:
        """(key, numeric) of properties to shred now, most frequent first, within the column budget."""
        sampled = stats[""][0]
        used = sum(1 + (s.number is not None) for s in existing.values())
        candidates = []
        for key, (seen, kind) in stats.items():
            # scalars of one kind, or mixed kinds ("JSON": the text column is exact for any value);
            # nested objects and lists stay JSON only, as do keys only ever null
            if not key or key in existing or not NAME.match(key) or kind not in SCALARS:
                continue
            if key in self.always or seen >= self.min_share * sampled:
                candidates.append((key in self.always, seen, key, kind in NUMBERS))
        out = []
        for _, _, key, numeric in sorted(candidates, key=lambda c: (not c[0], -c[1], c[2])):
            cost = 1 + numeric
            if used + cost > self.max_columns:
                break
            out.append((key, numeric))
            used += cost
        return out

    # --- filling
    def fill(self, schema: Schema, rows: pa.Table) -> pa.Table:
        """`rows` with every shredded column of `schema` (re)computed from `properties`, in schema order."""
        found = shreds(schema)
        derived = {s.text for s in found.values()} | {s.number for s in found.values() if s.number}
        base = rows.drop_columns([n for n in rows.column_names if n in derived])
        if not found:
            return base
        columns = {f.name: (f, base.column(f.name)) for f in base.schema}
        for name, values in self.extract(base, list(found.values())).items():
            columns[name] = (pa.field(name, values.type), values)
        order = [f.name for f in schema.columns if f.name in columns]
        order += [n for n in columns if n not in order]
        return pa.Table.from_arrays([columns[n][1] for n in order], schema=pa.schema([columns[n][0] for n in order]))

    def extract(self, rows: pa.Table, found: list[Shred]) -> dict[str, pa.ChunkedArray]:
        """The text and number columns of `found`, computed by DuckDB from `rows.properties`.

        One json_transform pass per row reads every key (json_extract_string with a list of paths
        looks each key up separately: slower at 200 keys, bench/wide.py). Its text of a number in
        exponent form differs from json_extract_string's, so such values are taken from the latter.
        """
        spec = orjson.dumps({s.key: "VARCHAR" for s in found}).decode()
        items = []
        for s in found:
            fast = f"s[{_string(s.key)}]"
            # DuckDB writes a double in exponent form as 1e+20 / 2e-07, yyjson does not
            text = (
                f"CASE WHEN (contains({fast}, 'e+') OR contains({fast}, 'e-')) AND TRY_CAST({fast} AS DOUBLE) "
                f"IS NOT NULL THEN {text_from_json(s.key)} ELSE {fast} END"
            )
            items.append(f"{text} AS {_ident(s.text)}")
            if s.number:
                items.append(f"TRY_CAST({_ident(s.text)} AS DOUBLE) AS {_ident(s.number)}")
        sql = (
            f"SELECT {', '.join(items)} FROM "
            f"(SELECT properties, json_transform(properties, {_string(spec)}) AS s FROM shred_rows)"
        )
        result = self._query(sql, rows.select(["properties"]))
        out: dict[str, pa.ChunkedArray] = {}
        for s in found:
            out[s.text] = result.column(s.text).cast(pa.string())
            if s.number:
                out[s.number] = result.column(s.number).cast(pa.float64())
        return out

    def _query(self, sql: str, rows: pa.Table) -> pa.Table:
        """Run `sql` over `rows` registered as `shred_rows` (one query at a time per Shredder)."""
        with self._lock:
            self._db.register("shred_rows", rows)
            try:
                return self._db.execute(sql).to_arrow_table()
            finally:
                self._db.unregister("shred_rows")


# --- the query side: a view over file groups, and expressions for files that predate a column
def file_fields(file: DataFile) -> set[int]:
    """Field ids of the columns a data file holds (from its column statistics)."""
    counts = file.value_counts or {}
    return set(counts) | set(file.null_value_counts or {})


@dataclass(frozen=True)
class Added:
    """A column stages added to `events` (`headwater.lake.columns`): read where a file has it, else NULL."""

    name: str
    field_id: int
    sql_type: str


def column_exprs(schema: Schema, present: Collection[int], added: Collection[Added] = ()) -> list[str]:
    """SELECT items for the shredded columns: read when the files hold them, else computed from
    `properties` with the writer's definition (the same values, by construction); then the added columns."""
    out = []
    for column in added:
        value = _ident(column.name) if column.field_id in present else "NULL"
        out.append(f"CAST({value} AS {column.sql_type}) AS {_ident(column.name)}")
    by_name = {f.name: f for f in schema.columns}
    for s in shreds(schema).values():
        text = by_name[s.text]
        expr = f"CAST({_ident(s.text)} AS VARCHAR)" if text.field_id in present else text_from_json(s.key)
        out.append(f"{expr} AS {_ident(s.text)}")
        if s.number:
            number = by_name[s.number]
            if number.field_id in present:
                expr = f"CAST({_ident(s.number)} AS DOUBLE)"
            else:
                expr = f"TRY_CAST({text_from_json(s.key)} AS DOUBLE)"
            out.append(f"{expr} AS {_ident(s.number)}")
    return out


def empty_exprs(schema: Schema, added: Collection[Added] = ()) -> list[str]:
    """SELECT items typing the shredded and added columns of a view with no files."""
    out = [f"CAST(NULL AS {c.sql_type}) AS {_ident(c.name)}" for c in added]
    for s in shreds(schema).values():
        out.append(f"CAST(NULL AS VARCHAR) AS {_ident(s.text)}")
        if s.number:
            out.append(f"CAST(NULL AS DOUBLE) AS {_ident(s.number)}")
    return out


def view_sql(
    schema: Schema, files: Iterable[tuple[str, DataFile]], base: list[str], added: Collection[Added] = ()
) -> str:
    """The SELECT of a view over data files: `base` items (the fixed columns, over `properties` as
    stored) plus the shredded and added columns, one UNION ALL branch per group of files holding the same ones."""
    wanted = set()
    for s in shreds(schema).values():
        wanted.add(s.text)
        if s.number:
            wanted.add(s.number)
    ids = {f.field_id for f in schema.columns if f.name in wanted} | {c.field_id for c in added}
    groups: dict[frozenset[int], list[str]] = {}
    for path, file in files:
        groups.setdefault(frozenset(file_fields(file) & ids), []).append(path)
    parts = []
    for present, paths in sorted(groups.items(), key=lambda g: sorted(g[0])):
        listed = ", ".join(_string(p) for p in paths)
        items = ", ".join([*base, *column_exprs(schema, present, added)])
        parts.append(f"SELECT {items} FROM read_parquet([{listed}], union_by_name = true, hive_partitioning = false)")
    return "\nUNION ALL ".join(parts)


def _kind(structure: Any) -> str:
    """A type name from json_group_structure; "nested" for an object or list structure."""
    return structure if isinstance(structure, str) else "nested"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
