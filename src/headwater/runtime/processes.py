"""Entry points of the long-running processes."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import uvicorn

from headwater.core.settings import Settings
from headwater.log.sqlite import SqliteLog
from headwater.runtime.logs import setup_logging

log = logging.getLogger(__name__)


def serve(settings: Settings, port_file: Path | None = None) -> None:
    """Run the HTTP server (collector, query API, health, metrics) until SIGTERM/SIGINT."""
    from headwater.api.app import build_app

    setup_logging(settings.log_level, settings.json_logs, "server")
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    if port_file is not None:
        _announce_port(server, port_file)
    server.run()


def _announce_port(server: uvicorn.Server, port_file: Path) -> None:
    """Write the bound port to `port_file` once the server listens (for port 0)."""

    def wait() -> None:
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.02)
        sockets = [s for srv in server.servers for s in srv.sockets]
        port = sockets[0].getsockname()[1]
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)

    threading.Thread(target=wait, daemon=True).start()


def run_writer(settings: Settings) -> None:
    """Run the lake writer and table maintenance until SIGTERM/SIGINT, then drain and commit."""
    from headwater.lake.writer import GROUP, LakeWriter

    setup_logging(settings.log_level, settings.json_logs, "writer")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    event_log = SqliteLog(settings.log_path, settings.offsets_path, settings.log_partitions)
    consumer = event_log.consumer(GROUP)
    writer = LakeWriter(settings, consumer, event_log.log_id, event_log.partitions)
    log.info(
        "lake writer started (flush %d events / %d ms)",
        settings.flush_events,
        settings.flush_interval_ms,
    )
    try:
        writer.run(stop)
    finally:
        consumer.close()
    log.info("lake writer stopped after %d commits", writer.commits)
