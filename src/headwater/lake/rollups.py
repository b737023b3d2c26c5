"""Exact rollups of the `events` table, one per data file, kept in the catalog's database.

A data file's rollup holds, for the rows of that file:
- per hour and event name: the number of rows;
- per day and event name, and per day over all events: the exact set of people as Roaring bitmaps of
  integer person keys (`headwater.lake.persons`), once for `user_id` and once for
  `coalesce(user_id, anonymous_id)` (stored once when they are equal).

Because a rollup describes one immutable file, it is exact by construction: whatever writes files (the
lake writer, import, compaction, and later deletions that rewrite files) computes the rollup of each file
it writes, stores it before the Iceberg commit that adds the file, and a query merges the rollups of
exactly the files of the snapshot it reads. A file without a rollup (written by another engine, or before
rollups existed) makes a query fall back to the raw data until maintenance computes the missing rollup.
Rollups of files that no snapshot references are deleted with the files (`Maintenance.sweep`).
"""

from __future__ import annotations

import array
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from pyroaring import BitMap

from headwater.core.database import create_tables
from headwater.lake.persons import PersonKeys

US_PER_HOUR = 3_600_000_000
_METADATA = sa.MetaData()
ROLLUPS = sa.Table(
    "headwater_rollups",
    _METADATA,
    sa.Column("file_path", sa.String, primary_key=True),
    sa.Column("table_name", sa.String(255), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
ROLLUP_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.int8()),  # 0: count per hour, 1: people per day
        pa.field("bucket", pa.int32()),  # hours (kind 0) or days (kind 1) since 1970-01-01
        pa.field("event", pa.string()),
        pa.field("all_events", pa.bool_()),  # kind 1: the set over every event of the day
        pa.field("n", pa.int64()),
        pa.field("users", pa.binary()),
        pa.field("persons", pa.binary()),  # NULL: the same set as `users`
    ]
)
ALL = object()  # the event key of a day's set over all events


@dataclass
class FileRollup:
    """A parsed rollup: counts[(hour, event)] and people[(day, event or ALL)] = (users, persons)."""

    counts: dict[tuple[int, str | None], int] = field(default_factory=dict)
    people: dict[tuple[int, object], tuple[BitMap, BitMap]] = field(default_factory=dict)
    size: int = 0

    @classmethod
    def parse(cls, data: bytes) -> FileRollup:
        table = pa.ipc.open_stream(data).read_all()
        rollup = cls(size=len(data))
        columns = table.to_pydict()
        for kind, bucket, event, all_events, n, users, persons in zip(*columns.values(), strict=True):
            if kind == 0:
                rollup.counts[(bucket, event)] = n
            else:
                user_set = BitMap.deserialize(users)
                person_set = user_set if persons is None else BitMap.deserialize(persons)
                rollup.people[(bucket, ALL if all_events else event)] = (user_set, person_set)
        return rollup


def _bitmap(keys: np.ndarray) -> BitMap:
    kept = keys[keys >= 0].astype(np.uint32)
    return BitMap(array.array("I", kept.tobytes()))


def compute_rollup(rows: pa.Table, persons: PersonKeys) -> bytes:
    """The rollup of the rows of one data file, serialised (Arrow IPC)."""
    user_keys = persons.key_array(rows.column("user_id"))
    anonymous_keys = persons.key_array(rows.column("anonymous_id"))
    person_keys = np.where(user_keys >= 0, user_keys, anonymous_keys)
    same_people = bool((person_keys == user_keys).all())
    micros = pc.cast(rows.column("timestamp"), pa.int64()).to_numpy()
    hours = np.floor_divide(micros, US_PER_HOUR)
    days = np.floor_divide(hours, 24)
    encoded = pc.dictionary_encode(rows.column("event")).combine_chunks()
    names = [*encoded.dictionary.to_pylist(), None]  # the last code is NULL
    codes = pc.fill_null(encoded.indices, len(names) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
    width = len(names)
    out: dict[str, list[object]] = {f.name: [] for f in ROLLUP_SCHEMA}

    def emit(
        kind: int, bucket: int, event: str | None, all_events: bool, n: int, users: bytes, persons_: bytes | None
    ) -> None:
        for name, value in zip(out, (kind, bucket, event, all_events, n, users, persons_), strict=True):
            out[name].append(value)

    hour_codes, hour_counts = np.unique(hours * width + codes, return_counts=True)
    for code, n in zip(hour_codes.tolist(), hour_counts.tolist(), strict=True):
        emit(0, code // width, names[code % width], False, n, b"", None)
    day_event = days * width + codes
    order = np.argsort(day_event, kind="stable")
    sorted_codes = day_event[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    ends = np.concatenate([bounds, [len(order)]]).tolist()
    for start, end in zip(starts, ends, strict=True):
        code = int(sorted_codes[start])
        picked = order[start:end]
        users = _bitmap(user_keys[picked])
        people = users if same_people else _bitmap(person_keys[picked])
        emit(1, code // width, names[code % width], False, end - start, users.serialize(),
             None if same_people else people.serialize())  # fmt: skip
    for day in np.unique(days).tolist():
        picked = days == day
        users = _bitmap(user_keys[picked])
        people = users if same_people else _bitmap(person_keys[picked])
        emit(1, day, None, True, int(picked.sum()), users.serialize(), None if same_people else people.serialize())
    return _serialise(out)


def _read_rows(data: bytes) -> dict[str, list[Any]]:
    return pa.ipc.open_stream(data).read_all().to_pydict()


def _serialise(out: dict[str, list[object]]) -> bytes:
    table = pa.Table.from_pydict(out, schema=ROLLUP_SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ROLLUP_SCHEMA, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def people_of(data: bytes) -> BitMap:
    """Every person key a file's rows carry (user ids and, where the user id is NULL, anonymous ids)."""
    found = BitMap()
    columns = _read_rows(data)
    for kind, all_events, users, persons in zip(
        columns["kind"], columns["all_events"], columns["users"], columns["persons"], strict=True
    ):
        if kind == 1 and all_events:
            found |= BitMap.deserialize(users)
            if persons is not None:
                found |= BitMap.deserialize(persons)
    return found


def subtract_rollup(old: bytes, kept: pa.Table, removed: pa.Table, persons: PersonKeys) -> bytes | None:
    """The rollup of `kept` from the rollup of `kept + removed` (a file a deletion rewrites) without reading
    `kept` beyond two id columns; None when that is not exact, i.e. when a removed row's user id or person id
    still appears in `kept` (then the caller computes the rollup of `kept` from scratch).

    Exact because a person whose every row went leaves every set, and counts are per (hour or day, event)."""
    removed_users = pc.unique(removed.column("user_id").drop_null())
    removed_people = pc.unique(pc.coalesce(removed.column("user_id"), removed.column("anonymous_id")).drop_null())
    if (
        pc.any(pc.is_in(kept.column("user_id"), value_set=removed_users)).as_py()
        or pc.any(
            pc.is_in(pc.coalesce(kept.column("user_id"), kept.column("anonymous_id")), value_set=removed_people)
        ).as_py()
    ):
        return None
    keys = persons.known_keys(pc.unique(pa.concat_arrays([removed_users, removed_people])).to_pylist())
    if len(keys) < len(set(removed_users.to_pylist()) | set(removed_people.to_pylist())):
        return None  # an id without a key (forgotten by a deletion): never assign one here
    gone_users = BitMap(keys[i] for i in removed_users.to_pylist())
    gone_people = BitMap(keys[i] for i in removed_people.to_pylist())
    micros = pc.cast(removed.column("timestamp"), pa.int64()).to_numpy()
    hours = np.floor_divide(micros, US_PER_HOUR)
    events = removed.column("event").to_pylist()
    minus: dict[tuple[int, int, object], int] = {}
    for hour, event in zip(hours.tolist(), events, strict=True):
        for key in ((0, hour, event), (1, hour // 24, event), (1, hour // 24, ALL)):
            minus[key] = minus.get(key, 0) + 1
    columns = _read_rows(old)
    out: dict[str, list[object]] = {f.name: [] for f in ROLLUP_SCHEMA}
    for kind, bucket, event, all_events, n, users, people in zip(*columns.values(), strict=True):
        left = int(n) - minus.get((kind, bucket, ALL if all_events else event), 0)
        if left <= 0:
            continue
        if kind == 1:
            user_set = BitMap.deserialize(users) - gone_users
            users = user_set.serialize()
            if people is not None:
                people = (BitMap.deserialize(people) - gone_people).serialize()
        for name, value in zip(out, (kind, bucket, event, all_events, left, users, people), strict=True):
            out[name].append(value)
    return _serialise(out)


class RollupStore:
    """Rollups by data file path in the catalog's database, with a bounded cache of parsed ones."""

    def __init__(self, engine: sa.Engine, cache_bytes: int = 512 << 20) -> None:
        self.engine = engine
        create_tables(engine, _METADATA)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, FileRollup] = OrderedDict()
        self._cached = 0

    def put(self, table_name: str, rollups: dict[str, bytes]) -> None:
        if not rollups:
            return
        now = int(time.time() * 1000)
        rows = [{"file_path": p, "table_name": table_name, "created_ms": now, "data": d} for p, d in rollups.items()]
        with self.engine.begin() as conn:
            conn.execute(sa.delete(ROLLUPS).where(ROLLUPS.c.file_path.in_(list(rollups))))
            conn.execute(sa.insert(ROLLUPS), rows)

    def get(self, paths: Iterable[str]) -> dict[str, FileRollup]:
        """Parsed rollups of the files that have one (files without one are absent from the answer)."""
        found: dict[str, FileRollup] = {}
        missing = []
        for path in paths:
            cached = self._cache.get(path)
            if cached is None:
                missing.append(path)
            else:
                self._cache.move_to_end(path)
                found[path] = cached
        for chunk in _chunks(missing):
            with self.engine.connect() as conn:
                query = sa.select(ROLLUPS.c.file_path, ROLLUPS.c.data).where(ROLLUPS.c.file_path.in_(chunk))
                for path, data in conn.execute(query):
                    parsed = found[path] = FileRollup.parse(data)
                    self._remember(path, parsed)
        return found

    def _remember(self, path: str, rollup: FileRollup) -> None:
        self._cache[path] = rollup
        self._cached += rollup.size
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= dropped.size

    def raw(self, paths: Iterable[str]) -> dict[str, bytes]:
        """Serialised rollups of the files that have one (uncached: a deletion reads each once)."""
        found: dict[str, bytes] = {}
        for chunk in _chunks(list(paths)):
            with self.engine.connect() as conn:
                query = sa.select(ROLLUPS.c.file_path, ROLLUPS.c.data).where(ROLLUPS.c.file_path.in_(chunk))
                found.update({str(p): bytes(d) for p, d in conn.execute(query)})
        return found

    def created_ms(self, paths: Iterable[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(list(paths)):
            with self.engine.connect() as conn:
                query = sa.select(ROLLUPS.c.file_path, ROLLUPS.c.created_ms).where(ROLLUPS.c.file_path.in_(chunk))
                found.update({p: int(c) for p, c in conn.execute(query)})
        return found

    def paths(self, table_name: str) -> set[str]:
        with self.engine.connect() as conn:
            query = sa.select(ROLLUPS.c.file_path).where(ROLLUPS.c.table_name == table_name)
            return {p for (p,) in conn.execute(query)}

    def delete(self, paths: Iterable[str]) -> int:
        doomed = list(paths)
        deleted = 0
        for chunk in _chunks(doomed):
            with self.engine.begin() as conn:
                result = conn.execute(sa.delete(ROLLUPS).where(ROLLUPS.c.file_path.in_(chunk)))
                deleted += result.rowcount or 0
        for path in doomed:
            dropped = self._cache.pop(path, None)
            if dropped is not None:
                self._cached -= dropped.size
        return deleted


def _chunks(paths: list[str], size: int = 500) -> list[list[str]]:
    """`paths` in slices small enough for one `IN (...)` list."""
    return [paths[start : start + size] for start in range(0, len(paths), size)]
