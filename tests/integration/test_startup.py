"""`headwater up` starts honestly, holds its data directory, restarts crashed children and keeps data private."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import RunningHeadwater, child_env, make_keys, serving

pytestmark = pytest.mark.slow


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual shell umask (022) in the test process, so what Headwater creates is private by its own doing."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def up_args(data_dir: Path, port: int = 0) -> list[str]:
    return [sys.executable, "-m", "headwater.cli.main", "up", "--data-dir", str(data_dir), "--port", str(port)]


def ready_pid(data_dir: Path, child: str) -> int | None:
    """The pid in the child's .ready status file (None while it is not ready)."""
    try:
        return int((data_dir / "run" / "status" / f"{child}.ready").read_text())
    except (FileNotFoundError, ValueError):
        return None


def wait_for(what: str, check: Callable[[], bool], running: RunningHeadwater, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen: {running.log_text()}"
        time.sleep(0.1)


def kill_writer(data_dir: Path, running: RunningHeadwater) -> int:
    """kill -9 the ready writer of `running`, once `up` said it is up (a child dying before that is a failed
    start, not a crash); its pid."""
    assert running.log_path is not None
    wait_for("up", lambda: "Headwater is up" in running.log_path.read_text(errors="replace"), running)  # type: ignore[union-attr]
    wait_for("writer ready", lambda: ready_pid(data_dir, "writer") is not None, running)
    pid = ready_pid(data_dir, "writer")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


def test_fresh_data_dir_is_private_and_held(tmp_path: Path, loose_umask: None) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)  # to hold the test's up.log (test_port_in_use… sees `up` create one)
    env = child_env(data_dir, flush_interval_ms=100)
    running = RunningHeadwater(data_dir, env)
    with serving(running):
        assert running.proc is not None
        wait_for("up reporting ready", lambda: "Headwater is up" in running.log_text(), running)
        second = subprocess.run(up_args(data_dir), env=env, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode != 0
        assert f"is in use by headwater up (pid {running.proc.pid}, http://" in second.stderr, second.stderr
        assert "stop it first" in second.stderr
        assert "Headwater is up" not in second.stderr
        assert running.proc.poll() is None  # the first one is untouched
        keys = make_keys(data_dir)
        assert running.post("/track", orjson.dumps({"event": "E", "userId": "u"}), keys["write"]).status_code == 200
        running.keys = keys
        running.wait_rows("SELECT count(*) FROM events", [[1]])
    assert running.proc.returncode == 0
    loose = []
    for folder, dirs, files in os.walk(data_dir):
        for name in [".", *dirs, *files]:
            path = Path(folder) / name
            mode = stat.S_IMODE(path.lstat().st_mode)
            if not path.is_symlink() and mode & 0o077 and path != running.log_path:
                loose.append(f"{path} {mode:04o}")
    assert not loose, loose
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert any((data_dir / "warehouse").rglob("*.parquet")), "the walk covered no table file"


def test_loosened_data_dir_is_warned_and_sql_child_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    make_keys(data_dir)
    (data_dir / "keys.db").chmod(0o644)
    running = RunningHeadwater(data_dir, child_env(data_dir, sql_port=0))
    with serving(running):
        wait_for("up reporting ready", lambda: "Headwater is up" in running.log_text(), running)
        text = running.log_text()
        assert ready_pid(data_dir, "sql") is not None  # with sql_port set, `up` runs the SQL server and waits for it
        sql_port = int((data_dir / "run" / "sql.port").read_text())
        assert f"SQL (PostgreSQL protocol): psql -h 127.0.0.1 -p {sql_port} " in text
        socket.create_connection(("127.0.0.1", sql_port), timeout=10).close()
    resolved = data_dir.resolve()
    assert f"directory {resolved} is open to group/others (mode 0755); fix: chmod -R go-rwx {resolved}" in text
    keys_db = resolved / "keys.db"
    assert f"file {keys_db} is open to group/others (mode 0644); fix: chmod go-rwx {keys_db}" in text
    assert "users.db is open" not in text  # created by `up` itself: private


def test_port_in_use_stops_everything_with_the_reason(tmp_path: Path, loose_umask: None) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = child_env(data_dir, host="127.0.0.1")
        result = subprocess.run(
            up_args(data_dir, port), env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert result.returncode != 0
    assert f"error: server could not start: cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "restarting" not in result.stderr
    assert "Headwater is up" not in result.stderr
    left = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False)
    assert left.stdout == "", f"children left running: {left.stdout}"
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700  # created by `up`, under the test's umask 022


def test_child_exiting_before_ready_is_named(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "headwater.toml"
    config.write_text('processors = ["no_such_module_anywhere:pipeline"]\n')
    env = child_env(data_dir)
    env["HEADWATER_CONFIG"] = str(config)
    result = subprocess.run(up_args(data_dir), env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "error: process could not start: " in result.stderr, result.stderr
    assert "Headwater is up" not in result.stderr
    assert "restarting" not in result.stderr


def test_crashed_child_is_restarted(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    running = RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=100), keys=keys)
    with serving(running):
        first = kill_writer(data_dir, running)
        wait_for("writer restarted", lambda: ready_pid(data_dir, "writer") not in (None, first), running)
        assert f"writer exited with code -{signal.SIGKILL}; restarting in 1 s" in running.log_text()
        assert running.post("/track", orjson.dumps({"event": "E", "userId": "u"}), keys["write"]).status_code == 200
        running.wait_rows("SELECT count(*) FROM events", [[1]])  # the new writer writes
        assert running.proc is not None and running.proc.poll() is None


def test_crash_loop_gives_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = child_env(data_dir, restart_max=2, restart_window_s=600)
    running = RunningHeadwater(data_dir, env)
    with serving(running):
        assert running.proc is not None
        killed = [kill_writer(data_dir, running)]
        for _ in range(2):
            wait_for("writer restarted", lambda: ready_pid(data_dir, "writer") not in (None, *killed), running)
            killed.append(kill_writer(data_dir, running))
        code = running.proc.wait(120)
    text = running.log_text()
    assert code != 0
    assert "restarting in 1 s" in text and "restarting in 2 s" in text
    assert "error: writer crashed 3 times within 600 s (restart_max 2" in text, text
    left = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False)
    assert left.stdout == "", f"children left running: {left.stdout}"
