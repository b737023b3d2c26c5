"""Several server processes on one port append to one log: nothing lost, offsets stay dense."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.helpers import RunningHeadwater, child_env, make_keys


def test_two_server_workers_share_the_port_and_the_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    running = RunningHeadwater(data_dir, child_env(data_dir, server_workers=2), keys=keys).start()
    try:

        def send(batch: int) -> int:
            body = "\n".join(f'{{"event":"E","userId":"u{i}","messageId":"{batch}-{i}"}}' for i in range(20))
            with httpx.Client() as client:
                response = client.post(running.url + "/track", content=body, headers={"x-api-key": keys["write"]})
                return int(response.json()["accepted"])

        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(send, range(200))) == 4000
        running.wait_rows("SELECT count(*), count(DISTINCT event_id) FROM events", [[4000, 4000]])
        assert running.proc is not None
        server = subprocess.run(["pgrep", "-f", "-P", str(running.proc.pid), "cli.main server"], capture_output=True,
                                text=True, check=False).stdout.split()  # fmt: skip
        assert len(server) == 1
        forked = subprocess.run(["pgrep", "-P", server[0]], capture_output=True, text=True, check=False).stdout.split()
        assert len(forked) == 2
    finally:
        running.stop()
