"""503 + Retry-After instead of loss when the lake writer lags or the log is over budget."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson

from tests.helpers import RunningHeadwater, child_env, make_keys


def batch(n: int, pad: int = 0) -> bytes:
    return b"\n".join(orjson.dumps({"event": "E", "userId": f"u{i}", "pad": "x" * pad}) for i in range(n))


def wait_for_503(running: RunningHeadwater, key: str) -> tuple[httpx.Response, int]:
    """Probe until refused; return the refusal and how many probe events were accepted before it."""
    deadline = time.monotonic() + 10
    accepted = 0
    while time.monotonic() < deadline:
        response = running.post("/track", batch(1), key)
        if response.status_code == 503:
            return response, accepted
        accepted += response.json()["accepted"]
        time.sleep(0.1)
    raise AssertionError("no back-pressure")


def test_lagging_writer_gets_503_with_retry_after(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    # `server` alone: no lake writer runs, so the lag only grows
    running = RunningHeadwater(data_dir, child_env(data_dir, max_lake_lag_events=1000), "server", keys).start()
    try:
        assert running.post("/track", batch(1500), keys["write"]).status_code == 200
        refused, probes = wait_for_503(running, keys["write"])
        assert int(refused.headers["retry-after"]) >= 1
        assert "lagging" in refused.json()["error"]
        assert httpx.get(running.url + "/healthz").json()["status"] == "degraded"
    finally:
        running.stop()
    # the writer catches up: intake resumes and nothing acknowledged was lost
    running = RunningHeadwater(data_dir, child_env(data_dir, max_lake_lag_events=1000), "up", keys).start()
    try:
        running.wait_rows("SELECT count(*) FROM events", [[1500 + probes]], timeout=30)
        deadline = time.monotonic() + 10
        while running.post("/track", batch(1), keys["write"]).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        running.stop()


def test_log_over_disk_budget_gets_503(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    running = RunningHeadwater(data_dir, child_env(data_dir, log_disk_budget_mb=1), "server", keys).start()
    try:
        assert running.post("/track", batch(300, pad=5000), keys["write"]).status_code == 200
        refused, _ = wait_for_503(running, keys["write"])
        assert "disk budget" in refused.json()["error"]
    finally:
        running.stop()
