"""Wide events: filters, breakdowns and sums on properties, JSON path against shredded columns.

Generates --rows events with ~200 properties (80 strings of cardinality 5 to ~1,000, 50 integers,
40 decimals, 20 booleans, 5 nested objects, 5 sparse keys in 0.5 % of events), writes them into two
Iceberg tables in writer-sized batches (one without shredding, one through lake/shredding.py's
Shredder), and reports bytes per event, the writer's shredding cost, and query times (best of 3, hot)
on the JSON path, on the columns, and on a `coalesce(column, json)` fallback. Prints JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from tests.helpers import make_settings

from bench.common import emit
from headwater.core.events import EVENTS_SCHEMA
from headwater.insights.engine import compile_query, parse
from headwater.lake.shredding import Shredder, shreds, view_sql
from headwater.lake.tables import close_catalog, ensure_tables, open_catalog

START = datetime(2026, 3, 2)
KINDS = {"s": 80, "i": 50, "d": 40, "b": 20, "o": 5, "sp": 5}


def properties_sql() -> str:
    fields = []
    for i in range(KINDS["s"]):
        fields.append(f"'page_s{i}', 'value_' || (hash(r, {i}) % {5 + i * 12})")
    for i in range(KINDS["i"]):
        fields.append(f"'count_i{i}', (hash(r, {100 + i}) % {10 ** (1 + i % 6)})::BIGINT")
    for i in range(KINDS["d"]):
        fields.append(f"'amount_d{i}', round((hash(r, {200 + i}) % 100000) / 100.0, 2)")
    for i in range(KINDS["b"]):
        fields.append(f"'flag_b{i}', hash(r, {300 + i}) % 2 = 0")
    for i in range(KINDS["o"]):
        fields.append(f"'object_o{i}', {{'x': hash(r, {400 + i}) % 10, 'y': 'z'}}")
    for i in range(KINDS["sp"]):
        fields.append(f"'sparse_sp{i}', CASE WHEN hash(r, {500 + i}) % 200 = 0 THEN 'rare' END")
    # json_merge_patch drops the null members (absent sparse keys)
    return f"json_merge_patch('{{}}', json_object({', '.join(fields)}))"


def generate(db: duckdb.DuckDBPyConnection, first: int, rows: int) -> pa.Table:
    sql = (
        f"SELECT 'e' || r AS event_id, 'track' AS type, ['view', 'click', 'buy'][1 + r % 3] AS event, "
        f"'u' || (hash(r) % 50000) AS user_id, TIMESTAMP '{START}' + to_seconds(r // 20) AS timestamp, "
        f"TIMESTAMP '{START}' + to_seconds(r // 20) AS received_at, 'bench' AS source, "
        f"CAST({properties_sql()} AS VARCHAR) AS properties FROM range({first}, {first + rows}) t(r)"
    )
    got = db.execute(sql).to_arrow_table()
    return pa.Table.from_arrays(
        [
            got.column(f.name).cast(f.type) if f.name in got.column_names else pa.nulls(rows, f.type)
            for f in EVENTS_SCHEMA
        ],
        schema=EVENTS_SCHEMA,
    )


def table_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.parquet"))


def best(db: duckdb.DuckDBPyConnection, sql: str, runs: int = 3) -> tuple[float, Any]:
    result = db.execute(sql).fetchall()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = db.execute(sql).fetchall()
        times.append(time.perf_counter() - started)
    return round(min(times) * 1000, 1), result


def view(db: duckdb.DuckDBPyConnection, name: str, table: Any) -> None:
    base = [
        f'CAST("{f.name}" AS JSON) AS "{f.name}"' if f.name == "properties" else f'"{f.name}"' for f in EVENTS_SCHEMA
    ]
    files = [(t.file.file_path.removeprefix("file://"), t.file) for t in table.scan().plan_files()]
    db.execute(f"CREATE OR REPLACE VIEW {name} AS {view_sql(table.schema(), files, base)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS", "1000000")))
    parser.add_argument("--batch", type=int, default=200_000, help="rows per write (the writer's flush_events)")
    parser.add_argument("--dir", default="/tmp/headwater-bench-wide")
    args = parser.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    gen = duckdb.connect(":memory:")
    lakes: dict[str, Any] = {}
    write_s: dict[str, float] = {"json": 0.0, "shredded": 0.0}
    shred_s = 0.0
    for label, max_columns in (("json", 0), ("shredded", 256)):
        settings = make_settings(root / label, shred_max_columns=max_columns)
        catalog = open_catalog(settings)
        table = ensure_tables(catalog)["events"]
        shredder = Shredder(settings)
        for first in range(0, args.rows, args.batch):
            rows = generate(gen, first, min(args.batch, args.rows - first))
            started = time.perf_counter()
            rows = shredder.apply(table, rows)
            if label == "shredded":
                shred_s += time.perf_counter() - started
            started = time.perf_counter()
            table.append(rows)
            write_s[label] += time.perf_counter() - started
        lakes[label] = (catalog, table, settings)
    _, shredded_table, shredded_settings = lakes["shredded"]
    found = shreds(shredded_table.schema())
    sizes = {label: table_bytes(settings.warehouse_path) for label, (_, _, settings) in lakes.items()}

    db = duckdb.connect(":memory:")
    db.execute("SET TimeZone = 'UTC'")
    view(db, "events_json", lakes["json"][1])
    view(db, "events", shredded_table)
    # the alternative of dropping shredded keys from the JSON: bytes only
    rest = "json_merge_patch(properties, '{" + ", ".join(f'"{k}": null' for k in found) + "}')"
    drop_path = root / "drop.parquet"
    db.execute(
        f"COPY (SELECT * EXCLUDE (properties), CAST({rest} AS VARCHAR) AS properties FROM events) "
        f"TO '{drop_path}' (FORMAT parquet, COMPRESSION zstd)"
    )
    sizes["shredded_keys_dropped_from_json"] = drop_path.stat().st_size

    s3, i3, d3 = found["page_s3"], found["count_i3"], found["amount_d3"]
    json_text = "json_extract_string(properties, '$.\"{}\"')"
    queries = {
        "filter_eq_string": (
            f"SELECT count(*) FROM events_json WHERE {json_text.format('page_s3')} = 'value_7'",
            f"SELECT count(*) FROM events WHERE \"{s3.text}\" = 'value_7'",
            f"SELECT count(*) FROM events WHERE coalesce(\"{s3.text}\", {json_text.format('page_s3')}) = 'value_7'",
        ),
        "breakdown_top10": (
            f"SELECT {json_text.format('page_s20')} AS k, count(*) AS n FROM events_json "
            "GROUP BY k ORDER BY n DESC, k LIMIT 10",
            f'SELECT "{found["page_s20"].text}" AS k, count(*) AS n FROM events GROUP BY k ORDER BY n DESC, k LIMIT 10',
            f'SELECT coalesce("{found["page_s20"].text}", {json_text.format("page_s20")}) AS k, count(*) AS n '
            "FROM events GROUP BY k ORDER BY n DESC, k LIMIT 10",
        ),
        "sum_decimal": (
            f"SELECT round(sum(TRY_CAST({json_text.format('amount_d3')} AS DOUBLE)), 2) FROM events_json",
            f'SELECT round(sum("{d3.number}"), 2) FROM events',
            f'SELECT round(sum(coalesce("{d3.number}", TRY_CAST({json_text.format("amount_d3")} AS DOUBLE))), 2) '
            "FROM events",
        ),
        "filter_gt_integer": (
            f"SELECT count(*) FROM events_json WHERE TRY_CAST({json_text.format('count_i3')} AS DOUBLE) > 500",
            f'SELECT count(*) FROM events WHERE "{i3.number}" > 500',
            f'SELECT count(*) FROM events WHERE TRY_CAST("{i3.text}" AS DOUBLE) > 500',  # text column, cast
        ),
    }
    timings: dict[str, Any] = {}
    for name, (json_sql, column_sql, other_sql) in queries.items():
        json_ms, expected = best(db, json_sql)
        column_ms, got = best(db, column_sql)
        other_ms, other = best(db, other_sql)
        assert got == expected == other, (name, expected, got, other)
        third = "text_column_cast_ms" if name == "filter_gt_integer" else "coalesce_fallback_ms"
        timings[name] = {"json_ms": json_ms, "column_ms": column_ms, third: other_ms}
    date_to = (START + timedelta(seconds=args.rows // 20 + 1)).isoformat()
    trend = parse({
        "kind": "trend", "date_from": START.isoformat(), "date_to": date_to, "breakdown": "page_s20",
        "series": [{"event": "buy", "measure": "sum", "property": "amount_d3"}],
        "filters": [{"property": "flag_b1", "op": "eq", "value": True}],
    })  # fmt: skip
    json_ms, expected = best(db, compile_query(trend).replace("FROM events ", "FROM events_json "))
    column_ms, got = best(db, compile_query(trend, found))
    assert [r[:4] for r in got] == [r[:4] for r in expected]
    timings["insight_trend_sum_breakdown_filter"] = {"json_ms": json_ms, "column_ms": column_ms}

    sample = generate(gen, 0, 50_000).select(["properties"])
    keys = list(found)
    paths = "[" + ", ".join("'$.\"" + k + "\"'" for k in keys) + "]"
    started = time.perf_counter()
    gen.execute(f"SELECT json_extract_string(properties, {paths}) FROM sample").fetchall()
    per_path = time.perf_counter() - started
    started = time.perf_counter()
    Shredder(shredded_settings).extract(sample, list(found.values()))
    transform = time.perf_counter() - started
    for catalog, _, _ in lakes.values():
        close_catalog(catalog)
    kinds = {
        "text_only": sum(1 for s in found.values() if not s.number),
        "with_number": sum(1 for s in found.values() if s.number),
    }
    emit("wide", {
        "rows": args.rows,
        "properties_per_event": sum(KINDS.values()) - KINDS["sp"] + 0.025,
        "shredded_properties": len(found),
        "shredded_columns": kinds,
        "not_shredded": sorted(k for k in (f"object_o{i}" for i in range(5)) if k not in found)
        + sorted(k for k in (f"sparse_sp{i}" for i in range(5)) if k not in found),
        "bytes_per_event": {k: round(v / args.rows, 1) for k, v in sizes.items()},
        "writer": {
            "shred_apply_s_per_100k": round(shred_s / args.rows * 100_000, 2),
            "append_s_per_100k": {k: round(v / args.rows * 100_000, 2) for k, v in write_s.items()},
            "extract_50k_json_transform_s": round(transform, 2),
            "extract_50k_json_extract_string_paths_s": round(per_path, 2),
        },
        "queries": timings,
    })  # fmt: skip


if __name__ == "__main__":
    main()
