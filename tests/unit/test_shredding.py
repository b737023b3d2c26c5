"""Shredded property columns: schema evolution on real Iceberg tables, exact values, concurrent writers,
and insight answers identical on the JSON path and the column path."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest
from pyiceberg.table import Table
from pyiceberg.types import DoubleType, StringType

from headwater.core.events import EVENTS_SCHEMA
from headwater.core.settings import Settings
from headwater.insights.engine import InsightEngine, compile_query, parse
from headwater.lake.shredding import Shredder, shreds, view_sql
from headwater.lake.tables import close_catalog, ensure_tables, open_catalog
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings

START = datetime(2026, 3, 2)


def batch(
    props: list[Any], first: int = 0, users: list[str] | None = None, events: list[str] | None = None
) -> pa.Table:
    """Event rows with the given properties (dicts, or None for no properties)."""
    n = len(props)
    times = [START + timedelta(minutes=7 * (first + i)) for i in range(n)]
    values: dict[str, list[Any]] = {
        "event_id": [f"e{first + i:07d}" for i in range(n)],
        "type": ["track"] * n,
        "event": events or ["E"] * n,
        "user_id": users or [f"u{(first + i) % 37}" for i in range(n)],
        "timestamp": times,
        "received_at": times,
        "source": ["test"] * n,
        "properties": [None if p is None else orjson.dumps(p).decode() for p in props],
    }
    return pa.Table.from_arrays(
        [pa.array(values.get(f.name, [None] * n), f.type) for f in EVENTS_SCHEMA], schema=EVENTS_SCHEMA
    )


def open_events(settings: Settings) -> tuple[Any, Table]:
    catalog = open_catalog(settings)
    return catalog, ensure_tables(catalog)["events"]


def events_view(table: Table) -> duckdb.DuckDBPyConnection:
    """DuckDB with an `events` view as the query engine builds it, plus the shredded columns."""
    base = [
        f'CAST("{f.name}" AS JSON) AS "{f.name}"' if f.name in ("properties", "context", "traits") else f'"{f.name}"'
        for f in EVENTS_SCHEMA
    ]
    files = [(task.file.file_path.removeprefix("file://"), task.file) for task in table.scan().plan_files()]
    db = duckdb.connect(":memory:", config={"threads": 1})
    db.execute("SET TimeZone = 'UTC'")
    db.execute(f"CREATE VIEW events AS {view_sql(table.schema(), files, base)}")
    return db


def test_schema_evolves_with_frequent_scalar_properties(data_dir: Path) -> None:
    settings = make_settings(data_dir, shred_min_share=0.2, shred_properties=["forced"])
    catalog, table = open_events(settings)
    props: list[Any] = [
        {"Plan": "pro", "plan": "x", "price": 9.5 if i % 2 else 10, "n": i, "ok": i % 3 == 0, "nested": {"a": i},
         "list": [i], "rare": "r" if i == 0 else None, "a b": "s", "mixed": "t" if i % 2 else 1}
        for i in range(50)
    ] + [{"forced": "once"}, None]  # fmt: skip
    rows = Shredder(settings).apply(table, batch(props))
    found = shreds(table.schema())
    assert set(found) == {"Plan", "plan", "price", "n", "ok", "a b", "mixed", "forced"}  # not nested, list, rare
    assert {found["Plan"].text, found["plan"].text} == {"p_plan", "p_plan_2"}  # unique without case
    assert found["a b"].text == "p_a_b"
    assert found["price"].number and found["n"].number and not found["ok"].number and not found["mixed"].number
    fields = {f.name: f for f in table.schema().columns}
    assert isinstance(fields[found["price"].text].field_type, StringType)
    assert isinstance(fields[found["price"].number].field_type, DoubleType)
    assert all(not fields[s.text].required for s in found.values())
    assert rows.column_names == [f.name for f in table.schema().columns]
    assert rows.schema.field("event_id").nullable is False  # the writer's schema is kept
    assert rows.column(found["price"].text).to_pylist()[:2] == ["10", "9.5"]
    assert rows.column(found["price"].number).to_pylist()[:2] == [10.0, 9.5]
    assert rows.column(found["ok"].text).to_pylist()[:2] == ["true", "false"]
    assert rows.column(found["forced"].text).to_pylist()[-2:] == ["once", None]
    table.append(rows)
    # a second batch without the properties adds nothing and fills NULLs (absent)
    again = Shredder(settings).apply(table, batch([{"other": 1}], first=100))
    assert shreds(table.schema()) == found | {"other": shreds(table.schema())["other"]}
    assert again.column(found["plan"].text).to_pylist() == [None]
    close_catalog(catalog)


def test_column_budget_and_disabled(data_dir: Path) -> None:
    props = [{f"k{j}": j for j in range(10)} for _ in range(20)]
    settings = make_settings(data_dir, shred_max_columns=5)
    catalog, table = open_events(settings)
    Shredder(settings).apply(table, batch(props))
    assert sum(1 + (s.number is not None) for s in shreds(table.schema()).values()) <= 5
    close_catalog(catalog)
    off = make_settings(data_dir / "off", shred_max_columns=0)
    catalog, table = open_events(off)
    rows = Shredder(off).apply(table, batch(props))
    assert shreds(table.schema()) == {} and rows.column_names == EVENTS_SCHEMA.names
    close_catalog(catalog)


def tricky_value(rng: random.Random) -> Any:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.uniform(-1e6, 1e6)
    if kind == 1:
        return rng.choice([1e20, -2.5e-7, 1e300, 5e-324, 0.1 + 0.2, 1e16, 123456789012345678.0, -0.0, 1e15])
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 10**6])
    if kind == 3:
        return rng.choice(["x", 'q"uote', "back\\slash", "é", "\u2603", "1e5", "12", "", " sp ", "null", "true"])
    if kind == 4:
        return rng.choice([True, False])
    if kind == 5:
        return None
    if kind == 6:
        return {"nested": [1, "a"]}
    if kind == 7:
        return [1, 2.5]
    return rng.randrange(1000) / rng.choice([1, 10, 100, 1000])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_columns_hold_exactly_what_the_json_path_reads(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    settings = make_settings(data_dir, shred_properties=["t0", "t1", "t2", "t3", "num"])
    catalog, table = open_events(settings)
    shredder = Shredder(settings)
    numeric = [
        {"num": rng.uniform(-1e9, 1e9) if rng.random() < 0.5 else rng.randrange(-(10**12), 10**12)} for _ in range(300)
    ]
    table.append(shredder.apply(table, batch(numeric)))  # `num` qualifies as numeric: it gets a number column
    props = [{f"t{j}": tricky_value(rng) for j in range(4)} | {"num": tricky_value(rng)} for _ in range(400)]
    for p in props[::7]:
        del p["t1"]
    table.append(shredder.apply(table, batch(props, first=1000)))
    found = shreds(table.schema())
    assert found["num"].number
    db = events_view(table)
    for s in found.values():
        path = '$."' + s.key + '"'
        bad = db.execute(
            f'SELECT count(*) FROM events WHERE "{s.text}" IS DISTINCT FROM json_extract_string(properties, ?)',
            [path],
        ).fetchone()
        assert bad == (0,), s
        if s.number:
            rows = db.execute(
                f'SELECT "{s.number}", TRY_CAST(json_extract_string(properties, ?) AS DOUBLE) FROM events', [path]
            ).fetchall()
            assert all(a == b or (a is None and b is None) or (math.isnan(a) and math.isnan(b)) for a, b in rows)
    close_catalog(catalog)


def test_concurrent_writers_both_evolve_the_schema(data_dir: Path) -> None:
    settings = make_settings(data_dir)
    catalog_a, table_a = open_events(settings)
    catalog_b, table_b = open_events(settings)  # loaded before A evolves: B's schema is stale
    a = Shredder(settings).apply(table_a, batch([{"shared": "a", "only_a": 1}] * 10))
    table_a.append(a)
    b = Shredder(settings).apply(table_b, batch([{"shared": "b", "only_b": 2.5}] * 10, first=10))
    table_b.append(b)
    found = shreds(table_b.schema())
    assert set(found) == {"shared", "only_a", "only_b"}
    names = [f.name.lower() for f in table_b.schema().columns]
    assert len(names) == len(set(names)) == len(EVENTS_SCHEMA) + 5  # shared once; only_a, only_b with numbers
    assert b.column(found["only_a"].text).to_pylist() == [None] * 10  # B fills A's column too: absent here
    assert b.column(found["only_b"].number).to_pylist() == [2.5] * 10
    table_a.refresh()
    db = events_view(table_a)
    assert db.execute(
        f'SELECT count(*), count("{found["shared"].text}"), count("{found["only_a"].text}") FROM events'
    ).fetchone() == (20, 20, 10)
    close_catalog(catalog_a)
    close_catalog(catalog_b)


def wide_rows(seed: int, n: int, first: int) -> pa.Table:
    rng = random.Random(seed)
    users = [f"user{rng.randrange(60)}" for _ in range(n)]
    events = [rng.choices(["A", "B", "C", "view"], weights=[4, 3, 2, 3])[0] for _ in range(n)]
    props: list[Any] = []
    for _ in range(n):
        p: dict[str, Any] = {
            "plan": rng.choice(["free", "pro", "team", None]),
            "price": rng.choice([10, 10.0, 9.99, 0, -3, 1e20, "12", "n/a", True]),
            "count": rng.randrange(100),
            "flag": rng.random() < 0.5,
            "variant": rng.choice(["control", "test"]),
            "page": rng.choice(["/", "/a", "/b?x=1", 'q"x']),
            "obj": {"k": 1},
        }
        if rng.random() < 0.2:
            del p["plan"]
        props.append(p if rng.random() > 0.02 else None)
    return batch(props, first=first, users=users, events=events)


SPECS: list[dict[str, Any]] = [
    {"kind": "trend", "series": [{"event": "A"}, {"event": "B", "measure": "users"},
     {"event": "A", "measure": "sum", "property": "price"}, {"event": "C", "measure": "p90", "property": "count"},
     {"event": "A", "measure": "avg", "property": "plan"}], "breakdown": "plan", "interval": "week"},
    {"kind": "trend", "series": [{"event": "A", "filters": [{"property": "price", "op": "gt", "value": 5}]}],
     "breakdown": "price", "filters": [{"property": "properties.flag", "op": "eq", "value": True}]},
    {"kind": "trend", "series": [{"event": "view", "measure": "max", "property": "price"}], "breakdown": "page",
     "filters": [{"property": "plan", "op": "is_set"}, {"property": "page", "op": "contains", "value": "x"}]},
    {"kind": "trend", "series": [{"event": "B"}], "breakdown": "count",
     "filters": [{"property": "plan", "op": "neq", "value": "pro"}, {"property": "count", "op": "lte", "value": 50},
                 {"property": "price", "op": "eq", "value": "10"}, {"property": "obj", "op": "is_set"}]},
    {"kind": "funnel", "steps": [{"event": "A", "filters": [{"property": "plan", "op": "eq", "value": "pro"}]},
     {"event": "B"}, {"event": "C", "filters": [{"property": "count", "op": "gte", "value": 10}]}],
     "breakdown": "variant", "window_seconds": 7 * 86400},
    {"kind": "retention", "start_event": "A", "return_event": "B", "period": "day", "periods": 5,
     "filters": [{"property": "flag", "op": "eq", "value": False}]},
    {"kind": "experiment", "exposure_event": "view", "variant_property": "variant", "goal_event": "C"},
]  # fmt: skip


def normalise(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    return value


def test_insights_identical_on_json_and_column_paths(data_dir: Path) -> None:
    """Files written before shredding, then with it: every insight answers the same on both paths,
    and the column path reads no JSON."""
    settings = make_settings(data_dir, query_max_rows=100_000)
    catalog, table = open_events(settings)
    table.append(wide_rows(1, 1500, 0))  # before shredding: no columns in this file
    shredder = Shredder(settings)
    table.append(shredder.apply(table, wide_rows(2, 1500, 1500)))
    table.append(shredder.apply(table, wide_rows(3, 1500, 3000)))
    found = shreds(table.schema())
    assert {"plan", "price", "count", "flag", "variant", "page"} <= set(found) and "obj" not in found
    assert found["count"].number and not found["price"].number  # "12", "n/a" and true make price text only
    db = events_view(table)
    for raw in SPECS:
        spec = raw | {"date_from": START.isoformat(), "date_to": (START + timedelta(days=30)).isoformat()}
        query = parse(spec)
        json_sql, column_sql = compile_query(query), compile_query(query, found)
        assert "json_extract" in json_sql  # the column path reads JSON only for the nested property
        assert column_sql.count("json_extract") == column_sql.count('$."obj"')
        expected = db.execute(json_sql).fetchall()
        assert expected, spec
        assert normalise(db.execute(column_sql).fetchall()) == normalise(expected), spec
    close_catalog(catalog)


def test_insight_engine_uses_only_columns_its_view_exposes(data_dir: Path) -> None:
    """Until the query view exposes the shredded columns, insights keep the JSON path and answer."""
    settings = make_settings(data_dir, query_max_rows=100_000)
    catalog, table = open_events(settings)
    table.append(Shredder(settings).apply(table, wide_rows(4, 500, 0)))
    close_catalog(catalog)
    query = QueryEngine(settings)
    try:
        engine = InsightEngine(query)
        exposed = set(query.execute("SELECT * FROM events LIMIT 0").columns)
        shredded = engine.shreds(query.data_version())
        assert {s.text for s in shredded.values()} <= exposed
        spec = SPECS[0] | {"date_from": START.isoformat(), "date_to": (START + timedelta(days=30)).isoformat()}
        assert engine.run(spec)["result"]
    finally:
        query.close()
