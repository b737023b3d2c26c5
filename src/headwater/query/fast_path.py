"""Answer the shapes of `headwater.query.shapes` from rollups or table metadata, exactly as the raw scan would.

Three steps, all in the query's own DuckDB cursor:
1. one row per bucket — (day or hour, event) of the files of the snapshot the `events` view reads — with
   its measures merged from the files' rollups (or, for counts and time bounds not split by event, from
   the Iceberg manifests: row counts per file and column bounds);
2. the user's query over those bucket rows, its measures replaced by the list of buckets of each group;
3. the measures of each group merged (counts added, people bitmaps OR-ed), then the user's ORDER BY and
   LIMIT applied, and the columns named and typed as DuckDB binds the original query.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
from pyiceberg.conversions import from_bytes
from pyiceberg.table import FileScanTask
from pyiceberg.types import TimestampType
from pyroaring import BitMap
from sqlglot import exp

from headwater.lake.rollups import ALL, RollupStore
from headwater.query.shapes import BUCKET_ID, BUCKETS, Shape, Unsupported, parse_shape

log = logging.getLogger(__name__)
US_PER = {"day": 86_400_000_000, "hour": 3_600_000_000}
TIMESTAMP_FIELD_ID = 8  # `timestamp` in the events schema (lake/tables.py)
RESULT = "__hw_result"
EPOCH = datetime(1970, 1, 1)


@dataclass
class Bucket:
    count: int = 0
    users: list[BitMap] = field(default_factory=list)
    persons: list[BitMap] = field(default_factory=list)
    min_us: int | None = None
    max_us: int | None = None


@dataclass
class FastAnswer:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    answered_by: str


class FastPath:
    """Tries the fast answer of a query; `None` means "run it on the raw data"."""

    def __init__(self, rollups: RollupStore | None) -> None:
        self.rollups = rollups

    def answer(
        self, cursor: duckdb.DuckDBPyConnection, sql: str, tasks: list[FileScanTask], max_rows: int
    ) -> FastAnswer | None:
        try:
            shape = parse_shape(sql)
            return self._answer(cursor, sql, shape, tasks, max_rows)
        except Unsupported as why:
            log.debug("raw path: %s", why)
            return None

    def _answer(
        self, cursor: duckdb.DuckDBPyConnection, sql: str, shape: Shape, tasks: list[FileScanTask], max_rows: int
    ) -> FastAnswer:
        bound = cursor.sql(sql)  # binds (names, types) without running
        columns, types = list(bound.columns), [str(t) for t in bound.types]
        low, high = self._bounds(cursor, shape)
        if any(task.delete_files for task in tasks):
            raise Unsupported("row-level deletes present")
        day = US_PER["day"]
        tasks = [t for t in tasks if _in_range(_day_of(t), day, low, high)]
        if shape.needs_metadata_only and shape.grain == "day":
            buckets, answered_by = _metadata_buckets(tasks), "metadata"
        else:
            buckets, answered_by = self._rollup_buckets(shape, tasks), "rollup"
        keys = list(buckets)
        table = pa.table(
            {
                "timestamp": pa.array([_naive_utc(k[0] * US_PER[shape.grain]) for k in keys], pa.timestamp("us")),
                "event": pa.array([None if k[1] is ALL else k[1] for k in keys], pa.string()),
                BUCKET_ID: pa.array(range(len(keys)), pa.int32()),
            }
        )
        cursor.register(BUCKETS, table)
        try:
            grouped = cursor.execute(shape.bucket_sql()).to_arrow_table()
        finally:
            cursor.unregister(BUCKETS)
        merged = [buckets[k] for k in keys]
        groups = grouped.column(grouped.num_columns - 1).to_pylist()
        result = grouped.drop_columns([grouped.column_names[-1]])
        for measure in shape.measures:
            values = [_measure_value(measure.kind, [merged[i] for i in ids or []]) for ids in groups]
            kind = pa.timestamp("us") if "time" in measure.kind else pa.int64()
            result = result.set_column(measure.position, f"c{measure.position}", pa.array(values, kind))
        result = result.rename_columns([f"c{i}" for i in range(result.num_columns)])
        return self._finish(cursor, shape, columns, types, result, max_rows, answered_by)

    def _bounds(self, cursor: duckdb.DuckDBPyConnection, shape: Shape) -> tuple[int | None, int | None]:
        """The time range the WHERE clause keeps, in microseconds; Unsupported unless on bucket boundaries."""
        low: int | None = None
        high: int | None = None
        unit = US_PER[shape.grain]
        for op, constant in shape.bounds:
            text = constant.sql(dialect="duckdb")
            try:
                (value,) = cursor.execute(f"SELECT epoch_us(CAST(({text}) AS TIMESTAMP))").fetchone() or (None,)
            except duckdb.Error as exc:
                raise Unsupported(f"bound {text}: {exc}") from None
            if value is None or value % unit:
                raise Unsupported(f"bound {text} is not on a {shape.grain} boundary")
            if op == ">=":
                low = value if low is None else max(low, value)
            else:
                high = value if high is None else min(high, value)
        return low, high

    def _rollup_buckets(self, shape: Shape, tasks: list[FileScanTask]) -> dict[tuple[int, object], Bucket]:
        return self.buckets(tasks, shape.grain, shape.uses_event, shape.needs_people)

    def buckets(
        self, tasks: list[FileScanTask], grain: str, by_event: bool, people: bool, events: set[str] | None = None
    ) -> dict[tuple[int, object], Bucket]:
        """Counts (and people) per (day or hour, event or ALL) over `tasks`' files, from their rollups;
        Unsupported when one has none. `events`: only these event names."""
        if self.rollups is None:
            raise Unsupported("no rollup store")
        if any(task.delete_files for task in tasks):
            raise Unsupported("row-level deletes present")
        paths = [t.file.file_path for t in tasks]
        found = self.rollups.get(paths)
        if len(found) < len(set(paths)):
            raise Unsupported(f"{len(set(paths)) - len(found)} files have no rollup yet")
        buckets: dict[tuple[int, object], Bucket] = defaultdict(Bucket)
        for rollup in found.values():
            for (hour, event), n in rollup.counts.items():
                if events is not None and event not in events:
                    continue
                bucket_time = hour if grain == "hour" else hour // 24
                key: tuple[int, object] = (bucket_time, event if by_event else ALL)
                buckets[key].count += n
            if not people:
                continue
            for (day, kind), (users, persons) in rollup.people.items():
                if (kind is ALL) == by_event or (events is not None and kind not in events):
                    continue
                bucket = buckets[(day, kind)]
                bucket.users.append(users)
                bucket.persons.append(persons)
        return buckets

    @staticmethod
    def _finish(
        cursor: duckdb.DuckDBPyConnection, shape: Shape, columns: list[str], types: list[str],
        result: pa.Table, max_rows: int, answered_by: str,
    ) -> FastAnswer:  # fmt: skip
        """The user's ORDER BY / LIMIT over the merged groups, named and typed as the original query."""
        select = ", ".join(
            f"CAST(c{i} AS {kind}) AS {_quote_ident(name)}"
            for i, (name, kind) in enumerate(zip(columns, types, strict=True))
        )
        tail = _order_sql(shape)
        for part in ("limit", "offset"):
            node = shape.select.args.get(part)
            if node is not None:
                tail += " " + node.sql(dialect="duckdb")
        cursor.register(RESULT, result)
        try:
            rows = cursor.execute(f"SELECT {select} FROM {RESULT}{tail}").fetchmany(max_rows + 1)
        finally:
            cursor.unregister(RESULT)
        return FastAnswer(columns, types, rows, answered_by)


def _measure_value(kind: str, picked: list[Bucket]) -> Any:
    if kind == "count":
        return sum(b.count for b in picked)
    if kind in ("users", "persons"):
        sets = [s for b in picked for s in (b.users if kind == "users" else b.persons)]
        return len(BitMap.union(*sets)) if sets else 0
    bounds = [v for v in (b.min_us if kind == "min_time" else b.max_us for b in picked) if v is not None]
    if not bounds:
        return None
    return _naive_utc(min(bounds) if kind == "min_time" else max(bounds))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _order_sql(shape: Shape) -> str:
    order = shape.select.args.get("order")
    if order is None:
        return ""
    items = shape.select.expressions
    aliases = {item.alias.lower(): i for i, item in enumerate(items) if isinstance(item, exp.Alias)}
    parts = []
    for ordered in order.expressions:
        node = ordered.this
        index: int | None = None
        if isinstance(node, exp.Literal) and not node.is_string:
            index = int(node.name) - 1
        elif isinstance(node, exp.Column) and not node.table and node.name.lower() in aliases:
            index = aliases[node.name.lower()]
        else:
            for i, item in enumerate(items):
                if node == (item.this if isinstance(item, exp.Alias) else item):
                    index = i
                    break
        if index is None or not 0 <= index < len(items):
            raise Unsupported(f"ORDER BY {node.sql()} is not a selected column")
        copy = ordered.copy()
        copy.set("this", exp.column(f"c{index}"))
        parts.append(copy.sql(dialect="duckdb"))
    return " ORDER BY " + ", ".join(parts)


def _metadata_buckets(tasks: list[FileScanTask]) -> dict[tuple[int, object], Bucket]:
    """Row counts and time bounds per day partition, from the manifests alone."""
    buckets: dict[tuple[int, object], Bucket] = defaultdict(Bucket)
    for task in tasks:
        day = _day_of(task)
        if day is None:
            raise Unsupported("a file without a day partition")
        bucket = buckets[(day, ALL)]
        bucket.count += task.file.record_count
        lower = (task.file.lower_bounds or {}).get(TIMESTAMP_FIELD_ID)
        upper = (task.file.upper_bounds or {}).get(TIMESTAMP_FIELD_ID)
        if lower is None or upper is None:
            raise Unsupported("a file without time bounds")
        low, high = int(from_bytes(TimestampType(), lower)), int(from_bytes(TimestampType(), upper))
        bucket.min_us = low if bucket.min_us is None else min(bucket.min_us, low)
        bucket.max_us = high if bucket.max_us is None else max(bucket.max_us, high)
    return buckets


def _day_of(task: FileScanTask) -> int | None:
    partition = task.file.partition
    try:
        value = partition[0]
    except (IndexError, TypeError):
        return None
    return int(value) if value is not None else None


def _in_range(day: int | None, day_us: int, low: int | None, high: int | None) -> bool:
    if day is None:
        return True
    start, end = day * day_us, (day + 1) * day_us
    return (low is None or end > low) and (high is None or start < high)


def _naive_utc(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)
