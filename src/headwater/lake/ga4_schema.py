"""The GA4 / Firebase BigQuery export schema (`events_YYYYMMDD`, `events_intraday_YYYYMMDD`) as Arrow types.

BigQuery types map as INTEGER -> int64, FLOAT -> float64, STRING -> string, BOOLEAN -> bool, RECORD -> struct,
REPEATED RECORD -> list of struct. `EXPORT` is the canonical form every input (Parquet, Avro, NDJSON) is
conformed to (`conform`): fields found by name whatever their order, missing ones NULL, INTEGER fields
given as JSON strings (BigQuery's JSON export writes INT64 that way) parsed. Columns outside it (a newer
export's additions) are kept apart as extras.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

S, INT, F, B = pa.string(), pa.int64(), pa.float64(), pa.bool_()


def _record(*fields: tuple[str, pa.DataType]) -> pa.StructType:
    return pa.struct([pa.field(name, kind) for name, kind in fields])


def _strings(*names: str) -> pa.StructType:
    return _record(*((name, S) for name in names))


VALUE = _record(("string_value", S), ("int_value", INT), ("float_value", F), ("double_value", F))
PARAMS = pa.list_(_record(("key", S), ("value", VALUE)))
USER_VALUE = _record(*((f.name, f.type) for f in VALUE), ("set_timestamp_micros", INT))
USER_PROPERTIES = pa.list_(_record(("key", S), ("value", USER_VALUE)))
ITEM = _record(
    *((name, S) for name in ("item_id", "item_name", "item_brand", "item_variant", "item_category")),
    *((f"item_category{n}", S) for n in range(2, 6)),
    ("price_in_usd", F), ("price", F), ("quantity", INT), ("item_revenue_in_usd", F), ("item_revenue", F),
    ("item_refund_in_usd", F), ("item_refund", F),
    *((name, S) for name in ("coupon", "affiliation", "location_id", "item_list_id", "item_list_name",
                             "item_list_index", "promotion_id", "promotion_name", "creative_name", "creative_slot")),
    ("item_params", PARAMS),
)  # fmt: skip
DEVICE = _record(
    *((name, S) for name in ("category", "mobile_brand_name", "mobile_model_name", "mobile_marketing_name",
                             "mobile_os_hardware_model", "operating_system", "operating_system_version", "vendor_id",
                             "advertising_id", "language", "is_limited_ad_tracking")),
    ("time_zone_offset_seconds", INT), ("browser", S), ("browser_version", S),
    ("web_info", _strings("browser", "browser_version", "hostname")),
)  # fmt: skip
ECOMMERCE = _record(
    ("total_item_quantity", INT), ("purchase_revenue_in_usd", F), ("purchase_revenue", F), ("refund_value_in_usd", F),
    ("refund_value", F), ("shipping_value_in_usd", F), ("shipping_value", F), ("tax_value_in_usd", F),
    ("tax_value", F), ("unique_items", INT), ("transaction_id", S),
)  # fmt: skip
EXPORT = pa.schema(
    [
        ("event_date", S),
        ("event_timestamp", INT),
        ("event_name", S),
        ("event_params", PARAMS),
        ("event_previous_timestamp", INT),
        ("event_value_in_usd", F),
        ("event_bundle_sequence_id", INT),
        ("event_server_timestamp_offset", INT),
        ("user_id", S),
        ("user_pseudo_id", S),
        ("privacy_info", _strings("analytics_storage", "ads_storage", "uses_transient_token")),
        ("user_properties", USER_PROPERTIES),
        ("user_first_touch_timestamp", INT),
        ("user_ltv", _record(("revenue", F), ("currency", S))),
        ("device", DEVICE),
        ("geo", _strings("city", "country", "continent", "region", "sub_continent", "metro")),
        ("app_info", _strings("id", "version", "install_store", "firebase_app_id", "install_source")),
        ("traffic_source", _strings("name", "medium", "source")),
        ("stream_id", S),
        ("platform", S),
        ("event_dimensions", _strings("hostname")),
        ("ecommerce", ECOMMERCE),
        ("items", pa.list_(ITEM)),
        (
            "collected_traffic_source",
            _strings(
                "manual_campaign_id",
                "manual_campaign_name",
                "manual_source",
                "manual_medium",
                "manual_term",
                "manual_content",
                "manual_source_platform",
                "manual_creative_format",
                "manual_marketing_tactic",
                "gclid",
                "dclid",
                "srsltid",
            ),
        ),
        ("is_active_user", B),
        ("batch_event_index", INT),
        ("batch_page_id", INT),
        ("batch_ordering_id", INT),
    ]
)
REQUIRED = ("event_date", "event_timestamp", "event_name")
INTEGER_TEXT = re.compile(r"^\s*-?\d{1,19}\s*$")


class Unconvertible(ValueError):
    """Values of a field that do not convert to the export schema's type; `rows` are the rows holding them."""

    def __init__(self, path: str, rows: pa.Array, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.rows = rows


def wire_schema(schema: pa.Schema | pa.DataType = EXPORT, integer: pa.DataType = S) -> Any:
    """`schema` with every int64 replaced by `integer` (as BigQuery's JSON export writes INT64: strings)."""
    if isinstance(schema, pa.Schema):
        return pa.schema([pa.field(f.name, wire_schema(f.type, integer)) for f in schema])
    if pa.types.is_struct(schema):
        return pa.struct([pa.field(f.name, wire_schema(f.type, integer)) for f in schema])
    if pa.types.is_list(schema):
        return pa.list_(pa.field(schema.value_field.name, wire_schema(schema.value_type, integer)))
    return integer if pa.types.is_int64(schema) else schema


def conform_table(table: pa.Table | pa.RecordBatch) -> tuple[pa.Table, pa.Table, dict[int, str]]:
    """(rows in EXPORT form, extra columns as read, {row: reason} of rows with a value that does not convert).

    Rows in the last map are still present in the first table (their bad value NULL); callers quarantine them."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    table = table.combine_chunks()
    bad: dict[int, str] = {}
    columns = []
    for field in EXPORT:
        if field.name in table.column_names:
            chunk = table.column(field.name)
            array = chunk.chunk(0) if chunk.num_chunks == 1 else pa.concat_arrays(chunk.chunks)
            columns.append(_conform(array, field.type, field.name, bad, None))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    extras = [name for name in table.column_names if name not in EXPORT.names]
    return pa.Table.from_arrays(columns, schema=EXPORT), table.select(extras), bad


def _conform(array: pa.Array, target: pa.DataType, path: str, bad: dict[int, str], rows: pa.Array | None) -> pa.Array:
    """`array` as `target`; `rows` maps its elements to table rows (None: they are the rows)."""
    kind = array.type
    if kind == target:
        return array
    if pa.types.is_null(kind):
        return pa.nulls(len(array), target)
    if pa.types.is_dictionary(kind):
        return _conform(array.dictionary_decode(), target, path, bad, rows)
    if pa.types.is_struct(target):
        if not pa.types.is_struct(kind):
            return _unconvertible(array, target, path, bad, rows, f"expected a record, got {kind}")
        names = [kind.field(i).name for i in range(kind.num_fields)]
        validity = array.is_valid() if array.null_count else None
        children = []
        for field in target:
            if field.name in names:
                child = array.field(field.name)
                children.append(_conform(child, field.type, f"{path}.{field.name}", bad, rows))
            else:
                children.append(pa.nulls(len(array), field.type))
        mask = pc.invert(validity) if validity is not None else None
        return pa.StructArray.from_arrays(children, fields=list(target), mask=mask)
    if pa.types.is_list(target):
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
            return _unconvertible(array, target, path, bad, rows, f"expected a repeated field, got {kind}")
        values = array.flatten()  # (values under NULL lists are left out, as by list_parent_indices)
        lengths = pc.fill_null(pc.list_value_length(array), 0)
        offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(lengths).cast(pa.int32())])
        parents = pc.list_parent_indices(array)
        element_rows = parents if rows is None else pc.take(rows, parents)
        values = _conform(values, target.value_type, path + "[]", bad, element_rows)
        mask = array.is_null() if array.null_count else None
        return pa.ListArray.from_arrays(offsets, values, type=target, mask=mask)
    if pa.types.is_int64(target) and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        ok = pc.match_substring_regex(array, INTEGER_TEXT.pattern)
        wrong = pc.and_kleene(pc.is_valid(array), pc.invert(pc.fill_null(ok, False)))
        if pc.any(wrong).as_py():
            _note(bad, wrong, array, path, rows, "is not an integer")
            array = pc.if_else(wrong, pa.scalar(None, kind), array)
        return pc.cast(pc.utf8_trim_whitespace(array), target)
    if pa.types.is_floating(target) and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        # BigQuery's JSON export writes NaN and Infinity as strings
        return (
            pc.cast(array, target, safe=False)
            if _all_numbers(array)
            else _unconvertible(array, target, path, bad, rows, "is not a number")
        )
    try:
        return pc.cast(array, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return _unconvertible(array, target, path, bad, rows, f"does not convert to {target}: {exc}")


def _all_numbers(array: pa.Array) -> bool:
    try:
        pc.cast(array, F)
    except pa.ArrowInvalid:
        return False
    return True


def _unconvertible(
    array: pa.Array, target: pa.DataType, path: str, bad: dict[int, str], rows: pa.Array | None, why: str
) -> pa.Array:
    """NULL for every value; every row that had one is noted as bad."""
    _note(bad, pc.is_valid(array), array, path, rows, why)
    return pa.nulls(len(array), target)


def _note(bad: dict[int, str], wrong: pa.Array, array: pa.Array, path: str, rows: pa.Array | None, why: str) -> None:
    picked = pc.indices_nonzero(wrong)
    values = pc.take(array, picked).to_pylist()
    where = (picked if rows is None else pc.take(rows, picked)).to_pylist()
    for row, value in zip(where, values, strict=True):
        if row not in bad:
            shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
            bad[row] = f"{path}: {shown[:60]} {why}"
