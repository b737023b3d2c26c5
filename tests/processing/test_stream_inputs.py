"""Processors read streams other than `events`: another processor's output, or a stream a source
feeds with collector envelopes."""

from __future__ import annotations

from pathlib import Path

import orjson

from headwater.core.settings import load_settings
from headwater.log import open_log
from headwater.processing import Pipeline
from headwater.processing.records import encode_output
from headwater.processing.runtime import ProcessorRunner

BASE_MS = 1_767_225_600_000


def _run(runner: ProcessorRunner) -> None:
    for _ in range(20):
        if runner.poll(0.05) == 0 and runner.lag() == 0:
            break
    runner.checkpoint()


def _values(log_dir: Path, stream: str) -> list[object]:
    settings = load_settings(None, data_dir=log_dir)
    reader = open_log(settings).stream(stream).reader()
    try:
        out = []
        for partition, end in reader.end_offsets().items():
            out.extend(orjson.loads(r.value)["v"] for r in reader.read(partition, 0, end))
        return out
    finally:
        reader.close()


def test_a_stream_of_collector_envelopes_and_a_stream_of_outputs(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data")
    log = open_log(settings)
    feed = log.stream("gps-feed").producer()  # what a source writes: envelopes, as the collector does
    event = {"type": "track", "event": "gps", "userId": "car-1", "timestamp": BASE_MS, "properties": {"speed": 42}}
    envelope = b'{"m":{"ra":%d,"src":"mqtt","ep":"track"},"e":' % BASE_MS + orjson.dumps(event) + b"}"
    feed.append([(b"car-1", envelope)]).result()
    feed.close()
    upstream = log.stream("speeds").producer()
    upstream.append([encode_output("car-2", {"speed": 7}, BASE_MS, "x/1/0/0")]).result()
    upstream.close()

    from_source = Pipeline("from-source")
    from_source.source("gps-feed").map(lambda e: {"car": e["user_id"], "speed": e["properties"]["speed"]}).to_stream(
        "source-out"
    )
    from_outputs = Pipeline("from-outputs")
    from_outputs.source("speeds").map(lambda v: {"speed": v["speed"] * 2}).to_stream("outputs-out")
    for pipeline in (from_source, from_outputs):
        runner = ProcessorRunner(pipeline, log, settings.processors_dir)
        _run(runner)
        runner.close()
    assert _values(tmp_path / "data", "source-out") == [{"car": "car-1", "speed": 42}]
    assert _values(tmp_path / "data", "outputs-out") == [{"speed": 14}]
