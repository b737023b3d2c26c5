"""Event -> queryable latency: post one event, poll SQL until it is visible; p50 / p95.

A background sender keeps a steady load on the collector while samples are taken, so the lake
writer commits real batches rather than idling.
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

import httpx

from bench.common import RunningHeadwater, child_env, emit, make_keys
from headwater.loadgen.generate import GenerateOptions, generate


def sample(running: RunningHeadwater, key: str, read_key: str) -> float:
    user = uuid.uuid4().hex
    started = time.monotonic()
    response = httpx.post(
        running.url + "/track", content=f'{{"event":"PING","userId":"{user}"}}', headers={"x-api-key": key}
    )
    assert response.status_code == 200, response.text
    query = {"sql": f"SELECT count(*) FROM events WHERE user_id = '{user}'"}
    headers = {"Authorization": f"Bearer {read_key}"}
    with httpx.Client(timeout=30) as client:
        while client.post(running.url + "/api/query", json=query, headers=headers).json()["rows"][0][0] == 0:
            time.sleep(0.02)
    return time.monotonic() - started


def under_load(running: RunningHeadwater, keys: dict[str, str], samples: int, rate: float) -> list[float]:
    """`samples` freshness latencies (sorted) while a background sender offers `rate` events/s."""
    stop = threading.Event()

    def background() -> None:
        options = GenerateOptions(running.url, keys["write"], rate=rate, batch=100, duration=1.0)
        while not stop.is_set():
            asyncio.run(generate(options))

    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    try:
        time.sleep(2)
        return sorted(sample(running, keys["write"], keys["read"]) for _ in range(samples))
    finally:
        stop.set()
        thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--background-rate", type=float, default=5000.0, help="events/s of background load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hw-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        keys = make_keys(data_dir)
        running = RunningHeadwater(data_dir, child_env(data_dir), keys=keys).start()
        try:
            latencies = under_load(running, keys, args.samples, args.background_rate)
        finally:
            running.stop()
    quantiles = statistics.quantiles(latencies, n=20)
    emit(
        "freshness",
        {
            "samples": len(latencies),
            "background_events_per_s": args.background_rate,
            "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(quantiles[18], 3),
            "max_s": round(latencies[-1], 3),
        },
    )


if __name__ == "__main__":
    main()
