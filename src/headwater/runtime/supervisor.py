"""`headwater up`: start the server, the writer and the workers as child processes and keep them running.

Two processes at least because the collector and the lake writer are both CPU-bound Python; on one
process they would share one core through the GIL. Start-up is honest: `up` waits until every child
reported ready (`runtime.readiness`); one that fails or exits first stops everything, with its reason.
After a healthy start a crashed child is restarted with back-off 1, 2, 4 … 30 s, and a child crashing
more than `restart_max` times within `restart_window_s` stops everything. Stopping: SIGTERM/SIGINT
stops intake first (server), then the writer drains the log and commits, then `up` exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from headwater.core.errors import HeadwaterError
from headwater.core.settings import Settings

MAX_BACKOFF_S = 30.0
POLL_S = 0.2


class StartupError(HeadwaterError):
    """A child of `up` could not start, or kept crashing."""


class Supervisor:
    def __init__(self, settings: Settings, config: Path | None) -> None:
        self.settings = settings
        self.config = config
        self.stopping = threading.Event()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        run = settings.data_dir / "run"
        self.port_file = run / "server.port"
        self.sql_port_file = run / "sql.port"
        self.metrics_dir = run / "metrics"
        self.status_dir = run / "status"
        self.bound_port: int | None = None  # after start: restarts of the server keep the port
        self.crashes: dict[str, list[float]] = {}
        self.restart_at: dict[str, float] = {}
        self.failure: str | None = None  # why watch() stopped everything
        self.lock = threading.Lock()  # no restart once stop() began

    def _env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir.resolve())
        env["HEADWATER_SUPERVISED"] = "1"  # children end when `up` ends, even by kill -9
        env["HEADWATER_CHILD"] = name
        env["HEADWATER_STATUS_DIR"] = str(self.status_dir.resolve())
        env["HEADWATER_DATA_DIR"] = str(self.settings.data_dir.resolve())
        env["HEADWATER_HOST"] = self.settings.host
        env["HEADWATER_PORT"] = str(self.bound_port if self.bound_port is not None else self.settings.port)
        env["HEADWATER_LOG_LEVEL"] = self.settings.log_level
        env["HEADWATER_JSON_LOGS"] = "true" if self.settings.json_logs else "false"
        if self.config is not None:
            env["HEADWATER_CONFIG"] = str(self.config.resolve())
        return env

    def _status(self, name: str, suffix: str) -> Path:
        return self.status_dir / f"{name.replace(':', '_')}.{suffix}"

    def _start(self, name: str) -> None:
        """Start child `name`: server, writer, privacy, ops, process, sql or `source:<source name>`."""
        for suffix in ("ready", "failed"):
            self._status(name, suffix).unlink(missing_ok=True)
        command, _, source = name.partition(":")
        args = [sys.executable, "-m", "headwater.cli.main", command] + ([source] if source else [])
        if name == "privacy":
            args.append("worker")
        if name == "server":
            args += ["--port-file", str(self.port_file)]
        if name == "sql":
            args = [sys.executable, "-m", "headwater.cli.main", "sql-server", "--port-file", str(self.sql_port_file)]
        self.procs[name] = subprocess.Popen(args, env=self._env(name))

    def children(self) -> list[str]:
        """The children this configuration runs, in start order (the server last: intake once the rest is up)."""
        names = ["writer", "privacy"]
        if self.settings.models_dir is not None or self.settings.alerts_enabled:
            names.append("ops")
        if self.settings.processors:
            names.append("process")
        names += [f"source:{source.name}" for source in self.settings.sources if source.enabled]
        if self.settings.sql_port is not None:
            names.append("sql")
        return [*names, "server"]

    def start(self) -> int:
        """Start every child and wait until each reported ready; return the server's port.

        Raises StartupError (naming the child and its reason) when one fails, exits or is not ready within
        `startup_timeout_s`; the caller stops the others."""
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.status_dir, ignore_errors=True)
        self.status_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        self.sql_port_file.unlink(missing_ok=True)
        for name in self.children():
            self._start(name)
        deadline = time.monotonic() + self.settings.startup_timeout_s
        waiting = list(self.procs)
        while waiting:
            if self.stopping.is_set():
                raise StartupError("stopped during start-up")
            for name in list(waiting):
                problem = self._start_problem(name)
                if problem is not None:
                    raise StartupError(f"{name} could not start: {problem}")
                if self._status(name, "ready").exists():
                    waiting.remove(name)
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise StartupError(
                    f"{', '.join(waiting)} not ready within {self.settings.startup_timeout_s:g} s "
                    "(startup_timeout_s); see the log above"
                )
            time.sleep(POLL_S)
        self.bound_port = int(self.port_file.read_text())
        return self.bound_port

    def _start_problem(self, name: str) -> str | None:
        """Why child `name` stopped during start-up (its .failed line, else its exit code), or None."""
        failed = self._status(name, "failed")
        code = self.procs[name].poll()
        if failed.exists():
            return failed.read_text().strip() or "no reason given"
        if code is not None:
            return f"exited with code {code}; see its log above"
        return None

    def sql_port(self) -> int | None:
        """The port the SQL server listens on (None: not run)."""
        if "sql" not in self.procs or not self.sql_port_file.exists():
            return None
        return int(self.sql_port_file.read_text())

    def watch(self, on_give_up: threading.Event | None = None) -> None:
        """Restart a child that dies unexpectedly (with back-off), until stop() is called; a child crashing more
        than `restart_max` times within `restart_window_s` sets `failure` and `on_give_up`, and watching ends."""
        while not self.stopping.wait(POLL_S):
            now = time.monotonic()
            for name, proc in list(self.procs.items()):
                if self.stopping.is_set():
                    return
                if name in self.restart_at:
                    if now >= self.restart_at[name]:
                        del self.restart_at[name]
                        with self.lock:
                            if self.stopping.is_set():
                                return
                            self._start(name)
                    continue
                if proc.poll() is None:
                    continue
                delay = self._crashed(name, proc.returncode, now)
                if delay is None:
                    if on_give_up is not None:
                        on_give_up.set()
                    return
                self.restart_at[name] = now + delay

    def _crashed(self, name: str, code: int, now: float) -> float | None:
        """Count a crash of `name`; the back-off before its restart, or None when it crashes too often."""
        window = self.settings.restart_window_s
        recent = [t for t in self.crashes.get(name, []) if now - t < window] + [now]
        self.crashes[name] = recent
        if len(recent) > self.settings.restart_max:
            self.failure = (
                f"{name} crashed {len(recent)} times within {window:g} s (restart_max {self.settings.restart_max}, "
                f"last exit code {code}); stopped everything: see its log above"
            )
            print(f"headwater: {self.failure}", file=sys.stderr)
            return None
        delay = min(MAX_BACKOFF_S, 2.0 ** (len(recent) - 1))
        print(f"headwater: {name} exited with code {code}; restarting in {delay:g} s", file=sys.stderr)
        return delay

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
        sources = [name for name in self.procs if name.startswith("source:")]
        for name in sources:  # every source at once: each lands what it read, then stops
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        # intake first, then background work, then checkpoint, then drain
        for name in [*sources, "server", "sql", "ops", "privacy", "process", "writer"]:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
