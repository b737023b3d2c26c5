"""repartition(): state by a new key sees every record of that key, across input partitions."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson

from headwater.core.settings import load_settings
from headwater.log import open_log
from headwater.processing import Pipeline, TestDriver, minutes
from headwater.processing.state import ServedReader
from headwater.processing.worker import ProcessorWorker

BASE_MS = 1_767_225_600_000
PATHS = ["/home", "/docs", "/pricing"]


def _pipeline(repartition: bool) -> Pipeline:
    p = Pipeline("paths")
    views = p.source("events").filter(lambda e: e["event"] == "page_view")
    by_path = (
        views.repartition(lambda e: e["properties"]["path"])
        if repartition
        else views.map_key(lambda e: e["properties"]["path"])
    )
    by_path.tumbling_window(minutes(1)).count().final().to_stream("path-counts").to_state("path_counts")
    return p


def _views() -> list[tuple[str, dict[str, object], int]]:
    return [
        (f"user-{i}", {"event": "page_view", "properties": {"path": PATHS[i % 3]}}, BASE_MS + i * 100)
        for i in range(90)
    ]


def _closers() -> list[tuple[str, dict[str, object], int]]:
    """A later view per path: stream time is per partition, so each path's partition needs one."""
    return [(f"late-{p}", {"properties": {"path": p}}, BASE_MS + minutes(5)) for p in PATHS]


def test_without_repartition_counts_are_split_by_input_partition() -> None:
    driver = TestDriver(_pipeline(repartition=False), partitions=4)
    for user, value, ts in _views():
        driver.send(value, key=user, timestamp=ts)
    driver.advance_time(BASE_MS + minutes(10))
    assert len(driver.values("path-counts")) > len(PATHS)  # partial counts, one per partition


def test_repartition_gives_one_count_per_key_and_window() -> None:
    pipeline = _pipeline(repartition=True)
    assert [p.name for p in pipeline.all()] == ["paths", "paths--r1"]
    driver = TestDriver(pipeline, partitions=4)
    for user, value, ts in _views():
        driver.send(value, key=user, timestamp=ts)
    driver.advance_time(BASE_MS + minutes(10))
    counts = {v["key"]: v["value"] for v in driver.values("path-counts")}
    assert counts == {path: 30 for path in PATHS}
    assert {key: row["value"] for key, row in driver.state("path_counts").items()} == counts


def test_stages_run_as_processors_of_their_own(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", processor_checkpoint_ms=20)
    log = open_log(settings)
    producer = log.producer()
    envelopes = [
        (user.encode(), b'{"m":{"ra":%d,"src":"t","ep":"track"},"e":' % BASE_MS
         + orjson.dumps({"type": "track", "event": "page_view", "userId": user, "timestamp": ts,
                         "properties": value["properties"]}) + b"}")
        for user, value, ts in [*_views(), *_closers()]
    ]  # fmt: skip
    producer.append(envelopes).result()
    producer.close()
    worker = ProcessorWorker(settings, log, _pipeline(repartition=True).all())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    state = settings.processors_dir / "paths--r1" / "state-1.db"
    found: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and found != {path: 30 for path in PATHS}:
        time.sleep(0.2)
        if state.exists():
            reader = ServedReader(state)
            try:
                found = {p: hit[0]["value"] for p in PATHS if (hit := reader.get("path_counts", p)) is not None}
            finally:
                reader.close()
    stop.set()
    thread.join()
    assert found == {path: 30 for path in PATHS}
