"""An analyst's insights on the demo shop at scale: p50/p95 latency of the four the issue names.

Data: the shop scenario (headwater.loadgen.scenarios.shop, seed 7) over --days days, sized to about --events
events, imported the way `up --demo` does (the importer with the lake writer's stages: enrichments, sessions,
identity stitching), then compacted. Cases, each run once to warm up then --runs times with the insight cache off
(`InsightEngine(cache_entries=0)`), on the last 30 whole UTC days as the builder sends them (retention: the
last 12 weeks; once more over a range in hours, which rollups cannot answer):
- trend with breakdown: daily `Page Viewed` by `channel`;
- funnel, 4 steps: Signed Up → Activated → Added to Cart → Order Completed within 14 days;
- retention, 8 weeks: Signed Up → Order Completed, weekly;
- trend with a cohort filter: daily `Page Viewed` of the people in the cohort "ordered in the last 30 days"
  (`{"property": "$cohort", "op": "eq", "value": ID}`; skipped with a message when `headwater.cohorts` is absent).
Run: python -m bench.analyst [--events 20000000] [--runs 10] [--keep]. --keep reuses the lake of a previous run
(or resumes its interrupted import: the importer records its progress).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.common import ROOT, emit
from headwater.core.settings import Settings
from headwater.insights.engine import InsightEngine
from headwater.loadgen.scenarios import SCENARIOS
from headwater.loadgen.scenarios.backfill import import_scenario
from headwater.query.engine import QueryEngine
from headwater.runtime.stages import build_stages

END_US = 1_795_000_000 * 1_000_000  # fixed: the same data on every run (2026-11-18 07:06 UTC)
SEED = 7


def users_for(events: int, days: int) -> int:
    """Visitors that give about `events` events over `days` days (measured on a small run)."""
    end = END_US
    sample = SCENARIOS["shop"].generate(SEED, 20_000, end - days * 86_400_000_000, end)
    return max(1000, int(events / (len(sample.events) / 20_000)))


def build(settings: Settings, events: int, days: int) -> dict[str, Any]:
    users = users_for(events, days)
    started = time.perf_counter()
    scenario = SCENARIOS["shop"].generate(SEED, users, END_US - days * 86_400_000_000, END_US)
    simulated = time.perf_counter()
    counts = import_scenario(settings, scenario, build_stages, source="bench")
    done = time.perf_counter()
    return {
        "users": users, "events": len(scenario.events), "simulate_s": round(simulated - started, 1),
        "import_s": round(done - simulated, 1), "import_events_per_s": round(len(scenario.events) / (done - simulated)),
        "partitions_compacted": counts.get("partitions_compacted", 0), "truth": scenario.truth.as_dict(),
    }  # fmt: skip


def specs(cohort: int | None) -> dict[str, dict[str, Any]]:
    # whole UTC days, as the builder's presets and dashboards send them (what lets rollups answer a trend or a
    # retention); `retention_8_weeks_any_range` is the same retention over a range in hours (read from events)
    end = datetime.fromtimestamp(END_US / 1e6, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end += timedelta(days=1)
    hours = end - timedelta(hours=7)
    month = {"date_from": (end - timedelta(days=30)).isoformat(), "date_to": end.isoformat()}
    cases: dict[str, dict[str, Any]] = {
        "trend_breakdown_channel_30d": {"kind": "trend", "series": [{"event": "Page Viewed"}], "interval": "day",
                                        "breakdown": "channel", **month},
        "funnel_4_steps_14d_window_30d": {"kind": "funnel", "steps": [{"event": e} for e in (
            "Signed Up", "Activated", "Added to Cart", "Order Completed")], "window_seconds": 14 * 86400, **month},
        "retention_8_weeks": {"kind": "retention", "start_event": "Signed Up", "return_event": "Order Completed",
                              "period": "week", "periods": 8, "date_from": (end - timedelta(weeks=12)).isoformat(),
                              "date_to": end.isoformat()},
        "retention_8_weeks_any_range": {"kind": "retention", "start_event": "Signed Up",
                                        "return_event": "Order Completed", "period": "week", "periods": 8,
                                        "date_from": (hours - timedelta(weeks=12)).isoformat(),
                                        "date_to": hours.isoformat()},
    }  # fmt: skip
    if cohort is not None:
        cases["trend_cohort_filter_30d"] = {
            "kind": "trend", "series": [{"event": "Page Viewed", "measure": "users"}], "interval": "day",
            "filters": [{"property": "$cohort", "op": "eq", "value": cohort}], **month,
        }  # fmt: skip
    return cases


def cohort_engine(settings: Settings, query: QueryEngine) -> tuple[InsightEngine, int | None, str | None, Any]:
    """An InsightEngine resolving cohorts, and the id of "ordered in the last 30 days"; or why not."""
    try:
        from headwater.cohorts.store import CohortStore
    except ImportError as exc:
        return InsightEngine(query, cache_entries=0), None, f"cohorts are not available yet ({exc})", None
    store = CohortStore(settings.store_uri("app"))
    end = datetime.fromtimestamp(END_US / 1e6, UTC)
    condition = {"type": "performed", "event": "Order Completed", "min_count": 1,
                 "date_from": (end - timedelta(days=30)).isoformat(), "date_to": end.isoformat()}  # fmt: skip
    found = [c for c in store.all() if c["name"] == "recent buyers"]
    cohort = found[0] if found else store.save({"name": "recent buyers", "conditions": [condition]}, "bench")
    return InsightEngine(query, cache_entries=0, cohorts=store.resolver), int(cohort["id"]), None, store


def measure(engine: InsightEngine, spec: dict[str, Any], runs: int) -> dict[str, Any]:
    answer = engine.run(spec)  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = engine.run(spec)
        times.append((time.perf_counter() - started) * 1000)
        assert not answer["cached"]
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    size = len(orjson.dumps(answer["result"], default=str))
    return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(p95, 1), "runs": runs,
            "answered_by": answer["answered_by"], "result_bytes": size}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "data")
    parser.add_argument("--keep", action="store_true", help="reuse (or finish) the lake of a previous run of this size")
    args = parser.parse_args()
    data_dir = args.workdir / f"analyst-{args.events}"
    Settings.config_file = None
    settings = Settings(data_dir=data_dir)
    info_path = data_dir / "bench-analyst.json"
    if args.keep and info_path.exists():
        data = orjson.loads(info_path.read_bytes())
    else:
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        data = build(settings, args.events, args.days)  # with --keep after an interrupted import: resumes it
        info_path.write_bytes(orjson.dumps(data))
    query = QueryEngine(settings)
    engine, cohort, skipped, store = cohort_engine(settings, query)
    cases = {}
    try:
        for name, spec in specs(cohort).items():
            cases[name] = measure(engine, spec, args.runs)
            print(name, cases[name], flush=True)
    finally:
        query.close()
        if store is not None:
            store.close()
    if skipped:
        cases["trend_cohort_filter_30d"] = {"skipped": skipped}
    data.pop("truth", None)
    emit(f"analyst-{args.events}", {"data": {**data, "days": args.days}, "cases": cases, "floor_ms": 1000})


if __name__ == "__main__":
    main()
