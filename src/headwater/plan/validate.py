"""Plan validation over a batch of events: the plan's JSON Schemas compiled to DuckDB SQL, run over whole batches.

`Validator(plan).check(events)` takes an Arrow table with `event` and `properties` (JSON text; `type` too when
there: only `track` rows are checked, page/screen/identify... are not plan events) and returns one row per
violation: `row` (index into `events`), `event`, `path` (`$.properties.revenue`, `$.properties.items[2].sku`,
`$.event` for an unplanned event), `rule` (the JSON Schema keyword, or `undeclared` / `unplanned`), `expected`
and `got` (short text). Rows come in the order of `events`.

How: each event's schema is compiled to SQL over the batch, loaded into a DuckDB table. Every value the schema
names (nested objects included) is read with one call per kind of read over all their paths (`json_type(p,
[paths])`, `json_extract_string(p, [paths])`: one parse each); arrays are checked element by element with
`list_transform` over `'$[*]'`. A first statement keeps the rows that fail any check (a boolean per row), a
second one lists the violations of those rows only; undeclared properties (`json_keys` minus the declared ones)
are listed apart, as lists of names flattened with Arrow (`got` NULL). No Python runs per event.

Semantics follow JSON Schema 2020-12 as the `jsonschema` library applies it (each keyword on its own; `integer`
accepts 1.0; `pattern` searches, unanchored), with these limits: patterns run on RE2 (no look-around or
back-references: `unsupported()` names them), `enum` / `const` / `uniqueItems` compare objects and arrays by
their minified JSON text (key order matters; 1 and 1.0 differ there), `format` checks date-time, date, email
(something@domain), uri (scheme:rest), uuid and ipv4. `undeclared` rows name top-level properties an event's
schema does not declare (where `additionalProperties` is not false: that gives `additionalProperties` rows);
they are informational (drop-properties removes them), not violations of the schema.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.plan.model import Plan
from headwater.plan.schema_sql import FORMATS, Compiler, Scope, Value, ViolationPath, lit, re2_ok, shown_key

log = logging.getLogger(__name__)

VALIDATED_KEYWORDS = frozenset(
    {
        "type", "enum", "const", "required", "properties", "additionalProperties", "minProperties", "maxProperties",
        "items", "minItems", "maxItems", "uniqueItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "multipleOf", "minLength", "maxLength", "pattern", "format", "allOf",
    }
)  # fmt: skip
ANNOTATIONS = frozenset(
    {
        "title", "description", "$comment", "$schema", "$id", "$defs", "definitions", "examples", "default",
        "deprecated", "readOnly", "writeOnly", "$anchor",
    }
)  # fmt: skip
SUPPORTED_KEYWORDS = VALIDATED_KEYWORDS | ANNOTATIONS
"""Keywords the validator enforces or may ignore (annotations); `x-...` extensions are allowed too."""
TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
VIOLATIONS_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("event", pa.string()),
        pa.field("path", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("expected", pa.string()),
        pa.field("got", pa.string()),
    ]
)
INFORMATIONAL = frozenset({"undeclared"})
"""Rules that are not violations of the plan (shown and counted, never a reason to flag or quarantine)."""
GOT_CHARS = 80  # `got` values are cut to this many characters

_MACROS = (
    f"CREATE OR REPLACE MACRO hw_got(x) AS CASE WHEN length(x::VARCHAR) > {GOT_CHARS} THEN "
    f"left(x::VARCHAR, {GOT_CHARS - 1}) || '…' ELSE x::VARCHAR END",
)


def unsupported(schema: Any, pointer: str = "#") -> list[str]:
    """What the validator would not enforce in `schema`: JSON pointers to keywords it does not know, formats
    it does not check, and patterns RE2 cannot run (plan-check refuses a plan with any)."""
    found: list[str] = []
    if not isinstance(schema, dict):
        return found
    for keyword, value in schema.items():
        here = f"{pointer}/{keyword}"
        if keyword.startswith("x-"):
            continue
        if keyword not in SUPPORTED_KEYWORDS:
            found.append(f"{here}: keyword {keyword!r} is not supported")
        elif keyword == "format" and value not in FORMATS:
            found.append(f"{here}: format {value!r} is not checked (supported: {', '.join(sorted(FORMATS))})")
        elif keyword == "pattern" and isinstance(value, str) and not re2_ok(value):
            found.append(f"{here}: pattern {value!r} needs features RE2 lacks (look-around, back-references)")
        elif keyword == "type":
            kinds = [value] if isinstance(value, str) else value
            if not isinstance(kinds, list) or not set(kinds) <= TYPES:
                found.append(f"{here}: type {value!r} is not a JSON Schema type")
        elif keyword == "items" and not isinstance(value, dict):
            found.append(f"{here}: only one schema for every item is supported")
        elif keyword == "additionalProperties" and value not in (True, False):
            found.append(f"{here}: only true or false is supported")
    for key, sub in (schema.get("properties") or {}).items() if isinstance(schema.get("properties"), dict) else ():
        found += unsupported(sub, f"{pointer}/properties/{key}")
    if isinstance(schema.get("items"), dict):
        found += unsupported(schema["items"], f"{pointer}/items")
    for i, sub in enumerate(schema.get("allOf") or ()):
        found += unsupported(sub, f"{pointer}/allOf/{i}")
    return found


class Validator:
    """Checks batches of events against one plan; safe to share between threads (one batch at a time).

    Each planned event has two prepared statements over the batch loaded into a DuckDB table (prepared on the
    event's first batch, so that a batch pays neither parsing nor planning): one copies the rows that fail any
    check to a second table, the other lists the violations of those rows. Only the statements of the events in
    a batch run, and the second only when some row failed.
    """

    def __init__(self, plan: Plan, undeclared: bool | str = True, ingested: bool = False) -> None:
        """`undeclared`: list the properties a schema does not declare for every event (True: `plan check`, the
        live view), for none (False), or only for events whose mode acts on them ("acted-on": drop-properties;
        the lake writer, where listing them for every event would double the cost of the check).
        `ingested`: the events passed the collector, which hashed, masked or dropped the `x-personal` properties:
        those are checked for presence only (a hash is no email address; a dropped property is not missing)."""
        self.plan = plan
        self.ingested = ingested
        self.version = f"{plan.name}@{plan.version}"
        self._events = sorted(plan.events)
        self._planned = pa.array(self._events, pa.string())
        self._undeclared = undeclared
        self._prepared: set[int] = set()
        self._broken: set[int] = set()
        self._compiler = Compiler()
        self._db = duckdb.connect(":memory:", config={"threads": 1})
        for statement in (*_MACROS, *_TABLES):
            self._db.execute(statement)
        self._lock = threading.Lock()
        self._loaded = 0  # rows loaded since the last CHECKPOINT

    def statements(self, event: str) -> tuple[str, str, str]:
        """The SQL of an event's checks: copy its rows of hw_in that fail a check or carry an undeclared property
        to hw_bad; list the violations of the failing ones; list the undeclared properties (a cheap read)."""
        scope = Scope("p", "hw_", columns=True)
        root = Value("p", "'OBJECT'", "NULL", scope, "$")  # `properties`: always an object
        schema = self.plan.events[event].schema
        if self.ingested:
            schema = _as_ingested(schema)
        node = self._compiler.node(root, ViolationPath("$.properties"), schema)
        fails, violations = node.fails(), node.violations()
        declared = list(schema["properties"]) if isinstance(schema.get("properties"), dict) else []
        extra = keys = "false"
        wanted = self._undeclared is True or (
            self._undeclared == "acted-on" and self.plan.mode_of(event) == "drop-properties"
        )
        if wanted and schema.get("additionalProperties") is not False:
            names = "[" + ", ".join(lit(key) for key in declared) + "]::VARCHAR[]"
            extra = f"NOT list_has_all({names}, json_keys(p))"
            keys = f"list_filter(json_keys(p), lambda k: NOT list_contains({names}, k))"
        rows = f"(SELECT hw_row, event, p FROM hw_in WHERE event = {lit(event)})"
        checked = (
            f"SELECT hw_row, event, p, coalesce({fails}, false) AS hw_strict, coalesce({extra}, false) AS hw_extra "
            f"FROM ({scope.select(rows, fails)}) OFFSET 0"
        )
        copy = f"INSERT INTO hw_bad SELECT * FROM ({checked}) WHERE hw_strict OR hw_extra"
        columns = "v.v.path AS path, v.v.rule AS rule, v.v.expected AS expected, v.v.got AS got"
        bad = f"(SELECT hw_row, event, p FROM hw_bad WHERE event = {lit(event)} AND hw_strict)"
        listed = (
            f"SELECT hw_row, unnest(list_transform({violations}, lambda x, n: {{'v': x, 'n': n}})) AS v "
            f"FROM ({scope.select(bad, violations)})"
        )
        extras = f"SELECT hw_row AS row, {keys} AS keys FROM hw_bad WHERE event = {lit(event)} AND hw_extra"
        if extra == "false":
            extras = "SELECT hw_row AS row, []::VARCHAR[] AS keys FROM hw_bad WHERE false"
        return copy, f"SELECT hw_row AS row, v.n AS n, {columns} FROM ({listed})", extras

    def _prepare(self, index: int) -> bool:
        """Prepare an event's statements once; False when they cannot be (its events then go unchecked, logged
        once: a schema the linter would refuse must not stop the pipeline)."""
        if index not in self._prepared:
            self._prepared.add(index)
            try:
                copy, listed, extras = self.statements(self._events[index])
                self._db.execute(f"PREPARE hw_copy_{index} AS {copy}")
                self._db.execute(f"PREPARE hw_list_{index} AS {listed}")
                self._db.execute(f"PREPARE hw_extra_{index} AS {extras}")
            except duckdb.Error:
                log.exception("plan %s: event %r cannot be checked; its events pass unchecked", self.version,
                              self._events[index])  # fmt: skip
                self._broken.add(index)
        return index not in self._broken

    def check(self, events: pa.Table) -> pa.Table:
        """One row per violation (VIOLATIONS_SCHEMA), in the order of `events`' rows."""
        n = events.num_rows
        names = events.column_names
        if n == 0:
            return VIOLATIONS_SCHEMA.empty_table()
        event = events.column("event")
        rows = pa.array(np.arange(n, dtype=np.int64))
        properties = events.column("properties") if "properties" in names else pa.nulls(n, pa.string())
        if "type" in names:  # only track calls are plan events
            track = pc.fill_null(pc.equal(events.column("type"), "track"), False)
            if not pc.all(track).as_py():
                rows, event, properties = rows.filter(track), event.filter(track), properties.filter(track)
        which = pc.fill_null(pc.index_in(event, value_set=self._planned), -1)
        parts = [self._unplanned(rows, event, which)]
        present = sorted({int(i) for i in pc.unique(which).to_pylist() if i >= 0})
        if present:
            order = pc.sort_indices(which)  # an event's rows together: its statements read them in whole vectors
            batch = pa.table(
                {
                    "hw_row": rows.take(order),
                    "event": event.take(order),
                    "p": pc.fill_null(properties, "{}").take(order),
                }
            )
            parts.append(self._run(batch, present))
        found = pa.concat_tables(parts)
        found = found.take(pc.sort_indices(found, [("row", "ascending"), ("n", "ascending")]))
        return found.drop_columns(["n"]).cast(VIOLATIONS_SCHEMA)

    def _run(self, batch: pa.Table, present: list[int]) -> pa.Table:
        with self._lock:
            db = self._db
            try:
                db.from_arrow(batch).insert_into("hw_in")  # a relation: no catalog change, the statements stay bound
                failing = []
                for index in present:
                    if self._prepare(index) and db.execute(f"EXECUTE hw_copy_{index}").fetchall()[0][0]:
                        failing.append(index)
                listed = [(index, db.execute(f"EXECUTE hw_list_{index}").to_arrow_table()) for index in failing]
                extras = [(index, db.execute(f"EXECUTE hw_extra_{index}").to_arrow_table()) for index in failing]
            finally:
                db.execute("DELETE FROM hw_in")
                db.execute("DELETE FROM hw_bad")
                self._loaded += batch.num_rows
                if self._loaded >= 10_000:  # give the deleted rows' memory back (not after every small batch)
                    db.execute("CHECKPOINT")
                    self._loaded = 0
        parts = [_EMPTY]
        for index, table in listed + [(i, _undeclared(t)) for i, t in extras]:
            names = pa.array([self._events[index]] * table.num_rows, pa.string())
            parts.append(table.add_column(2, "event", names).cast(_EMPTY.schema))
        return pa.concat_tables(parts)

    def _unplanned(self, rows: pa.Array, event: pa.ChunkedArray | pa.Array, which: pa.Array) -> pa.Table:
        mask = pc.equal(which, -1)
        if not pc.any(mask).as_py():
            return _EMPTY
        names = pc.filter(event, mask)
        count = len(names)
        return pa.table(
            {
                "row": pc.filter(rows, mask), "n": pa.array(np.zeros(count, dtype=np.int32)), "event": names,
                "path": pa.array(["$.event"] * count), "rule": pa.array(["unplanned"] * count),
                "expected": pa.array([f"an event of plan {self.version}"] * count),
                "got": pc.utf8_slice_codeunits(names, 0, GOT_CHARS),
            }
        )  # fmt: skip


def _undeclared(found: pa.Table) -> pa.Table:
    """Violation rows (after the others of their row) from (row, keys: the undeclared properties of that row)."""
    keys = found.column("keys").combine_chunks()
    names = pc.list_flatten(keys)
    n = len(names)
    plain = pc.fill_null(pc.match_substring_regex(names, "^[A-Za-z_][A-Za-z0-9_]*$"), False)
    shown = pc.binary_join_element_wise(".", names, "")
    if not pc.all(plain).as_py():  # odd names, as shown_key shows them (rare: one by one)
        odd = [shown_key(k) for k in pc.filter(names, pc.invert(plain)).to_pylist()]
        spots = np.flatnonzero(pc.invert(plain).to_numpy(zero_copy_only=False))
        texts = shown.to_pylist()
        for spot, text in zip(spots, odd, strict=True):
            texts[spot] = text
        shown = pa.array(texts, pa.string())
    offsets = np.asarray(keys.offsets)
    starts = np.repeat(offsets[:-1] - offsets[0], np.diff(offsets))  # each name's position in its row's list
    return pa.table(
        {
            "row": found.column("row").combine_chunks().take(pc.list_parent_indices(keys)),
            "n": pa.array(1_000_000 + np.arange(n) - starts, pa.int32()),
            "path": pc.binary_join_element_wise("$.properties", shown, ""),
            "rule": pa.array(["undeclared"] * n, pa.string()),
            "expected": pa.array(["a declared property"] * n, pa.string()),
            "got": pa.nulls(n, pa.string()),
        }
    )


_TABLES = (
    # statements are prepared once over tables whose contents change: nothing may be planned from their statistics
    "SET disabled_optimizers = 'statistics_propagation'",
    "CREATE TABLE hw_in (hw_row BIGINT, event VARCHAR, p VARCHAR)",
    "CREATE TABLE hw_bad (hw_row BIGINT, event VARCHAR, p VARCHAR, hw_strict BOOLEAN, hw_extra BOOLEAN)",
)
_EMPTY = pa.table(
    {"row": pa.array([], pa.int64()), "n": pa.array([], pa.int32()), "event": pa.array([], pa.string()),
     "path": pa.array([], pa.string()), "rule": pa.array([], pa.string()), "expected": pa.array([], pa.string()),
     "got": pa.array([], pa.string())}
)  # fmt: skip


def _as_ingested(schema: Any) -> Any:
    """`schema` as the collector's personal-data rules leave values: `x-personal` hash / mask subschemas accept any
    value, drop ones are neither declared nor required (their values never reach the log)."""
    if isinstance(schema, list):
        return [_as_ingested(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _as_ingested(value) for key, value in schema.items()}
    props = out.get("properties")
    if isinstance(props, dict):
        dropped = {name for name, sub in props.items() if isinstance(sub, dict) and sub.get("x-personal") == "drop"}
        out["properties"] = {
            name: {} if isinstance(sub, dict) and sub.get("x-personal") in ("hash", "mask") else sub
            for name, sub in props.items()
            if name not in dropped
        }
        if dropped and isinstance(out.get("required"), list):
            out["required"] = [name for name in out["required"] if name not in dropped]
    return out
