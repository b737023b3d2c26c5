"""Processors on the Kafka backend: workers split partitions; a dead worker's partitions move to a
worker on another "machine" (its own state directory), which restores state from the changelog;
transactions keep every output exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.log.kafka import KafkaLog
from headwater.processing import Pipeline, seconds
from headwater.processing.runtime import ProcessorRunner
from headwater.processing.state import ServedReader
from tests.helpers import read_stream
from tests.services import KafkaBroker

pytestmark = pytest.mark.kafka
USERS = [f"u{i}" for i in range(12)]
BASE_MS = 1_767_225_600_000


def _pipeline() -> Pipeline:
    p = Pipeline("kafka-counts")
    events = p.source("events")
    events.tumbling_window(seconds(1)).count().final().to_stream("kafka-counts-out")

    def running_total(ctx, event):  # type: ignore[no-untyped-def]
        total = ctx.state.get("total", 0) + event["properties"]["n"]
        ctx.state.set("total", total)
        ctx.emit({"user": ctx.key, "total": total})

    events.process(running_total).to_state("kafka_totals", key=lambda v: v["user"])
    return p


def _envelope(user: str, i: int) -> tuple[bytes, bytes]:
    event = {"event": "tick", "userId": user, "properties": {"n": i}, "timestamp": BASE_MS + i * 10}
    return user.encode(), b'{"m":{"ra":%d,"src":"t","ep":"track"},"e":' % BASE_MS + orjson.dumps(event) + b"}"


def _reference(count: int) -> tuple[Counter[tuple[str, int]], dict[str, int]]:
    windows: Counter[tuple[str, int]] = Counter()
    totals: dict[str, int] = {}
    for i in range(count):
        user = USERS[i % len(USERS)]
        windows[(user, (BASE_MS + i * 10) // 1000 * 1000)] += 1
        totals[user] = totals.get(user, 0) + i
    return windows, totals


def _drain(runner: ProcessorRunner, until: float, partitions: int) -> None:
    while time.monotonic() < until:
        if runner.poll(0.2) == 0 and len(runner.tasks) == partitions and runner.lag() == 0:
            runner.checkpoint()
            return
    runner.checkpoint()


def _outputs(log: KafkaLog) -> list[dict[str, Any]]:
    return read_stream(log, "kafka-counts-out")


def test_two_workers_split_partitions_and_one_takes_over(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    log = KafkaLog(kafka_broker.bootstrap, f"proc-{uuid.uuid4().hex[:8]}", partitions=4, replication_factor=1)
    count = 3000
    producer = log.producer()
    producer.append([_envelope(USERS[i % len(USERS)], i) for i in range(count)]).result()
    # a final event per user far in the future closes every window (stream time is per partition)
    producer.append([_envelope(user, 10_000_000) for user in USERS]).result()
    producer.close()
    windows, totals = _reference(count)
    totals = {user: total + 10_000_000 for user, total in totals.items()}

    first = ProcessorRunner(_pipeline(), log, tmp_path / "a" / "processors", checkpoint_interval_ms=50)
    # the same run (one consumer group) on another machine: its own, empty state directory
    second = ProcessorRunner(
        _pipeline(), log, tmp_path / "b" / "processors", checkpoint_interval_ms=50, run_id=first.run_id
    )
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [first.poll(0.1) for _ in iter(stop.is_set, True)])
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (second.tasks and first.tasks and first.checkpoints > 2):
        second.poll(0.1)
    stop.set()
    thread.join()
    assert first.tasks and second.tasks, "the group should have split the partitions between the two workers"
    first.consumer.close()  # the first worker dies without a final checkpoint: its partitions move
    first.checkpointer.close()
    first.state.close()
    _drain(second, time.monotonic() + 90, 4)
    assert sorted(second.tasks) == [0, 1, 2, 3]

    outputs = _outputs(log)
    by_id = {out["id"]: out for out in outputs}
    assert len(by_id) == len(outputs), "an output was written twice"
    got = Counter({(o["k"], o["v"]["start"]): o["v"]["value"] for o in by_id.values()})  # type: ignore[index]
    assert got == windows
    assert _totals(second) == totals
    second.close()

    # the first machine comes back alone: its state file is behind for the partitions it had, and
    # the second wrote them since; it rebuilds them from the whole changelog and agrees
    back = ProcessorRunner(
        _pipeline(), log, tmp_path / "a" / "processors", checkpoint_interval_ms=50, run_id=first.run_id
    )
    _drain(back, time.monotonic() + 90, 4)
    assert _totals(back) == totals
    back.close()


def _totals(runner: ProcessorRunner) -> dict[str, int]:
    reader = ServedReader(runner.manifest.state_path(runner.run_id))
    try:
        found = {user: reader.get("kafka_totals", user) for user in USERS}
        return {user: hit[0]["total"] for user, hit in found.items() if hit is not None}
    finally:
        reader.close()
