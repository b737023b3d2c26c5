"""Catalog, table definitions, and the log offsets each snapshot records (exactly-once)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import orjson
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import IntegerType, LongType, NestedField, StringType, TimestampType
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from headwater.core.settings import Settings
from headwater.lake.layout import declare_sort_order

NAMESPACE = "headwater"
OFFSETS_PROPERTY = "headwater.log-offsets"
TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    "commit.manifest-merge.enabled": "true",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    "format-version": "2",
    # Headwater retries a conflicting commit itself, after checking that the writer still owns its
    # partitions (lake/writer.py); pyiceberg's own retry would re-apply the append without that check.
    "commit.retry.num-retries": "0",
    # Column bounds in manifests only where they prune or answer something (times, names); ids, payloads and
    # JSON would otherwise leave 16-character prefixes of personal data in the table's metadata (privacy).
    "write.metadata.metrics.default": "counts",
    **{f"write.metadata.metrics.column.{c}": "full" for c in ("timestamp", "received_at", "sent_at", "log_offset")},
    **{f"write.metadata.metrics.column.{c}": "truncate(16)" for c in ("type", "event", "source", "endpoint")},
}

EVENTS = Schema(
    NestedField(1, "event_id", StringType(), required=True),
    NestedField(2, "type", StringType(), required=True),
    NestedField(3, "event", StringType(), required=False),
    NestedField(4, "user_id", StringType(), required=False),
    NestedField(5, "anonymous_id", StringType(), required=False),
    NestedField(6, "group_id", StringType(), required=False),
    NestedField(7, "previous_id", StringType(), required=False),
    NestedField(
        8,
        "timestamp",
        TimestampType(),
        required=True,
        doc="event time, UTC, clock-skew corrected",
    ),
    NestedField(9, "received_at", TimestampType(), required=True),
    NestedField(10, "sent_at", TimestampType(), required=False),
    NestedField(11, "source", StringType(), required=True, doc="name of the API key that sent the event"),
    NestedField(12, "properties", StringType(), required=False, doc="JSON"),
    NestedField(13, "context", StringType(), required=False, doc="JSON"),
    NestedField(14, "traits", StringType(), required=False, doc="JSON"),
)
QUARANTINE = Schema(
    NestedField(1, "received_at", TimestampType(), required=True),
    NestedField(2, "source", StringType(), required=True),
    NestedField(3, "endpoint", StringType(), required=True),
    NestedField(4, "reason", StringType(), required=True),
    NestedField(5, "raw", StringType(), required=True),
    NestedField(6, "log_partition", IntegerType(), required=True),
    NestedField(7, "log_offset", LongType(), required=True),
)
SPECS = {
    "events": (EVENTS, PartitionSpec(PartitionField(8, 1000, DayTransform(), "timestamp_day"))),
    "quarantine": (
        QUARANTINE,
        PartitionSpec(PartitionField(1, 1000, DayTransform(), "received_day")),
    ),
}
JSON_COLUMNS = {"events": ("properties", "context", "traits")}
MODEL_PROPERTY = "headwater.model"  # marks a table as a SQL model's (headwater.models); nothing else writes it


def warehouse_uri(settings: Settings) -> str:
    """The warehouse as a URI (file:// for a local path, created when missing)."""
    warehouse = settings.warehouse or str(settings.warehouse_path.resolve())
    if "://" not in warehouse:
        Path(warehouse).mkdir(parents=True, exist_ok=True)
        warehouse = f"file://{Path(warehouse).resolve()}"
    return warehouse


def storage_properties(settings: Settings) -> dict[str, str]:
    """pyiceberg FileIO properties for an S3-compatible warehouse (empty values left to AWS defaults)."""
    props = {
        "s3.endpoint": settings.s3_endpoint,
        "s3.region": settings.s3_region,
        "s3.access-key-id": settings.s3_access_key_id,
        "s3.secret-access-key": settings.s3_secret_access_key,
    }
    return {k: v for k, v in props.items() if v}


def open_catalog(settings: Settings) -> Catalog:
    """The SQL catalog; its connections are checked before use (they survive a database restart), and
    creating the catalog's tables is retried when another process does it at the same moment."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    props = {"pool_pre_ping": "true", **storage_properties(settings)}
    for attempt in range(5):
        try:
            return SqlCatalog(NAMESPACE, uri=settings.effective_catalog_uri, warehouse=warehouse_uri(settings), **props)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            # SQLite reports the lost race as OperationalError "table … already exists"
            if attempt == 4 or (isinstance(exc, OperationalError) and "already exists" not in str(exc)):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def close_catalog(catalog: Catalog) -> None:
    """Release the catalog's database connections (a SQL catalog keeps a pool)."""
    engine = getattr(catalog, "engine", None)
    if engine is not None:
        engine.dispose()


def ensure_tables(catalog: Catalog) -> dict[str, Table]:
    """Create the namespace and tables when missing; return them by name.

    Several writers and servers may start at once on a new catalog: whoever loses a race to create
    something (pyiceberg reports it as "already exists" or as the database's unique violation) loads
    what the winner created.
    """
    for attempt in range(5):
        try:
            return _ensure_tables(catalog)
        except (IntegrityError, CommitFailedException):
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def _ensure_tables(catalog: Catalog) -> dict[str, Table]:
    if (NAMESPACE,) not in catalog.list_namespaces():
        with contextlib.suppress(NamespaceAlreadyExistsError):
            catalog.create_namespace(NAMESPACE)
    tables: dict[str, Table] = {}
    for name, (schema, spec) in SPECS.items():
        identifier = f"{NAMESPACE}.{name}"
        try:
            tables[name] = upgrade_properties(catalog.load_table(identifier))
        except NoSuchTableError:
            try:
                tables[name] = catalog.create_table(
                    identifier, schema=schema, partition_spec=spec, properties=TABLE_PROPERTIES
                )
            except TableAlreadyExistsError:
                tables[name] = catalog.load_table(identifier)
        declare_sort_order(tables[name], name)
    return tables


def upgrade_properties(table: Table) -> Table:
    """Bring a table created by an older Headwater up to today's TABLE_PROPERTIES."""
    stale = {k: v for k, v in TABLE_PROPERTIES.items() if k != "format-version" and table.properties.get(k) != v}
    if stale:
        with table.transaction() as tx:
            tx.set_properties(stale)
    return table


def snapshot_offsets(table: Table, key: str = OFFSETS_PROPERTY) -> dict[int, int]:
    """Log offsets recorded by the newest snapshot that has them (next offset per partition).

    Every Headwater commit records the offsets of all partitions (merged with what the table held),
    so the newest snapshot that has the property is the whole answer.
    """
    snapshot = table.current_snapshot()
    while snapshot is not None:
        summary: Any = snapshot.summary
        value = summary.additional_properties.get(key) if summary is not None else None
        if value:
            return {int(p): int(o) for p, o in orjson.loads(value).items()}
        if snapshot.parent_snapshot_id is None:
            break
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id)
    return {}


def carried_offsets(table: Table) -> dict[str, str]:
    """Every log's offsets property as the table records them now, to repeat in a commit that is not
    a lake writer's (import, compaction): snapshot expiry then never drops what the writers rely on."""
    found: dict[str, str] = {}
    snapshot = table.current_snapshot()
    while snapshot is not None:
        summary: Any = snapshot.summary
        for key, value in summary.additional_properties.items() if summary is not None else ():
            if key.startswith(OFFSETS_PROPERTY):
                found.setdefault(key, value)
        if snapshot.parent_snapshot_id is None:
            break
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id)
    return found


def offsets_property(offsets: dict[int, int], key: str = OFFSETS_PROPERTY) -> dict[str, str]:
    return {key: orjson.dumps({str(p): o for p, o in sorted(offsets.items())}).decode()}
