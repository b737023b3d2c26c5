"""kill -9 under concurrent load, several times: every acknowledged event is in the lake exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.helpers import RunningHeadwater, child_env, make_keys

pytestmark = pytest.mark.slow


class Sender(threading.Thread):
    """Sends batches with unique messageIds; retries a batch until it is acknowledged, like an SDK."""

    def __init__(self, name: str, port_file: Path, key: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.label, self.port_file, self.key, self.stop = name, port_file, key, stop
        self.acked: list[str] = []
        self.batches = 0

    def url(self) -> str | None:
        try:
            return f"http://127.0.0.1:{int(self.port_file.read_text())}/track"
        except (FileNotFoundError, ValueError):
            return None

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                ids = [f"{self.label}-{self.batches}-{i}" for i in range(50)]
                body = b"\n".join(
                    orjson.dumps({"event": "E", "userId": f"u{i % 17}", "messageId": m}) for i, m in enumerate(ids)
                )
                while True:  # retry the same batch until acknowledged
                    url = self.url()
                    try:
                        if url and client.post(url, content=body, headers={"x-api-key": self.key}).status_code == 200:
                            self.acked.extend(ids)
                            break
                    except httpx.HTTPError:
                        pass
                    if self.stop.is_set() and url is None:
                        return
                    time.sleep(0.05)
                self.batches += 1


def pids_of(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def child_running(parent: int, name: str) -> int | None:
    for pid in pids_of(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if name.encode() in cmdline:
            return pid
    return None


def test_kill_9_loses_and_duplicates_nothing(tmp_path: Path, deployment: dict[str, str]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    env = child_env(
        data_dir,
        flush_interval_ms=100,
        maintenance_interval_s=0.5,
        compact_min_files=4,
        query_max_rows=5_000_000,
        **deployment,
    )
    running = RunningHeadwater(data_dir, env, keys=keys).start()
    stop = threading.Event()
    port_file = data_dir / "run" / "server.port"
    senders = [Sender(f"s{i}", port_file, keys["write"], stop) for i in range(4)]
    for sender in senders:
        sender.start()
    try:
        for round_ in range(4):
            time.sleep(2.5)
            assert running.proc is not None
            if round_ == 1:  # only the lake writer dies; the supervisor restarts it
                pid = child_running(running.proc.pid, "writer")
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                continue
            if round_ == 2:  # only the server processes die mid-request; the supervisor restarts them
                pid = child_running(running.proc.pid, "server")
                assert pid is not None
                port_file.unlink(missing_ok=True)
                for victim in [pid, *pids_of(pid)]:  # the server and its forked workers
                    os.kill(victim, signal.SIGKILL)
                continue
            running.kill_all()  # every process at once
            port_file.unlink(missing_ok=True)
            running = RunningHeadwater(data_dir, env, keys=keys).start()
        time.sleep(2)
        stop.set()
        for sender in senders:
            sender.join(30)
        acked = [m for sender in senders for m in sender.acked]
        assert len(acked) > 2000, "load too small to mean anything"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = httpx.get(running.url + "/healthz").json()
            if health["lake_lag_events"] == 0:
                break
            time.sleep(0.2)
        rows = running.sql("SELECT event_id, count(*) FROM events GROUP BY event_id", keys["read"])
    finally:
        stop.set()
        running.stop()
    counts = {event_id: n for event_id, n in rows}
    duplicated = {k: v for k, v in counts.items() if v > 1}
    missing = set(acked) - counts.keys()
    assert not duplicated, f"{len(duplicated)} events stored more than once"
    assert not missing, f"{len(missing)} acknowledged events missing, e.g. {sorted(missing)[:5]}"
