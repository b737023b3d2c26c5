"""`headwater up`: start the server and the writer as child processes and keep them running.

Two processes because the collector and the lake writer are both CPU-bound Python; on one
process they would share one core through the GIL. Stopping: SIGTERM/SIGINT stops intake first
(server), then the writer drains the log and commits, then `up` exits.
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

from headwater.core.settings import Settings


class Supervisor:
    def __init__(self, settings: Settings, config: Path | None) -> None:
        self.settings = settings
        self.config = config
        self.stopping = threading.Event()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port_file = settings.data_dir / "run" / "server.port"
        self.metrics_dir = settings.data_dir / "run" / "metrics"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir.resolve())
        env["HEADWATER_SUPERVISED"] = "1"  # children end when `up` ends, even by kill -9
        env["HEADWATER_DATA_DIR"] = str(self.settings.data_dir.resolve())
        env["HEADWATER_HOST"] = self.settings.host
        env["HEADWATER_PORT"] = str(self.settings.port)
        env["HEADWATER_LOG_LEVEL"] = self.settings.log_level
        env["HEADWATER_JSON_LOGS"] = "true" if self.settings.json_logs else "false"
        if self.config is not None:
            env["HEADWATER_CONFIG"] = str(self.config.resolve())
        return env

    def _start(self, name: str) -> None:
        """Start child `name`: server, writer, privacy, process, or `source:<source name>`."""
        command, _, source = name.partition(":")
        args = [sys.executable, "-m", "headwater.cli.main", command] + ([source] if source else [])
        if name == "privacy":
            args.append("worker")
        if name == "server":
            args += ["--port-file", str(self.port_file)]
        self.procs[name] = subprocess.Popen(args, env=self._env())

    def start(self) -> int:
        """Start both children; return the port the server listens on."""
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        self._start("writer")
        self._start("privacy")
        if self.settings.models_dir is not None or self.settings.alerts_enabled:
            self._start("ops")
        if self.settings.processors:
            self._start("process")
        for source in self.settings.sources:
            if source.enabled:
                self._start(f"source:{source.name}")
        self._start("server")
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            if self.procs["server"].poll() is not None:
                raise RuntimeError("the server exited during start-up; see its log above")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 60 s")
            time.sleep(0.05)
        return int(self.port_file.read_text())

    def watch(self) -> None:
        """Restart a child that dies unexpectedly, until stop() is called."""
        while not self.stopping.wait(0.5):
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping.is_set():
                    print(
                        f"headwater: {name} exited with {proc.returncode}; restarting",
                        file=sys.stderr,
                    )
                    self._start(name)

    def stop(self) -> None:
        self.stopping.set()
        sources = [name for name in self.procs if name.startswith("source:")]
        for name in sources:  # every source at once: each lands what it read, then stops
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        # intake first, then background work, then checkpoint, then drain
        for name in [*sources, "server", "ops", "privacy", "process", "writer"]:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
