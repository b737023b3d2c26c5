"""`headwater generate`: random users from a name list posting LOGIN-like NDJSON batches to /track."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import orjson

# The seed's generator: a name from this list plus one digit (210 distinct users).
NAMES = [
    "joe",
    "mary",
    "john",
    "suzy",
    "mark",
    "zoe",
    "shelly",
    "barry",
    "smelly",
    "sneezy",
    "doofy",
    "derpy",
    "sally",
    "dave",
    "harry",
    "mikey",
    "kimmy",
    "sarah",
    "rae",
    "shae",
    "bae",
]
EVENTS = ("LOGIN", "LOGIN", "LOGIN", "VIEW", "CLICK", "PURCHASE", "LOGOUT")


@dataclass
class GenerateOptions:
    url: str
    key: str
    rate: float = 400.0  # events per second; 0 = as fast as possible
    batch: int = 100
    users: int = 0  # 0 = the seed's 21 names x 10 digits
    days: int = 0  # spread event times over the last N days (0 = now)
    total: int | None = None
    duration: float | None = None
    concurrency: int = 4
    message_ids: bool = False
    seed: int | None = None


@dataclass
class GenerateSummary:
    sent: int = 0
    accepted: int = 0
    requests: int = 0
    errors: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    status_counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        rate = self.accepted / self.elapsed_s if self.elapsed_s else 0.0
        return {
            "sent": self.sent, "accepted": self.accepted, "requests": self.requests, "errors": self.errors,
            "retries": self.retries, "elapsed_s": round(self.elapsed_s, 3), "events_per_s": round(rate, 1),
            "status_counts": self.status_counts,
        }  # fmt: skip


def user_names(count: int, rng: random.Random) -> list[str]:
    if count <= 0:
        return [f"{name}{digit}" for name in NAMES for digit in range(10)]
    return [f"{rng.choice(NAMES)}{i}" for i in range(count)]


def make_batch(options: GenerateOptions, users: list[str], rng: random.Random, now: datetime) -> bytes:
    lines = []
    for _ in range(options.batch):
        when = now - timedelta(seconds=rng.random() * options.days * 86400) if options.days else now
        event = {
            "event": rng.choice(EVENTS),
            "userId": rng.choice(users),
            "dateTime": when.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if options.message_ids:
            event["messageId"] = str(uuid.UUID(int=rng.getrandbits(128)))
        lines.append(orjson.dumps(event))
    return b"\n".join(lines) + b"\n"


async def generate(options: GenerateOptions, progress: Callable[[int], None] | None = None) -> GenerateSummary:
    """Send batches until total/duration is reached; retry 503/429 after Retry-After."""
    rng = random.Random(options.seed)
    users = user_names(options.users, rng)
    summary = GenerateSummary()
    started = time.monotonic()
    deadline = started + options.duration if options.duration else None
    lock = asyncio.Lock()
    url = options.url.rstrip("/") + "/track"
    headers = {"x-api-key": options.key, "content-type": "application/x-ndjson"}

    def budget_left() -> bool:
        if options.total is not None and summary.sent >= options.total:
            return False
        return deadline is None or time.monotonic() < deadline

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            async with lock:
                if not budget_left():
                    return
                size = options.batch
                if options.total is not None:
                    size = min(size, options.total - summary.sent)
                summary.sent += size
                if options.rate > 0:  # pace: the batch may start at sent/rate seconds
                    wait = started + (summary.sent - size) / options.rate - time.monotonic()
                else:
                    wait = 0.0
            if wait > 0:
                await asyncio.sleep(wait)
            body = make_batch(
                GenerateOptions(**{**options.__dict__, "batch": size}),
                users,
                rng,
                datetime.now(UTC),
            )
            for attempt in range(20):
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError:
                    summary.errors += 1
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                    summary.retries += 1
                    continue
                summary.requests += 1
                code = str(response.status_code)
                summary.status_counts[code] = summary.status_counts.get(code, 0) + 1
                if response.status_code in (429, 503):
                    summary.retries += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                if response.status_code == 200:
                    accepted = int(response.json().get("accepted", size))
                    summary.accepted += accepted
                    if progress:
                        progress(accepted)
                else:
                    summary.errors += 1
                break

    limits = httpx.Limits(max_connections=options.concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(options.concurrency)))
    summary.elapsed_s = time.monotonic() - started
    return summary
