"""SOCAR's fleet on Headwater: GPS readings into the latest position and status per car (Redis and a served
state table), and per-minute figures per area (Iceberg).

    POST /v1/track  {"event": "gps", "userId": <car_id>, "timestamp": ...,
                     "properties": {car_id, lat, lon, speed, status, area}}

Two processors, because the two results are keyed differently:

- `socar-fleet` reads `events` (keyed by car: `userId` is the car id). It checks each reading (a bad
  one goes to the dead letters, `processor_errors`, with the reason), keeps per car only readings newer
  in event time than the newest seen (an old reading arriving late never moves a car back), and writes
  the latest reading per car to
    * Redis, through the `redis` sink: a hash `socar:car:<car_id>` with the reading's fields (numbers as
      JSON text) and its event time in `socar:car:<car_id>:event_time` (at-least-once, idempotent);
    * the state table `socar_cars`: `GET /api/state/socar_cars/<car_id>`.
  It also re-keys every reading by area into the stream `socar-gps-by-area`, so that all readings of an
  area meet in one partition (a window after `map_key` would only see one input partition's cars).
- `socar-area-minutes` reads `socar-gps-by-area` and counts, per area and minute of event time
  (tumbling windows, `GRACE_S` seconds for late readings; later ones go to `processor_late`): readings,
  mean speed and distinct cars, into the Iceberg table `socar_area_minutes`.

Run it:   SOCAR_REDIS_URL=redis://127.0.0.1:6379/0 \\
          HEADWATER_PROCESSORS='["examples/socar/fleet.py:pipelines"]' headwater up
          (or examples/socar/run.sh, which can also start redis-server and the generator)
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from typing import Any

from headwater.processing import Context, Pipeline, minutes, seconds

REDIS_URL = os.environ.get("SOCAR_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_KEY = os.environ.get("SOCAR_REDIS_KEY", "socar:car:{key}")  # one hash per car
GRACE_S = float(os.environ.get("SOCAR_GRACE_S", "10"))  # how late a reading may be for its minute
WINDOW = minutes(1)

EVENT = "gps"
STATUSES = ("available", "in_use", "reserved", "maintenance")
BY_AREA_STREAM = "socar-gps-by-area"
CARS_TABLE = "socar_cars"
AREA_TABLE = "socar_area_minutes"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _number(props: dict[str, Any], name: str, low: float, high: float, problems: list[str]) -> float:
    value = props.get(name)
    if value is None:
        problems.append(f"{name}: required")
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(f"{name}: expected a number, got {value!r:.40}")
    elif not low <= value <= high:
        problems.append(f"{name}: {value} is outside [{low:g}, {high:g}]")
    else:
        return float(value)
    return 0.0


def check_reading(event: dict[str, Any]) -> dict[str, Any]:
    """The reading in a `gps` event, checked; ValueError listing every problem otherwise."""
    props = event.get("properties") or {}
    problems: list[str] = []
    car_id, area, status = props.get("car_id"), props.get("area"), props.get("status")
    for name, value in (("car_id", car_id), ("area", area)):
        if not isinstance(value, str) or not value:
            problems.append(f"{name}: required, a non-empty string" if value is None else f"{name}: got {value!r:.40}")
    lat = _number(props, "lat", -90, 90, problems)
    lon = _number(props, "lon", -180, 180, problems)
    speed = _number(props, "speed", 0, 400, problems)
    if status not in STATUSES:
        problems.append(f"status: expected one of {', '.join(STATUSES)}, got {status!r:.40}")
    if isinstance(car_id, str) and event.get("user_id") not in (None, car_id):
        problems.append(f"car_id: {car_id!r} differs from the event's userId {event.get('user_id')!r}")
    if problems:
        raise ValueError(f"invalid gps reading of {car_id or '(no car_id)'}: {'; '.join(problems)}")
    return {
        "car_id": car_id, "lat": lat, "lon": lon, "speed": speed, "status": status, "area": area,
        "at": event["timestamp"],
    }  # fmt: skip


def keep_newest(ctx: Context, reading: dict[str, Any]) -> None:
    """Per car: pass a reading on only if it is not older (in event time) than the newest one seen."""
    newest = ctx.state.get("t")
    if newest is not None and ctx.timestamp < newest:
        return
    ctx.state.set("t", ctx.timestamp)
    ctx.emit(reading)


# -- per-minute figures of an area: one accumulator, three measures


def _start() -> dict[str, Any]:
    return {"n": 0, "speed": 0.0, "cars": set()}


def _add(acc: dict[str, Any], reading: dict[str, Any]) -> dict[str, Any]:
    acc["n"] += 1
    acc["speed"] += reading["speed"]
    acc["cars"].add(reading["car_id"])
    return acc


def _result(acc: dict[str, Any]) -> dict[str, Any]:
    return {"readings": acc["n"], "mean_speed": round(acc["speed"] / acc["n"], 3), "cars": len(acc["cars"])}


def area_row(window: dict[str, Any]) -> dict[str, Any]:
    """A closed window {"key", "start", "end", "value"} as a flat row of `socar_area_minutes`."""
    return {"area": window["key"], "minute": iso(window["start"]), **window["value"]}


def build_pipelines(redis_url: str = REDIS_URL, redis_key: str = REDIS_KEY, grace_s: float = GRACE_S) -> list[Pipeline]:
    fleet = Pipeline("socar-fleet", description="GPS readings: latest state per car (Redis, state table)")
    readings = fleet.source("events").filter(lambda event: event["event"] == EVENT).map(check_reading)
    (
        readings.map_key(lambda r: r["car_id"])
        .process(keep_newest)
        .to_state(CARS_TABLE)
        .to_sink("redis", {"kind": "redis", "url": redis_url, "key_template": redis_key, "mode": "hash"})
    )
    readings.map_key(lambda r: r["area"]).to_stream(BY_AREA_STREAM)

    areas = Pipeline("socar-area-minutes", description="Per area and minute: readings, mean speed, distinct cars")
    (
        areas.source(BY_AREA_STREAM)
        .tumbling_window(WINDOW, grace=seconds(grace_s))
        .aggregate(_start, _add, _result)
        .final()
        .map(area_row)
        .to_table(AREA_TABLE)
    )
    return [fleet, areas]


pipelines = build_pipelines()
