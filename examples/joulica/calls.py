"""Joulica-style contact-centre figures: calls handled per queue per minute, live and final.

Joulica shows real-time figures next to historical ones. This processor keeps the real-time
side: every `call_handled` event (properties queue, agent, handle_seconds) counts in its queue's
one-minute tumbling window, and

- `.current()`: on every call, the running figures of the queue's newest minute go to the
  state table `joulica_calls_now` (served by `GET /api/state/joulica_calls_now/<queue>`) and the
  stream `joulica-calls-now` (a live feed of updates);
- `.final()`: once a minute is over (plus 10 s grace for stragglers) its figures go once to the
  Iceberg table `joulica_calls_per_minute` (SQL) and the stream `joulica-calls-per-minute`.
  Calls that come after that are not dropped: they are counted in `processor_late`.

The historical side is the `events` table itself: a trend insight of `call_handled` by `queue`
(see `dashboard.py`) counts the same measure over days.

Keys: the window counts what one partition of the log holds, so the feed sends each queue's
events under the queue's id (`anonymousId: "queue-sales"`) and a queue's calls share a partition.
A feed keyed otherwise (by agent, by caller) would first need a repartition: a processor that
re-keys by queue into an output stream (`to_stream`), and this one reading that stream.

Run it: `HEADWATER_PROCESSORS='["examples/joulica/calls.py:pipeline"]' headwater up` (or run.sh).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from headwater.processing import Context, Pipeline, minutes, seconds

WINDOW = minutes(1)
GRACE = seconds(10)


def handled(event: dict[str, Any]) -> bool:
    return event.get("event") == "call_handled" and bool((event.get("properties") or {}).get("queue"))


def queue_of(event: dict[str, Any]) -> str:
    return str(event["properties"]["queue"])


def start() -> list[float]:
    return [0, 0.0]  # calls, handle seconds


def add(acc: list[float], event: dict[str, Any]) -> list[float]:
    return [acc[0] + 1, acc[1] + float(event["properties"].get("handle_seconds") or 0)]


def figures(acc: list[float]) -> dict[str, Any]:
    calls = int(acc[0])
    return {"calls": calls, "avg_handle_s": round(acc[1] / calls, 1) if calls else 0.0}


def newest_minute(ctx: Context, result: dict[str, Any]) -> None:
    """Pass on the running figures of the queue's newest minute only: a straggler for the minute
    before (within the grace) still counts in that minute's final figures, but must not turn the
    live figures back."""
    if result["start"] >= ctx.state.get("newest", result["start"]):
        ctx.state.set("newest", result["start"])
        ctx.emit(result)


def row(result: dict[str, Any]) -> dict[str, Any]:
    """A window result {"key", "start", "end", "value"} as a flat row."""
    minute = datetime.fromtimestamp(result["start"] / 1000, tz=UTC).isoformat()
    return {
        "queue": result["key"], "minute": minute, "start_ms": result["start"], "end_ms": result["end"],
        "calls": result["value"]["calls"], "avg_handle_s": float(result["value"]["avg_handle_s"]),
    }  # fmt: skip


def build() -> Pipeline:
    p = Pipeline("joulica-calls", description="Calls handled per queue per minute: live (current) and final")
    per_minute = (
        p.source("events")
        .filter(handled)
        .map_key(queue_of)
        .tumbling_window(WINDOW, grace=GRACE)
        .aggregate(start, add, figures)
    )
    live = per_minute.current().process(newest_minute).map(row)
    live.to_state("joulica_calls_now").to_stream("joulica-calls-now")
    per_minute.final().map(row).to_table("joulica_calls_per_minute").to_stream("joulica-calls-per-minute")
    return p


pipeline = build()
