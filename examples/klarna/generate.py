"""Send risk decisions to Headwater's collector, as Klarna's policy components would.

    python examples/klarna/generate.py --url http://127.0.0.1:8000 --key <write key> --rate 50 --seconds 60

Each decision is a Segment `track` call (event `risk_decision`, `userId` = the customer, `messageId` =
the decision id, so a retried POST is not stored twice), posted in batches to `/v1/batch`; the
collector answers once the batch is durable in the log. A share of decisions (`--invalid`) is broken
on purpose (a missing field, a wrong type, an unknown outcome or currency) and must end in the
processor's dead letters. `--dry-run` prints the calls as JSON lines instead of posting them.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

CURRENCIES = ("SEK", "SEK", "SEK", "EUR", "EUR", "NOK", "DKK", "GBP", "USD", "CHF", "PLN")
OUTCOMES = ("approve",) * 7 + ("deny",) * 2 + ("review",)
MODELS = ("credit-2024.3", "credit-2025.1", "fraud-7")
DEFECTS = ("missing", "amount_type", "outcome", "unknown_currency", "model_type", "negative_amount")
REQUIRED = ("decision_id", "customer_id", "amount", "currency", "outcome", "model_version")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def customer_ids(count: int) -> list[str]:
    return [f"cust-{i:05d}" for i in range(count)]


def decision_call(
    rng: random.Random, decision_id: str, customer: str, ts_ms: int, defect: str | None
) -> dict[str, Any]:
    """One `risk_decision` track call; `defect` breaks it in one of the DEFECTS ways."""
    currency = rng.choice(CURRENCIES)
    amount = round(rng.lognormvariate(6.0 if currency in ("SEK", "NOK", "DKK") else 4.0, 1.0), 2)
    props: dict[str, Any] = {
        "decision_id": decision_id,
        "customer_id": customer,
        "amount": amount,
        "currency": currency,
        "outcome": rng.choice(OUTCOMES),
        "model_version": rng.choice(MODELS),
        "merchant_id": f"merchant-{rng.randrange(500):03d}",
    }
    if defect == "missing":
        del props[rng.choice(REQUIRED[2:])]
    elif defect == "amount_type":
        props["amount"] = str(amount)
    elif defect == "outcome":
        props["outcome"] = "maybe"
    elif defect == "unknown_currency":
        props["currency"] = "XTS"
    elif defect == "model_type":
        props["model_version"] = 7
    elif defect == "negative_amount":
        props["amount"] = -amount
    return {
        "type": "track",
        "event": "risk_decision",
        "userId": customer,
        "messageId": decision_id,
        "timestamp": iso(ts_ms),
        "properties": props,
    }


def make_decisions(
    count: int,
    *,
    seed: int = 1,
    invalid: float = 0.05,
    customers: int = 200,
    start_ms: int | None = None,
    step_ms: int = 20,
    spread_days: float = 0.0,
    prefix: str = "d",
) -> list[dict[str, Any]]:
    """`count` decisions: times from `start_ms` every `step_ms` ms, or, with `spread_days`, spread at random
    over the `spread_days` days before `start_ms` (out of order, as late arrivals are)."""
    rng = random.Random(seed)
    start = int(time.time() * 1000) if start_ms is None else start_ms
    pool = customer_ids(customers)
    calls = []
    for i in range(count):
        ts = start - int(rng.random() * spread_days * 86_400_000) if spread_days else start + i * step_ms
        defect = rng.choice(DEFECTS) if rng.random() < invalid else None
        calls.append(decision_call(rng, f"{prefix}-{i:07d}", rng.choice(pool), ts, defect))
    return calls


def send(client: httpx.Client, url: str, key: str, calls: list[dict[str, Any]], batch: int = 100) -> int:
    """POST `calls` to /v1/batch in batches; retries on 503 (back-pressure) and connection errors.
    Returns the number of events the collector accepted (duplicates included)."""
    accepted = 0
    for start in range(0, len(calls), batch):
        body = orjson.dumps({"batch": calls[start : start + batch]})
        for attempt in range(20):
            try:
                response = client.post(f"{url}/v1/batch", content=body, headers={"x-api-key": key})
            except httpx.TransportError:
                time.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            if response.status_code == 503:
                time.sleep(float(response.headers.get("retry-after", "1")))
                continue
            response.raise_for_status()
            accepted += int(response.json().get("accepted", 0))
            break
        else:
            raise RuntimeError(f"{url}/v1/batch: gave up after 20 attempts")
    return accepted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("HEADWATER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("HEADWATER_WRITE_KEY", ""), help="a write key")
    parser.add_argument("--rate", type=float, default=50, help="decisions per second")
    parser.add_argument("--seconds", type=float, default=30, help="how long to send (0: until Ctrl-C)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--invalid", type=float, default=0.05, help="share of broken decisions (0..1)")
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--history-days", type=float, default=0, help="first send this many days of past decisions")
    parser.add_argument("--dry-run", action="store_true", help="print the calls as JSON lines, post nothing")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.key:
        parser.error("--key (or HEADWATER_WRITE_KEY) is required")
    run = f"d{int(time.time())}"  # decision ids differ between runs (the collector drops repeated ids)
    options = {"invalid": args.invalid, "customers": args.customers}
    total = sent = 0
    code = 0
    with httpx.Client(timeout=30) as client:

        def deliver(calls: list[dict[str, Any]]) -> None:
            nonlocal total, sent
            if args.dry_run:
                sys.stdout.buffer.write(b"".join(orjson.dumps(c) + b"\n" for c in calls))
            else:
                sent += send(client, args.url, args.key, calls)
            total += len(calls)

        try:
            if args.history_days:
                n = int(args.rate * 60)
                deliver(make_decisions(n, seed=args.seed, spread_days=args.history_days, prefix=f"{run}h", **options))
            started = time.monotonic()
            tick = 0
            while not args.seconds or time.monotonic() - started < args.seconds:
                n = max(1, round(args.rate / 10))  # ten batches a second
                now = int(time.time() * 1000)
                seed = args.seed * 1_000_003 + tick
                deliver(make_decisions(n, seed=seed, start_ms=now, step_ms=0, prefix=f"{run}-{tick}", **options))
                tick += 1
                time.sleep(max(0.0, started + tick / 10 - time.monotonic()))
        except KeyboardInterrupt:
            code = 130  # stopped by Ctrl-C: a calling script stops too
    if not args.dry_run:
        print(f"sent {total} decisions ({sent} accepted) to {args.url}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
