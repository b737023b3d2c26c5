"""Helpers for the cluster robustness tests: Headwater processes with their own data directories, load
senders that retry like an SDK, and lake / Kafka inspection. Real processes and services, no mocks."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.helpers import child_env, make_keys
from tests.services import stop_process

# pyarrow / pyiceberg's AWS SDK otherwise sends checksums s3proxy rejects (S3Server.start sets them in this
# process too; set here as well so a child never depends on the order the fixtures ran in)
AWS_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED", "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED"}


WRITER_STARTED = " writer INFO headwater.runtime.processes: lake writer started on the "  # a log line, not a traceback


def data_dirs(base: Path, names: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """One data directory per process, all with the same API keys (write / read / admin)."""
    dirs = {name: base / name for name in names}
    for path in dirs.values():
        path.mkdir(parents=True)
    first = dirs[names[0]]
    keys = make_keys(first)
    for name in names[1:]:
        with (
            contextlib.closing(sqlite3.connect(first / "keys.db")) as src,
            contextlib.closing(sqlite3.connect(dirs[name] / "keys.db")) as dst,
        ):
            src.backup(dst)
    return dirs, keys


class Node:
    """One `headwater server` (collector + API) or `headwater writer` process, restartable."""

    def __init__(self, role: str, data_dir: Path, settings: dict[str, Any]) -> None:
        assert role in ("server", "writer")
        self.role, self.data_dir = role, data_dir
        self.name = data_dir.name
        self.env = {**child_env(data_dir, **settings), **AWS_ENV}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"{role}.log"
        self.port_file = data_dir / "run" / "server.port"
        self.starts = 0
        self.unexpected_exits: list[int] = []  # exit codes of deaths the test did not cause
        self.query_errors: list[str] = []  # answers other than 200 to POST /api/query

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def spawn(self) -> Node:
        assert not self.alive, f"{self.name} already running"
        args = [sys.executable, "-m", "headwater.cli.main", self.role, "--data-dir", str(self.data_dir)]
        if self.role == "server":
            self.port_file.unlink(missing_ok=True)
            self.port_file.parent.mkdir(parents=True, exist_ok=True)
            args += ["--port", "0", "--port-file", str(self.port_file)]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
            log_file.write(f"\n=== test: start #{self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(args, env=self.env, stdout=log_file, stderr=subprocess.STDOUT)
        self.starts += 1
        return self

    def wait_ready(self, timeout: float = 120) -> Node:
        """Server: /healthz answers 200. Writer: it logged that it started (tables and group joined)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited while starting:\n{self.log_text()}")
            if self.role == "server":
                url = self.url
                if url is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                            return self
            elif WRITER_STARTED in self.log_text(since_start=True):
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {timeout} s:\n{self.log_text()}")
            time.sleep(0.1)

    def start(self, timeout: float = 120) -> Node:
        return self.spawn().wait_ready(timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> bool:
        """False (and the exit recorded) when the process died without the test killing it."""
        if self.proc is not None and self.proc.poll() is not None:
            self.unexpected_exits.append(self.proc.returncode)
            self.proc = None
            return False
        return self.proc is not None

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        if self.role == "server":
            self.port_file.unlink(missing_ok=True)  # senders stop using the dead port
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (drain), SIGKILL after `timeout` seconds. Safe to call when not running."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)

    # -- observation --------------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str | None:
        try:
            return f"http://127.0.0.1:{int(self.port_file.read_text())}"
        except (FileNotFoundError, ValueError):
            return None

    def log_text(self, since_start: bool = False, chars: int = 6000) -> str:
        if not self.log_path.exists():
            return "(no log)"
        data = self.log_path.read_bytes()
        if since_start:
            return data[self._log_offset :].decode(errors="replace")
        return f"--- {self.log_path} (tail)\n" + data[-chars:].decode(errors="replace")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        assert self.url is not None, f"{self.name} has no port"
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def health(self) -> dict[str, Any]:
        response = self.get("/healthz")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def metrics(self) -> str:
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text

    def sql(self, sql: str, read_key: str) -> list[list[Any]]:
        assert self.url is not None, f"{self.name} has no port"
        response = httpx.post(
            self.url + "/api/query", json={"sql": sql}, headers={"Authorization": f"Bearer {read_key}"}, timeout=120
        )
        if response.status_code != 200:
            self.query_errors.append(f"{response.status_code} {response.text[:300]}")
        assert response.status_code == 200, f"{sql}: {response.status_code} {response.text}"
        assert not response.json()["truncated"], f"{sql}: truncated (raise query_max_rows)"
        rows: list[list[Any]] = response.json()["rows"]
        return rows

    def track(self, body: bytes, write_key: str, timeout: float = 30) -> httpx.Response:
        assert self.url is not None, f"{self.name} has no port"
        return httpx.post(self.url + "/track", content=body, headers={"x-api-key": write_key}, timeout=timeout)


@contextlib.contextmanager
def running(nodes: list[Node]) -> Iterator[list[Node]]:
    """Stops every node on the way out, whatever happened (failures print the logs' tails)."""
    try:
        yield nodes
    except BaseException:
        for node in nodes:
            sys.stderr.write(node.log_text() + "\n")
        raise
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                node.stop(timeout=20)


def start_all(nodes: list[Node], timeout: float = 180) -> None:
    """Spawn together (they start in parallel), then wait for each."""
    for node in nodes:
        node.spawn()
    for node in nodes:
        node.wait_ready(timeout)


def batch_body(ids: list[str], event: str = "E") -> bytes:
    """NDJSON for /track; user ids spread over many users so the batch covers many Kafka partitions."""
    return b"\n".join(
        orjson.dumps({"event": event, "userId": f"user-{zlib.crc32(m.encode()) % 211}", "messageId": m, "n": i})
        for i, m in enumerate(ids)
    )


def send_until_acked(nodes: list[Node], body: bytes, write_key: str, timeout: float = 90) -> Node:
    """POST to the first collector that acknowledges (200), retrying; returns the one that did."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        for node in nodes:
            if node.url is None:
                continue
            try:
                response = node.track(body, write_key)
            except httpx.HTTPError as exc:
                last = repr(exc)
                continue
            if response.status_code == 200:
                return node
            last = f"{response.status_code} {response.text[:200]}"
        time.sleep(0.25)
    raise AssertionError(f"batch not acknowledged within {timeout} s; last answer: {last}")


class Sender(threading.Thread):
    """Sends batches with unique messageIds to the collectors, retrying a batch with the same messageIds until
    it is acknowledged (switching collector when one fails), like an SDK. Records what was acknowledged and every
    answer that breaks the collector's contract (a non-200 claiming acceptance, a 5xx other than 503 + Retry-After,
    a 200 not accepting the whole batch)."""

    def __init__(
        self, label: str, nodes: list[Node], key: str, stop: threading.Event, batch: int = 50, pause: float = 0.02
    ) -> None:
        super().__init__(daemon=True, name=f"sender-{label}")
        self.label, self.nodes, self.key, self.stop_event = label, nodes, key, stop
        self.batch, self.pause = batch, pause
        self.acked: list[str] = []
        self.sent: set[str] = set()
        self.unacked: list[str] = []  # the batch still unacknowledged when the sender gave up
        self.statuses: Counter[str] = Counter()
        self.violations: list[str] = []
        self.batches = 0
        self.give_up_after = 120.0  # seconds of retrying one batch once `stop` is set

    def _answer(self, response: httpx.Response, size: int) -> bool:
        status = response.status_code
        self.statuses[str(status)] += 1
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if status == 200:
            if not isinstance(payload, dict) or payload.get("accepted") != size or payload.get("rejected"):
                self.violations.append(f"200 not accepting all {size} events: {response.text[:300]}")
            return True
        if isinstance(payload, dict) and (payload.get("success") or payload.get("accepted")):
            self.violations.append(f"{status} reporting events accepted: {response.text[:300]}")
        if status >= 500 and (status != 503 or not response.headers.get("retry-after", "").isdigit()):
            self.violations.append(f"{status} (expected 503 + Retry-After): {dict(response.headers)} {response.text}")
        return False

    def run(self) -> None:
        turn = 0
        with httpx.Client(timeout=30) as client:
            while not self.stop_event.is_set():
                ids = [f"{self.label}-{self.batches}-{i}" for i in range(self.batch)]
                self.sent.update(ids)
                body = batch_body(ids)
                stop_seen: float | None = None
                while True:  # retry the same batch (same messageIds) until acknowledged
                    node = self.nodes[turn % len(self.nodes)]
                    url = node.url
                    if url is not None:
                        try:
                            response = client.post(url + "/track", content=body, headers={"x-api-key": self.key})
                            if self._answer(response, len(ids)):
                                self.acked.extend(ids)
                                break
                        except httpx.HTTPError as exc:
                            self.statuses[type(exc).__name__] += 1
                    turn += 1  # next attempt (and the next batch after a failure) goes to the other collector
                    if self.stop_event.is_set():
                        stop_seen = stop_seen or time.monotonic()
                        if time.monotonic() - stop_seen > self.give_up_after:
                            self.unacked.extend(ids)
                            return
                    time.sleep(0.1)
                self.batches += 1
                turn += 1  # spread load over the collectors
                time.sleep(self.pause)


def wait_until(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    """Poll `check()` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # a service still coming back; the last one is reported on timeout
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {timeout} s (last: {last!r})")


def lake_ids(node: Node, read_key: str) -> tuple[set[str], dict[str, int]]:
    """All event ids in `events`, and those stored more than once (with their counts)."""
    duplicated = node.sql("SELECT event_id, count(*) FROM events GROUP BY event_id HAVING count(*) > 1", read_key)
    ids = node.sql("SELECT DISTINCT event_id FROM events", read_key)
    return {row[0] for row in ids}, {row[0]: row[1] for row in duplicated}


def wait_lake_has(node: Node, read_key: str, wanted: set[str], timeout: float) -> set[str]:
    """Wait until every id of `wanted` is in the lake; returns the ids stored."""
    state: dict[str, set[str]] = {}

    def check() -> bool:
        stored, _ = lake_ids(node, read_key)
        state["stored"] = stored
        return wanted <= stored

    try:
        wait_until("lake holds every acknowledged event", check, timeout, interval=1.0)
    except AssertionError:
        missing = wanted - state.get("stored", set())
        raise AssertionError(f"{len(missing)} acknowledged events missing, e.g. {sorted(missing)[:5]}") from None
    return state["stored"]


def metric_value(text: str, sample: str) -> float | None:
    """The value of one exposition line `name{labels}` (exact match), or None when absent."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return None


def group_members(bootstrap: str, group: str = "lake") -> list[tuple[str, list[int]]]:
    """(member id, partitions) of each member of a consumer group, read from Kafka."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    out = []
    for member in description.members:
        partitions = sorted(tp.partition for tp in (member.assignment.topic_partitions if member.assignment else []))
        out.append((member.member_id, partitions))
    return out


def lake_lag(bootstrap: str, topic: str, group: str = "lake") -> int:
    """Records of `topic` not yet committed by `group`, read from Kafka with a fresh client."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 2})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        wanted = [TopicPartition(topic, p) for p in partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=10)}
        lag = 0
        for tp in wanted:
            end = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            lag += max(0, end - max(0, committed.get(tp.partition, 0)))
        return lag
    finally:
        consumer.close()


def bytes_sent(pid: int, port: int) -> dict[str, int]:
    """Bytes sent so far by each established TCP connection of process `pid` to 127.0.0.1:`port` (from `ss`)."""
    out = subprocess.run(
        ["ss", "-tniHp", "state", "established", "dport", "=", f":{port}"], capture_output=True, text=True, check=True
    ).stdout
    sent: dict[str, int] = {}
    local = None
    for line in out.splitlines():
        if "users:(" in line:
            local = line.split()[2] if f"pid={pid}," in line else None
        elif local is not None and "bytes_sent:" in line:
            sent[local] = int(line.split("bytes_sent:")[1].split()[0])
    return sent


def kill_while_committing(node: Node, s3_port: int, min_bytes: int = 2048, timeout: float = 30) -> str:
    """kill -9 a lake writer in the middle of a commit.

    A writer between commits only talks to Kafka; a commit writes claims to PostgreSQL, then uploads Parquet,
    manifests and metadata to S3, then swaps the catalog row and commits the group offsets. So the writer is
    killed as soon as it is seen uploading to S3 (at least `min_bytes` sent to the S3 port since the previous look,
    a few ms earlier): claims written, Iceberg commit under way. Returns what was observed.
    """
    pid = node.pid
    deadline = time.monotonic() + timeout
    before = bytes_sent(pid, s3_port)
    while time.monotonic() < deadline:
        now = bytes_sent(pid, s3_port)
        burst = sum(total - before.get(conn, 0) for conn, total in now.items())
        if burst >= min_bytes:
            node.kill9()
            return f"kill -9 {node.name} (pid {pid}) during a commit: it was uploading to S3 ({burst} bytes)"
        before = now
    node.kill9()
    return f"kill -9 {node.name} (pid {pid}) at an arbitrary moment: no S3 upload seen in {timeout} s"
