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

import array
import logging
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import duckdb
import numpy as np
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
        self._shapes: LRU[str, Shape | Unsupported] = LRU(512)  # parsed SQL
        self._bound: LRU[tuple[str, str], tuple[list[str], list[str]]] = LRU(512)  # (sql, version): names, types
        self._merged: LRU[tuple[Any, ...], dict[tuple[int, object], Bucket]] = LRU(16)  # rollups merged per version

    def answer(
        self, cursor: duckdb.DuckDBPyConnection, sql: str, version: str, tasks: list[FileScanTask], max_rows: int
    ) -> FastAnswer | None:
        """The answer of `sql` over the files `tasks` of the events table at `version`, or None."""
        try:
            shape = self._shapes.get(sql)
            if shape is None:
                try:
                    shape = parse_shape(sql)
                except Unsupported as why:
                    shape = why
                self._shapes.put(sql, shape)
            if isinstance(shape, Unsupported):
                raise shape
            return self._answer(cursor, sql, shape, version, tasks, max_rows)
        except Unsupported as why:
            log.debug("raw path: %s", why)
            return None

    def _answer(
        self, cursor: duckdb.DuckDBPyConnection, sql: str, shape: Shape, version: str, tasks: list[FileScanTask],
        max_rows: int,
    ) -> FastAnswer:  # fmt: skip
        bound = self._bound.get((sql, version))
        if bound is None:
            relation = cursor.sql(sql)  # binds (names, types) without running
            bound = list(relation.columns), [str(t) for t in relation.types]
            self._bound.put((sql, version), bound)
        columns, types = bound
        low, high = self._bounds(cursor, shape)
        if shape.needs_metadata_only and shape.grain == "day":
            key = (version, "metadata")
            buckets = self._merged.get(key)
            if buckets is None:
                buckets = _metadata_buckets(tasks)
                self._merged.put(key, buckets)
            answered_by = "metadata"
        else:
            buckets = self.buckets(tasks, shape.grain, shape.uses_event, shape.needs_people, version=version)
            answered_by = "rollup"
        buckets = {k: b for k, b in buckets.items() if _in_range(k[0], US_PER[shape.grain], low, high)}
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

    def buckets(
        self, tasks: list[FileScanTask], grain: str, by_event: bool, people: bool, events: set[str] | None = None,
        version: str | None = None,
    ) -> dict[tuple[int, object], Bucket]:  # fmt: skip
        """Counts (and people) per (day or hour, event or ALL) over `tasks`' files, from their rollups;
        Unsupported when one has none. `events`: only these event names. With `version` (the table
        version `tasks` belong to) the merge is kept for the next query on the same version."""
        key = (version, grain, by_event, people, frozenset(events) if events is not None else None)
        cached = self._merged.get(key) if version is not None else None
        if cached is None:
            cached = self._merge(tasks, grain, by_event, people, events)
            if version is not None:
                self._merged.put(key, cached)
        return cached

    def _merge(
        self, tasks: list[FileScanTask], grain: str, by_event: bool, people: bool, events: set[str] | None
    ) -> dict[tuple[int, object], Bucket]:
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
        return dict(buckets)

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


def remap_persons(
    buckets: dict[tuple[int, object], Bucket], keys: np.ndarray, reps: np.ndarray
) -> dict[tuple[int, object], Bucket]:
    """The buckets with their people sets (`persons`: keys of `coalesce(user_id, anonymous_id)`) counting
    persons: each key in `keys` (sorted) replaced by its person's representative in `reps` (same order). Only the
    keys a set shares with `keys` are looked up (numpy), so a set without linked ids is kept as it is."""
    if not len(keys):
        return buckets
    aliased = BitMap(array.array("I", keys.astype(np.uint32).tobytes()))
    out: dict[tuple[int, object], Bucket] = {}
    for key, bucket in buckets.items():
        if not bucket.persons:
            out[key] = bucket
            continue
        people = BitMap.union(*bucket.persons)
        hit = people & aliased
        if hit:
            found = reps[np.searchsorted(keys, np.frombuffer(hit.to_array(), dtype=np.uint32))]
            people = (people - hit) | BitMap(array.array("I", found.astype(np.uint32).tobytes()))
        out[key] = Bucket(bucket.count, bucket.users, [people], bucket.min_us, bucket.max_us)
    return out


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
    if any(task.delete_files for task in tasks):
        raise Unsupported("row-level deletes present")
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


def _in_range(bucket: int, unit_us: int, low: int | None, high: int | None) -> bool:
    """Whether the bucket starting at `bucket * unit_us` overlaps [low, high)."""
    start, end = bucket * unit_us, (bucket + 1) * unit_us
    return (low is None or end > low) and (high is None or start < high)


K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small least-recently-used map (thread-safe enough for dict operations under the GIL)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def _naive_utc(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)
