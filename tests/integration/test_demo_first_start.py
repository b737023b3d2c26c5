"""`up --demo` killed with -9 during its first start's backfill: the backfill process dies with it, and the next
start finishes the history once (no duplicated events) with one demo dashboard."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from tests.helpers import child_env


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def is_backfill(pid: int) -> bool:
    try:
        return b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(data_dir: Path) -> subprocess.Popen[str]:
    env = child_env(data_dir, demo_rate=0, flush_interval_ms=200, demo_days=20)
    return subprocess.Popen(
        [sys.executable, "-m", "headwater.cli.main", "up", "--demo", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def read_until(proc: subprocess.Popen[str], needle: str) -> str:
    assert proc.stdout is not None
    text = ""
    while needle not in text:
        line = proc.stdout.readline()
        assert line, text
        text += line
    return text


def test_a_first_start_killed_during_the_backfill_resumes_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    first = start(data_dir)
    try:
        read_until(first, "demo: backfilling")
        deadline = time.monotonic() + 30
        backfills: list[int] = []
        while not backfills and time.monotonic() < deadline:
            backfills = [p for p in children(first.pid) if is_backfill(p)]
            time.sleep(0.05)
        assert backfills, "the backfill runs in a child process"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in backfills) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in backfills), "the backfill outlived `up` killed with -9"
        assert not (data_dir / "demo.json").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the rest of the platform `up` had started
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        assert first.stdout is not None
        first.stdout.close()

    second = start(data_dir)
    try:
        text = read_until(second, "dashboard: ")
        url = re.search(r"http://127\.0\.0\.1:\d+", text)
        key = re.search(r"Demo admin key: (\S+)", text)
        assert url and key
        auth = {"Authorization": f"Bearer {key.group(1)}"}
        saved = orjson.loads((data_dir / "demo.json").read_bytes())
        expected = saved["truth"]["events"]
        deadline = time.monotonic() + 60
        count = -1
        while count != expected and time.monotonic() < deadline:
            body = {"sql": "SELECT count(*) FROM events"}
            count = httpx.post(url.group(0) + "/api/query", json=body, headers=auth, timeout=60).json()["rows"][0][0]
            if count != expected:
                time.sleep(0.5)
        assert count == expected  # the history once: nothing lost, nothing twice
        boards = httpx.get(url.group(0) + "/api/dashboards", headers=auth, timeout=30).json()
        assert len(boards) == 1
    finally:
        second.send_signal(signal.SIGINT)
        try:
            second.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(second.pid, signal.SIGKILL)
            assert second.stdout is not None
            second.stdout.close()
