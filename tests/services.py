"""Real services for the test suite: Apache Kafka (KRaft), PostgreSQL 15, an S3 server (s3proxy), Redis, RabbitMQ.

Each service runs as a child process in its own directory on free ports on 127.0.0.1, and is stopped by
the process id started here (see /work/shared/SERVICES.md for the recipes). Jars come from Maven Central
through `tools/fetch-jars.sh` (cached in `.tools/jars/`); PostgreSQL, Redis and RabbitMQ are Debian's packages
(`make services`). Loaded as a pytest plugin from tests/conftest.py: session fixtures `kafka_broker`, `postgres_server`,
`s3_server`, `redis_server`, and `cluster_settings()` for a Kafka + PostgreSQL + S3 deployment of Headwater.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

import pytest

ROOT = Path(__file__).resolve().parent.parent
JARS = ROOT / ".tools" / "jars"
FETCH_JARS = ROOT / "tools" / "fetch-jars.sh"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service did not start or stop; the message ends with the tail of its log."""


class _Service(Protocol):
    def kill(self) -> None: ...


_LIVE: dict[int, _Service] = {}  # id(service) -> running service, for the atexit handler
_PRIVATE_DIRS: set[Path] = set()  # PostgreSQL directories outside pytest's tmp, removed at exit


@atexit.register
def _kill_leftovers() -> None:
    """A crashed or interrupted test run leaves no service (and no private directory) behind."""
    for service in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            service.kill()
    _LIVE.clear()
    for path in list(_PRIVATE_DIRS):
        shutil.rmtree(path, ignore_errors=True)
    _PRIVATE_DIRS.clear()


def _on_sigterm(signum: int, frame: object) -> None:
    _kill_leftovers()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # die of SIGTERM as before, services gone


def _register(service: _Service) -> None:
    """Track a running service; SIGTERM of the test run (e.g. `timeout`) skips atexit, so clean up then too."""
    _LIVE[id(service)] = service
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


# util-linux's setpriv execs the command with a parent-death signal: a JVM dies with the test process even when
# that is SIGKILLed (no atexit then). Linux sends it when the *thread* that started the child exits, so start
# services from the main thread (pytest fixtures do).
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds; nothing when not running."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_ports(count: int = 1) -> list[int]:
    """Distinct ports that are free right now (all sockets held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


def port_open(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def jar_dir(name: str) -> Path:
    """`.tools/jars/NAME`, fetched from Maven Central first when missing."""
    path = JARS / name
    if not (path / ".complete").exists():
        result = subprocess.run([str(FETCH_JARS), name], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(f"tools/fetch-jars.sh {name} failed:\n{result.stdout}{result.stderr}")
    return path


def log_tail(path: Path | None, chars: int = 6000) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace")
    return text[-chars:]


class _JavaService:
    """A JVM child process with its output in a log file; stop = SIGTERM, then SIGKILL."""

    name = "java"

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, args: list[str]) -> None:
        if self.running:
            raise ServiceError(f"{self.name} already running (pid {self.proc.pid if self.proc else '?'})")
        log_file: IO[bytes]
        with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
            log_file.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
            log_file.flush()
            self.proc = subprocess.Popen(
                [*_DIE_WITH_PARENT, *args],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal does not reach it; we stop it ourselves
            )
        _register(self)

    def _check_alive(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            _LIVE.pop(id(self), None)
            raise ServiceError(
                f"{self.name} exited with {code} {what}; log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def _log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def _port_taken_since(self, offset: int) -> bool:
        """Did the attempt that logged from `offset` on fail because another process took its port?"""
        with open(self.log_path, "rb") as log_file:
            log_file.seek(offset)
            text = log_file.read()
        return b"Address already in use" in text or b"Failed to bind" in text

    def _fail(self, message: str) -> ServiceError:
        self.kill()
        return ServiceError(f"{self.name}: {message}; log {self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (clean shutdown), SIGKILL if it has not exited after `timeout` seconds."""
        proc, self.proc = self.proc, None
        _LIVE.pop(id(self), None)
        stop_process(proc, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, with no clean shutdown."""
        proc, self.proc = self.proc, None
        _LIVE.pop(id(self), None)
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------------------------------
# Kafka

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def _kafka_cluster_id() -> str:
    """What `StorageTool random-uuid` prints: a random UUID, URL-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaBroker(_JavaService):
    """A single-node Apache Kafka 4 broker + controller (KRaft) on two free ports.

    `restart()` (and `start()` after `stop()`/`kill()`) keeps the ports and the log directory, so data survives.
    """

    name = "kafka"

    def __init__(self, workdir: Path | str, heap: str = "512m") -> None:
        super().__init__(workdir)
        self.heap = heap
        self.port = 0
        self.controller_port = 0
        self.log_dir = self.workdir / "kraft-logs"
        self.config_path = self.workdir / "server.properties"
        self.extra_config: dict[str, str] = {}

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java",
            f"-Xmx{heap}",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            f"{jar_dir('kafka')}/*",
            *args,
        ]

    def _configure(self) -> None:
        port, controller_port = free_ports(2)
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",  # one group coordinator partition: faster first join
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # after kill -9 the new broker incarnation waits for the old one's session to expire (default 9 s)
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "500",
            **self.extra_config,
        }
        self.config_path.write_text("".join(f"{key}={value}\n" for key, value in config.items()))
        (self.workdir / "log4j2.properties").write_text(_LOG4J2)
        args = self._java("kafka.tools.StorageTool", "format", "-t", _kafka_cluster_id(), "-c", str(self.config_path))
        args.append("--ignore-formatted")
        with open(self.log_path, "ab") as log_file:
            result = subprocess.run(args, cwd=self.workdir, stdout=log_file, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise ServiceError(f"kafka storage format failed; log {self.log_path}:\n{log_tail(self.log_path)}")
        self.port, self.controller_port = port, controller_port

    def start(self, timeout: float = 60) -> KafkaBroker:
        started = time.monotonic()
        for attempt in range(3):
            fresh = not self.port
            if fresh:  # first start: ports, config, formatted storage; later starts reuse all three
                self._configure()
            offset = self._log_size()
            try:
                self._spawn(self._java("kafka.Kafka", str(self.config_path), heap=self.heap))
                self._wait_ready(started + timeout)
                break
            except ServiceError:
                # the ports were free when picked, but another process (a parallel test run) may bind them first
                if not (fresh and attempt < 2 and self._port_taken_since(offset)):
                    raise
                self.port = 0
                shutil.rmtree(self.log_dir, ignore_errors=True)
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        from confluent_kafka.admin import AdminClient

        while not port_open(self.port, timeout=0.5):
            self._check_alive("while starting")
            if time.monotonic() > deadline:
                raise self._fail(f"port {self.port} not open in time")
            time.sleep(0.2)
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 2})  # 2: only critical librdkafka logs
        while True:
            self._check_alive("while starting")
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return
            except Exception as exc:  # KafkaException while the broker is still coming up
                last_error = exc
            else:
                last_error = None
            if time.monotonic() > deadline:
                raise self._fail(f"not ready in time (last AdminClient error: {last_error})")
            time.sleep(0.2)

    def restart(self, timeout: float = 60) -> KafkaBroker:
        """Clean stop, then start on the same ports with the same data."""
        self.stop()
        return self.start(timeout)

    def create_topic(self, topic: str, partitions: int = 1, timeout: float = 30) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=timeout)
        futures[topic].result(timeout)


# ---------------------------------------------------------------------------------------------------------------------
# PostgreSQL


_PG_PREFIX = "hw-pg-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_stale_postgres() -> None:
    """Stop and remove the PostgreSQL clusters of test runs that died without cleaning up (kill -9)."""
    for owner_file in Path(tempfile.gettempdir()).glob(f"{_PG_PREFIX}*/owner.pid"):
        try:
            owner = int(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        directory = owner_file.parent
        if (directory / "data" / "postmaster.pid").exists():
            pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(directory / "data"), "-m", "immediate", "-w", "stop"]
            subprocess.run(
                ["runuser", "-u", "postgres", "--", *pg_ctl],
                cwd=directory,
                capture_output=True,
                check=False,
            )
        shutil.rmtree(directory, ignore_errors=True)


class PostgresServer:
    """Debian's PostgreSQL 15 as the `postgres` user (it refuses root), trust auth, on a free port.

    PostgreSQL must be able to reach its directory, and pytest's temporary directories are private to root, so
    when running as root the cluster lives in its own /tmp/hw-pg-* directory owned by `postgres` (removed by
    `close()`, or at exit; a later run reaps the cluster of a run that was killed); `workdir` is used directly
    otherwise. pg_ctl detaches the server, so unlike the JVM services it cannot die with the test process.
    """

    name = "postgres"

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir)
        self.as_root = os.geteuid() == 0
        self._private = self.as_root
        if self.as_root:
            _reap_stale_postgres()
            self.dir = Path(tempfile.mkdtemp(prefix=_PG_PREFIX))
            (self.dir / "owner.pid").write_text(str(os.getpid()))
            _PRIVATE_DIRS.add(self.dir)
        else:
            self.dir = self.workdir
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.port = 0
        self.startup_seconds = 0.0
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, cwd=self.dir, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise ServiceError(
                f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
                f"log {self.log_path}:\n{log_tail(self.log_path)}"
            )
        return result

    def start(self) -> PostgresServer:
        if not (PG_BIN / "postgres").exists():
            raise ServiceError(
                f"PostgreSQL 15 is not installed ({PG_BIN} is missing): `make services` installs it "
                "(apt-get install postgresql)"
            )
        started = time.monotonic()
        if not (self.data / "PG_VERSION").exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.as_root:
                shutil.chown(self.dir, "postgres", "postgres")
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        for attempt in range(3):
            fresh = not self.port
            if fresh:
                (self.port,) = free_ports(1)
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            options = f"-p {self.port} -k {self.dir} -c listen_addresses={HOST} -c fsync=off"
            _register(self)
            self._running = True
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log_path), "-w", "-t", "60", "start"
                )
                break
            except ServiceError:
                self.kill()
                with open(self.log_path, "rb") as log_file:
                    log_file.seek(offset)
                    port_taken = b"Address already in use" in log_file.read()
                if not (fresh and attempt < 2 and port_taken):
                    raise
                self.port = 0  # another process took the port: pick another
        self.startup_seconds = time.monotonic() - started
        return self

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def _stop(self, mode: str) -> None:
        if not self._running:
            return
        self._running = False
        _LIVE.pop(id(self), None)
        pid = self._postmaster_pid()
        result = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
        if result.returncode != 0 and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # pg_ctl returns once postmaster.pid is gone; wait until the process itself is (it is not our child)
        deadline = time.monotonic() + 10
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if result.returncode != 0 and mode != "immediate":
            raise ServiceError(f"pg_ctl stop failed:\n{result.stdout}{result.stderr}\n{log_tail(self.log_path)}")

    def stop(self) -> None:
        """Clean (fast) shutdown."""
        self._stop("fast")

    def kill(self) -> None:
        """Immediate shutdown (no checkpoint; recovery on the next start), as after a crash."""
        self._stop("immediate")

    def restart(self) -> PostgresServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the private directory (when there is one)."""
        self.stop()
        if self._private:
            shutil.rmtree(self.dir, ignore_errors=True)
            _PRIVATE_DIRS.discard(self.dir)

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq / psycopg connection string."""
        return f"postgresql://postgres@{HOST}:{self.port}/{dbname}"

    def uri(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver), as Headwater's `catalog_uri` takes it."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{dbname}"

    def database_exists(self, name: str) -> bool:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    def create_database(self, name: str) -> str:
        """CREATE DATABASE; returns its `uri()`."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.uri(name)


# ---------------------------------------------------------------------------------------------------------------------
# S3 (s3proxy, filesystem provider)

# without a configuration logback logs everything at DEBUG (every Jetty event): slow, and megabytes per test
_LOGBACK = """\
<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} [%thread] %-5level %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
"""


class S3Server(_JavaService):
    """s3proxy serving the S3 API from a directory (a bucket is a subdirectory), with AWS v2/v4 auth.

    The provider is `filesystem-nio2`: the older `filesystem` one (deprecated by s3proxy) lists every directory
    as an extra 4 KiB object, and a DeleteObjects with directory keys took 90 s there. Known gap of nio2: a
    DeleteObjects batch naming a non-empty "directory" fails (pyarrow's `delete_dir_contents`); deleting objects
    one by one (`delete_file`) is fine.
    """

    name = "s3proxy"
    access_key = "headwater"
    secret_key = "headwater-secret"
    region = "us-east-1"

    def __init__(self, workdir: Path | str) -> None:
        super().__init__(workdir)
        self.basedir = self.workdir / "buckets"
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60) -> S3Server:
        # pyarrow / pyiceberg's AWS SDK otherwise sends checksums s3proxy rejects (XAmzContentSHA256Mismatch)
        os.environ["AWS_REQUEST_CHECKSUM_CALCULATION"] = "WHEN_REQUIRED"
        os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "WHEN_REQUIRED"
        started = time.monotonic()
        self.basedir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            fresh = not self.port
            if fresh:
                (self.port,) = free_ports(1)
            offset = self._log_size()
            try:
                self._start_once(started + timeout, offset)
                break
            except ServiceError:
                if not (fresh and attempt < 2 and self._port_taken_since(offset)):
                    raise
                self.port = 0  # another process took the port: pick another
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_once(self, deadline: float, offset: int) -> None:
        config = self.workdir / "s3proxy.conf"
        logback = self.workdir / "logback.xml"
        logback.write_text(_LOGBACK)
        config.write_text(
            "jclouds.provider=filesystem-nio2\n"
            "jclouds.identity=local\n"
            "jclouds.credential=local\n"
            f"jclouds.filesystem.basedir={self.basedir}\n"
            f"s3proxy.endpoint={self.endpoint}\n"
            "s3proxy.authorization=aws-v2-or-v4\n"
            f"s3proxy.identity={self.access_key}\n"
            f"s3proxy.credential={self.secret_key}\n"
        )
        self._spawn(
            [
                "java",
                "-Xmx256m",
                "-Djava.awt.headless=true",
                f"-Dlogback.configurationFile={logback}",
                "-cp",
                f"{jar_dir('s3proxy')}/*",
                "org.gaul.s3proxy.Main",
                "--properties",
                str(config),
            ]
        )
        while not (self._started_since(offset) and self._answers()):  # the log: not another server on the port
            self._check_alive("while starting")
            if time.monotonic() > deadline:
                raise self._fail(f"no HTTP answer on port {self.port} in time")
            time.sleep(0.2)

    def _started_since(self, offset: int) -> bool:
        with open(self.log_path, "rb") as log_file:
            log_file.seek(offset)
            return b"Started ServerConnector" in log_file.read()

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status > 0  # 403 without credentials: it is serving
        except OSError:
            return False
        finally:
            conn.close()

    def restart(self, timeout: float = 60) -> S3Server:
        self.stop()
        return self.start(timeout)

    def create_bucket(self, name: str) -> str:
        """A new bucket (a directory under the base directory); returns its name."""
        (self.basedir / name).mkdir()
        return name

    def bucket_exists(self, name: str) -> bool:
        return (self.basedir / name).is_dir()

    def filesystem(self):  # -> pyarrow.fs.S3FileSystem
        """A pyarrow S3 filesystem on this server."""
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint,
            scheme="http",
            region=self.region,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Redis (Debian's redis-server)


class RedisServer(_JavaService):
    """`redis-server` on a free port with its data (append-only file, no RDB snapshots) in `workdir`.

    Not a JVM, but the same child-process handling: output in `redis.log`, stop = SIGTERM, kill = SIGKILL.
    """

    name = "redis"

    def __init__(self, workdir: Path | str) -> None:
        super().__init__(workdir)
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 30) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError(
                "redis-server is not installed: `make services` installs it (apt-get install redis-server)"
            )
        started = time.monotonic()
        for attempt in range(3):
            fresh = not self.port
            if fresh:
                (self.port,) = free_ports(1)
            offset = self._log_size()
            args = [binary, "--port", str(self.port), "--bind", HOST, "--dir", str(self.workdir)]
            self._spawn([*args, "--save", "", "--appendonly", "yes", "--daemonize", "no"])
            try:
                while not self._answers():
                    self._check_alive("while starting")
                    if time.monotonic() > started + timeout:
                        raise self._fail(f"no PING answer on port {self.port} in time")
                    time.sleep(0.05)
                break
            except ServiceError:
                if not (fresh and attempt < 2 and self._port_taken_since(offset)):
                    raise
                self.port = 0  # another process took the port: pick another
        self.startup_seconds = time.monotonic() - started
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def restart(self, timeout: float = 30) -> RedisServer:
        self.stop()
        return self.start(timeout)


# ---------------------------------------------------------------------------------------------------------------------
# RabbitMQ (Debian's rabbitmq-server)

_RABBIT_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
_RABBIT_PREFIX = "hw-rabbit-"


def _pids_with_home(home: Path, commands: tuple[str, ...]) -> list[int]:
    """Processes named one of `commands` whose environment has HOME=`home`: this server's beam and epmd."""
    needle = b"\0HOME=" + str(home).encode() + b"\0"
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            if (proc_dir / "comm").read_text().strip() not in commands:
                continue
            if needle in b"\0" + (proc_dir / "environ").read_bytes():
                found.append(int(proc_dir.name))
        except (OSError, ValueError):
            continue
    return found


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    """Exited, not yet reaped by its parent (signal 0 still reaches it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _reap_stale_rabbits() -> None:
    """Kill the epmd (and any beam) of test runs that died without cleaning up (kill -9), remove their directories."""
    for owner_file in Path(tempfile.gettempdir()).glob(f"{_RABBIT_PREFIX}*/owner.pid"):
        try:
            owner = int(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner) and not _zombie(owner):
            continue
        _kill_pids(_pids_with_home(owner_file.parent, ("beam.smp", "epmd")))
        shutil.rmtree(owner_file.parent, ignore_errors=True)


class RabbitServer(_JavaService):
    """Debian's `rabbitmq-server` (one node, no plugins) on free ports, with a private epmd, as the `rabbitmq` user.

    Its directory (/tmp/hw-rabbit-*, owned by `rabbitmq`: pytest's temporary directories are private to root)
    is HOME (Erlang cookie), mnesia and log base. The node uses its own epmd port (`ERL_EPMD_PORT`), so the epmd
    it starts is this server's alone: `stop()` and `kill()` end it too, found by its HOME. The VM runs in the
    foreground (`RUNNING_UNDER_SYSTEMD`: the start script execs erl), so stop = SIGTERM, a clean shutdown.
    `restart()` (and `start()` after `stop()`/`kill()`) keeps the ports and the data: durable queues and
    persistent messages survive. `workdir` is used directly when not running as root.
    """

    name = "rabbitmq"
    user = "guest"
    password = "guest"  # the default user, allowed from loopback only

    def __init__(self, workdir: Path | str) -> None:
        self.as_root = os.geteuid() == 0
        if self.as_root:
            _reap_stale_rabbits()
            directory = Path(tempfile.mkdtemp(prefix=_RABBIT_PREFIX))
            (directory / "owner.pid").write_text(str(os.getpid()))
            _PRIVATE_DIRS.add(directory)
        else:
            directory = Path(workdir)
        super().__init__(directory)
        self.dir = self.workdir
        self.port = 0
        self.dist_port = 0
        self.epmd_port = 0

    @property
    def node(self) -> str:
        return f"hw{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@{HOST}:{self.port}/%2F"

    def _command(self) -> list[str]:
        env = {
            "HOME": str(self.dir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_LOGS": "-",  # to stdout: our log file
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),  # .conf added by the script
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RUNNING_UNDER_SYSTEMD": "1",  # exec the VM: our child is beam itself, SIGTERM stops it cleanly
        }
        command = ["env", *(f"{key}={value}" for key, value in env.items()), str(_RABBIT_SERVER)]
        if self.as_root:  # it refuses root; the parent-death signal is set again after the user switch
            switch = ["setpriv", "--reuid=rabbitmq", "--regid=rabbitmq", "--init-groups", "--pdeathsig", "KILL", "--"]
            command = [*switch, *command]
        return command

    def _prepare(self) -> None:
        (self.dir / "rabbitmq.conf").write_text("disk_free_limit.absolute = 10MB\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")
        if self.as_root:
            for path in [self.dir, *self.dir.rglob("*")]:
                shutil.chown(path, "rabbitmq", "rabbitmq")

    def start(self, timeout: float = 60) -> RabbitServer:
        if not _RABBIT_SERVER.exists():
            raise ServiceError(
                "rabbitmq-server is not installed: `make services` installs it (apt-get install rabbitmq-server)"
            )
        started = time.monotonic()
        for attempt in range(3):
            fresh = not self.port
            if fresh:
                self.port, self.dist_port, self.epmd_port = free_ports(3)
            self._prepare()
            offset = self._log_size()
            try:
                self._spawn(self._command())
                self._wait_ready(started + timeout, offset)
                break
            except ServiceError:
                self._stop_epmd()
                if not (fresh and attempt < 2 and self._port_taken_since(offset)):
                    raise
                self.port = 0  # another process took a port: pick others (a new node name, so a new mnesia)
        self.startup_seconds = time.monotonic() - started
        return self

    def _port_taken_since(self, offset: int) -> bool:
        with open(self.log_path, "rb") as log_file:
            log_file.seek(offset)
            text = log_file.read()
        return b"eaddrinuse" in text or b"Address already in use" in text

    def _wait_ready(self, deadline: float, offset: int) -> None:
        """Ready when the log says so (this node, not another server on the port) and AMQP answers."""
        while not (self._logged_since(offset, b"Server startup complete") and self._answers()):
            self._check_alive("while starting")
            if time.monotonic() > deadline:
                raise self._fail(f"no AMQP answer on port {self.port} in time")
            time.sleep(0.1)

    def _logged_since(self, offset: int, text: bytes) -> bool:
        with open(self.log_path, "rb") as log_file:
            log_file.seek(offset)
            return text in log_file.read()

    def _answers(self) -> bool:
        import pika

        try:
            pika.BlockingConnection(self.parameters()).close()
            return True
        except pika.exceptions.AMQPError:
            return False

    def parameters(self):  # -> pika.URLParameters
        """pika connection parameters for this server (one attempt, short timeouts)."""
        import pika

        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        return params

    def _stop_epmd(self) -> None:
        deadline = time.monotonic() + 5
        while True:  # the VM may still be exiting: epmd is found by HOME, beam too if it outlived its pid
            pids = _pids_with_home(self.dir, ("epmd",))
            _kill_pids(pids)
            if not pids or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (the node shuts down cleanly), SIGKILL after `timeout` seconds; then its epmd."""
        super().stop(timeout)
        self._stop_epmd()

    def kill(self) -> None:
        """SIGKILL of the VM (a crash), and of its epmd."""
        super().kill()
        self._stop_epmd()

    def restart(self, timeout: float = 60) -> RabbitServer:
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop, and remove the private directory (when there is one)."""
        self.stop()
        if self.as_root:
            shutil.rmtree(self.dir, ignore_errors=True)
            _PRIVATE_DIRS.discard(self.dir)


# ---------------------------------------------------------------------------------------------------------------------
# Headwater settings and pytest fixtures

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,40}")


def cluster_settings(kafka: KafkaBroker, postgres: PostgresServer, s3: S3Server, name: str) -> dict[str, str]:
    """Headwater settings for a Kafka + PostgreSQL + S3 deployment with its own topic, database and bucket.

    `name` (lowercase letters, digits, `-`, `_`) must be new in this test session: the topic is `hw-NAME`,
    the database `hw_NAME` and the bucket `hw-NAME`, all created fresh (the topic is left to Headwater).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"cluster name {name!r}: use 1-41 lowercase letters, digits, '-' or '_'")
    database = "hw_" + name.replace("-", "_")
    bucket = "hw-" + name.replace("_", "-")
    if postgres.database_exists(database) or s3.bucket_exists(bucket):
        raise ValueError(f"cluster name {name!r} already used in this session")
    catalog_uri = postgres.create_database(database)
    s3.create_bucket(bucket)
    return {
        "log_backend": "kafka",
        "kafka_bootstrap_servers": kafka.bootstrap,
        "kafka_topic": f"hw-{name}",
        "catalog_uri": catalog_uri,
        "warehouse": f"s3://{bucket}/wh",
        "s3_endpoint": s3.endpoint,
        "s3_access_key_id": s3.access_key,
        "s3_secret_access_key": s3.secret_key,
        "s3_region": s3.region,
    }


def cluster_env(settings: dict[str, str]) -> dict[str, str]:
    """The same settings as HEADWATER_* environment variables."""
    return {f"HEADWATER_{key.upper()}": value for key, value in settings.items()}


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker.start()
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()
