"""Test a pipeline in-process, like Kafka Streams' TopologyTestDriver: no log, no files.

    driver = TestDriver(pipeline)
    driver.send({"event": "bet", "properties": {"stake": 5}}, key="u1", timestamp=1_000)
    driver.advance_time(61_000)              # event time (a record is not needed to close windows)
    assert driver.outputs("coupons") == [...]
    assert driver.state("latest", "u1") == {...}

Records go through the same compiled operators as in production; outputs are decoded back to
{"key", "value", "timestamp"}; late records and dead letters are in `late()` and `errors()`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import orjson

from headwater.processing.api import Pipeline
from headwater.processing.records import to_millis
from headwater.processing.state import StateStore
from headwater.processing.task import Task


class _Stage:
    """One pipeline of the driver (the processor, or a stage after a repartition) and its tasks."""

    def __init__(self, pipeline: Pipeline, partitions: int, store: StateStore, clock: Callable[[], int]) -> None:
        self.pipeline = pipeline
        for table in pipeline.tables.values():
            table.refresh(force=True)
        self.tasks = [Task(pipeline, p, store, pipeline.tables, "test", wall_clock=clock) for p in range(partitions)]
        self.offsets = [0] * partitions

    def send(self, key: str | None, value: Any, ts: int, partition: int) -> None:
        for table in self.pipeline.tables.values():
            table.refresh()  # as the runtime does between records (each table at its refresh_s)
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        self.tasks[partition].process(key, value, ts, offset)


class TestDriver:
    __test__ = False  # not a pytest test class

    def __init__(self, pipeline: Pipeline, partitions: int = 1, wall_clock_ms: int = 0) -> None:
        self.pipeline = pipeline
        self.partitions = partitions
        self.now = wall_clock_ms
        self._store = StateStore(None)
        stages = [_Stage(p, partitions, self._store, lambda: self.now) for p in pipeline.all()]
        self._root = stages[0]
        self._stages = {stage.pipeline.input: stage for stage in stages[1:]}  # repartition streams
        self.tasks = self._root.tasks
        self._streams: dict[str, list[dict[str, Any]]] = {}
        self._served: dict[str, dict[str, Any]] = {}

    def _partition(self, key: str | None) -> int:
        return 0 if key is None else zlib.crc32(key.encode()) % self.partitions

    def send(self, value: Any, *, key: str | None = None, timestamp: Any = None, partition: int | None = None) -> None:
        """Feed one record. Without `timestamp`, event time comes from value["timestamp"]."""
        if timestamp is None:
            if not isinstance(value, dict) or "timestamp" not in value:
                raise ValueError("send: give timestamp= (epoch ms or ISO-8601) or a value with a 'timestamp'")
            timestamp = value["timestamp"]
        self._root.send(key, value, to_millis(timestamp), self._partition(key) if partition is None else partition)
        self._collect()

    def send_many(self, records: list[tuple[str | None, Any, Any]]) -> None:
        """Feed (key, value, timestamp) triples in order."""
        for key, value, timestamp in records:
            self.send(value, key=key, timestamp=timestamp)

    def _all_tasks(self) -> list[Task]:
        return [task for stage in (self._root, *self._stages.values()) for task in stage.tasks]

    def advance_time(self, event_time_ms: int) -> None:
        """Move stream time forward on every partition (closes windows, fires event-time timers)."""
        for stage in (self._root, *self._stages.values()):
            for task in stage.tasks:
                task.advance_stream_time(event_time_ms)
            self._collect()  # what closed here may feed the next stage before its time moves

    def advance_wall_clock(self, ms: int) -> None:
        """Move the wall clock forward by `ms` and fire wall-clock timers."""
        self.now += ms
        for task in self._all_tasks():
            task.tick(self.now)
        self._collect()

    def _collect(self) -> None:
        """Gather outputs; records written to a repartition stream go on to its stage at once."""
        moved = True
        while moved:
            moved = False
            for task in self._all_tasks():
                for stream, items in task.take_outputs().items():
                    out = self._streams.setdefault(stream, [])
                    stage = self._stages.get(stream)
                    for item in items:
                        envelope = orjson.loads(item.value)
                        out.append({"key": envelope["k"], "value": envelope["v"], "timestamp": envelope["t"]})
                        if stage is not None:
                            stage.send(envelope["k"], envelope["v"], envelope["t"], self._partition(envelope["k"]))
                            moved = True
                for table in task.served():
                    rows = self._served.setdefault(table.name, {})
                    for key, (value, _ts) in table.pending().items():
                        if value is None:
                            rows.pop(key, None)
                        else:
                            rows[key] = orjson.loads(value)
                    table.saved()

    def outputs(self, stream: str) -> list[dict[str, Any]]:
        """Records written to the output stream `stream` so far."""
        return list(self._streams.get(stream, []))

    def values(self, stream: str) -> list[Any]:
        return [record["value"] for record in self.outputs(stream)]

    def _of_stages(self, suffix: str) -> list[dict[str, Any]]:
        return [record for p in self.pipeline.all() for record in self.outputs(f"{p.name}{suffix}")]

    def table(self, name: str) -> list[Any]:
        """Rows appended to the Iceberg table `name` (by to_table, in any stage)."""
        return [record["value"] for record in self._of_stages(f".table.{name}")]

    def sink(self, name: str) -> list[dict[str, Any]]:
        return self._of_stages(f".sink.{name}")

    def state(self, table: str, key: str | None = None) -> Any:
        """A served state table: one key's value, or the whole table as a dict."""
        rows = self._served.get(table, {})
        return dict(rows) if key is None else rows.get(key)

    def late(self) -> list[Any]:
        return [record["value"] for record in self._of_stages(".late")]

    def errors(self) -> list[Any]:
        return [record["value"] for record in self._of_stages(".errors")]
