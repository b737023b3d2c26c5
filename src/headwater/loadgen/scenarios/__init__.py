"""Demo scenarios for `headwater generate --scenario` and `headwater up --demo`: realistic, deterministic streams.

`SCENARIOS[name].generate(seed, users, start_us, end_us)` simulates `users` people arriving over [start, end)
and returns a `Scenario` (events as columns, people, ground truth, each person's state at the end);
`.live(rng, scenario, start_us, end_us, sessions)` continues it with visits "now". `base.render` turns events
into Segment JSON lines, `backfill` imports history through the lake importer (with the writer's stages), `live`
sends "now" over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from headwater.loadgen.scenarios import app, betting, shop
from headwater.loadgen.scenarios.base import Events, GroundTruth, Scenario


@dataclass(frozen=True)
class Kind:
    generate: Callable[[int, int, int, int], Scenario]
    live: Callable[[np.random.Generator, Scenario, int, int, int], Events]
    events_per_user: float  # about, over 30 days: to size a run by events


SCENARIOS: dict[str, Kind] = {
    "shop": Kind(shop.generate, shop.live, shop.EVENTS_PER_USER),
    "betting": Kind(betting.generate, betting.live, betting.EVENTS_PER_USER),
    "app": Kind(app.generate, app.live, app.EVENTS_PER_USER),
}

__all__ = ["SCENARIOS", "Events", "GroundTruth", "Kind", "Scenario"]
