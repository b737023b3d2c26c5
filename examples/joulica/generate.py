"""Play a contact centre's call events to a running Headwater over HTTP (`POST /track`, NDJSON).

    python examples/joulica/generate.py --key <write key> [--url http://127.0.0.1:8080]
        [--rate 3] [--seconds 120] [--history-hours 48] [--seed 7] [--out calls.jsonl]

First `--history-hours` of past calls (in time order, as fast as the server takes them: the
historical side), then live calls at `--rate` per second for `--seconds`. Events:

- `call_handled`: queue, agent, handle_seconds, call_id
- `call_abandoned`: queue, wait_seconds, call_id (the caller hung up; not counted as handled)

Each queue's events are sent under the queue's id (`anonymousId: "queue-<name>"`), so that a
queue's calls share a log partition. A few live events arrive 1-8 s late (within the processor's
grace) and a few 20-40 s late (after it: counted as late). Queues have different loads, and the
history follows office hours.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

QUEUES = {"sales": 5, "support": 8, "billing": 3, "retention": 2, "technical": 4}  # relative load
AGENTS = 40
P_ABANDONED = 0.08
P_DELAYED = 0.03  # within the grace period
P_LATE = 0.01  # after it
HISTORY_RATE = 0.5  # past calls per second at the busiest hours
MAX_BATCH = 1000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def office_load(ms: int) -> float:
    """Relative call volume by hour of day (UTC): busy 8-18 h, quiet at night."""
    hour = datetime.fromtimestamp(ms / 1000, tz=UTC).hour
    return 1.0 if 8 <= hour < 18 else 0.35 if 7 <= hour < 21 else 0.08


def _call(rng: random.Random, ts: int, n: int, run: str) -> dict[str, Any]:
    queue = rng.choices(list(QUEUES), list(QUEUES.values()))[0]
    line: dict[str, Any] = {"anonymousId": f"queue-{queue}", "timestamp": iso(ts), "messageId": f"{run}-{n}"}
    if rng.random() < P_ABANDONED:
        line.update(event="call_abandoned", queue=queue, wait_seconds=rng.randrange(20, 600), call_id=f"C{run}-{n}")
    else:
        handle = round(rng.lognormvariate(5.3, 0.5), 1)  # median ~200 s
        agent = f"agent-{rng.randrange(1, AGENTS + 1):02d}"
        line.update(event="call_handled", queue=queue, agent=agent, handle_seconds=handle, call_id=f"C{run}-{n}")
    return line


def timeline(
    seed: int | None, start_ms: int, seconds: float, rate: float, history_hours: float = 0
) -> list[dict[str, Any]]:
    """Events to send, in sending order, each with `_send_ms`: history first (sent at once), then live."""
    rng = random.Random(seed)
    run = f"{start_ms:x}"
    out: list[dict[str, Any]] = []
    n = 0
    if history_hours > 0:
        t = start_ms - history_hours * 3_600_000
        while True:
            t += rng.expovariate(HISTORY_RATE) * 1000
            if t >= start_ms - 120_000:  # the history stops 2 minutes before now
                break
            if rng.random() < office_load(int(t)):
                n += 1
                out.append({**_call(rng, int(t), n, run), "_send_ms": start_ms})
    live: list[tuple[int, int, dict[str, Any]]] = []
    t = float(start_ms)
    while rate > 0:
        t += rng.expovariate(rate) * 1000
        if t >= start_ms + seconds * 1000:
            break
        n += 1
        ts = int(t)
        roll = rng.random()
        send = ts + rng.randrange(1000, 8000) if roll < P_DELAYED else ts
        if P_DELAYED <= roll < P_DELAYED + P_LATE:
            send = ts + rng.randrange(20_000, 40_000)
        live.append((send, n, _call(rng, ts, n, run)))
    live.sort(key=lambda item: (item[0], item[1]))
    return out + [{**line, "_send_ms": send} for send, _, line in live]


def send(frames: list[dict[str, Any]], url: str, key: str, start_ms: int, out: Path | None = None) -> dict[str, int]:
    """POST the events in order, each once its `_send_ms` has come; 429/503 retried after Retry-After."""
    target = url.rstrip("/") + "/track"
    headers = {"x-api-key": key, "content-type": "application/x-ndjson"}
    clock = time.monotonic() - (time.time() * 1000 - start_ms) / 1000
    counts = {"events": 0, "requests": 0, "accepted": 0, "retries": 0}
    sink = open(out, "w") if out else None  # noqa: SIM115 - closed below
    try:
        with httpx.Client(timeout=30) as client:
            i = 0
            while i < len(frames):
                now_ms = start_ms + (time.monotonic() - clock) * 1000
                j = i
                while j < len(frames) and j - i < MAX_BATCH and frames[j]["_send_ms"] <= now_ms:
                    j += 1
                if j == i:
                    time.sleep(min(0.1, max(0.001, (frames[i]["_send_ms"] - now_ms) / 1000)))
                    continue
                lines = [{k: v for k, v in f.items() if k != "_send_ms"} for f in frames[i:j]]
                body = "\n".join(json.dumps(line) for line in lines).encode() + b"\n"
                for _ in range(30):
                    response = client.post(target, content=body, headers=headers)
                    counts["requests"] += 1
                    if response.status_code in (429, 503):
                        counts["retries"] += 1
                        time.sleep(float(response.headers.get("retry-after", "1")))
                        continue
                    if response.status_code != 200:
                        raise SystemExit(f"POST {target}: {response.status_code} {response.text[:300]}")
                    counts["accepted"] += int(response.json().get("accepted", 0))
                    break
                else:
                    raise SystemExit(f"POST {target}: still refused after 30 attempts")
                if sink is not None:
                    sink.writelines(json.dumps(line) + "\n" for line in lines)
                counts["events"] += len(lines)
                i = j
    finally:
        if sink is not None:
            sink.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send contact-centre call events (history, then live).")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="Headwater's base URL")
    parser.add_argument("--key", default=os.environ.get("HEADWATER_KEY"), help="a write key (env HEADWATER_KEY)")
    parser.add_argument("--rate", type=float, default=3.0, help="live calls per second")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long live calls are sent")
    parser.add_argument("--history-hours", type=float, default=48.0, help="past calls sent first (0: none)")
    parser.add_argument("--seed", type=int, default=None, help="same seed: same events in the same order")
    parser.add_argument("--out", type=Path, default=None, help="also write the events sent, in order (JSON lines)")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key is required (a write key: headwater keys create contact-centre --role write)")
    start_ms = int(time.time() * 1000)
    frames = timeline(args.seed, start_ms, args.seconds, args.rate, args.history_hours)
    history = sum(1 for f in frames if f["timestamp"] < iso(start_ms))
    print(f"{history} past calls, then {len(frames) - history} live over {args.seconds:.0f} s", file=sys.stderr)
    print(json.dumps(send(frames, args.url, args.key, start_ms, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
