"""Queries beyond `query_concurrency` wait in a bounded line, then get 429 + Retry-After; ingestion is untouched."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx

from tests.helpers import RunningHeadwater, child_env, make_keys, serving

SLOW = "SELECT count(*) FROM range(4000000000) t(i) WHERE i % 7 = 3"  # seconds of one core's work


def _query(running: RunningHeadwater, key: str, sql: str) -> httpx.Response:
    return httpx.post(
        running.url + "/api/query", json={"sql": sql}, headers={"authorization": f"Bearer {key}"}, timeout=120
    )


def _thread_niceness(pid: int) -> dict[int, int]:
    """Niceness of each thread of `pid` (Linux /proc: field 19 of stat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = int(fields[16])
    return out


def _wait_running(running: RunningHeadwater, key: str) -> None:
    """Until the slow query holds the only slot (a probe is refused); no probe before it had time to take it."""
    time.sleep(1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _query(running, key, "SELECT 1").status_code == 429:
            return
        time.sleep(0.05)
    raise AssertionError("the slow query never held the slot")


def test_full_slots_answer_429_with_retry_after_and_events_still_land(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    env = child_env(data_dir, query_concurrency=1, query_queue=0, query_timeout_s=8)
    with serving(RunningHeadwater(data_dir, env, "up", keys)) as running:
        answers: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: answers.append(_query(running, keys["read"], SLOW)))
        slow.start()
        _wait_running(running, keys["read"])
        refused = _query(running, keys["read"], "SELECT 1")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "too many queries" in refused.json()["error"]
        insight = httpx.post(
            running.url + "/api/insights",
            json={"kind": "trend", "series": [{"event": "E"}]},
            headers={"authorization": f"Bearer {keys['read']}"},
        )
        assert insight.status_code == 429 and insight.headers["retry-after"], insight.text
        # ingestion never waits for a query slot
        assert running.post("/track", b'{"event":"E","userId":"u1"}', keys["write"]).status_code == 200
        slow.join(60)
        assert answers and answers[0].status_code in (200, 408), answers[0].text
        running.wait_rows("SELECT count(*) FROM events", [[1]], timeout=30)


def test_a_query_in_line_gets_the_slot_when_it_frees(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    env = child_env(data_dir, query_concurrency=1, query_queue=2, query_queue_wait_s=60, query_timeout_s=3)
    with serving(RunningHeadwater(data_dir, env, "server", keys)) as running:
        first: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: first.append(_query(running, keys["read"], SLOW)))
        slow.start()
        time.sleep(0.5)
        assert running.proc is not None  # `server` with one worker: the process that runs the queries
        nice = _thread_niceness(running.proc.pid)
        assert nice[running.proc.pid] == 0, "the event loop (the collector) runs at normal priority"
        assert sum(1 for n in nice.values() if n == 10) >= 2, f"query and DuckDB threads at query_nice: {nice}"
        waited = _query(running, keys["read"], "SELECT 42")  # waits in line until the slow one ends (timeout 3 s)
        slow.join(60)
        assert waited.status_code == 200, waited.text
        assert waited.json()["rows"] == [[42]]
        assert first and first[0].status_code in (200, 408)
