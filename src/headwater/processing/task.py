"""One input partition of one processor: the compiled operators, their state, stream time, and
the outputs buffered until the next checkpoint.

Every output gets a position that grows along the input: (input offset << 20) + n for the n-th
output caused by that record. Replaying the same input therefore yields the same positions,
which is what lets the log drop what a crashed run already wrote (see `runtime`).
"""

from __future__ import annotations

import heapq
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from headwater.core.errors import ProcessingError
from headwater.log.base import OutputRecord
from headwater.processing.api import Output, Pipeline
from headwater.processing.nodes import Node, Push
from headwater.processing.state import NO_OFFSET, NO_TIME, KeyValue, ServedTable, StateStore

if TYPE_CHECKING:
    from headwater.processing.joins import ReferenceTable

log = logging.getLogger(__name__)
WALL_CLOCK_BASE = 1 << 19  # positions of wall-clock timer outputs within an offset's range


@dataclass(frozen=True, slots=True)
class Timer:
    name: str
    key: str | None
    due_ms: int
    kind: str  # "event_time" or "wall_clock"
    payload: Any


def output_stream(pipeline: str, output: Output) -> str | None:
    """The log stream an output writes through (None: written into the state store)."""
    if output.kind == "streams":
        return output.name
    if output.kind == "tables":
        return f"{pipeline}.table.{output.name}"
    if output.kind == "sinks":
        return f"{pipeline}.sink.{output.name}"
    return None


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


class Task:
    def __init__(
        self,
        pipeline: Pipeline,
        partition: int,
        state: StateStore,
        tables: dict[str, ReferenceTable],
        run_id: str,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        self.pipeline, self.partition, self.run_id = pipeline, partition, run_id
        self.tables = tables
        self.wall_clock = wall_clock or (lambda: int(time.time() * 1000))
        self._state = state
        self._stores: dict[str, KeyValue] = {}
        self._served: dict[str, ServedTable] = {}
        self._memo: dict[int, Any] = {}
        self._listeners: list[Callable[[int], None]] = []
        self._wall_listeners: list[Callable[[int], None]] = []
        self.outputs: dict[str, list[OutputRecord]] = {}
        self.checkpoint = state.checkpoint_of(partition)
        self.next_offset = self.checkpoint[0] if self.checkpoint else NO_OFFSET
        self.stream_time = self.checkpoint[1] if self.checkpoint else NO_TIME
        self.offset = -1
        self._seq = 0
        self._wall_key: str | None = None
        self.records_in = self.records_out = self.late_count = self.error_count = 0
        self.last_error: str | None = None
        if pipeline.root is None:
            raise ProcessingError(f"processor {pipeline.name}: call source() before running it")
        self._push = pipeline.root.compile(self)

    # -- services for operators --------------------------------------------------------------
    def once(self, owner: object, factory: Callable[[Task], Any]) -> Any:
        """Compile `owner` once per task (merged streams and join sides reach it twice)."""
        found = self._memo.get(id(owner))
        if found is None:
            found = self._memo[id(owner)] = factory(self)
        return found

    def store(self, name: str) -> KeyValue:
        if name not in self._stores:
            self._stores[name] = self._state.key_value(self.partition, name)
        return self._stores[name]

    def served_table(self, name: str) -> ServedTable:
        """The served state table `name` of this partition (an erasure deletes through it)."""
        return self._served.setdefault(name, ServedTable(name, self.partition))

    def on_stream_time(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def on_wall_clock(self, listener: Callable[[int], None]) -> None:
        self._wall_listeners.append(listener)

    def output(self, node: Output) -> Push:
        stream = output_stream(self.pipeline.name, node)
        if stream is None:
            table = self.served_table(node.name)
            key_fn, value_fn = node.key_fn, node.value_fn

            def serve(key: str | None, value: Any, ts: int) -> None:
                k = key if key_fn is None else key_fn(value)
                if k is not None:
                    table.put(str(k), value if value_fn is None else value_fn(value), ts)

            return serve
        buffer = self.outputs.setdefault(stream, [])

        def emit(key: str | None, value: Any, ts: int) -> None:
            buffer.append(self._pending(key, value, ts))

        return emit

    def _pending(self, key: str | None, value: Any, ts: int) -> OutputRecord:
        if self._wall_key is None:
            position = (self.offset << 20) + self._seq
            idem = None
        else:
            position = (max(self.offset, 0) << 20) + WALL_CLOCK_BASE + self._seq
            idem = (f"{self.pipeline.name}/{self.run_id}/{self.partition}", f"{self._wall_key}/{self._seq}")
        self._seq += 1
        self.records_out += 1
        output_id = f"{self.pipeline.name}/{self.run_id}/{self.partition}/{position}"
        envelope = {"k": key, "v": value, "t": ts, "id": output_id}
        encoded = None if key is None else key.encode()
        return OutputRecord(encoded, _json(envelope), self.partition, position, ts, idem)

    def side_output(self, kind: str, key: str | None, value: Any, ts: int, reason: str) -> None:
        """Late records and dead letters: to `<processor>.late` / `<processor>.errors`."""
        row = {
            "processor": self.pipeline.name, "key": key, "value": value, "event_time": ts, "reason": reason,
            "partition": self.partition, "offset": self.offset,
        }  # fmt: skip
        self.outputs.setdefault(f"{self.pipeline.name}.{kind}", []).append(self._pending(key, row, ts))

    def late(self, key: str | None, value: Any, ts: int, reason: str) -> None:
        self.late_count += 1
        self.side_output("late", key, value, ts, reason)

    # -- driving ------------------------------------------------------------------------------
    def process(self, key: str | None, value: Any, ts: int, offset: int) -> None:
        """Apply one input record (offsets below the checkpoint were applied before: skipped)."""
        if offset < self.next_offset:
            return
        self.offset, self._seq = offset, 0
        self.records_in += 1
        advanced = ts > self.stream_time
        if advanced:
            self.stream_time = ts
        try:
            self._push(key, value, ts)
            if advanced:
                for listener in self._listeners:
                    listener(self.stream_time)
        except Exception as exc:
            self.error_count += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.pipeline.on_error == "stop":
                raise ProcessingError(
                    f"processor {self.pipeline.name} failed on partition {self.partition} offset {offset}: "
                    f"{self.last_error}"
                ) from exc
            log.warning("processor %s: record at %d:%d failed: %s", self.pipeline.name, self.partition, offset, exc)
            detail = "".join(traceback.format_exception_only(exc)).strip()
            self.side_output("errors", key, value, ts, detail)
        self.next_offset = offset + 1

    def advance_stream_time(self, event_time_ms: int) -> None:
        """Move stream time forward without a record (the test driver's advance_time)."""
        if event_time_ms > self.stream_time:
            self.stream_time = event_time_ms
            for listener in self._listeners:
                listener(event_time_ms)

    def tick(self, now_ms: int | None = None) -> None:
        """Fire wall-clock timers that are due."""
        now = self.wall_clock() if now_ms is None else now_ms
        for listener in self._wall_listeners:
            listener(now)

    def wall_outputs(self, timer_key: str) -> _WallScope:
        return _WallScope(self, timer_key)

    def stores(self) -> list[KeyValue]:
        return list(self._stores.values())

    def served(self) -> list[ServedTable]:
        return list(self._served.values())

    def take_outputs(self) -> dict[str, list[OutputRecord]]:
        taken = {name: list(items) for name, items in self.outputs.items() if items}
        for items in self.outputs.values():
            items.clear()
        return taken


class _WallScope:
    """Outputs of a wall-clock timer carry an idempotency key: it may fire again after a crash."""

    def __init__(self, task: Task, timer_key: str) -> None:
        self.task, self.timer_key = task, timer_key

    def __enter__(self) -> None:
        self.task._wall_key, self.task._seq = self.timer_key, 0

    def __exit__(self, *exc: object) -> None:
        self.task._wall_key = None


class State:
    """Named values of one key (`ctx.state`), like Quix's State: get / set / delete / exists."""

    __slots__ = ("_key", "_store")

    def __init__(self, store: KeyValue) -> None:
        self._store = store
        self._key: str | None = None

    def get(self, name: str, default: Any = None) -> Any:
        return self._store.get((self._key, name), default)

    def set(self, name: str, value: Any) -> None:
        self._store.put((self._key, name), value)

    def delete(self, name: str) -> None:
        self._store.delete((self._key, name))

    def exists(self, name: str) -> bool:
        return self._store.get((self._key, name)) is not None


class Context:
    """What `process()` callbacks see: the record's key, time, state, and ways to emit and schedule."""

    def __init__(self, operator: _ProcessOperator) -> None:
        self._op = operator
        self.state = State(operator.values)
        self.key: str | None = None
        self.timestamp = 0

    @property
    def stream_time(self) -> int:
        return self._op.task.stream_time

    @property
    def partition(self) -> int:
        return self._op.task.partition

    def _at(self, key: str | None, ts: int) -> Context:
        self.key, self.timestamp = key, ts
        self.state._key = key
        return self

    def emit(self, value: Any, *, key: Any = ..., timestamp: int | None = None) -> None:
        """Send a record downstream (default: this record's key and time)."""
        out_key = self.key if key is ... else (None if key is None else str(key))
        self._op.downstream(out_key, value, self.timestamp if timestamp is None else timestamp)

    def lookup(self, table: str, key: Any) -> Any:
        """A row (or rows, for many=True tables) of a reference table registered on the pipeline."""
        return self._op.task.tables[table].get(key)

    def schedule(self, name: str, at_ms: int, *, payload: Any = None, wall_clock: bool = False) -> None:
        """Call on_timer for this key once event time (or, with wall_clock=True, the clock) reaches
        `at_ms`. One timer per key and name: scheduling again moves it."""
        self._op.schedule(self.key, name, at_ms, payload, "wall_clock" if wall_clock else "event_time")

    def cancel(self, name: str, *, wall_clock: bool = False) -> None:
        self._op.cancel(self.key, name, "wall_clock" if wall_clock else "event_time")


class ProcessNode(Node):
    def __init__(
        self, node_id: str, on_record: Callable[[Context, Any], None], on_timer: Callable[[Context, Timer], None] | None
    ) -> None:
        self.node_id, self.on_record, self.on_timer = node_id, on_record, on_timer

    def compile(self, task: Task, downstream: Push) -> Push:
        return _ProcessOperator(self, task, downstream).push


class _ProcessOperator:
    def __init__(self, node: ProcessNode, task: Task, downstream: Push) -> None:
        self.node, self.task, self.downstream = node, task, downstream
        self.values = task.store(node.node_id)
        self.timers = task.store(node.node_id + ".timers")  # (kind, key, name) -> (due, payload)
        self.heaps: dict[str, list[tuple[int, tuple[bool, str], str, str | None]]] = {
            "event_time": [],
            "wall_clock": [],
        }
        for (kind, key, name), (due, _payload) in self.timers.items():
            heapq.heappush(self.heaps[kind], (due, (key is None, key or ""), name, key))
        self.ctx = Context(self)
        task.on_stream_time(lambda now: self._fire("event_time", now))
        task.on_wall_clock(lambda now: self._fire("wall_clock", now))

    def push(self, key: str | None, value: Any, ts: int) -> None:
        self.node.on_record(self.ctx._at(key, ts), value)

    def schedule(self, key: str | None, name: str, due: int, payload: Any, kind: str) -> None:
        self.timers.put((kind, key, name), (int(due), payload))
        heapq.heappush(self.heaps[kind], (int(due), (key is None, key or ""), name, key))

    def cancel(self, key: str | None, name: str, kind: str) -> None:
        self.timers.delete((kind, key, name))

    def _fire(self, kind: str, now: int) -> None:
        heap = self.heaps[kind]
        on_timer = self.node.on_timer
        while heap and heap[0][0] <= now:
            due, _, name, key = heapq.heappop(heap)
            entry = self.timers.get((kind, key, name))
            if entry is None or entry[0] != due:
                continue  # cancelled or moved
            self.timers.delete((kind, key, name))
            if on_timer is None:
                continue
            timer = Timer(name, key, due, kind, entry[1])
            if kind == "wall_clock":
                with self.task.wall_outputs(f"{self.node.node_id}/{key}/{name}/{due}"):
                    on_timer(self.ctx._at(key, self.task.stream_time), timer)
            else:
                on_timer(self.ctx._at(key, due), timer)
