"""Live traffic: the scenario's people visiting "now", sent to the collector's Segment endpoint `/v1/batch`.

Every `BLOCK_S` seconds a block of visits starting in the next block is simulated (`Kind.live`, which updates
the people's state: sign-ups, exposures, orders continue the history), rendered and queued; events are sent when
their time comes, so timestamps are real times. The number of visits per block follows `rate` (events per
second), calibrated on the events per visit of the blocks so far. It starts with the visits of the last
`WARM_S` seconds under way (their earlier events are not sent), so the rate is reached at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from headwater.loadgen.scenarios import SCENARIOS
from headwater.loadgen.scenarios.base import US, Scenario, render

BLOCK_S = 10
WARM_S = 180
MAX_BATCH = 500


@dataclass
class LiveSummary:
    sent: int = 0
    accepted: int = 0
    errors: int = 0
    requests: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"sent": self.sent, "accepted": self.accepted, "errors": self.errors, "requests": self.requests,
                "status_counts": self.status_counts}  # fmt: skip


class LiveQueue:
    """Rendered events waiting for their time (µs), in time order."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.kind = SCENARIOS[scenario.truth.scenario]
        self.rng = np.random.default_rng([seed, 1])
        self.times = np.zeros(0, np.int64)
        self.lines: list[bytes] = []
        self.per_visit = 6.0

    def add_block(self, start_us: int, rate: float) -> int:
        visits = max(1, int(rate * BLOCK_S / self.per_visit))
        events = self.kind.live(self.rng, self.scenario, start_us, start_us + BLOCK_S * US, visits).sorted()
        self.per_visit = 0.7 * self.per_visit + 0.3 * max(1.0, len(events) / visits)
        prefix = f"live-{self.scenario.truth.seed}-{start_us // 1000}"
        lines = render(events, self.scenario.people, self.scenario.names, self.scenario.site, prefix)
        merged = np.concatenate([self.times, events.time])
        order = np.argsort(merged, kind="stable")
        every = self.lines + [line.encode() for line in lines.to_pylist()]
        self.times = merged[order]
        self.lines = [every[i] for i in order]
        return len(events)

    def due(self, now_us: int) -> list[bytes]:
        count = int(np.searchsorted(self.times, now_us, side="right"))
        out, self.lines, self.times = self.lines[:count], self.lines[count:], self.times[count:]
        return out


async def send_live(
    url: str, key: str, scenario: Scenario, seed: int, rate: float, duration: float | None = None,
    stop: Callable[[], bool] | None = None, progress: Callable[[int], None] | None = None,
) -> LiveSummary:  # fmt: skip
    """Send the scenario's live visits at about `rate` events/s until `duration` seconds pass or `stop()`."""
    queue = LiveQueue(scenario, seed)
    summary = LiveSummary()
    started = time.monotonic()
    now = int(time.time() * US)
    next_block = now - WARM_S * US  # visits already under way: their events from now on are sent
    while next_block <= now:
        queue.add_block(next_block, rate)
        next_block += BLOCK_S * US
    queue.due(now)
    endpoint = url.rstrip("/") + "/v1/batch"
    async with httpx.AsyncClient(timeout=30, auth=(key, "")) as client:
        while not (stop and stop()) and (duration is None or time.monotonic() - started < duration):
            now = int(time.time() * US)
            while next_block <= now + BLOCK_S * US:
                queue.add_block(next_block, rate)
                next_block += BLOCK_S * US
            lines = queue.due(now)
            for first in range(0, len(lines), MAX_BATCH):
                await _post(client, endpoint, lines[first : first + MAX_BATCH], summary, progress)
            await asyncio.sleep(0.5)
    return summary


async def _post(
    client: httpx.AsyncClient, endpoint: str, lines: list[bytes], summary: LiveSummary,
    progress: Callable[[int], None] | None,
) -> None:  # fmt: skip
    body = b'{"batch":[' + b",".join(lines) + b"]}"
    summary.sent += len(lines)
    for attempt in range(10):
        try:
            response = await client.post(endpoint, content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError:
            summary.errors += 1
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
            continue
        summary.requests += 1
        code = str(response.status_code)
        summary.status_counts[code] = summary.status_counts.get(code, 0) + 1
        if response.status_code in (429, 503):
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        if response.status_code == 200:
            accepted = int(response.json().get("accepted", len(lines)))
            summary.accepted += accepted
            if progress:
                progress(accepted)
        else:
            summary.errors += 1
        return
