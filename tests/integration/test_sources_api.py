"""GET /api/sources under a real `headwater up` running a file-drop source: counters, rejections,
file progress, one source by name, an unknown name, a disabled source, and who may read them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import RunningHeadwater, child_env, make_keys

GOOD = [{"event": "Dropped", "userId": f"drop-{i}", "n": i} for i in range(3)]
BAD = "this line is not json"


def sources_config(drops: Path) -> list[dict[str, Any]]:
    return [
        {"name": "drops", "kind": "files", "path": str(drops), "format": "ndjson", "poll_seconds": 0.2},
        # configured but not run by `up`: listed as not running
        {"name": "bets", "kind": "rabbitmq", "url": "amqp://guest:guest@127.0.0.1:1/", "queue": "bets",
         "enabled": False},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def hw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("sources-api")
    drops = data_dir / "drops"
    drops.mkdir()
    keys = make_keys(data_dir)
    env = child_env(data_dir, flush_interval_ms=200, sources=json.dumps(sources_config(drops)))
    running = RunningHeadwater(data_dir, env, keys=keys)
    try:
        yield running.start()
    finally:
        if running.proc is not None:
            running.stop()


def drop(folder: Path, name: str, lines: list[str]) -> None:
    """Write a file the way a producer should: under a skipped name, then renamed into place."""
    partial = folder / f"{name}.part"
    partial.write_text("\n".join(lines) + "\n")
    partial.rename(folder / name)


def get(hw: RunningHeadwater, path: str, key: str | None = "read") -> httpx.Response:
    headers = {"Authorization": f"Bearer {hw.keys[key]}"} if key else {}
    return httpx.get(hw.url + path, headers=headers, timeout=30)


def wait_source(hw: RunningHeadwater, name: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    """Poll GET /api/sources/<name> until `done(status)`."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = get(hw, f"/api/sources/{name}")
        assert response.status_code == 200, response.text
        status = response.json()
        if done(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"source {name} never got there: {status}\n{hw.log_text()}")


def test_file_drop_counts_rejections_and_progress(hw: RunningHeadwater) -> None:
    running = wait_source(hw, "drops", lambda s: s["state"] == "running")
    assert running["records_in"] == 0 and running["rejected"] == 0

    drop(hw.data_dir / "drops", "batch-1.ndjson", [json.dumps(GOOD[0]), json.dumps(GOOD[1]), BAD, json.dumps(GOOD[2])])
    status = wait_source(hw, "drops", lambda s: s.get("records_in") == 4 and s["progress"]["files"].get("done") == 1)

    assert status["state"] == "running"
    assert (status["kind"], status["format"], status["target"]) == ("files", "ndjson", "stream events")
    assert status["enabled"] is True
    assert (status["records_in"], status["appended"], status["rejected"], status["duplicates"]) == (4, 3, 1, 0)
    assert status["lag"] == 0 and status["last_error"] is None
    [rejection] = status["recent_rejections"]
    assert rejection["raw"] == BAD
    assert "batch-1.ndjson record 3" in rejection["reason"] and "invalid JSON" in rejection["reason"]
    assert rejection["id"].endswith(":2")  # the file's third record (numbered from 0)
    progress = status["progress"]
    assert progress["current"] is None and progress["waiting"] == 0
    [recent] = progress["recent"]
    assert recent["path"].endswith("/batch-1.ndjson")
    assert (recent["state"], recent["records"], recent["rejected"], recent["error"]) == ("done", 4, 1, None)

    # the list holds the same, in the configured order, with the disabled source not running
    listed = get(hw, "/api/sources").json()["sources"]
    assert [s["name"] for s in listed] == ["drops", "bets"]
    assert listed[0]["records_in"] == 4 and listed[0]["recent_rejections"] == status["recent_rejections"]
    assert listed[1] == {"name": "bets", "kind": "rabbitmq", "format": "json", "enabled": False,
                         "target": "stream events", "state": "not running"}  # fmt: skip

    # and the rows themselves: three events, one quarantined record under the source's name
    hw.wait_rows("SELECT count(*) FROM events WHERE event = 'Dropped'", [[3]])
    hw.wait_rows("SELECT source, raw FROM quarantine WHERE source = 'drops'", [["drops", BAD]])


def test_unknown_source_is_404_with_the_configured_names(hw: RunningHeadwater) -> None:
    response = get(hw, "/api/sources/nope")
    assert response.status_code == 404
    assert response.json() == {"success": False, "error": "no source named 'nope' (configured: drops, bets)"}


@pytest.mark.parametrize("path", ["/api/sources", "/api/sources/drops"])
def test_reads_need_a_read_key_or_a_session(hw: RunningHeadwater, path: str) -> None:
    assert get(hw, path, key=None).status_code == 401
    wrong = httpx.get(hw.url + path, headers={"Authorization": "Bearer not-a-key"}, timeout=30)
    assert wrong.status_code == 401
    assert get(hw, path, key="write").status_code == 403  # write keys send events, they do not read
    assert get(hw, path, key="admin").status_code == 200
