"""GA4 export rows to events rows: JSON built by kernels is valid and exact, ids are stable, odd input is caught."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from headwater.lake.ga4 import plan
from headwater.lake.ga4_map import invalid_rows, map_rows
from headwater.lake.ga4_read import Block, ExportFile, Rejected, name_day, read_export
from headwater.lake.ga4_schema import EXPORT, conform_table
from headwater.loadgen.ga4 import bigquery_json, ga4_day


def row(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_date": "20250301", "event_timestamp": 1_740_787_200_000_000, "event_name": "page_view",
        "user_pseudo_id": "p1", "event_params": [], "user_properties": [], "items": [],
    }  # fmt: skip
    return {**base, **fields}


def param(key: str, value: Any) -> dict[str, Any]:
    kind = {str: "string_value", int: "int_value", float: "double_value"}[type(value)]
    return {"key": key, "value": {kind: value}}


def mapped(*rows: dict[str, Any], intraday: bool = False, extras: pa.Table | None = None) -> list[dict[str, Any]]:
    table = pa.Table.from_pylist(list(rows), schema=EXPORT)
    extras = extras if extras is not None else pa.table({"_": [None] * len(rows)}).drop_columns(["_"])
    return map_rows(table, extras, intraday, 0, "s").to_pylist()


def test_values_of_every_kind_round_trip_through_the_json() -> None:
    text = 'quote " backslash \\ newline \n tab \t control \x01 unicode é ✓ 😀'
    params = [param("s", text), param("i", -(2**62)), param("d", 0.1 + 0.2), param("big", 1e300),
              param("nan", math.nan), param("inf", -math.inf), {"key": "none", "value": {}}]  # fmt: skip
    out = mapped(row(event_params=params, user_properties=[{"key": 'k"ey', "value": {"int_value": 7}}]))[0]
    props = orjson.loads(out["properties"])
    assert props == {"s": text, "i": -(2**62), "d": 0.30000000000000004, "big": 1e300, "nan": "NaN",
                     "inf": "-Infinity", "none": None}  # fmt: skip
    assert orjson.loads(out["traits"]) == {'k"ey': 7}
    context = orjson.loads(out["context"])
    assert context == {"ga4": {"event_date": "20250301", "intraday": False, "user_properties_set": {'k"ey': None}}}


def test_nulls_and_empty_records_are_left_out() -> None:
    out = mapped(row(device={"category": "mobile", "web_info": {"browser": None}}, geo={"city": None}))[0]
    assert out["properties"] is None and out["traits"] is None
    assert orjson.loads(out["context"]) == {
        "device": {"category": "mobile"}, "ga4": {"event_date": "20250301", "intraday": False}}  # fmt: skip
    items = [{"item_id": "A", "item_params": [param("color", "red")]}, {"item_id": None, "item_params": []}]
    props = orjson.loads(mapped(row(items=items, ecommerce={"transaction_id": None}))[0]["properties"])
    assert props == {"items": [{"item_id": "A", "item_params": {"color": "red"}}, None]}


def test_repeated_and_reserved_keys() -> None:
    params = [param("a", 1), param("a", 2), param("items", "x")]
    out = mapped(row(event_params=params, items=[{"item_id": "I"}]))[0]
    assert orjson.loads(out["properties"]) == {"a": 2, "param:items": "x", "items": [{"item_id": "I"}]}


def test_ids_follow_the_content_not_the_table_kind_or_extra_columns() -> None:
    base = row(event_params=[param("page_location", "/")])
    first, again, other = mapped(base, base, row(event_params=[param("page_location", "/x")]))
    assert first["event_id"] == again["event_id"] != other["event_id"]
    assert first["event_id"].startswith("ga4-20250301-") and len(first["event_id"]) == 13 + 32
    extras = pa.table({"publisher": [{"ad_unit_id": "u1"}]})
    intraday = mapped(base, intraday=True, extras=extras)[0]
    assert intraday["event_id"] == first["event_id"]
    assert orjson.loads(intraday["context"])["ga4"] == {
        "event_date": "20250301", "intraday": True, "publisher": {"ad_unit_id": "u1"}}  # fmt: skip


def test_rows_that_cannot_be_events() -> None:
    rows = [row(), row(event_name=None), row(event_date="2025-03-01"), row(event_date="20250230"),
            row(event_timestamp=None), row(event_timestamp=1_740_787_200_000_000 + 3 * 86_400_000_000)]  # fmt: skip
    bad = invalid_rows(pa.Table.from_pylist(rows, schema=EXPORT))
    assert bad == {
        1: "event_name: required",
        2: "event_date: expected a date as YYYYMMDD, got '2025-03-01'",
        3: "event_date: expected a date as YYYYMMDD, got '20250230'",
        4: "event_timestamp: required",
        5: "event_timestamp 1741046400000000 (UTC day 2025-03-04) is more than a day away from event_date 20250301",
    }


def test_conform_takes_any_field_order_strings_for_integers_and_keeps_unknown_columns() -> None:
    table = pa.table({
        "unknown_new_column": [1, 2], "event_name": ["a", "b"], "event_timestamp": ["17", " 18 "],
        "event_params": [[{"value": {"int_value": "3"}, "key": "k"}], [{"key": "k", "value": {"int_value": "x"}}]],
    })  # fmt: skip
    rows, extras, bad = conform_table(table)
    assert rows.schema == EXPORT and extras.column_names == ["unknown_new_column"]
    assert rows.column("event_timestamp").to_pylist() == [17, 18]
    assert rows.column("event_params").to_pylist()[0][0]["value"]["int_value"] == 3
    assert bad == {1: "event_params[].value.int_value: 'x' is not an integer"}


def test_ndjson_with_integers_as_numbers_or_strings_and_broken_lines(tmp_path: Path) -> None:
    rows = [bigquery_json(r) for r in ga4_day(dt.date(2025, 3, 1), 30).to_pylist()]
    numbers = orjson.dumps(ga4_day(dt.date(2025, 3, 1), 30).to_pylist()[0])  # integers as numbers, nulls written
    lines = [orjson.dumps(r) for r in rows] + [b"{not json", numbers, b"", b"[1, 2]"]
    path = tmp_path / "events_20250301.json"
    path.write_bytes(b"\n".join(lines))
    items = list(read_export(ExportFile.local(path)))
    blocks = [i for i in items if isinstance(i, Block)]
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert sum(b.rows.num_rows for b in blocks) == 31
    assert [r.number for r in rejected] == [31, 34]
    assert rejected[0].reason.startswith("events_20250301.json line 31: cannot be read: ")
    read = pa.concat_tables([b.rows for b in blocks]).to_pylist()
    assert read[30]["event_timestamp"] == read[0]["event_timestamp"]  # the same row, however the integers came


def test_file_names_and_groups() -> None:
    assert name_day("events_20250301-000000000003.avro") == ("20250301", False)
    assert name_day("analytics_1/events_intraday_20250301.json.gz") == ("20250301", True)
    assert name_day("events_20251399.parquet") == (None, False)
    files = [ExportFile(n, lambda: None, key=n, day=d, intraday=i)  # type: ignore[arg-type,return-value]
             for n, d, i in [("a", "20250302", True), ("b", "20250301", False), ("c", "20250301", True),
                             ("d", None, False), ("b", "20250301", False)]]  # fmt: skip
    groups = plan(files)
    assert [(g.day, [f.name for f in g.files], [f.name for f in g.superseded]) for g in groups] == [
        ("20250301", ["b"], ["c"]), ("20250302", ["a"], []), (None, ["d"], [])]  # fmt: skip
