"""Materialising one model as the Iceberg table `headwater.<model>` (every table of that namespace is a view for
queries, and Spark or Trino read it through the catalog).

- Full refresh: the whole SELECT, then one commit that replaces the table's content; a schema change evolves the
  table in that same commit (columns added or dropped, types widened), and anything else (a type that cannot
  widen, a new partition column) recreates the table.
- Incremental (`partition_by` a DATE/TIMESTAMP column; the table is partitioned by its day): the days from the
  newest built day minus `lookback_days` on (and rows whose day is NULL) are recomputed with
  `SELECT * FROM (<model>) WHERE CAST(col AS DATE) >= lo OR col IS NULL` and replace exactly those rows in one
  commit (an overwrite filtered on the same condition); the first build, or an empty table, builds every day.
A failed build commits nothing: the table keeps its previous content.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.expressions import BooleanExpression, GreaterThanOrEqual, IsNull, Or
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform

from headwater.core.errors import ModelError, QueryError
from headwater.lake.tables import MODEL_PROPERTY, NAMESPACE, TABLE_PROPERTIES
from headwater.models.project import Model
from headwater.query.engine import QueryEngine

log = logging.getLogger(__name__)


@dataclass
class Built:
    rows: int  # rows written (incremental: in the recomputed days)
    snapshot_id: int | None
    version: str  # the table's metadata location after the build
    mode: str  # full | incremental
    since: date | None = None  # incremental: the first recomputed day


def _arrow(query: QueryEngine, sql: str) -> pa.Table:
    return query.arrow(sql)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def normalise(data: pa.Table) -> pa.Table:
    """Arrow types DuckDB answers with, as types Iceberg stores (small ints widened, views and large strings made
    plain, timestamps in microseconds and UTC, dictionaries decoded)."""
    fields = []
    for f in data.schema:
        kind = f.type
        if isinstance(kind, pa.ExtensionType):
            kind = kind.storage_type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_null(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
            kind = pa.string()
        elif pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
            kind = pa.binary()
        elif pa.types.is_int8(kind) or pa.types.is_int16(kind) or pa.types.is_uint8(kind) or pa.types.is_uint16(kind):
            kind = pa.int32()
        elif pa.types.is_uint32(kind):
            kind = pa.int64()
        elif pa.types.is_uint64(kind):
            kind = pa.decimal128(20, 0)
        elif pa.types.is_float16(kind):
            kind = pa.float32()
        elif pa.types.is_timestamp(kind):
            kind = pa.timestamp("us", tz="UTC" if kind.tz else None)
        elif pa.types.is_time(kind):
            kind = pa.time64("us")
        elif pa.types.is_interval(kind) or pa.types.is_duration(kind) or pa.types.is_decimal256(kind):
            raise ModelError(f"column {f.name} is {kind}, which a lake table cannot store: cast it in the SELECT")
        fields.append(pa.field(f.name, kind, nullable=True))
    target = pa.schema(fields)
    if target == data.schema:
        return data
    columns = []
    for column, f in zip(data.columns, target, strict=True):
        if isinstance(column.type, pa.ExtensionType):
            column = pa.chunked_array([c.storage for c in column.chunks], column.type.storage_type)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns.append(column.cast(f.type, safe=False))
    return pa.Table.from_arrays(columns, schema=target)


def _properties(model: Model) -> dict[str, str]:
    props = {**TABLE_PROPERTIES, MODEL_PROPERTY: model.name, "commit.retry.num-retries": "2"}
    if model.description:
        props["comment"] = model.description
    if model.partition_by:
        props[f"write.metadata.metrics.column.{model.partition_by}"] = "full"
    return props


def load_model_table(catalog: Catalog, model: Model) -> Table | None:
    """The model's table, or None; ModelError when the name is taken by a table that is not a model's."""
    try:
        table = catalog.load_table((NAMESPACE, model.name))
    except NoSuchTableError:
        return None
    if table.properties.get(MODEL_PROPERTY) != model.name:
        raise ModelError(
            f"{model.path.name} (model {model.name}): table {NAMESPACE}.{model.name} exists and is not a model "
            "(a processor's or a source's table): rename the model"
        )
    return table


def _spec(model: Model, schema: Any) -> PartitionSpec:
    if model.materialized != "incremental" or not model.partition_by:
        return PartitionSpec()
    source = schema.find_field(model.partition_by)
    return PartitionSpec(PartitionField(source.field_id, 1000, DayTransform(), f"{model.partition_by}_day"))


def _create(catalog: Catalog, model: Model, data: pa.Table) -> Table:
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(NAMESPACE)
    table = catalog.create_table((NAMESPACE, model.name), schema=data.schema, properties=_properties(model))
    spec = _spec(model, table.schema())
    if spec.fields:
        with table.update_spec() as update:
            update.add_field(model.partition_by or "", DayTransform(), f"{model.partition_by}_day")
    return table


def _check_partition_column(model: Model, data: pa.Table) -> None:
    if model.materialized != "incremental":
        return
    column = model.partition_by or ""
    if column not in data.column_names:
        raise ModelError(f"{model.path.name} (model {model.name}): partition_by column {column} is not in its SELECT")
    kind = data.schema.field(column).type
    if not (pa.types.is_date(kind) or pa.types.is_timestamp(kind)):
        raise ModelError(f"{model.path.name} (model {model.name}): partition_by column {column} is {kind}, "
                         "not a DATE or TIMESTAMP")  # fmt: skip


def _same_layout(table: Table, model: Model) -> bool:
    """Whether the table is partitioned as the model says (else a full refresh recreates it)."""
    spec = table.spec()
    if model.materialized != "incremental":
        return not spec.fields
    if len(spec.fields) != 1 or not isinstance(spec.fields[0].transform, DayTransform):
        return False
    try:
        return table.schema().find_field(spec.fields[0].source_id).name == model.partition_by
    except ValueError:
        return False


def _replace(table: Table, data: pa.Table, where: BooleanExpression | None = None) -> bool:
    """Evolve the schema to `data`'s and overwrite (all rows, or those matching `where`) in one commit; False when
    the schema cannot evolve that way (a type that cannot widen, a partition column dropped)."""
    current = {f.name: f for f in table.schema().fields}
    dropped = [name for name in current if name not in data.column_names]
    if where is not None and dropped:
        return False  # an incremental build keeps the other days' rows: columns cannot go
    try:
        with table.transaction() as tx:
            with tx.update_schema() as update:  # no change: no schema update is committed
                for name in dropped:
                    update.delete_column(name)
                update.union_by_name(data.schema)
            if where is None:
                tx.overwrite(data)
            else:
                tx.overwrite(data, overwrite_filter=where)
    except (ValueError, TypeError) as exc:  # pyiceberg: ValidationError (a ValueError) or a type it refuses
        log.info("table %s: schema cannot evolve in place (%s)", table.name(), exc)
        return False
    return True


def _recreate(catalog: Catalog, model: Model, data: pa.Table) -> Table:
    log.info("model %s: recreating its table (its schema or partitioning changed)", model.name)
    with contextlib.suppress(NoSuchTableError):
        catalog.drop_table((NAMESPACE, model.name))
    table = _create(catalog, model, data)
    table.append(data)
    return table


def _max_day(query: QueryEngine, model: Model) -> date | None:
    """The newest day the model's table holds (None: empty)."""
    column = _quote(model.partition_by or "")
    answer = _arrow(query, f"SELECT max(CAST({column} AS DATE)) AS d FROM {_quote(model.name)}")
    value = answer.column(0)[0].as_py() if answer.num_rows else None
    return value if isinstance(value, date) else None


def _filter(model: Model, data: pa.Table, since: date) -> BooleanExpression:
    column = model.partition_by or ""
    kind = data.schema.field(column).type
    if pa.types.is_date(kind):
        literal = since.isoformat()
    else:
        literal = f"{since.isoformat()}T00:00:00" + ("+00:00" if kind.tz else "")
    return Or(GreaterThanOrEqual(column, literal), IsNull(column))  # type: ignore[call-arg, arg-type]


def input_snapshots(catalog: Catalog, names: list[str]) -> dict[str, int]:
    """The current snapshot of each lake table among `names` (not models' tables: they are rebuilt, not edited)."""
    found: dict[str, int] = {}
    for name in names:
        try:
            table = catalog.load_table((NAMESPACE, name))
        except NoSuchTableError:
            continue
        snapshot = table.current_snapshot()
        if snapshot is not None and MODEL_PROPERTY not in table.properties:
            found[name] = snapshot.snapshot_id
    return found


def rows_removed(catalog: Catalog, since: dict[str, int]) -> str | None:
    """A table of `since` (name -> the snapshot a build read) that lost rows after that snapshot (a person's
    deletion, retention), or None. An incremental build then recomputes every day, so deleted rows leave the
    model too. Compaction swaps files with as many rows as it removes: not a loss."""
    for name, snapshot_id in since.items():
        try:
            table = catalog.load_table((NAMESPACE, name))
        except NoSuchTableError:
            return name
        snapshot = table.current_snapshot()
        while snapshot is not None and snapshot.snapshot_id != snapshot_id:
            summary: Any = snapshot.summary
            if summary is not None and summary.operation.value in ("overwrite", "delete"):
                props = summary.additional_properties
                if int(props.get("deleted-records", 0)) > int(props.get("added-records", 0)):
                    return name
            if snapshot.parent_snapshot_id is None:
                break
            snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id)
    return None


def build(model: Model, query: QueryEngine, catalog: Catalog, full_refresh: bool = False) -> Built:
    """Build `model` into its table (see the module docstring); ModelError on failure (nothing committed)."""
    where = f"{model.path.name} (model {model.name})"
    try:
        table = load_model_table(catalog, model)
        incremental = model.materialized == "incremental" and not full_refresh and table is not None
        if incremental and table is not None and not _same_layout(table, model):
            incremental = False
        since = _max_day(query, model) if incremental else None
        if since is None:
            data = normalise(_arrow(query, model.sql))
            _check_partition_column(model, data)
            if table is None:
                table = _create(catalog, model, data)
                table.append(data)
            elif not _same_layout(table, model) or not _replace(table, data):
                table = _recreate(catalog, model, data)
            mode, first = "full", None
        else:
            first = since - timedelta(days=model.lookback_days)
            column = _quote(model.partition_by or "")
            sql = (f"SELECT * FROM ({model.sql}) AS hw_model WHERE CAST(hw_model.{column} AS DATE) >= "
                   f"DATE '{first.isoformat()}' OR hw_model.{column} IS NULL")  # fmt: skip
            data = normalise(_arrow(query, sql))
            _check_partition_column(model, data)
            assert table is not None
            if not _replace(table, data, _filter(model, data, first)):
                return build(model, query, catalog, full_refresh=True)  # columns dropped or a type changed
            mode = "incremental"
    except QueryError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except ModelError as exc:
        if str(exc).startswith(model.path.name):
            raise
        raise ModelError(f"{where}: {exc}") from None
    except Exception as exc:  # the catalog, the storage or pyiceberg refused the commit
        log.exception("model %s: build failed", model.name)
        raise ModelError(f"{where}: {type(exc).__name__}: {str(exc)[:500]}") from exc
    table = catalog.load_table((NAMESPACE, model.name))
    snapshot = table.current_snapshot()
    return Built(data.num_rows, snapshot.snapshot_id if snapshot else None, table.metadata_location, mode, first)
