"""Replay into a new run: from the lake (what log retention removed is read back from Iceberg),
from an event time, and from offsets."""

from __future__ import annotations

from pathlib import Path

import orjson

from headwater.core.settings import Settings, load_settings
from headwater.lake.writer import GROUP, LakeWriter
from headwater.log import open_log
from headwater.log.base import EventLog
from headwater.processing import Pipeline
from headwater.processing.runtime import ProcessorRunner
from headwater.processing.state import ServedReader

BASE_MS = 1_767_225_600_000
USERS = [f"u{i}" for i in range(7)]


def _envelope(i: int) -> tuple[bytes, bytes]:
    user = USERS[i % len(USERS)]
    event = {"event": "tick", "userId": user, "properties": {"n": i}, "timestamp": BASE_MS + i * 1000}
    return user.encode(), b'{"m":{"ra":%d,"src":"t","ep":"track"},"e":' % BASE_MS + orjson.dumps(event) + b"}"


def _pipeline() -> Pipeline:
    pipeline = Pipeline("totals")

    def add(ctx, event):  # type: ignore[no-untyped-def]
        total = ctx.state.get("total", 0) + event["properties"]["n"]
        ctx.state.set("total", total)
        ctx.emit({"user": ctx.key, "total": total})

    pipeline.source("events").process(add).to_state("totals", key=lambda v: v["user"])
    return pipeline


def _totals(indexes: range) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in indexes:
        out[USERS[i % len(USERS)]] = out.get(USERS[i % len(USERS)], 0) + i
    return out


def _run(runner: ProcessorRunner) -> dict[str, int]:
    for _ in range(40):
        if runner.poll(0.05) == 0 and runner.lag() == 0:
            break
    runner.checkpoint()
    reader = ServedReader(runner.manifest.state_path(runner.run_id))
    try:
        found = {user: reader.get("totals", user) for user in USERS}
        return {user: hit[0]["total"] for user, hit in found.items() if hit is not None}
    finally:
        reader.close()
        runner.close()


def _lake_then_log(tmp_path: Path) -> tuple[Settings, EventLog]:
    """1,000 events in the lake and gone from the log (retention), then 500 more only in the log."""
    settings = load_settings(None, data_dir=tmp_path / "data")
    log = open_log(settings)
    producer = log.producer(retention_s=0)
    producer.append([_envelope(i) for i in range(1000)]).result()
    consumer = log.consumer(GROUP)
    writer = LakeWriter(settings, consumer, log)
    while writer.poll(0.2) > 0:
        pass
    writer.flush()
    consumer.close()
    assert producer.enforce_retention() > 0  # the lake writer consumed them: retention removes them
    producer.append([_envelope(i) for i in range(1000, 1500)]).result()
    producer.close()
    return settings, log


def test_replay_from_the_lake_reads_what_the_log_no_longer_has(tmp_path: Path) -> None:
    settings, log = _lake_then_log(tmp_path)
    from_log = _run(ProcessorRunner(_pipeline(), log, settings.processors_dir, settings=settings))
    assert from_log == _totals(range(1000, 1500))  # the first 1,000 are only in the lake now
    replayed = ProcessorRunner(_pipeline(), log, settings.processors_dir, new_run=True, start="lake", settings=settings)
    assert replayed.run_id == "2"
    assert _run(replayed) == _totals(range(1500))


def test_replay_from_the_lake_since_an_event_time(tmp_path: Path) -> None:
    settings, log = _lake_then_log(tmp_path)
    since = "2026-01-01T00:10:00Z"  # BASE_MS + 600 s: events 600 and later
    runner = ProcessorRunner(_pipeline(), log, settings.processors_dir, start=f"lake:{since}", settings=settings)
    assert _run(runner) == _totals(range(600, 1500))


def test_replay_from_offsets_and_event_time_on_the_log(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data")
    log = open_log(settings)
    producer = log.producer()
    producer.append([_envelope(i) for i in range(300)]).result()
    producer.close()
    first = ProcessorRunner(_pipeline(), log, settings.processors_dir, settings=settings)
    assert _run(first) == _totals(range(300))
    later = ProcessorRunner(
        _pipeline(), log, settings.processors_dir, new_run=True, start="2026-01-01T00:04:00Z", settings=settings
    )
    assert _run(later) == _totals(range(240, 300))
    ends = log.admin().end_offsets()
    latest = ProcessorRunner(_pipeline(), log, settings.processors_dir, new_run=True, start="latest")
    assert _run(latest) == {}
    offsets = ",".join(f"{p}:{max(0, end - 1)}" for p, end in ends.items())
    last_each = ProcessorRunner(_pipeline(), log, settings.processors_dir, new_run=True, start=offsets)
    assert sum(1 for _ in _run(last_each)) == sum(1 for end in ends.values() if end > 0)
