"""kill -9 of the whole of Headwater while a directory is being consumed: every line lands exactly once."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import orjson
import pytest

from tests.helpers import RunningHeadwater, child_env, make_keys

LINES = 120_000


@pytest.mark.slow
def test_kill_9_mid_file_then_restart_lands_every_line_once(tmp_path: Path) -> None:
    data_dir, drop = tmp_path / "data", tmp_path / "drop"
    drop.mkdir()
    path = drop / "big.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps({"event": "e", "userId": f"u{i % 997}", "n": i}) for i in range(LINES)))
    past = time.time() - 5
    os.utime(path, (past, past))
    sources = [{"name": "drop", "kind": "files", "format": "ndjson", "path": str(drop), "batch_size": 500}]
    env = child_env(data_dir, sources=json.dumps(sources), flush_interval_ms=200)
    keys = make_keys(data_dir)
    first = RunningHeadwater(data_dir, env, keys=keys).start()
    status = data_dir / "sources" / "drop" / "status.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once the source is well into the file
        if status.exists() and orjson.loads(status.read_bytes()).get("records_in", 0) > 10_000:
            break
        time.sleep(0.02)
    first.kill_all()
    taken = orjson.loads(status.read_bytes())["records_in"]
    assert taken < LINES, "the source finished before the kill: make the file bigger"
    second = RunningHeadwater(data_dir, env, keys=keys).start()
    try:
        rows = second.wait_rows(
            "SELECT count(*), count(DISTINCT event_id), count(DISTINCT properties) FROM events", [[LINES] * 3], 120
        )
        assert rows == [[LINES, LINES, LINES]]
        second.wait_rows("SELECT count(*) FROM quarantine", [[0]], 5)
        deadline = time.monotonic() + 30  # the file is marked done at the read after its last batch
        while orjson.loads(status.read_bytes())["progress"].get("files") != {"done": 1}:
            assert time.monotonic() < deadline, orjson.loads(status.read_bytes())
            time.sleep(0.1)
    finally:
        second.stop()
