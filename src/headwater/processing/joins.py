"""Joins: stream-stream interval joins on the key, and lookups in reference tables.

Interval join (Kafka Streams' `JoinWindows`, Flink's interval join): a left record at t meets the
right records of its key with times in [t - before, t + after] (bounds included). A record is
late once its interval has closed: t + after + grace + 1 <= stream time for a left record,
t + before + grace + 1 <= stream time for a right one. Both sides keep their records until no
record that is not late could still meet them (t + before + after + grace + 1 <= stream time);
that is also when a left join reports a left record that met nothing.

Reference tables (PMU's campaign table) change while the processor runs: they are reloaded from
their origin (an Iceberg table, a CSV/JSON file, rows given in code) every `refresh_s` seconds,
between records, and a lookup sees one version of the table at a time.
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from headwater.core.errors import ProcessingError
from headwater.processing.nodes import Node, Push

if TYPE_CHECKING:
    from headwater.processing.api import Stream
    from headwater.processing.task import Task

log = logging.getLogger(__name__)


def pair(left: Any, right: Any) -> Any:
    return {"left": left, "right": right}


class IntervalJoin:
    """State of one join, shared by its two sides; compiled once per task."""

    def __init__(
        self,
        node_id: str,
        before: int,
        after: int,
        grace: int,
        merge: Callable[[Any, Any], Any] | None,
        how: Literal["inner", "left"],
    ) -> None:
        self.node_id, self.before, self.after, self.grace = node_id, before, after, grace
        self.merge = merge or pair
        self.how = how
        self.output: Stream | None = None

    def side(self, name: Literal["left", "right"]) -> _JoinSide:
        return _JoinSide(self, name)

    def operator(self, task: Task) -> _JoinOperator:
        assert self.output is not None
        output = self.output
        return task.once(self, lambda t: _JoinOperator(self, t, output.compile(t)))


class _JoinSide(Node):
    def __init__(self, join: IntervalJoin, name: Literal["left", "right"]) -> None:
        self.join, self.name = join, name

    def walk(self) -> Iterable[Node]:
        yield self
        if self.name == "left" and self.join.output is not None:
            yield from self.join.output.walk()

    def compile(self, task: Task, downstream: Push) -> Push:
        operator = self.join.operator(task)
        return operator.push_left if self.name == "left" else operator.push_right


class _JoinOperator:
    def __init__(self, join: IntervalJoin, task: Task, downstream: Push) -> None:
        self.join, self.task, self.downstream = join, task, downstream
        # per key: list of [t, value, matched]; expiry heap of (t + keep, side, key)
        self.left = task.store(join.node_id + ".left")
        self.right = task.store(join.node_id + ".right")
        self.heap: list[tuple[int, str, str, str | None]] = []
        self.late_left = join.after + join.grace
        self.late_right = join.before + join.grace
        self.keep = join.before + join.after + join.grace
        for side, store in (("L", self.left), ("R", self.right)):
            for key, rows in store.items():
                for t, _value, _matched in rows:
                    heapq.heappush(self.heap, (t + self.keep + 1, side, key or "", key))
        task.on_stream_time(self.advance)

    def _late(self, key: str | None, value: Any, ts: int, keep: int, side: str) -> bool:
        if ts + keep + 1 <= self.task.stream_time:
            self.task.late(key, value, ts, f"join {side} side: interval closed (t + window + grace <= stream time)")
            return True
        return False

    def push_left(self, key: str | None, value: Any, ts: int) -> None:
        if self._late(key, value, ts, self.late_left, "left"):
            return
        matched = False
        merge = self.join.merge
        for rt, rvalue, _ in self.right.get(key, ()):
            if ts - self.join.before <= rt <= ts + self.join.after:
                matched = True
                self.downstream(key, merge(value, rvalue), max(ts, rt))
        rows = list(self.left.get(key, ()))
        rows.append((ts, value, matched))
        self.left.put(key, rows)
        heapq.heappush(self.heap, (ts + self.keep + 1, "L", key or "", key))

    def push_right(self, key: str | None, value: Any, ts: int) -> None:
        if self._late(key, value, ts, self.late_right, "right"):
            return
        merge = self.join.merge
        rows = self.left.get(key, ())
        changed = False
        updated = []
        for lt, lvalue, matched in rows:
            if lt - self.join.before <= ts <= lt + self.join.after:
                self.downstream(key, merge(lvalue, value), max(ts, lt))
                if not matched:
                    matched, changed = True, True
            updated.append((lt, lvalue, matched))
        if changed:
            self.left.put(key, updated)
        right_rows = list(self.right.get(key, ()))
        right_rows.append((ts, value, False))
        self.right.put(key, right_rows)
        heapq.heappush(self.heap, (ts + self.keep + 1, "R", key or "", key))

    def advance(self, stream_time: int) -> None:
        heap = self.heap
        while heap and heap[0][0] <= stream_time:
            _, side, _, key = heapq.heappop(heap)
            if side == "L":
                self._expire_left(key, stream_time)
            else:
                rows = self.right.get(key, ())
                kept = [row for row in rows if row[0] + self.keep + 1 > stream_time]
                if len(kept) != len(rows):
                    self.right.put(key, kept or None)

    def _expire_left(self, key: str | None, stream_time: int) -> None:
        rows = self.left.get(key, ())
        kept = []
        for row in rows:
            if row[0] + self.keep + 1 > stream_time:
                kept.append(row)
            elif self.join.how == "left" and not row[2]:
                self.downstream(key, self.join.merge(row[1], None), row[0])
        if len(kept) != len(rows):
            self.left.put(key, kept or None)


class ReferenceTable:
    """A table looked up by key while the processor runs, reloaded every `refresh_s` seconds.

    Build one with `from_rows`, `from_file` (CSV or JSON lines / JSON array) or `from_iceberg`;
    `many=True` keeps every row of a key (a list), else the last one wins.
    """

    def __init__(
        self, name: str, key: str, loader: Callable[[], Iterable[dict[str, Any]]], refresh_s: float, many: bool
    ) -> None:
        self.name, self.key_field, self.loader, self.refresh_s, self.many = name, key, loader, refresh_s, many
        self.version = 0
        self.rows: dict[str, Any] = {}
        self._loaded_at = -1e18
        self.error: str | None = None

    @classmethod
    def from_rows(cls, name: str, rows: list[dict[str, Any]], key: str, many: bool = False) -> ReferenceTable:
        return cls(name, key, lambda: rows, refresh_s=1e18, many=many)

    @classmethod
    def from_file(
        cls, name: str, path: str | Path, key: str, many: bool = False, refresh_s: float = 5
    ) -> ReferenceTable:
        return cls(name, key, lambda: _read_file(Path(path)), refresh_s, many)

    @classmethod
    def from_iceberg(
        cls, name: str, table: str, key: str, many: bool = False, refresh_s: float = 60, settings: Any = None
    ) -> ReferenceTable:
        """Rows of the lake table `table` (in Headwater's namespace), read with pyiceberg."""
        return cls(name, key, lambda: _read_iceberg(table, settings), refresh_s, many)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._loaded_at < self.refresh_s:
            return
        self._loaded_at = now
        try:
            rows = list(self.loader())
        except Exception as exc:  # keep serving the last good version
            self.error = f"reload failed: {exc}"
            log.warning("reference table %s: %s", self.name, self.error)
            return
        table: dict[str, Any] = {}
        for row in rows:
            key = row.get(self.key_field)
            if key is None:
                continue
            if self.many:
                table.setdefault(str(key), []).append(row)
            else:
                table[str(key)] = row
        self.rows, self.error = table, None
        self.version += 1

    def get(self, key: Any) -> Any:
        return self.rows.get(str(key)) if key is not None else None


def _read_file(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise ProcessingError(f"{path}: no such file")
    text = path.read_text()
    if path.suffix == ".csv":
        return [_numbers(row) for row in csv.DictReader(text.splitlines())]
    stripped = text.lstrip()
    if stripped.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _numbers(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells that are numbers become numbers (a campaign's minimum stake compares as one)."""
    out: dict[str, Any] = {}
    for key, cell in row.items():
        try:
            out[key] = int(cell)
        except (TypeError, ValueError):
            try:
                out[key] = float(cell)
            except (TypeError, ValueError):
                out[key] = cell
    return out


def _read_iceberg(table: str, settings: Any) -> list[dict[str, Any]]:
    from headwater.core.settings import load_settings
    from headwater.lake.tables import NAMESPACE, open_catalog

    catalog = open_catalog(settings or load_settings())
    return list(catalog.load_table((NAMESPACE, table)).scan().to_arrow().to_pylist())


class TableJoin(Node):
    def __init__(
        self,
        table: str,
        key: Callable[[Any], Any] | None,
        merge: Callable[[Any, Any], Any] | None,
        how: Literal["inner", "left"],
    ) -> None:
        self.table, self.key_fn, self.merge, self.how = table, key, merge or pair, how

    def compile(self, task: Task, downstream: Push) -> Push:
        table = task.tables[self.table]
        key_fn, merge, left = self.key_fn, self.merge, self.how == "left"

        def push(key: str | None, value: Any, ts: int) -> None:
            found = table.get(key if key_fn is None else key_fn(value))
            if found is None:
                if left:
                    downstream(key, merge(value, None), ts)
                return
            if table.many:
                for row in found:
                    downstream(key, merge(value, row), ts)
            else:
                downstream(key, merge(value, found), ts)

        return push
