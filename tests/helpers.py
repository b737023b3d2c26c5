"""Test helpers: a real `headwater` server process on a free port, and HTTP shortcuts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from headwater.auth.keys import KeyStore
from headwater.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def make_keys(data_dir: Path, uri: str | None = None) -> dict[str, str]:
    """Keys test-write / test-read / test-admin in the data dir's keys.db, or in the database `uri` (app_db_uri)."""
    store = KeyStore(uri or data_dir / "keys.db")
    try:
        return {role: store.create(f"test-{role}", role) for role in ("write", "read", "admin")}
    finally:
        store.close()


@dataclass
class RunningHeadwater:
    """A `headwater up` (or `server`) process started by a test."""

    data_dir: Path
    env: dict[str, str]
    command: str = "up"
    keys: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)  # the deployment's settings (empty: embedded)
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    log_path: Path | None = None

    def start(self, timeout: float = 60) -> RunningHeadwater:
        port_file = self.data_dir / "run" / "server.port"
        port_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "headwater.cli.main", self.command, "--data-dir", str(self.data_dir)]
        args += ["--port", "0"]
        if self.command == "server":
            port_file.parent.mkdir(parents=True, exist_ok=True)
            args += ["--port-file", str(port_file)]
        self.log_path = self.data_dir / f"{self.command}.log"
        with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(args, env=self.env, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"headwater exited: {self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"headwater did not start: {self.log_text()}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        while True:  # ready when /healthz answers
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"headwater not healthy: {self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill_all(self) -> None:
        """kill -9 the supervisor and every descendant at once (a machine-level crash)."""
        assert self.proc is not None
        tree, frontier = [self.proc.pid], [self.proc.pid]
        while frontier:
            out = subprocess.run(["pgrep", "-P", str(frontier.pop())], capture_output=True, text=True, check=False)
            children = [int(pid) for pid in out.stdout.split()]
            tree += children
            frontier += children
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def post(self, path: str, body: bytes | str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.setdefault("x-api-key", key)
        content = body.encode() if isinstance(body, str) else body
        return httpx.post(self.url + path, content=content, headers=headers, timeout=30, **kwargs)

    def sql(self, sql: str, key: str | None = None) -> list[list[Any]]:
        response = httpx.post(
            self.url + "/api/query",
            json={"sql": sql},
            headers={"Authorization": f"Bearer {key or self.keys['read']}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.json()["rows"]

    def wait_rows(self, sql: str, expected: Any, timeout: float = 30) -> list[list[Any]]:
        deadline = time.monotonic() + timeout
        rows: list[list[Any]] = []
        while time.monotonic() < deadline:
            rows = self.sql(sql)
            if rows == expected:
                return rows
            time.sleep(0.1)
        raise AssertionError(f"{sql!r} gave {rows!r}, expected {expected!r}")


@contextlib.contextmanager
def serving(running: RunningHeadwater) -> Iterator[RunningHeadwater]:
    """`running` started for the block and stopped after it (also when start-up fails half-way)."""
    try:
        yield running.start()
    finally:
        if running.proc is not None:
            running.stop()


def child_env(data_dir: Path, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env["HEADWATER_DATA_DIR"] = str(data_dir)
    env["HEADWATER_CONFIG"] = str(data_dir / "absent.toml")
    for name, value in settings.items():
        env[f"HEADWATER_{name.upper()}"] = str(value)
    return env


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    Settings.config_file = None
    return Settings(data_dir=data_dir, **overrides)


def read_stream(event_log: Any, stream: str | None, since: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """Every record of a stream, decoded (a processor's outputs: {"k", "v", "t", "id"}; the events log when
    `stream` is None: collector envelopes), partition by partition."""
    import orjson

    reader = (event_log.stream(stream) if stream else event_log).reader()
    try:
        out: list[dict[str, Any]] = []
        for partition, end in reader.end_offsets().items():
            position = (since or {}).get(partition, 0)
            while position < end:
                records = reader.read(partition, position, 1000)
                if not records:
                    break
                out.extend(orjson.loads(r.value) for r in records)
                position = records[-1].offset + 1
        return out
    finally:
        reader.close()


def run_example(example: str, data_dir: Path, port: int, **variables: str) -> subprocess.CompletedProcess[str]:
    """`examples/<example>/run.sh --once` as a user runs it, with this Python's `headwater`; never raises."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(
        DATA_DIR=str(data_dir), PORT=str(port), HEADWATER=str(Path(sys.executable).parent / "headwater"),
        PYTHON=sys.executable, **variables,
    )  # fmt: skip
    script = str(ROOT / "examples" / example / "run.sh")
    return subprocess.run([script, "--once"], env=env, capture_output=True, text=True, timeout=300, check=False)
