"""Play PMU terminal frames to a running Headwater over HTTP (`POST /track`, NDJSON).

    python examples/pmu/generate.py --key <write key> [--url http://127.0.0.1:8080]
        [--rate 20] [--seconds 60] [--seed 7] [--out frames.jsonl]

Bets are placed at `--rate` per second for `--seconds` at ~60 terminals, and each becomes frames
sent in real time (their `timestamp` is when the terminal emitted them):

- a `bet_request` (bet_id, terminal, bet_type, stake in EUR, race, at), then usually a
  `bet_response` (status accepted, sometimes refused) within a few hundred ms;
- some responses come 2.2-3.5 s later or never (the bet times out), some frames are held back
  3.5-6 s by an offline terminal (late: the processor counts them in `processor_late`);
- retransmissions: a frame sent twice under different message ids (the processor keeps one
  outcome per bet), and HTTP retries with the same `messageId` (the collector stores them once);
- `bet_cancelled` frames for ~10% of the bets (and a few repeated), `bet_payment` frames.

Every frame of a bet comes from its terminal (`anonymousId`), so the frames of a bet share a key
and a log partition. The last answers and cancellations follow the last bet within ~6 s.
With `--seed`, the same frames in the same order (ids also depend on the start time).
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

BET_TYPES = {  # bet type: (weight, stakes in EUR)
    "simple_gagnant": (30, (1.5, 2.0, 3.0, 5.0, 10.0, 20.0)),
    "simple_place": (18, (1.5, 2.0, 3.0, 5.0, 10.0)),
    "couple": (14, (1.5, 3.0, 5.0, 10.0, 15.0, 30.0)),
    "trio": (8, (1.0, 2.0, 5.0, 10.0)),
    "quinte_plus": (16, (2.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)),
    "multi": (7, (3.0, 4.5, 6.0, 15.0)),
    "2sur4": (7, (3.0, 6.0, 9.0)),
}
P_SILENT = 0.02  # no response frame at all
P_SLOW = 0.03  # a response after 2.2-3.5 s: too late for the 2 s rule
P_REFUSED = 0.05
P_LATE = 0.015  # per request and per response: held back 3.5-6 s by an offline terminal
P_RETRANSMIT = 0.03  # per request and per response: sent again as a new frame (new messageId)
P_HTTP_RETRY = 0.01  # per frame: the same line sent again (same messageId)
P_CANCEL = 0.10
P_PAYMENT = 0.05
RACES = ("R1C1", "R1C2", "R1C3", "R1C4", "R2C1", "R2C2", "R3C5", "R4C7")
MAX_BATCH = 500


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _tag(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def timeline(seed: int | None, start_ms: int, seconds: float, rate: float, terminals: int = 60) -> list[dict[str, Any]]:
    """The frames to send, in sending order: /track objects plus `_send_ms` (when to send them)."""
    rng = random.Random(seed)
    run = _tag(start_ms)
    pdv = sorted({f"PDV-{rng.randrange(1000, 10000)}-{rng.randrange(1, 4)}" for _ in range(terminals)})
    names, weights = list(BET_TYPES), [w for w, _ in BET_TYPES.values()]
    planned: list[tuple[int, int, dict[str, Any]]] = []
    counter = 0

    def frame(kind: str, ts: int, send: int, terminal: str, **props: Any) -> dict[str, Any]:
        nonlocal counter
        counter += 1
        line = {"event": kind, "anonymousId": terminal, "timestamp": iso(ts), "messageId": f"{run}-{counter}"}
        line.update(terminal=terminal, **props)
        planned.append((send, counter, line))
        if rng.random() < P_HTTP_RETRY:
            planned.append((send + rng.randrange(150, 400), counter, line))  # same messageId
        return line

    def held(ts: int) -> int:
        return ts + rng.randrange(3500, 6000) if rng.random() < P_LATE else ts

    t = float(start_ms)
    end = start_ms + seconds * 1000
    n = 0
    while True:
        t += rng.expovariate(rate) * 1000 if rate > 0 else 1000
        if t >= end:
            break
        n += 1
        at = int(t)
        terminal = rng.choice(pdv)
        bet_type = rng.choices(names, weights)[0]
        bet: dict[str, Any] = {
            "bet_id": f"B{run}-{n:06d}",
            "bet_type": bet_type,
            "stake": rng.choice(BET_TYPES[bet_type][1]),
        }
        bet.update(race=rng.choice(RACES), at=iso(at), frame="T031")
        sent = held(at)
        frame("bet_request", at, sent, terminal, **bet)
        if rng.random() < P_RETRANSMIT:
            frame("bet_request", at, sent + rng.randrange(100, 600), terminal, **bet)
        roll = rng.random()
        if roll >= P_SILENT:
            if roll < P_SILENT + P_SLOW:
                answered = at + rng.randrange(2200, 3500)
            else:
                answered = at + min(1800, int(rng.lognormvariate(4.8, 0.6)))  # median ~120 ms
            status = "refused" if rng.random() < P_REFUSED else "accepted"
            response = {"bet_id": bet["bet_id"], "status": status, "frame": "T031R"}
            sent = held(answered)
            frame("bet_response", answered, sent, terminal, **response)
            if rng.random() < P_RETRANSMIT:
                frame("bet_response", answered, sent + rng.randrange(100, 600), terminal, **response)
        if rng.random() < P_CANCEL:
            cancelled = at + rng.randrange(2500, 5000)
            frame("bet_cancelled", cancelled, cancelled, terminal, bet_id=bet["bet_id"], frame="T034")
            if rng.random() < 0.1:
                frame("bet_cancelled", cancelled + 300, cancelled + 300, terminal, bet_id=bet["bet_id"], frame="T034")
        elif rng.random() < P_PAYMENT:
            paid = at + rng.randrange(1000, 5000)
            amount = round(bet["stake"] * rng.choice((1.2, 1.8, 3.5, 12.0)), 2)
            frame("bet_payment", paid, paid, terminal, bet_id=bet["bet_id"], amount=amount, frame="T033")
    planned.sort(key=lambda item: (item[0], item[1]))
    return [{**line, "_send_ms": send} for send, _, line in planned]


def send(
    frames: list[dict[str, Any]], url: str, key: str, start_ms: int, out: Path | None = None, quiet: bool = False
) -> dict[str, int]:
    """POST the frames in order, each once its `_send_ms` has come (one request at a time, so the
    log gets them in this order). 429/503 are retried after Retry-After. Returns counts."""
    target = url.rstrip("/") + "/track"
    headers = {"x-api-key": key, "content-type": "application/x-ndjson"}
    clock = time.monotonic() - (time.time() * 1000 - start_ms) / 1000  # monotonic time of start_ms
    counts = {"frames": 0, "requests": 0, "accepted": 0, "retries": 0}
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
                    time.sleep(min(0.05, max(0.001, (frames[i]["_send_ms"] - now_ms) / 1000)))
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
                counts["frames"] += len(lines)
                i = j
                if not quiet and counts["requests"] % 50 == 0:
                    print(f"sent {counts['frames']} of {len(frames)} frames", file=sys.stderr)
    finally:
        if sink is not None:
            sink.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send PMU bet / response / payment / cancellation frames.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="Headwater's base URL")
    parser.add_argument("--key", default=os.environ.get("HEADWATER_KEY"), help="a write key (env HEADWATER_KEY)")
    parser.add_argument("--rate", type=float, default=20.0, help="bets per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long bets are placed")
    parser.add_argument("--seed", type=int, default=None, help="same seed: same frames in the same order")
    parser.add_argument("--terminals", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None, help="also write the frames sent, in order (JSON lines)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key is required (a write key: headwater keys create terminals --role write)")
    start_ms = int(time.time() * 1000)
    frames = timeline(args.seed, start_ms, args.seconds, args.rate, args.terminals)
    bets = sum(1 for f in frames if f["event"] == "bet_request")
    print(f"{bets} bet requests, {len(frames)} frames to {args.url} over ~{args.seconds + 6:.0f} s", file=sys.stderr)
    counts = send(frames, args.url, args.key, start_ms, args.out, args.quiet)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
