"""GA4 export rows to `events` rows, column at a time with Arrow compute kernels.

- `event_id`: `ga4-<event_date>-<blake2b-128 of the row's content, hex>` (the intraday flag and columns
  outside the known export schema left out): the same row gets the same id on every import and from every
  file format, and a day's rows are found by the id's prefix (headwater.lake.ga4 replaces days that way).
  Identical rows (GA4 exports have some) share their id: all are kept, `count(DISTINCT event_id)` counts
  them once.
- `type` track, `event` = event_name, `user_id`, `anonymous_id` = user_pseudo_id, `timestamp` =
  event_timestamp (µs, UTC), `received_at` = the import's time, `source` = the import's source.
- `properties`: event_params flattened to `{key: the typed value that is set}`, plus `event_value_in_usd`,
  `ecommerce` and `items` (each item's item_params flattened the same way) when present. A parameter named
  like one of those three is kept as `param:<name>`; a key repeated within one event: the last one wins.
- `context`: `device`, `geo`, `app_info`, `traffic_source`, `platform`, `stream_id`, and `ga4` with
  `event_date`, `intraday`, every other export field (privacy_info, batch_*, collected_traffic_source, ...),
  `user_properties_set` (set_timestamp_micros per user property) and columns outside the known schema.
- `traits`: user_properties flattened like the params.
NULL fields are left out of the JSON and empty objects are NULL. Doubles that are not finite are written
as the strings "NaN", "Infinity", "-Infinity" (as BigQuery's JSON export does).

The JSON is built by kernels (string joins over flattened lists and struct fields); only values that need
escaping (quotes, backslashes, control characters) and rows that repeat a parameter key go through orjson.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.events import EVENTS_SCHEMA
from headwater.lake.ga4_schema import EXPORT

CONTEXT_FIELDS = ("device", "geo", "app_info", "traffic_source", "platform", "stream_id")
PROPERTY_FIELDS = ("event_value_in_usd", "ecommerce", "items")
MAPPED = {"event_date", "event_timestamp", "event_name", "event_params", "user_id", "user_pseudo_id",
          "user_properties", *CONTEXT_FIELDS, *PROPERTY_FIELDS}  # fmt: skip
GA4_FIELDS = tuple(f.name for f in EXPORT if f.name not in MAPPED)
RESERVED = frozenset(PROPERTY_FIELDS)
DATE_PATTERN = r"^[0-9]{8}$"
US_PER_DAY = 86_400_000_000
VALUE_FIELDS = ("string_value", "int_value", "double_value", "float_value")
"""The typed fields of a GA4 value record, in the order the one that is set is looked for."""


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def json_strings(values: pa.Array) -> pa.Array:
    """JSON string literals of a string array (NULL stays NULL): each distinct value encoded once by orjson."""
    encoded = pc.dictionary_encode(values)
    literals = [orjson.dumps(v).decode() for v in encoded.dictionary.to_pylist()]
    return pc.take(pa.array(literals, pa.string()), encoded.indices)


def _numbers(values: pa.Array) -> pa.Array:
    text = pc.cast(values, pa.string())
    finite = pc.is_finite(values)
    if pc.all(pc.fill_null(finite, True)).as_py():
        return text
    named = pc.if_else(pc.is_nan(values), '"NaN"', pc.if_else(pc.greater(values, 0), '"Infinity"', '"-Infinity"'))
    return pc.if_else(pc.fill_null(finite, True), text, named)


def _cat(*parts: str | pa.Array) -> pa.Array:
    """The parts concatenated per row; NULL where an array part is NULL. (binary_join_element_wise returns an
    empty array when an input is NULL in every row: that case is answered here.)"""
    arrays = [p for p in parts if not isinstance(p, str)]
    n = len(arrays[0])
    if any(a.null_count == n for a in arrays):
        return pa.nulls(n, pa.string())
    return pc.binary_join_element_wise(*parts, "")


def _object(named: list[tuple[str, pa.Array]], n: int, *raw: pa.Array | None) -> pa.Array:
    """`{"name":json,...}` of the members that are not NULL (after the `raw` member texts); NULL when none is.

    (pyarrow's binary_join_element_wise with null_handling="skip" drops rows, so: each member that is there
    gets a leading comma, the members and a closing brace are concatenated, and the first character becomes
    the opening brace.)"""
    texts = [text for text in raw if text is not None and text.null_count < n]
    parts = [_cat(",", text) for text in texts]
    for name, text in named:
        if text.null_count < n:
            parts.append(_cat("," + orjson.dumps(name).decode() + ":", text))
            texts.append(text)
    if not parts:
        return pa.nulls(n, pa.string())
    body = pc.binary_join_element_wise(*(pc.fill_null(p, "") for p in parts), "}", "")
    body = pc.utf8_replace_slice(body, 0, 1, "{")
    present = pc.is_valid(texts[0])
    for text in texts[1:]:
        present = pc.or_(present, pc.is_valid(text))
    return _masked(body, present)


def _masked(values: pa.Array, keep: pa.Array) -> pa.Array:
    """`values` NULL where `keep` is false (no copy of the strings: a new validity bitmap)."""
    if pc.all(keep).as_py():
        return values
    values = _array(values)
    if values.offset or keep.offset:
        return pc.if_else(keep, values, pa.scalar(None, values.type))
    valid = pc.and_(values.is_valid(), keep) if values.null_count else keep
    return pa.Array.from_buffers(values.type, len(values), [valid.buffers()[1], *values.buffers()[1:]])


def _offsets(lists: pa.Array) -> pa.Array:
    lengths = pc.fill_null(pc.list_value_length(lists), 0)
    return pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(lengths).cast(pa.int32())])


def _joined(lists: pa.Array, parts: pa.Array, opening: str, closing: str) -> pa.Array:
    """Per list: its parts (aligned with lists.flatten()) joined by commas in `opening`...`closing`, NULL
    when it is empty or NULL."""
    grouped = pa.ListArray.from_arrays(_offsets(lists), pc.fill_null(parts, "null"))
    text = _cat(opening, pc.binary_join(grouped, ","), closing)
    empty = pc.fill_null(pc.equal(pc.list_value_length(lists), 0), True)
    return pc.if_else(empty, pa.scalar(None, pa.string()), text)


def typed_value(values: pa.StructArray) -> pa.Array:
    """JSON of the typed value that is set in each GA4 `value` record ('null' when none is)."""
    fields = [values.field(name) for name in VALUE_FIELDS]
    texts = [json_strings(fields[0]), pc.cast(fields[1], pa.string()), _numbers(fields[2]), _numbers(fields[3])]
    return pc.coalesce(*texts, pa.scalar("null"))


def key_members(lists: pa.Array | pa.ChunkedArray, value: Any = typed_value) -> pa.Array:
    """`"key":value,...` per list of GA4 key/value records (NULL when empty); keys NULL are left out."""
    lists = _array(lists)
    flat = lists.flatten()
    keys = pc.dictionary_encode(flat.field("key"))
    names = pa.array([None if k is None else orjson.dumps(k).decode() + ":" for k in keys.dictionary.to_pylist()],
                     pa.string())  # fmt: skip
    members = _cat(pc.take(names, keys.indices), value(flat.field("value")))
    offsets = _offsets(lists)
    if members.null_count:  # (binary_join gives NULL for a list holding a NULL): those members are left out
        present = pc.is_valid(members)
        parents = pc.filter(pc.list_parent_indices(lists), present).to_numpy(zero_copy_only=False)
        counts = np.bincount(parents, minlength=len(lists))
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        members = pc.filter(members, present)
    text = pc.binary_join(pa.ListArray.from_arrays(offsets, members), ",")
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def key_values(lists: pa.Array | pa.ChunkedArray, value: Any = typed_value) -> pa.Array:
    """`{"key": value, ...}` per list of GA4 key/value records (NULL when empty)."""
    members = key_members(lists, value)
    return _cat("{", members, "}")


def to_json(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """JSON text per value, NULL fields left out, NULL when null or an empty object or list."""
    values = _array(values)
    kind = values.type
    if pa.types.is_struct(kind):
        named = [(kind.field(i).name, to_json(values.field(i))) for i in range(kind.num_fields)]
        text = _object(named, len(values))
        return _masked(text, values.is_valid()) if values.null_count else text
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        item = kind.value_type
        if pa.types.is_struct(item) and {item.field(i).name for i in range(item.num_fields)} == {"key", "value"}:
            return key_values(values)
        return _joined(values, to_json(values.flatten()), "[", "]")
    if pa.types.is_floating(kind):
        return _numbers(values)
    if pa.types.is_integer(kind):
        return pc.cast(values, pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(values, "true", "false")
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return json_strings(values)
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string())
    return pa.array([None if v is None else orjson.dumps(v, default=str).decode() for v in values.to_pylist()],
                    pa.string())  # fmt: skip


def _set_times(values: pa.StructArray) -> pa.Array:
    return pc.fill_null(pc.cast(values.field("set_timestamp_micros"), pa.string()), "null")


def map_rows(rows: pa.Table, extras: pa.Table, intraday: bool, received_us: int, source: str) -> pa.Table:
    """`events` rows (EVENTS_SCHEMA) of valid export rows (EXPORT schema), in their order."""
    n = rows.num_rows
    col = rows.column
    params = key_members(col("event_params"))
    property_parts = [(name, to_json(col(name))) for name in PROPERTY_FIELDS]
    props = _object(property_parts, n, params)
    traits = key_values(col("user_properties"))
    ga4_core = [(name, to_json(col(name))) for name in GA4_FIELDS]
    ga4_core.append(("user_properties_set", key_values(col("user_properties"), _set_times)))
    devices = [(name, to_json(col(name))) for name in CONTEXT_FIELDS]
    date = _array(col("event_date"))
    head = _cat('"event_date":', json_strings(date), ',"intraday":true' if intraday else ',"intraday":false')
    extra = [(name, to_json(extras.column(name))) for name in extras.column_names]
    context = _object([*devices, ("ga4", _object([*ga4_core, *extra], n, head))], n)
    user_id, pseudo = _array(col("user_id")), _array(col("user_pseudo_id"))
    micros = _array(col("event_timestamp"))
    parts = [_array(col("event_name")), pc.cast(micros, pa.string()), user_id, pseudo, params, traits]
    parts += [text for _, text in (*property_parts, *devices, *ga4_core)]
    content = pc.binary_join_element_wise(*(pc.fill_null(part, "") for part in parts), "\x1f")
    event_ids = _cat("ga4-", date, "-", pa.array(_digests(content), pa.string()))
    repeated = _repeated_keys(col("event_params"), reserved=True)
    if pc.any(repeated).as_py():
        props = _fix(props, rows, repeated, "event_params", True)
    repeated_traits = _repeated_keys(col("user_properties"), reserved=False)
    if pc.any(repeated_traits).as_py():
        traits = _fix(traits, rows, repeated_traits, "user_properties", False)
    columns: dict[str, Any] = {
        "event_id": event_ids, "type": pa.repeat(pa.scalar("track"), n), "event": col("event_name"),
        "user_id": user_id, "anonymous_id": pseudo, "group_id": pa.nulls(n, pa.string()),
        "previous_id": pa.nulls(n, pa.string()), "timestamp": pc.cast(micros, pa.timestamp("us")),
        "received_at": pa.repeat(pa.scalar(received_us, pa.timestamp("us")), n),
        "sent_at": pa.nulls(n, pa.timestamp("us")),
        "source": pa.repeat(pa.scalar(source), n), "properties": props, "context": context, "traits": traits,
    }  # fmt: skip
    return pa.Table.from_pydict(columns).cast(EVENTS_SCHEMA)


def _digests(texts: pa.Array) -> list[str]:
    """blake2b-128 (hex) of each string, hashed straight from the Arrow buffer (no Python strings)."""
    texts = _array(texts)
    if pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())
    offsets = np.frombuffer(texts.buffers()[1], np.int32, len(texts) + 1, texts.offset * 4).tolist()
    data = memoryview(texts.buffers()[2] or b"")
    blake = hashlib.blake2b
    return [blake(data[a:b], digest_size=16).hexdigest() for a, b in itertools.pairwise(offsets)]


def _repeated_keys(lists: pa.ChunkedArray, reserved: bool) -> pa.Array:
    """Rows whose key/value list repeats a key (or, for params, uses a name the mapping sets itself)."""
    lists = _array(lists)
    flat_keys = lists.flatten().field("key")
    parents = pc.list_parent_indices(lists)
    pairs = pa.table({"row": parents, "key": flat_keys})
    counts = pairs.group_by(["row", "key"]).aggregate([("row", "count")])
    rows = pc.filter(counts.column("row"), pc.greater(counts.column("row_count"), 1))
    if reserved:
        named = pc.is_in(flat_keys, value_set=pa.array(sorted(RESERVED)))
        rows = pa.concat_arrays([_array(rows), pc.filter(parents, named)])
    mask = pc.is_in(pa.array(range(len(lists)), pa.int64()), value_set=_array(rows).cast(pa.int64()))
    return mask


def _flat(pairs: list[dict[str, Any]] | None, reserved: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, value = pair.get("key"), pair.get("value") or {}
        if key is None:
            continue
        typed = next((value[k] for k in VALUE_FIELDS if value.get(k) is not None), None)
        out[f"param:{key}" if reserved and key in RESERVED else key] = typed  # repeated: the last one wins
    return out


def _fix(texts: pa.Array, rows: pa.Table, picked: pa.Array, column: str, reserved: bool) -> pa.Array:
    """JSON of the picked rows rebuilt with orjson (a key repeated, or a reserved name: rare)."""
    out = texts.to_pylist()
    for row in pc.indices_nonzero(picked).to_pylist():
        record = rows.slice(row, 1).to_pylist()[0]
        current = orjson.loads(out[row]) if out[row] else {}
        kept = {k: current[k] for k in RESERVED if k in current} if reserved else {}
        flat = {**_flat(record[column], reserved), **kept}
        out[row] = orjson.dumps(flat).decode() if flat else None
    return pa.array(out, pa.string())


def invalid_rows(rows: pa.Table) -> dict[int, str]:
    """{row: reason} for rows that cannot become events: no event_name, event_date or event_timestamp, an
    event_date that is not a YYYYMMDD date, or a timestamp whose UTC day is more than a day away from the
    event_date (the day in the property's time zone, UTC-12 to UTC+14: within a day of the UTC day)."""
    bad: dict[int, str] = {}
    name, date, micros = rows.column("event_name"), rows.column("event_date"), rows.column("event_timestamp")
    days = date_days(date)
    checks = [
        (pc.or_kleene(pc.is_null(name), pc.equal(name, "")), "event_name: required"),
        (pc.is_null(date), "event_date: required"),
        (pc.is_null(micros), "event_timestamp: required"),
        (pc.and_(pc.is_valid(date), pc.is_null(days)), "event_date: expected a date as YYYYMMDD"),
    ]
    for mask, reason in checks:
        for row in pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist():
            bad.setdefault(row, f"{reason}, got {date[row].as_py()!r}" if "YYYYMMDD" in reason else reason)
    ts_days = pc.floor(pc.divide(pc.cast(micros, pa.float64()), float(US_PER_DAY)))
    gap = pc.abs(pc.subtract(ts_days, pc.cast(days, pa.float64())))
    for row in pc.indices_nonzero(pc.fill_null(pc.greater(gap, 1.0), False)).to_pylist():
        utc_day = dt.date(1970, 1, 1) + dt.timedelta(days=int(ts_days[row].as_py()))
        bad.setdefault(
            row, f"event_timestamp {micros[row].as_py()} (UTC day {utc_day}) is more than a day away from "
            f"event_date {date[row].as_py()}"
        )  # fmt: skip
    return bad


def date_days(date: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Days since 1970-01-01 of YYYYMMDD strings (NULL where it is not one: 8 digits, a real date)."""
    digits = pc.fill_null(pc.match_substring_regex(date, DATE_PATTERN), False)
    parsed = pc.strptime(pc.if_else(digits, date, None), format="%Y%m%d", unit="s", error_is_null=True)
    real = pc.equal(pc.strftime(parsed, format="%Y%m%d"), date)  # strptime takes 20250230 for March 2nd
    return pc.if_else(real, pc.divide(pc.cast(parsed, pa.int64()), 86_400), None)
