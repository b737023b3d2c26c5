"""Headwater on Kafka + PostgreSQL + S3: ingest with 1 and 2 collectors, freshness, and where the CPU goes.

Starts a real Kafka broker (KRaft), PostgreSQL 15 and s3proxy with `tests/services.py`, each in a
temporary directory, and stops them at the end. Every scenario gets its own topic, catalog database
and bucket, and runs `headwater server` collectors (collector + query API) and one `headwater writer`
as separate processes, each with its own data directory holding the same keys.

- Ingest: one wrk per collector posts 100 events per request for BENCH_SECONDS (default 20) seconds,
  after BENCH_WARMUP_SECONDS (default 3) of the same load that is not measured (a fresh broker JVM
  answers far slower at first); then the benchmark polls `SELECT count(*) FROM events` through
  POST /api/query until the lake holds every acknowledged event. `sustained_events_per_s` counts that catch-up time too.
- Freshness: one event is posted and /api/query polled until it is visible, BENCH_FRESHNESS_SAMPLES
  (default 40) times, under BENCH_BACKGROUND_RATE (default 5000) events/s of background load.
- CPU: utime + stime from /proc/<pid>/stat of every process tree (broker JVM, each collector, the
  writer, PostgreSQL with its backends, s3proxy), wrk's rusage, this script's own, and the machine's
  total from /proc/stat, before and after each run. Everything shares the machine's cores, so the
  rest of the machine ("other") is reported too: on a busy machine the figures are not comparable.

Run from the repo root: `.venv/bin/python bench/kafka.py` (or `-m bench.kafka`); JSON on stdout and
in bench/results/kafka.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # run as a script: no bench/
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
from tests.services import KafkaBroker, PostgresServer, S3Server, cluster_settings  # noqa: E402

from bench.common import RunningHeadwater, child_env, emit, make_keys, need_wrk  # noqa: E402
from bench.ingest import body  # noqa: E402
from headwater.loadgen.generate import GenerateOptions, generate  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PER_REQUEST = 100
CATCH_UP_TIMEOUT_S = 180.0
LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL|WARNING|Traceback)\b")


def env_number(name: str, default: float, fallback: str | None = None) -> float:
    value = os.environ.get(name) or (os.environ.get(fallback) if fallback else None)
    return float(value) if value else default


# ---------------------------------------------------------------------------------------------------------------------
# CPU accounting


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime + cutime + cstime in ticks) for every live process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # fields[0] is the state (field 3 of proc(5))
        table[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    return table


def _tree_ticks(root: int, table: dict[int, tuple[int, int]]) -> int:
    """CPU ticks of a process and its live descendants; exited ones are in their reaper's cutime/cstime."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        if pid in table:
            total += table[pid][1]
            frontier += children.get(pid, [])
    return total


def _machine_busy_ticks() -> int:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


@dataclass
class CpuSample:
    at: float
    trees: dict[str, int]
    machine: int
    own: float


def cpu_sample(roots: dict[str, int]) -> CpuSample:
    table = _proc_table()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return CpuSample(
        at=time.monotonic(),
        trees={name: _tree_ticks(pid, table) for name, pid in roots.items()},
        machine=_machine_busy_ticks(),
        own=usage.ru_utime + usage.ru_stime,
    )


def cpu_report(before: CpuSample, after: CpuSample, wrk_cpu_s: float = 0.0) -> dict[str, Any]:
    """CPU seconds per component between two samples, each one's share of the measured total, and the
    rest of the machine (processes this benchmark did not start)."""
    seconds = {name: (after.trees[name] - before.trees[name]) / TICK for name in before.trees}
    if wrk_cpu_s:
        seconds["wrk"] = wrk_cpu_s
    seconds["bench script (polling, load generator)"] = after.own - before.own
    measured = sum(seconds.values())
    machine = (after.machine - before.machine) / TICK
    wall = after.at - before.at
    cores = os.cpu_count() or 1
    return {
        "wall_s": round(wall, 2),
        "machine_cpu_capacity_s": round(wall * cores, 2),
        "machine_busy_cpu_s": round(machine, 2),
        "measured_cpu_s": round(measured, 2),
        "other_processes_cpu_s": round(max(0.0, machine - measured), 2),
        "components": {
            name: {"cpu_s": round(value, 2), "share_of_measured": round(value / measured, 3) if measured else None}
            for name, value in sorted(seconds.items(), key=lambda item: -item[1])
        },
    }


# ---------------------------------------------------------------------------------------------------------------------
# The deployment


@dataclass
class Services:
    kafka: KafkaBroker
    postgres: PostgresServer
    s3: S3Server

    def roots(self) -> dict[str, int]:
        postmaster = int((self.postgres.data / "postmaster.pid").read_text().split()[0])
        assert self.kafka.proc is not None and self.s3.proc is not None
        return {"kafka broker": self.kafka.proc.pid, "postgresql": postmaster, "s3proxy": self.s3.proc.pid}


@dataclass
class Deployment:
    """N `headwater server` collectors and one `headwater writer` on a fresh topic, database and bucket."""

    services: Services
    work: Path
    collectors: int
    settings: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    servers: list[RunningHeadwater] = field(default_factory=list)
    writer: subprocess.Popen[bytes] | None = None
    writer_dir: Path | None = None
    exit_codes: dict[str, int | None] = field(default_factory=dict)

    def start(self) -> Deployment:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        self.settings = cluster_settings(self.services.kafka, self.services.postgres, self.services.s3, name)
        dirs = [self.work / name / f"collector{i + 1}" for i in range(self.collectors)]
        self.writer_dir = self.work / name / "writer"
        for path in [*dirs, self.writer_dir]:
            path.mkdir(parents=True)
        self.keys = make_keys(dirs[0])
        for path in [*dirs[1:], self.writer_dir]:  # the same keys everywhere (a copy of keys.db)
            with sqlite3.connect(dirs[0] / "keys.db") as src, sqlite3.connect(path / "keys.db") as dst:
                src.backup(dst)
        for path in dirs:
            server = RunningHeadwater(path, child_env(path, **self.settings), command="server", keys=self.keys)
            self.servers.append(server)
            server.start()
        log_file = self.writer_dir / "writer.log"
        with open(log_file, "ab") as out:
            self.writer = subprocess.Popen(
                [sys.executable, "-m", "headwater.cli.main", "writer", "--data-dir", str(self.writer_dir)],
                env=child_env(self.writer_dir, **self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60  # ready once the consumer group assigned it the partitions
        while "assigned partitions" not in log_file.read_text(errors="replace"):
            if self.writer.poll() is not None:
                raise RuntimeError(f"headwater writer exited: {log_file.read_text(errors='replace')[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"headwater writer got no partitions: {log_file.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.1)
        return self

    def roots(self) -> dict[str, int]:
        roots = self.services.roots()
        for index, server in enumerate(self.servers):
            assert server.proc is not None
            roots[f"collector {index + 1}" if len(self.servers) > 1 else "collector"] = server.proc.pid
        assert self.writer is not None
        roots["writer"] = self.writer.pid
        return roots

    def count(self, client: httpx.Client) -> int:
        response = client.post(
            self.servers[0].url + "/api/query",
            json={"sql": "SELECT count(*) FROM events"},
            headers={"Authorization": f"Bearer {self.keys['read']}"},
        )
        response.raise_for_status()
        return int(response.json()["rows"][0][0])

    def lag(self, client: httpx.Client) -> int | None:
        return client.get(self.servers[0].url + "/healthz").json()["lake_lag_events"]

    def stop(self) -> None:
        """SIGTERM the collectors (intake first), then the writer (it commits what it holds); keep exit codes."""
        for index, server in enumerate(self.servers):
            if server.proc is not None:
                self.exit_codes[f"collector {index + 1}"] = server.stop()
        if self.writer is not None:
            if self.writer.poll() is None:
                self.writer.terminate()
                try:
                    self.writer.wait(60)
                except subprocess.TimeoutExpired:
                    self.writer.kill()
                    self.writer.wait()
            self.exit_codes["writer"] = self.writer.returncode

    def log_problems(self, limit: int = 8) -> dict[str, Any]:
        """Warning / error lines of the collector and writer logs (the first few of each, and counts)."""
        logs = {f"collector {i + 1}": s.log_path for i, s in enumerate(self.servers)}
        if self.writer_dir is not None:
            logs["writer"] = self.writer_dir / "writer.log"
        out: dict[str, Any] = {}
        for name, path in logs.items():
            if path is None or not path.exists():
                continue
            lines = [line for line in path.read_text(errors="replace").splitlines() if LOG_PROBLEM.search(line)]
            if lines:
                out[name] = {"count": len(lines), "first": [line[:400] for line in lines[:limit]]}
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Ingest


def run_wrk(wrk: str, urls: list[str], key: str, connections: int, duration: int, work: Path) -> list[dict[str, Any]]:
    """One `wrk -t1` per URL at once; each result carries wrk's own CPU seconds (its rusage)."""
    body_file = work / f"body{PER_REQUEST}.ndjson"
    body_file.write_bytes(body(PER_REQUEST))
    env = {"KEY": key, "BODY_FILE": str(body_file), "PATH": "/usr/bin:/bin"}
    script = ROOT / "bench" / "ingest.lua"
    procs = [
        subprocess.Popen(
            [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script), url + "/track"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for url in urls
    ]
    results = []
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)  # wait4, not wait(): wrk's CPU time comes with it
        proc.returncode = os.waitstatus_to_exitcode(status)
        match = re.search(r"WRKJSON (.*)", out)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {out}{err}")
        stats = orjson.loads(match.group(1))
        stats["cpu_s"] = usage.ru_utime + usage.ru_stime
        results.append(stats)
    return results


def ingest(
    wrk: str, services: Services, work: Path, collectors: int, connections: int, duration: int, warmup: int
) -> dict[str, Any]:
    deployment = Deployment(services, work, collectors)
    try:
        deployment.start()
        with httpx.Client(timeout=60) as client:
            if warmup > 0:  # a fresh JVM broker, producer and writer are slower at first: not measured
                urls = [s.url for s in deployment.servers]
                warm = run_wrk(wrk, urls, deployment.keys["write"], connections, warmup, work)
                warm_events = sum(s["requests"] - s["non_2xx"] for s in warm) * PER_REQUEST
                deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
                while deployment.count(client) < warm_events and time.monotonic() < deadline:
                    time.sleep(0.2)
            lake_before = deployment.count(client)
            roots = deployment.roots()
            before = cpu_sample(roots)
            stats = run_wrk(
                wrk, [s.url for s in deployment.servers], deployment.keys["write"], connections, duration, work
            )
            ingest_s = time.monotonic() - before.at
            at_end = cpu_sample(roots)
            ok_requests = sum(s["requests"] - s["non_2xx"] for s in stats)
            events = ok_requests * PER_REQUEST
            lag_at_end = deployment.lag(client)
            lake_at_end = deployment.count(client) - lake_before
            lake = lake_at_end
            deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
            while lake < events and time.monotonic() < deadline:
                time.sleep(0.2)
                lake = deployment.count(client) - lake_before
            total_s = time.monotonic() - before.at
            after = cpu_sample(roots)
        wrk_cpu = sum(s["cpu_s"] for s in stats)
        requests = sum(s["requests"] for s in stats)
        result: dict[str, Any] = {
            "collectors": collectors,
            "wrk_processes": len(stats),
            "connections_per_wrk": connections,
            "events_per_request": PER_REQUEST,
            "duration_s": duration,
            "warmup_s": warmup,
            "requests_per_s": round(sum(s["requests"] / (s["duration_us"] / 1e6) for s in stats), 1),
            "acknowledged_events_per_s": round(events / ingest_s, 1),
            "sustained_events_per_s": round(events / total_s, 1) if lake >= events else None,
            "caught_up": lake >= events,
            "catch_up_s": round(total_s - ingest_s, 2),
            "lake_lag_at_end_events": events - lake_at_end,
            "healthz_lake_lag_at_end_events": lag_at_end,
            "latency_p50_ms": max(s["latency_p50_ms"] for s in stats),
            "latency_p99_ms": max(s["latency_p99_ms"] for s in stats),
            "latency_note": "with several wrk processes: the highest of their percentiles",
            "per_collector": [
                {key: s[key] for key in ("requests", "non_2xx", "latency_p50_ms", "latency_p99_ms", "status")}
                for s in stats
            ],
            "requests": requests,
            "non_2xx": sum(s["non_2xx"] for s in stats),
            "socket_errors": sum(s["errors_connect"] + s["errors_read"] + s["errors_timeout"] for s in stats),
            "acknowledged_events": events,
            "lake_rows_added": lake,
            "cpu_load_phase": cpu_report(before, at_end, wrk_cpu),
            "cpu_whole_run": cpu_report(before, after, wrk_cpu),
        }
    finally:
        deployment.stop()
    result["exit_codes"] = deployment.exit_codes
    result["log_problems"] = deployment.log_problems()
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Freshness


def freshness(services: Services, work: Path, samples: int, rate: float) -> dict[str, Any]:
    deployment = Deployment(services, work, 1)
    stop = threading.Event()
    thread: threading.Thread | None = None
    background_counts = {"accepted": 0, "errors": 0}
    try:
        deployment.start()
        url, keys = deployment.servers[0].url, deployment.keys

        def count_accepted(accepted: int) -> None:
            background_counts["accepted"] += accepted

        def background() -> None:
            options = GenerateOptions(url, keys["write"], rate=rate, batch=100, duration=1.0)
            while not stop.is_set():
                summary = asyncio.run(generate(options, progress=count_accepted))
                background_counts["errors"] += summary.errors

        thread = threading.Thread(target=background, daemon=True)
        thread.start()
        time.sleep(2)
        roots = deployment.roots()
        before = cpu_sample(roots)
        accepted_before = background_counts["accepted"]
        latencies = []
        query_headers = {"Authorization": f"Bearer {keys['read']}"}
        with httpx.Client(timeout=30) as client:
            for _ in range(samples):
                user = uuid.uuid4().hex
                started = time.monotonic()
                response = client.post(
                    url + "/track",
                    content=f'{{"event":"PING","userId":"{user}"}}',
                    headers={"x-api-key": keys["write"]},
                )
                assert response.status_code == 200, response.text
                query = {"sql": f"SELECT count(*) FROM events WHERE user_id = '{user}'"}
                while client.post(url + "/api/query", json=query, headers=query_headers).json()["rows"][0][0] == 0:
                    time.sleep(0.02)
                latencies.append(time.monotonic() - started)
            lake = deployment.count(client)
        after = cpu_sample(roots)
        accepted = background_counts["accepted"] - accepted_before
    finally:
        stop.set()
        if thread is not None:
            thread.join(10)
        deployment.stop()
    latencies.sort()
    wall = after.at - before.at
    return {
        "samples": len(latencies),
        "background_events_per_s_target": rate,
        "background_events_per_s_achieved": round(accepted / wall, 1),
        "background_errors": background_counts["errors"],
        "lake_rows_at_end": lake,
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(statistics.quantiles(latencies, n=20, method="inclusive")[18], 3),
        "max_s": round(latencies[-1], 3),
        "sampling_wall_s": round(wall, 1),
        "cpu": cpu_report(before, after),
        "exit_codes": deployment.exit_codes,
        "log_problems": deployment.log_problems(),
    }


# ---------------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=int(env_number("BENCH_SECONDS", 20, "BENCH_DURATION")))
    parser.add_argument("--warmup", type=int, default=int(env_number("BENCH_WARMUP_SECONDS", 3)))
    parser.add_argument("--connections", type=int, default=int(env_number("BENCH_CONNECTIONS", 16)))
    parser.add_argument("--samples", type=int, default=int(env_number("BENCH_FRESHNESS_SAMPLES", 40)))
    parser.add_argument("--background-rate", type=float, default=env_number("BENCH_BACKGROUND_RATE", 5000))
    args = parser.parse_args()
    wrk = need_wrk()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hw-bench-kafka-") as tmp:
        work = Path(tmp)
        kafka, postgres, s3 = KafkaBroker(work / "kafka"), PostgresServer(work / "postgres"), S3Server(work / "s3")
        try:
            kafka.start(timeout=90)
            postgres.start()
            s3.start(timeout=90)
            services = Services(kafka, postgres, s3)
            startup = {
                "kafka_s": round(kafka.startup_seconds, 1),
                "postgresql_s": round(postgres.startup_seconds, 1),
                "s3proxy_s": round(s3.startup_seconds, 1),
            }
            one = ingest(wrk, services, work, 1, args.connections, args.duration, args.warmup)
            two = ingest(wrk, services, work, 2, args.connections, args.duration, args.warmup)
            fresh = freshness(services, work, args.samples, args.background_rate)
        finally:
            with contextlib.suppress(Exception):
                kafka.stop()
            with contextlib.suppress(Exception):
                s3.stop()
            with contextlib.suppress(Exception):
                postgres.close()
    emit(
        "kafka",
        {
            "deployment": (
                "Kafka 4 (KRaft, 1 broker, -Xmx512m) + PostgreSQL 15 (catalog) + s3proxy (filesystem warehouse); "
                "`headwater server` collectors and one `headwater writer` as separate processes, default settings "
                f"(kafka_partitions 12, server_workers 1); {os.cpu_count()} cores shared by the broker, PostgreSQL, "
                "s3proxy, the collectors, the writer, wrk and this script"
            ),
            "shared_cores": os.cpu_count(),
            "note": (
                "only comparable when taken on a quiet machine: other_processes_cpu_s in each cpu report is "
                "CPU used by processes this benchmark did not start"
            ),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "service_startup": startup,
            "ingest_1_collector": one,
            "ingest_2_collectors": two,
            "freshness": fresh,
            "total_s": round(time.monotonic() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
