"""Workload isolation: freshness (event -> in the lake; and -> answered by /api/query, which waits for a query
slot) and /track latency under steady ingest, alone and while a compaction, a deletion
and 8 heavy queries run at once (issue #13: freshness p95 <= 2 s).

History is imported first (so the queries and the deletion have real work), then `headwater up` runs with its
defaults and a background sender offers `--rate` events/s. Each phase samples event -> queryable latency
(post one event, poll SQL) and the latency of single-event /track requests sent every 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import RunningHeadwater, child_env, emit, make_keys
from bench.queries import generate as generate_history
from bench.queries import import_files
from headwater.core.settings import Settings
from headwater.loadgen.generate import GenerateOptions, generate
from headwater.query.engine import QueryEngine

UNISOLATED = {  # no ops worker (no alerts, no models): the writer runs maintenance between its flushes
    "query_concurrency": 256, "query_nice": 0, "background_nice": 0, "alerts_enabled": "false",
}  # fmt: skip
HEAVY = [
    "SELECT user_id, count(*) AS n, count(DISTINCT event) AS kinds, min(timestamp), max(timestamp) "
    "FROM events GROUP BY user_id ORDER BY n DESC LIMIT 20",
    "SELECT date_trunc('hour', timestamp) AS h, event, count(DISTINCT user_id) FROM events GROUP BY ALL "
    "ORDER BY 1 DESC LIMIT 50",
    "SELECT a.user_id, count(*) FROM events a JOIN (SELECT user_id FROM events WHERE event = 'PURCHASE' "
    "GROUP BY user_id) b USING (user_id) GROUP BY a.user_id ORDER BY 2 DESC LIMIT 10",
]


def quantile(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 4) if len(values) > 2 else float("nan")


def freshness_sample(client: httpx.Client, url: str, keys: dict[str, str], lake: QueryEngine) -> tuple[float, float]:
    """(seconds until the event is in the lake, seconds until /api/query answers with it): the second includes
    the wait for a query slot behind the heavy queries."""
    user = uuid.uuid4().hex
    started = time.monotonic()
    response = client.post(url + "/track", content=f'{{"event":"PING","userId":"{user}"}}',
                           headers={"x-api-key": keys["write"]})  # fmt: skip
    assert response.status_code == 200, response.text
    sql = f"SELECT count(*) FROM events WHERE user_id = '{user}'"
    while not lake.execute(sql).rows[0][0]:
        time.sleep(0.02)
    landed = time.monotonic() - started
    headers = {"authorization": f"Bearer {keys['read']}"}
    while True:
        answer = client.post(url + "/api/query", json={"sql": sql}, headers=headers)
        if answer.status_code == 200 and answer.json()["rows"][0][0]:
            return landed, time.monotonic() - started
        time.sleep(0.02)


class Probe(threading.Thread):
    """Single-event /track requests every 50 ms; latencies in seconds."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.wait(0.05):
                started = time.monotonic()
                client.post(self.url + "/track", content=b'{"event":"PROBE","userId":"probe"}',
                            headers={"x-api-key": self.key})  # fmt: skip
                self.latencies.append(time.monotonic() - started)


class HeavyQueries(threading.Thread):
    """One analyst running heavy queries back to back; counts answers, 429s and errors."""

    def __init__(self, url: str, key: str, index: int) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.index = url, key, index
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self.seconds: list[float] = []

    def run(self) -> None:
        with httpx.Client(timeout=120) as client:
            n = self.index
            while not self.stop.is_set():
                started = time.monotonic()
                answer = client.post(self.url + "/api/query", json={"sql": HEAVY[n % len(HEAVY)]},
                                     headers={"authorization": f"Bearer {self.key}"})  # fmt: skip
                self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
                if answer.status_code == 200:
                    self.seconds.append(time.monotonic() - started)
                elif answer.status_code == 429:
                    self.stop.wait(float(answer.headers.get("retry-after", "1")))
                n += 1


def phase(running: RunningHeadwater, keys: dict[str, str], samples: int, lake: QueryEngine) -> dict[str, Any]:
    probe = Probe(running.url, keys["write"])
    probe.start()
    with httpx.Client(timeout=60) as client:
        pairs = [freshness_sample(client, running.url, keys, lake) for _ in range(samples)]
    probe.stop.set()
    probe.join(10)
    fresh = sorted(p[0] for p in pairs)
    answered = sorted(p[1] for p in pairs)
    return {
        "freshness_p50_s": round(statistics.median(fresh), 3), "freshness_p95_s": quantile(fresh, 95),
        "freshness_max_s": round(fresh[-1], 3),
        "answered_p50_s": round(statistics.median(answered), 3), "answered_p95_s": quantile(answered, 95),
        "track_p50_ms": round(quantile(probe.latencies, 50) * 1000, 1),
        "track_p99_ms": round(quantile(probe.latencies, 99) * 1000, 1), "track_requests": len(probe.latencies),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history-events", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="background events/s")
    parser.add_argument("--samples", type=int, default=40, help="freshness samples per phase")
    parser.add_argument("--queries", type=int, default=8, help="analysts running heavy queries at once")
    parser.add_argument(
        "--unisolated",
        action="store_true",
        help="as before issue #13: every query at once at normal priority, maintenance in the writer's loop, "
        "deletions at normal priority",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hw-isolation-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        keys = make_keys(data_dir)
        files = Path(tmp) / "history"
        generate_history(files, args.history_events, 30, 50_000, 7, 1440)
        Settings.config_file = None
        imported = import_files(Settings(data_dir=data_dir), sorted(files.glob("*.ndjson.gz")))
        # small files pile up in today's partition; compaction starts during the contended phase
        env = child_env(data_dir, compact_min_files=6, compact_after_minutes=0.2, maintenance_interval_s=5)
        if args.unisolated:
            env.update(child_env(data_dir, **UNISOLATED))
        running = RunningHeadwater(data_dir, env, "up", keys).start()
        stop = threading.Event()

        def background() -> None:
            options = GenerateOptions(running.url, keys["write"], rate=args.rate, batch=100, duration=1.0)
            while not stop.is_set():
                asyncio.run(generate(options))

        sender = threading.Thread(target=background, daemon=True)
        sender.start()
        try:
            time.sleep(3)
            lake = QueryEngine(Settings(data_dir=data_dir, query_fast_path=False))  # reads the lake, no slots
            alone = phase(running, keys, args.samples, lake)
            analysts = [HeavyQueries(running.url, keys["read"], i) for i in range(args.queries)]
            for analyst in analysts:
                analyst.start()
            deletion = httpx.post(running.url + "/api/privacy/deletions",
                                  json={"user_ids": [f"user{i}" for i in range(1, 21)]},
                                  headers={"authorization": f"Bearer {keys['admin']}"}, timeout=30)  # fmt: skip
            time.sleep(2)
            contended = phase(running, keys, args.samples, lake)
            for analyst in analysts:
                analyst.stop.set()
            for analyst in analysts:
                analyst.join(120)
            statuses: dict[str, int] = {}
            for analyst in analysts:
                for status, count in analyst.statuses.items():
                    statuses[str(status)] = statuses.get(str(status), 0) + count
            seconds = sorted(s for a in analysts for s in a.seconds)
            state = httpx.get(running.url + f"/api/privacy/deletions/{deletion.json().get('id')}",
                              headers={"authorization": f"Bearer {keys['admin']}"}).json()  # fmt: skip
            compactions = running_metric(running, "headwater_lake_compactions_total")
        finally:
            stop.set()
            sender.join(10)
            running.stop()
    emit("isolation-unisolated" if args.unisolated else "isolation", {
        "history_events": args.history_events, "history_import": imported, "background_events_per_s": args.rate,
        "heavy_query_analysts": args.queries, "alone": alone, "contended": contended,
        "heavy_query_answers": statuses, "heavy_query_p50_s": round(statistics.median(seconds), 2) if seconds else None,
        "deletion_state_at_end": state.get("state"), "compactions_during_run": compactions,
    })  # fmt: skip


def running_metric(running: RunningHeadwater, name: str) -> float:
    text = httpx.get(running.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


if __name__ == "__main__":
    main()
