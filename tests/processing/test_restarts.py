"""Restarts keep what a run was started with, and wall-clock timer outputs are never dropped."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from headwater.core.settings import Settings, load_settings
from headwater.log import open_log
from headwater.log.base import EventLog
from headwater.processing import Context, Pipeline, Timer
from headwater.processing.records import encode_output
from headwater.processing.runtime import ProcessorRunner

BASE = 1_767_225_600_000
T1, T2 = 10**15, 2 * 10**15


def _env(tmp_path: Path) -> tuple[Settings, EventLog]:
    settings = load_settings(None, data_dir=tmp_path / "data")
    return settings, open_log(settings)


def _feed(log: EventLog, records: list[tuple[str, dict[str, Any], int]]) -> None:
    producer = log.stream("in").producer()
    producer.append([encode_output(k, v, ts, f"x/1/0/{i}") for i, (k, v, ts) in enumerate(records)]).result()
    producer.close()


def _values(log: EventLog) -> list[Any]:
    reader = log.stream("out").reader()
    try:
        out = []
        for partition, end in reader.end_offsets().items():
            if end:
                out.extend(orjson.loads(r.value)["v"] for r in reader.read(partition, 0, end))
        return out
    finally:
        reader.close()


def _runner(pipeline: Pipeline, settings: Settings, log: EventLog, **options: Any) -> ProcessorRunner:
    runner = ProcessorRunner(pipeline, log, settings.processors_dir, checkpoint_interval_ms=10**9, **options)
    for _ in range(30):
        if runner.poll(0.02) == 0 and runner.lag() == 0:
            break
    return runner


def _copy() -> Pipeline:
    pipeline = Pipeline("copy")
    pipeline.source("in").map(lambda v: v).to_stream("out")
    return pipeline


def _timers() -> Pipeline:
    def on_record(ctx: Context, value: dict[str, Any]) -> None:
        ctx.emit({"rec": value["i"]})
        if "due" in value:
            ctx.schedule(value.get("name", "t"), value["due"], wall_clock=True)

    def on_timer(ctx: Context, timer: Timer) -> None:
        ctx.emit({"timer": ctx.key, "due": timer.due_ms})

    pipeline = Pipeline("wall")
    pipeline.source("in").process(on_record, on_timer).to_stream("out")
    return pipeline


def test_wall_clock_timers_firing_in_successive_checkpoints_are_all_written(tmp_path: Path) -> None:
    settings, log = _env(tmp_path)
    _feed(
        log,
        [
            ("a", {"i": 0, "due": T1}, BASE),
            ("a", {"i": 1}, BASE + 1),
            ("a", {"i": 2, "due": T2, "name": "u"}, BASE + 2),
        ],
    )
    runner = _runner(_timers(), settings, log)
    runner.checkpoint()
    for due in (T1, T2):  # no input in between: both timers' outputs sit at the same input offset
        for task in runner.tasks.values():
            task.tick(due)
        runner.checkpoint()
    runner.close()
    assert [v for v in _values(log) if "timer" in v] == [{"timer": "a", "due": T1}, {"timer": "a", "due": T2}]


def test_a_wall_clock_timer_firing_after_a_restart_is_written(tmp_path: Path) -> None:
    settings, log = _env(tmp_path)
    _feed(log, [("a", {"i": 0, "due": T1}, BASE), ("a", {"i": 1}, BASE + 1)])
    runner = _runner(_timers(), settings, log)
    runner.checkpoint()
    runner.close()
    runner = _runner(_timers(), settings, log)
    for task in runner.tasks.values():
        task.tick(T1)
    runner.checkpoint()
    runner.close()
    assert _values(log) == [{"rec": 0}, {"rec": 1}, {"timer": "a", "due": T1}]


def test_a_run_started_from_latest_does_not_read_history_after_a_restart(tmp_path: Path) -> None:
    settings, log = _env(tmp_path)
    _feed(log, [(f"k{i}", {"i": i}, BASE + i) for i in range(8)])  # history in every partition
    runner = _runner(_copy(), settings, log, start="latest")
    runner.checkpoint()
    _feed(log, [("k0", {"i": 100}, BASE + 100)])
    runner.close()
    runner = _runner(_copy(), settings, log)  # a plain restart: no --from
    runner.checkpoint()
    runner.close()
    assert _values(log) == [{"i": 100}]


def test_a_run_started_from_an_event_time_keeps_its_floor_after_a_restart(tmp_path: Path) -> None:
    settings, log = _env(tmp_path)
    _feed(log, [("k0", {"i": 0}, BASE)])
    since = datetime.fromtimestamp((BASE + 50) / 1000, tz=UTC).isoformat()
    _runner(_copy(), settings, log, start=since).close()
    _feed(log, [("k0", {"i": 1}, BASE + 1), ("k0", {"i": 2}, BASE + 100)])
    runner = _runner(_copy(), settings, log)
    runner.checkpoint()
    runner.close()
    assert _values(log) == [{"i": 2}]
