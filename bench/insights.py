"""Insight latency on the query benchmark's generated data (run bench/queries.py first, or pass
--events/--users to match data it generated). Hot: one warm-up, then the median of --runs, with
the result cache bypassed."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import emit
from headwater.core.settings import Settings
from headwater.insights.engine import compile_query, parse
from headwater.query.engine import QueryEngine

RANGE = {"date_from": "2025-01-01T00:00:00", "date_to": "2025-02-01T00:00:00"}
SPECS: dict[str, dict[str, Any]] = {
    "trend_users_by_day_90d": {"kind": "trend", "series": [{"event": "LOGIN", "measure": "users"}], "interval": "day",
                               "date_from": "2025-01-01T00:00:00", "date_to": "2025-04-01T00:00:00"},
    "funnel_3_steps_1d_window_1_month": {"kind": "funnel", "steps": [{"event": "LOGIN"}, {"event": "VIEW"},
                                         {"event": "PURCHASE"}], "window_seconds": 86400, **RANGE},
    "retention_8_weeks": {"kind": "retention", "start_event": "LOGIN", "return_event": "PURCHASE", "period": "week",
                          "periods": 8, "date_from": "2025-01-01T00:00:00", "date_to": "2025-03-01T00:00:00"},
    "journeys_3_deep_1_month": {"kind": "journey", "event": "PURCHASE", "depth": 3, **RANGE},
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("bench/data"))
    args = parser.parse_args()
    data = args.workdir / f"queries-{args.events}-{args.users}" / "headwater"
    if not data.exists():
        raise SystemExit(f"no data in {data}: run python -m bench.queries --events {args.events} --users {args.users}")
    engine = QueryEngine(Settings(data_dir=data, query_max_rows=200_000, query_timeout_s=600))
    results = {}
    for name, spec in SPECS.items():
        sql = compile_query(parse(spec))
        engine.execute(sql, max_rows=200_000)
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            engine.execute(sql, max_rows=200_000)
            times.append(time.perf_counter() - started)
        results[name] = round(statistics.median(times), 3)
    name = "insights" if (args.events, args.users) == (20_000_000, 100_000) else f"insights-{args.events}-{args.users}"
    emit(name, {"events": args.events, "users": args.users, "seconds": results})


if __name__ == "__main__":
    main()
