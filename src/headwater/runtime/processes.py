"""Entry points of the long-running processes."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import orjson
import uvicorn

from headwater.core.errors import ConfigError
from headwater.core.settings import Settings
from headwater.log import open_log
from headwater.runtime.lifecycle import die_with_parent
from headwater.runtime.logs import setup_logging
from headwater.runtime.readiness import report_ready
from headwater.upgrade import prepare

log = logging.getLogger(__name__)
SOURCE_RETRY_S = 30


def serve(settings: Settings, port_file: Path | None = None) -> None:
    """Run the HTTP server (collector, query API, health, metrics) until SIGTERM/SIGINT.

    The listening socket is bound here and shared by `server_workers` forked processes, each a
    uvicorn server with its own event loop: the collector is CPU-bound Python, so one process
    would use one core. They all append to the same log (SQLite serialises their commits).
    """
    setup_logging(settings.log_level, settings.json_logs, "server")
    if os.environ.get("HEADWATER_SUPERVISED") == "1":
        die_with_parent()
    prepare(settings)
    sock = _bind(settings.host, settings.port)
    audit_settings(settings)
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(sock.getsockname()[1]))
        tmp.replace(port_file)
    workers = settings.server_workers or os.cpu_count() or 1
    if workers == 1:
        _serve_on(settings, sock)
        return
    children: list[int] = []
    for _ in range(workers):  # fork before any thread or event loop exists in this process
        pid = os.fork()
        if pid == 0:
            die_with_parent()
            code = 0
            try:
                _serve_on(settings, sock)
            except BaseException:
                log.exception("server worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    _supervise_workers(children)


def audit_settings(settings: Settings) -> None:
    """Record in the audit trail when the settings differ from those of the last start (once per server start)."""
    from headwater.auth.audit import AuditLog, cli_actor

    try:
        audit = AuditLog(settings.effective_catalog_uri)
        try:
            details = audit.check_settings(settings, started_by=cli_actor().removeprefix("cli:"))
        finally:
            audit.close()
    except Exception as exc:  # e.g. the catalog database is away: not this check's to stop the start
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.error("settings not compared with the audit trail's (the next start will): %s", reason)
        return
    if details is not None and "changed" in details:
        log.info("settings changed since the last start: %s (see headwater audit)", ", ".join(details["changed"]))


def tune_gc() -> None:
    """Fewer, cheaper garbage collections in a long-running hot loop.

    The collector and the lake writer allocate millions of short-lived containers (parsed events,
    log Records); with Python's default threshold (700) the young generation is collected every
    few hundred events and long-lived objects are traversed again and again: about a quarter of
    the lake writer's CPU. Objects alive after start-up are frozen (never traversed again).
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve_on(settings: Settings, sock: socket.socket) -> None:
    from headwater.api.app import build_app

    app = build_app(settings)
    tune_gc()
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    _ReadyServer(config).run(sockets=[sock])


class _ReadyServer(uvicorn.Server):
    """A uvicorn server that tells `up` it is ready once the app's lifespan start-up is done and it serves."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            with contextlib.suppress(OSError):  # forked workers may race to write it: the first one is enough
                report_ready()


def _supervise_workers(children: list[int]) -> None:
    """Forward SIGTERM/SIGINT to the workers; if one dies unexpectedly, stop all (up restarts us)."""
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    remaining = set(children)
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        remaining.discard(pid)
        if not stopping:
            failed = True
            log.error("server worker %d exited (status %d); stopping the others", pid, status)
            forward(signal.SIGTERM, None)
    if failed:
        raise SystemExit(1)


def _start_worker(settings: Settings, component: str) -> threading.Event:
    """Logging, dying with `up` when supervised, and the event SIGTERM/SIGINT set: what every worker does first."""
    setup_logging(settings.log_level, settings.json_logs, component)
    if os.environ.get("HEADWATER_SUPERVISED") == "1":
        die_with_parent()
    prepare(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_writer(settings: Settings) -> None:
    """Run the lake writer and table maintenance until SIGTERM/SIGINT, then drain and commit."""
    from headwater.lake.coordination import open_engine
    from headwater.lake.writer import GROUP, LakeWriter
    from headwater.runtime.stages import build_stages

    stop = _start_worker(settings, "writer")
    event_log = open_log(settings)
    consumer = event_log.consumer(GROUP)
    writer = LakeWriter(
        settings, consumer, event_log, build_stages(settings, open_engine(settings.effective_catalog_uri))
    )
    tune_gc()
    report_ready()
    log.info(
        "lake writer started on the %s log (flush %d events / %d ms)",
        event_log.backend,
        settings.flush_events,
        settings.flush_interval_ms,
    )
    try:
        writer.run(stop)
    finally:
        consumer.close()
    log.info("lake writer stopped after %d commits", writer.commits)


def request_replay(settings: Settings, name: str, start: str) -> Path:
    """Ask the running processor `name` to start a new run from `start` (it checks every second)."""
    from headwater.processing.runtime import Manifest, split_lake

    split_lake(start)  # refuse a bad --from here, not in the running process
    manifest = Manifest(settings.processors_dir, name)
    if manifest.read() is None:
        raise ConfigError(f"no processor named {name!r} has run in {settings.data_dir}")
    path = manifest.folder / "replay.json"
    path.write_text(orjson.dumps({"from": start}).decode())
    return path


def run_processors(
    settings: Settings,
    specs: list[str],
    replay: str | None = None,
    start: str = "earliest",
    from_savepoint: str | None = None,
    reset_state: bool = False,
) -> None:
    """Run the pipelines named by `specs` until SIGTERM/SIGINT, then checkpoint and stop.

    `replay`: that processor starts a new run from `start`; `reset_state`: every pipeline given does (its
    repartition stages from the end of their input); `from_savepoint`: the pipeline holding that savepoint
    and its stages start a new run from it (`processing.savepoints`)."""
    from headwater.processing import savepoints
    from headwater.processing.runtime import Manifest
    from headwater.processing.worker import ProcessorWorker, load_pipelines

    stop = _start_worker(settings, "process")
    if not specs:
        raise ConfigError("no processors: name them (headwater process file.py:pipeline) or set `processors`")
    pipelines = [p for spec in specs for p in load_pipelines(spec)]
    requests: dict[str, str] = {}
    if replay is not None:
        if replay not in {p.name for p in pipelines}:
            raise ConfigError(f"--replay {replay}: not among the processors given ({[p.name for p in pipelines]})")
        requests[replay] = start
    if reset_state:
        for p in pipelines:
            requests.setdefault(p.name, start if p.parent is None else "latest")
    if from_savepoint is not None:
        tops = [p for p in pipelines if p.parent is None]
        holders = [p for p in tops if (savepoints.folder(settings.processors_dir, p.name) / from_savepoint).is_dir()]
        if len(holders) != 1:
            where = ", ".join(p.name for p in holders) or "none of " + ", ".join(p.name for p in tops)
            raise ConfigError(f"--from-savepoint {from_savepoint}: held by {where}; name one pipeline")
        savepoints.read(settings.processors_dir, holders[0].name, from_savepoint)  # complete, or a clear error
        requests.update({stage.name: f"{savepoints.PREFIX}{from_savepoint}" for stage in holders[0].all()})
    for name, where in requests.items():
        manifest = Manifest(settings.processors_dir, name)
        manifest.folder.mkdir(parents=True, exist_ok=True)
        (manifest.folder / "replay.json").write_text(orjson.dumps({"from": where}).decode())
    worker = ProcessorWorker(settings, open_log(settings), pipelines)
    log.info("running %d processor(s): %s", len(pipelines), ", ".join(p.name for p in pipelines))
    report_ready()
    worker.run(stop)


def run_source(settings: Settings, name: str) -> None:
    """Run the configured source `name` until SIGTERM/SIGINT, then land what it read and stop."""
    from headwater.core.errors import SourceError
    from headwater.sources.runner import SourceRunner
    from headwater.sources.status import SourceStatus

    source = settings.source(name)
    stop = _start_worker(settings, f"source:{name}")
    while not stop.is_set():
        try:
            runner = SourceRunner(settings, source, open_log(settings))
            break
        except SourceError as exc:  # e.g. a missing copybook or directory: shown on the Sources page, retried
            report_ready()  # running as configured: retrying is this source's job, not a reason to stop `up`
            log.error("source %s cannot start: %s; retrying in %d s", name, exc, SOURCE_RETRY_S)
            status = SourceStatus(settings, source)
            status.state = "failed"
            status.error(str(exc))
            status.write(force=True)
            stop.wait(SOURCE_RETRY_S)
    else:
        return
    log.info("source %s (%s, %s) started", name, source.kind, source.format)
    report_ready()
    runner.run(stop)
    log.info("source %s stopped after %d records", name, runner.status.records_in)


def run_privacy_worker(settings: Settings) -> None:
    """Carry out deletion requests until SIGTERM/SIGINT (a request stopped midway resumes at the next start)."""
    from headwater.privacy.worker import PrivacyWorker
    from headwater.runtime.ops import lower_priority

    stop = _start_worker(settings, "privacy")
    lower_priority(settings)  # deletions rewrite files: never ahead of ingestion
    worker = PrivacyWorker(settings)
    log.info("privacy worker started")
    report_ready()
    try:
        worker.run(stop)
    finally:
        worker.close()


def run_ops(settings: Settings) -> None:
    """Build SQL models, run data checks and evaluate alert rules until SIGTERM/SIGINT (niced)."""
    from headwater.runtime.ops import OpsLoop, lower_priority

    stop = _start_worker(settings, "ops")
    lower_priority(settings)
    loop = OpsLoop(settings)
    log.info("ops worker started: %s", ", ".join(name for name, _, _ in loop.jobs) or "nothing to do")
    report_ready()
    loop.run(stop)
    log.info("ops worker stopped")
