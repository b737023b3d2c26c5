"""Event-time windows and their aggregations.

Semantics (DESIGN.md): stream time is the largest event time seen on the input partition; a
window closes once its end plus the grace period is at or before stream time. Its final result
is emitted then, once. A record that arrives for a closed window goes to the late table with the
reason (per window: a hopping record still counts in its open windows, and is listed late for the
closed ones). Windows are half-open [start, end): a record exactly on `end` opens the next one.
- tumbling(size): [k*size, (k+1)*size)
- hopping(size, step): every [k*step, k*step + size) that holds the record
- sliding(size): a window [t - size, t] for each distinct record time t of the key (end = t + 1),
  folding its records in event-time order
- session(gap): records of a key at most `gap` apart chain into one session [first, last + 1);
  it closes when stream time reaches last + gap + 1 + grace; a record within `gap` of a closed
  session is late.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headwater.core.errors import ProcessingError
from headwater.processing.nodes import Node, Push

if TYPE_CHECKING:
    from headwater.processing.task import Task


def same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Aggregation:
    initializer: Callable[[], Any]
    adder: Callable[[Any, Any], Any]
    result: Callable[[Any], Any] = same


def count() -> Aggregation:
    return Aggregation(lambda: 0, lambda acc, _v: acc + 1)


def total(fn: Callable[[Any], float]) -> Aggregation:
    return Aggregation(lambda: 0, lambda acc, v: acc + fn(v))


def minimum(fn: Callable[[Any], Any]) -> Aggregation:
    return Aggregation(lambda: None, lambda acc, v: fn(v) if acc is None else min(acc, fn(v)))


def maximum(fn: Callable[[Any], Any]) -> Aggregation:
    return Aggregation(lambda: None, lambda acc, v: fn(v) if acc is None else max(acc, fn(v)))


def mean(fn: Callable[[Any], float]) -> Aggregation:
    return Aggregation(
        lambda: (0.0, 0), lambda acc, v: (acc[0] + fn(v), acc[1] + 1), lambda acc: acc[0] / acc[1] if acc[1] else None
    )


def _add_to_set(acc: set[Any], item: Any) -> set[Any]:
    acc.add(item)
    return acc


def distinct(fn: Callable[[Any], Any]) -> Aggregation:
    return Aggregation(set, lambda acc, v: _add_to_set(acc, fn(v)), len)


def collect(fn: Callable[[Any], Any]) -> Aggregation:
    return Aggregation(list, lambda acc, v: [*acc, fn(v)])


_FIRST = ("__first__",)


def reduce(fn: Callable[[Any, Any], Any]) -> Aggregation:
    return Aggregation(
        lambda: _FIRST, lambda acc, v: v if acc == _FIRST else fn(acc, v), lambda a: None if a == _FIRST else a
    )


@dataclass(frozen=True)
class WindowKind:
    grace: int

    def check(self) -> None:
        if self.grace < 0:
            raise ProcessingError("window grace must be >= 0 ms")


@dataclass(frozen=True)
class Tumbling(WindowKind):
    size: int

    def __init__(self, size: int, grace: int = 0) -> None:
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "grace", grace)
        if size <= 0:
            raise ProcessingError("tumbling_window: size must be > 0 ms")
        self.check()

    def assign(self, ts: int) -> list[tuple[int, int]]:
        start = ts - ts % self.size
        return [(start, start + self.size)]


@dataclass(frozen=True)
class Hopping(WindowKind):
    size: int
    step: int

    def __init__(self, size: int, step: int, grace: int = 0) -> None:
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "grace", grace)
        if size <= 0 or step <= 0 or step > size:
            raise ProcessingError("hopping_window: need 0 < step <= size (ms)")
        self.check()

    def assign(self, ts: int) -> list[tuple[int, int]]:
        last = ts - ts % self.step
        out = []
        start = last
        while start > ts - self.size:
            out.append((start, start + self.size))
            start -= self.step
        out.reverse()
        return out


@dataclass(frozen=True)
class Sliding(WindowKind):
    size: int

    def __init__(self, size: int, grace: int = 0) -> None:
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "grace", grace)
        if size <= 0:
            raise ProcessingError("sliding_window: size must be > 0 ms")
        self.check()


@dataclass(frozen=True)
class Session(WindowKind):
    gap: int

    def __init__(self, gap: int, grace: int = 0) -> None:
        object.__setattr__(self, "gap", gap)
        object.__setattr__(self, "grace", grace)
        if gap <= 0:
            raise ProcessingError("session_window: gap must be > 0 ms")
        self.check()


def _heap_key(key: str | None) -> tuple[bool, str]:
    return (key is None, key or "")


class WindowNode(Node):
    """One windowed aggregation with up to two outputs — results on close (`final_out`) and on
    every record (`current_out`) — sharing one state store `<id>` and one late-record report."""

    def __init__(self, node_id: str, window: WindowKind, agg: Aggregation) -> None:
        self.node_id, self.window, self.agg = node_id, window, agg
        self.final_out: Node | None = None
        self.current_out: Node | None = None

    def walk(self) -> Iterable[Node]:
        yield self
        for out in (self.final_out, self.current_out):
            if out is not None:
                yield from out.walk()

    def compile(self, task: Task, downstream: Push) -> Push:
        final = self.final_out.compile(task, downstream) if self.final_out is not None else None
        current = self.current_out.compile(task, downstream) if self.current_out is not None else None
        if isinstance(self.window, Sliding):
            return SlidingOperator(self, task, final, current).push
        if isinstance(self.window, Session):
            return SessionOperator(self, task, final, current).push
        return FixedOperator(self, task, final, current).push


class _Operator:
    """Shared parts: the store, the close-time heap (rebuilt from the store at start), emission."""

    def __init__(self, node: WindowNode, task: Task, final: Push | None, current: Push | None) -> None:
        self.task, self.final_push, self.current_push = task, final, current
        self.agg, self.grace = node.agg, node.window.grace
        self.store = task.store(node.node_id)
        self.heap: list[tuple[int, tuple[bool, str], int, str | None]] = []
        task.on_stream_time(self.advance)

    def emit(self, key: str | None, start: int, end: int, acc: Any, push: Push) -> None:
        push(key, {"key": key, "start": start, "end": end, "value": self.agg.result(acc)}, end - 1)

    def advance(self, stream_time: int) -> None:
        heap = self.heap
        while heap and heap[0][0] <= stream_time:
            close_at, _, start, key = heapq.heappop(heap)
            self.close(key, start, close_at)

    def close(self, key: str | None, start: int, close_at: int) -> None:
        raise NotImplementedError


class FixedOperator(_Operator):
    """Tumbling and hopping windows: one accumulator per (key, window start)."""

    def __init__(self, node: WindowNode, task: Task, final: Push | None, current: Push | None) -> None:
        super().__init__(node, task, final, current)
        self.assign = node.window.assign  # type: ignore[attr-defined]
        for (key, start), (end, _acc) in self.store.items():
            heapq.heappush(self.heap, (end + self.grace, _heap_key(key), start, key))

    def push(self, key: str | None, value: Any, ts: int) -> None:
        stream_time, grace, store = self.task.stream_time, self.grace, self.store
        late = 0
        windows = self.assign(ts)
        for start, end in windows:
            if end + grace <= stream_time:
                late += 1
                continue
            slot = store.get((key, start))
            if slot is None:
                acc = self.agg.initializer()
                heapq.heappush(self.heap, (end + grace, _heap_key(key), start, key))
            else:
                acc = slot[1]
            acc = self.agg.adder(acc, value)
            store.put((key, start), (end, acc))
            if self.current_push is not None:
                self.emit(key, start, end, acc, self.current_push)
        if late:
            self.task.late(key, value, ts, f"{late} of {len(windows)} window(s) closed (end + grace <= stream time)")

    def close(self, key: str | None, start: int, close_at: int) -> None:
        slot = self.store.get((key, start))
        if slot is None:
            return
        self.store.delete((key, start))
        if self.final_push is not None:
            self.emit(key, start, slot[0], slot[1], self.final_push)


class SlidingOperator(_Operator):
    """Keeps each key's recent records; a window [t - size, t] per distinct record time t."""

    def __init__(self, node: WindowNode, task: Task, final: Push | None, current: Push | None) -> None:
        super().__init__(node, task, final, current)
        self.size = node.window.size  # type: ignore[attr-defined]
        self.records = task.store(node.node_id + ".records")
        for (key, t), _ in self.store.items():
            heapq.heappush(self.heap, (t + 1 + self.grace, _heap_key(key), t, key))

    def _window(self, key: str | None, t: int) -> tuple[Any, int]:
        acc = self.agg.initializer()
        n = 0
        for rt, value in self.records.get(key, ()):
            if t - self.size <= rt <= t:
                acc = self.agg.adder(acc, value)
                n += 1
        return acc, n

    def push(self, key: str | None, value: Any, ts: int) -> None:
        stream_time = self.task.stream_time
        kept = list(self.records.get(key, ()))
        own_closed = ts + 1 + self.grace <= stream_time
        if own_closed:
            # later windows [t - size, t] with ts <= t <= ts + size may still be open and take it
            later = {t for t, _ in kept if ts <= t <= ts + self.size and self.store.get((key, t)) is not None}
            if not later:
                self.task.late(key, value, ts, "window closed (end + grace <= stream time)")
                return
            self.task.late(key, value, ts, "own window closed (end + grace <= stream time); counted in later ones")
        kept.append((ts, value))
        kept.sort(key=lambda item: item[0])
        self.records.put(key, kept)
        if own_closed:
            return
        if self.store.get((key, ts)) is None:
            self.store.put((key, ts), True)
            heapq.heappush(self.heap, (ts + 1 + self.grace, _heap_key(key), ts, key))
        if self.current_push is not None:
            acc, _ = self._window(key, ts)
            self.emit(key, ts - self.size, ts + 1, acc, self.current_push)

    def close(self, key: str | None, t: int, close_at: int) -> None:
        if self.store.get((key, t)) is None:
            return
        self.store.delete((key, t))
        if self.final_push is not None:
            acc, _ = self._window(key, t)
            self.emit(key, t - self.size, t + 1, acc, self.final_push)
        oldest_needed = t + 1 - self.size  # windows close in time order: later ones start after this
        records = self.records.get(key, ())
        if records and records[0][0] < oldest_needed:
            self.records.put(key, [item for item in records if item[0] >= oldest_needed] or None)


class SessionOperator(_Operator):
    """Per key, open sessions {start: (last, values)}; a record merges every session it reaches.

    Sessions keep their values (not an accumulator) so that merging two sessions needs no merge
    function from the user; the aggregation runs when the result is emitted.
    """

    def __init__(self, node: WindowNode, task: Task, final: Push | None, current: Push | None) -> None:
        super().__init__(node, task, final, current)
        self.gap = node.window.gap  # type: ignore[attr-defined]
        self.closed = task.store(node.node_id + ".closed")
        for key, sessions in self.store.items():
            for start, (last, _values) in sessions.items():
                heapq.heappush(self.heap, (last + self.gap + 1 + self.grace, _heap_key(key), start, key))

    def _fold(self, values: list[Any]) -> Any:
        acc = self.agg.initializer()
        for value in values:
            acc = self.agg.adder(acc, value)
        return acc

    def push(self, key: str | None, value: Any, ts: int) -> None:
        stream_time, gap, grace = self.task.stream_time, self.gap, self.grace
        sessions: dict[int, tuple[int, list[Any]]] = dict(self.store.get(key) or {})
        reach = [s for s, (last, _) in sessions.items() if s - gap <= ts <= last + gap]
        if not reach and (ts + gap + 1 + grace <= stream_time or self._reaches_closed(key, ts)):
            self.task.late(key, value, ts, "session closed (last + gap + grace <= stream time)")
            return
        start, last = ts, ts
        values: list[Any] = []
        for s in sorted(reach):
            s_last, s_values = sessions.pop(s)
            start, last = min(start, s), max(last, s_last)
            values.extend(s_values)
        values.append(value)
        sessions[start] = (last, values)
        self.store.put(key, sessions)
        heapq.heappush(self.heap, (last + gap + 1 + grace, _heap_key(key), start, key))
        if self.current_push is not None:
            self.emit(key, start, last + 1, self._fold(values), self.current_push)

    def close(self, key: str | None, start: int, close_at: int) -> None:
        sessions = self.store.get(key)
        if not sessions or start not in sessions:
            return
        last, values = sessions[start]
        if last + self.gap + 1 + self.grace != close_at:
            return  # the session grew since this entry was queued: a later entry closes it
        sessions = dict(sessions)
        del sessions[start]
        self.store.put(key, sessions or None)
        closed = [(s, e) for s, e in self.closed.get(key, ()) if e + 2 * self.gap + 1 + self.grace > close_at]
        closed.append((start, last))
        self.closed.put(key, closed)
        if self.final_push is not None:
            self.emit(key, start, last + 1, self._fold(values), self.final_push)

    def _reaches_closed(self, key: str | None, ts: int) -> bool:
        """A record within `gap` of a closed session belongs to it: it is late, not a new session.
        Closed sessions are remembered until no record that is not late could reach them."""
        horizon = self.task.stream_time - 2 * self.gap - 1 - self.grace
        closed = self.closed.get(key, ())
        live = [(s, e) for s, e in closed if e > horizon]
        if len(live) != len(closed):
            self.closed.put(key, live or None)
        return any(s - self.gap <= ts <= e + self.gap for s, e in live)
