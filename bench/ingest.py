"""Ingest throughput with an external load generator (wrk) while the lake writer keeps up.

For each mode wrk posts the same body for --duration seconds; then the benchmark waits until the
lake writer's lag is zero. `sustained_events_per_s` counts that catch-up time too, so it is the
rate at which events become queryable, not only the rate at which they are acknowledged.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from bench.common import RunningHeadwater, child_env, emit, make_keys, need_wrk
from headwater.loadgen.generate import NAMES


def body(events: int) -> bytes:
    rng = random.Random(1)
    lines = [
        orjson.dumps(
            {"event": "LOGIN", "userId": f"{rng.choice(NAMES)}{rng.randrange(10)}", "dateTime": "2026-11-23 10:00:00"}
        )
        for _ in range(events)
    ]
    return b"\n".join(lines)


def run_mode(
    wrk: str, running: RunningHeadwater, key: str, per_request: int, connections: int, duration: int, work: Path,
    rate: float | None = None, body_count: int | None = None,
) -> dict[str, object]:  # fmt: skip
    """One wrk run; with `rate`, each connection paces itself to offer `rate` requests/s in all. With
    `body_count`, the bodies `work/body.ndjson.<i>` written beforehand are sent in turn."""
    if body_count is None:
        body_file = work / f"body{per_request}.ndjson"
        body_file.write_bytes(body(per_request))
    else:
        body_file = work / "body.ndjson"
    lake_before = running.sql("SELECT count(*) FROM events")[0][0]
    env = {"KEY": key, "BODY_FILE": str(body_file), "PATH": "/usr/bin:/bin"}
    if body_count is not None:
        env["BODY_COUNT"] = str(body_count)
    if rate is not None:
        env["DELAY_MS"] = str(round(connections * 1000 / rate))
    script = Path(__file__).with_name("ingest.lua")
    started = time.monotonic()
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script), running.url + "/track"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    ingest_s = time.monotonic() - started
    stats = orjson.loads(re.search(r"WRKJSON (.*)", out).group(1))  # type: ignore[union-attr]
    ok = stats["requests"] - stats["non_2xx"]
    lag_at_end = httpx.get(running.url + "/healthz").json()["lake_lag_events"]
    while httpx.get(running.url + "/healthz").json()["lake_lag_events"] > 0:
        time.sleep(0.05)
    total_s = time.monotonic() - started
    lake_after = running.sql("SELECT count(*) FROM events")[0][0]
    events = ok * per_request
    return {
        "events_per_request": per_request,
        "connections": connections,
        **({"offered_requests_per_s": rate} if rate is not None else {}),
        "duration_s": duration,
        "requests_per_s": round(stats["requests"] / (stats["duration_us"] / 1e6), 1),
        "acknowledged_events_per_s": round(events / ingest_s, 1),
        "sustained_events_per_s": round(events / total_s, 1),
        "lake_lag_at_end_events": lag_at_end,
        "catch_up_s": round(total_s - ingest_s, 2),
        "latency_p50_ms": stats["latency_p50_ms"],
        "latency_p99_ms": stats["latency_p99_ms"],
        "non_2xx": stats["non_2xx"],
        "socket_errors": stats["errors_connect"] + stats["errors_read"] + stats["errors_timeout"],
        "lake_rows_added": lake_after - lake_before,
        "acknowledged_events": events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=20)
    args = parser.parse_args()
    wrk = need_wrk()
    with tempfile.TemporaryDirectory(prefix="hw-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        keys = make_keys(data_dir)
        running = RunningHeadwater(data_dir, child_env(data_dir, query_max_rows=10), keys=keys).start()
        try:
            batched = run_mode(wrk, running, keys["write"], 100, 16, args.duration, Path(tmp))
            single = run_mode(wrk, running, keys["write"], 1, 32, args.duration, Path(tmp))
            paced = run_mode(wrk, running, keys["write"], 1, 10, args.duration, Path(tmp), rate=1000)
        finally:
            running.stop()
    emit("ingest", {"batched": batched, "single_event": single, "single_event_at_1k_per_s": paced})


if __name__ == "__main__":
    main()
