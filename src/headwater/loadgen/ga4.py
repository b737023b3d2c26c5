"""GA4 / Firebase BigQuery export files for tests and benchmarks: the real export schema, as Parquet, Avro
(BigQuery's Avro export: nullable unions, repeated fields as arrays) or NDJSON (BigQuery's JSON export:
INT64 as strings, NULL fields left out).

`ga4_day(day, rows)` is a day of a web + app property: sessions of page views, scrolls, clicks and an
e-commerce funnel with items, event parameters of every value type, user properties, device, geo, app and
traffic source. `intraday_of(full)` is what the intraday table held earlier that day: the events before a
cut-off, without the attribution the daily table adds later.
"""

from __future__ import annotations

import datetime as dt
import gzip
import random
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from headwater.lake.ga4_schema import EXPORT

PAGES = ["/", "/pricing", "/card-reader", "/signup", "/blog/payments", "/shop", "/shop/air", "/checkout", "/help"]
COUNTRIES = [
    ("Germany", "Europe", "Western Europe", ["Berlin", "Munich", "Hamburg"]),
    ("United Kingdom", "Europe", "Northern Europe", ["London", "Manchester"]),
    ("France", "Europe", "Western Europe", ["Paris", "Lyon"]),
    ("Brazil", "Americas", "South America", ["Sao Paulo", "Rio de Janeiro"]),
    ("United States", "Americas", "Northern America", ["New York", "Chicago"]),
]
SOURCES = [("google", "organic", "(organic)"), ("(direct)", "(none)", "(direct)"), ("newsletter", "email", "spring")]
PRODUCTS = [("SKU_AIR", "Air card reader", 39.0), ("SKU_SOLO", "Solo card reader", 79.0), ("SKU_ROLL", "Paper", 9.5)]
FUNNEL = ["session_start", "page_view", "scroll", "user_engagement", "view_item", "add_to_cart", "purchase"]


def _value(value: Any) -> dict[str, Any]:
    """A GA4 `value` record: exactly one of its typed fields set."""
    out: dict[str, Any] = {"string_value": None, "int_value": None, "float_value": None, "double_value": None}
    if isinstance(value, str):
        out["string_value"] = value
    elif isinstance(value, int):
        out["int_value"] = value
    else:
        out["double_value"] = value
    return out


def _params(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in values.items()]


def ga4_day(
    day: dt.date, rows: int, seed: int = 0, users: int | None = None, tz_hours: float = 2.0, platform: str = "WEB"
) -> pa.Table:
    """About `rows` export rows of `day` (exactly `rows`), in the export's row order (by time)."""
    rng = random.Random(f"{seed}:{day.isoformat()}")
    users = users or max(1, rows // 20)
    tz = dt.timezone(dt.timedelta(hours=tz_hours))
    start = dt.datetime.combine(day, dt.time(), tz)
    out: list[dict[str, Any]] = []
    while len(out) < rows:
        person = rng.randrange(users)
        pseudo = f"{1_000_000 + person}.{1_700_000_000 + person * 7}"
        user_id = f"merchant-{person}" if person % 3 == 0 else None
        session = int(start.timestamp()) + rng.randrange(86_400 - 1_800)
        country, continent, sub, cities = COUNTRIES[person % len(COUNTRIES)]
        source, medium, name = SOURCES[person % len(SOURCES)]
        mobile = person % 2 == 0
        steps = FUNNEL[: rng.randint(2, len(FUNNEL))]
        micros = session * 1_000_000 + rng.randrange(1_000_000)
        previous = None
        for index, event in enumerate(steps):
            if len(out) >= rows:
                break
            micros += rng.randrange(1, 90_000_000)
            micros = min(micros, int((start + dt.timedelta(days=1)).timestamp() * 1_000_000) - 1)
            page = PAGES[(person + index) % len(PAGES)]
            params: dict[str, Any] = {
                "ga_session_id": session, "ga_session_number": 1 + person % 5,
                "page_location": "https://example.com" + page, "page_title": page.strip("/").title() or "Home",
                "engagement_time_msec": rng.randrange(10, 60_000),
                "session_engaged": "1" if index else "0",
            }  # fmt: skip
            if event == "scroll":
                params["percent_scrolled"] = 90
            items: list[dict[str, Any]] = []
            ecommerce = None
            value_usd = None
            if event in ("view_item", "add_to_cart", "purchase"):
                sku, title, price = PRODUCTS[person % len(PRODUCTS)]
                quantity = 1 + person % 3
                items = [_item(sku, title, price, quantity, index)]
                params.update(currency="EUR", value=round(price * quantity, 2))
                if event == "purchase":
                    transaction = f"T-{day:%Y%m%d}-{len(out)}"
                    params["transaction_id"] = transaction
                    value_usd = round(price * quantity * 1.08, 2)
                    ecommerce = _ecommerce(transaction, price, quantity)
            out.append({
                "event_date": day.strftime("%Y%m%d"), "event_timestamp": micros, "event_name": event,
                "event_params": _params(params), "event_previous_timestamp": previous, "event_value_in_usd": value_usd,
                "event_bundle_sequence_id": 1000 + len(out), "event_server_timestamp_offset": rng.randrange(500, 2000),
                "user_id": user_id, "user_pseudo_id": pseudo,
                "privacy_info": {"analytics_storage": "Yes", "ads_storage": "No", "uses_transient_token": "No"},
                "user_properties": _user_properties(person, micros) if user_id else [],
                "user_first_touch_timestamp": 1_700_000_000_000_000 + person, "user_ltv": None,
                "device": _device(mobile, person), "geo": {"city": cities[person % len(cities)], "country": country,
                "continent": continent, "region": None, "sub_continent": sub, "metro": "(not set)"},
                "app_info": {"id": "com.example.app", "version": "4.2.0", "install_store": None,
                             "firebase_app_id": "1:42:android:abc", "install_source": "com.android.vending"}
                if platform != "WEB" else None,
                "traffic_source": {"name": name, "medium": medium, "source": source},
                "stream_id": "4200000001", "platform": platform,
                "event_dimensions": {"hostname": "example.com"} if platform == "WEB" else None,
                "ecommerce": ecommerce, "items": items,
                "collected_traffic_source": {"manual_source": source, "manual_medium": medium} if index == 0 else None,
                "is_active_user": True, "batch_event_index": index, "batch_page_id": None, "batch_ordering_id": None,
            })  # fmt: skip
            previous = micros
    table = pa.Table.from_pylist(out, schema=EXPORT)
    return table.sort_by([("event_timestamp", "ascending")])


def _item(sku: str, title: str, price: float, quantity: int, index: int) -> dict[str, Any]:
    return {
        "item_id": sku, "item_name": title, "item_brand": "Example", "item_category": "Readers", "price": price,
        "price_in_usd": round(price * 1.08, 2), "quantity": quantity, "item_list_index": str(index),
        "item_params": _params({"color": "white", "bundle_size": quantity}),
    }  # fmt: skip


def _ecommerce(transaction: str, price: float, quantity: int) -> dict[str, Any]:
    revenue = round(price * quantity, 2)
    return {
        "total_item_quantity": quantity, "purchase_revenue": revenue,
        "purchase_revenue_in_usd": round(revenue * 1.08, 2), "shipping_value": 0.0,
        "tax_value": round(revenue * 0.19, 2), "unique_items": 1, "transaction_id": transaction,
    }  # fmt: skip


def _user_properties(person: int, micros: int) -> list[dict[str, Any]]:
    values = {"plan": ["free", "pro"][person % 2], "merchant_code": f"M{person:05d}", "lifetime_orders": person % 17}
    return [{"key": k, "value": {**_value(v), "set_timestamp_micros": micros - 1000}} for k, v in values.items()]


def _device(mobile: bool, person: int) -> dict[str, Any]:
    if mobile:
        return {
            "category": "mobile", "mobile_brand_name": "Samsung", "mobile_model_name": "SM-G991B",
            "operating_system": "Android", "operating_system_version": "Android 14", "language": "de-de",
            "is_limited_ad_tracking": "No", "time_zone_offset_seconds": 7200, "browser": None,
            "web_info": {"browser": "Chrome", "browser_version": "124.0", "hostname": "example.com"},
        }  # fmt: skip
    return {
        "category": "desktop", "operating_system": ["Windows", "Macintosh"][person % 2], "language": "en-gb",
        "is_limited_ad_tracking": "No", "web_info": {"browser": "Firefox", "browser_version": "125.0",
                                                      "hostname": "example.com"},
    }  # fmt: skip


def intraday_of(full: pa.Table, share: float = 0.6) -> pa.Table:
    """The intraday table as it stood earlier: the first `share` of the day's rows, without traffic source
    (the daily table adds attribution later)."""
    rows = full.slice(0, int(full.num_rows * share))
    index = rows.schema.get_field_index("traffic_source")
    return rows.set_column(index, "traffic_source", pa.nulls(rows.num_rows, rows.schema.field(index).type))


def export_name(day: dt.date, fmt: str, intraday: bool = False, shard: int = 0) -> str:
    """The name `bq extract` gives shard `shard` of a wildcard export of the day's table."""
    table = f"events_intraday_{day:%Y%m%d}" if intraday else f"events_{day:%Y%m%d}"
    suffix = {"parquet": ".parquet", "avro": ".avro", "ndjson": ".json", "ndjson.gz": ".json.gz"}[fmt]
    return f"{table}-{shard:012d}{suffix}"


def write_export(table: pa.Table, path: Path, fmt: str) -> Path:
    """Write `table` (EXPORT schema) as BigQuery would export it: parquet, avro, ndjson or ndjson.gz."""
    if fmt == "parquet":
        pq.write_table(table, path, compression="snappy")
    elif fmt == "avro":
        with path.open("wb") as handle:
            fastavro.writer(handle, avro_schema(), (_avro_row(row) for row in table.to_pylist()), codec="deflate")
    elif fmt in ("ndjson", "ndjson.gz"):
        opener: Any = gzip.open if fmt.endswith(".gz") else open
        with opener(path, "wb") as handle:
            for row in table.to_pylist():
                handle.write(orjson.dumps(bigquery_json(row)) + b"\n")
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return path


def bigquery_json(value: Any) -> Any:
    """A row as BigQuery's JSON export writes it: INT64 as strings, NULL fields left out."""
    if isinstance(value, dict):
        return {k: bigquery_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [bigquery_json(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def avro_schema(schema: pa.Schema = EXPORT) -> Any:
    """The Avro schema BigQuery exports the table with (every field nullable except repeated ones)."""
    names: dict[str, int] = {}

    def kind(name: str, arrow: pa.DataType) -> Any:
        if pa.types.is_struct(arrow):
            names[name] = names.get(name, 0) + 1
            unique = name if names[name] == 1 else f"{name}_{names[name]}"
            return {"type": "record", "name": unique, "fields": [field(f.name, f.type) for f in arrow]}
        if pa.types.is_list(arrow):
            return {"type": "array", "items": kind(name, arrow.value_type)}
        return {pa.string(): "string", pa.int64(): "long", pa.float64(): "double", pa.bool_(): "boolean"}[arrow]

    def field(name: str, arrow: pa.DataType) -> dict[str, Any]:
        if pa.types.is_list(arrow):
            return {"name": name, "type": kind(name, arrow)}
        return {"name": name, "type": ["null", kind(name, arrow)], "default": None}

    return fastavro.parse_schema({"type": "record", "name": "Root", "fields": [field(f.name, f.type) for f in schema]})


def _avro_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: ([] if v is None and k in ("event_params", "user_properties", "items") else v) for k, v in row.items()}


def day_rows(table: pa.Table, day: dt.date) -> int:
    """Rows of `table` whose event_date is `day` (what a reconciliation expects)."""
    return int(pc.sum(pc.equal(table.column("event_date"), day.strftime("%Y%m%d"))).as_py() or 0)
