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
from datetime import datetime
from typing import Any

import orjson

from headwater.processing.api import Output, Pipeline
from headwater.processing.state import StateStore
from headwater.processing.task import Task, output_stream


def _millis(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


class TestDriver:
    __test__ = False  # not a pytest test class

    def __init__(self, pipeline: Pipeline, partitions: int = 1, wall_clock_ms: int = 0) -> None:
        self.pipeline = pipeline
        self.partitions = partitions
        self.now = wall_clock_ms
        self._store = StateStore(None)
        for table in pipeline.tables.values():
            table.refresh(force=True)
        self.tasks = [
            Task(pipeline, p, self._store, pipeline.tables, "test", wall_clock=lambda: self.now)
            for p in range(partitions)
        ]
        self._offsets = [0] * partitions
        self._streams: dict[str, list[dict[str, Any]]] = {}
        self._served: dict[str, dict[str, Any]] = {}
        self._outputs_by_kind = {
            output_stream(pipeline.name, node): node for node in pipeline.walk() if isinstance(node, Output)
        }

    def send(self, value: Any, *, key: str | None = None, timestamp: Any = None, partition: int | None = None) -> None:
        """Feed one record. Without `timestamp`, event time comes from value["timestamp"]."""
        if timestamp is None:
            if not isinstance(value, dict) or "timestamp" not in value:
                raise ValueError("send: give timestamp= (epoch ms or ISO-8601) or a value with a 'timestamp'")
            timestamp = value["timestamp"]
        if partition is None:
            partition = 0 if key is None else zlib.crc32(key.encode()) % self.partitions
        for table in self.pipeline.tables.values():
            table.refresh()  # as the runtime does between records (each table at its refresh_s)
        task = self.tasks[partition]
        offset = self._offsets[partition]
        self._offsets[partition] += 1
        task.process(key, value, _millis(timestamp), offset)
        self._collect()

    def send_many(self, records: list[tuple[str | None, Any, Any]]) -> None:
        """Feed (key, value, timestamp) triples in order."""
        for key, value, timestamp in records:
            self.send(value, key=key, timestamp=timestamp)

    def advance_time(self, event_time_ms: int) -> None:
        """Move stream time forward on every partition (closes windows, fires event-time timers)."""
        for task in self.tasks:
            if event_time_ms > task.stream_time:
                task.stream_time = event_time_ms
                for listener in task._listeners:
                    listener(event_time_ms)
        self._collect()

    def advance_wall_clock(self, ms: int) -> None:
        """Move the wall clock forward by `ms` and fire wall-clock timers."""
        self.now += ms
        for task in self.tasks:
            task.tick(self.now)
        self._collect()

    def _collect(self) -> None:
        for task in self.tasks:
            for stream, items in task.take_outputs().items():
                out = self._streams.setdefault(stream, [])
                for item in items:
                    envelope = orjson.loads(item.value)
                    out.append({"key": envelope["k"], "value": envelope["v"], "timestamp": envelope["t"]})
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

    def table(self, name: str) -> list[Any]:
        """Rows appended to the Iceberg table `name` (by to_table)."""
        return self.values(f"{self.pipeline.name}.table.{name}")

    def sink(self, name: str) -> list[dict[str, Any]]:
        return self.outputs(f"{self.pipeline.name}.sink.{name}")

    def state(self, table: str, key: str | None = None) -> Any:
        """A served state table: one key's value, or the whole table as a dict."""
        rows = self._served.get(table, {})
        return dict(rows) if key is None else rows.get(key)

    def late(self) -> list[Any]:
        return self.values(f"{self.pipeline.name}.late")

    def errors(self) -> list[Any]:
        return self.values(f"{self.pipeline.name}.errors")
