"""The SOCAR fleet example (examples/socar): unit tests on the TestDriver against a plain-Python reference,
and one end-to-end run on a real `headwater up` writing into a real Redis (slow)."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest
import redis

from headwater.log import open_log
from headwater.processing import TestDriver, minutes, seconds
from tests.helpers import ROOT, RunningHeadwater, child_env, make_keys, make_settings

EXAMPLE = ROOT / "examples" / "socar"
BASE_MS = 1_767_258_000_000  # 2026-01-01T09:00:00Z
GRACE_MS = seconds(10)


def load(name: str) -> ModuleType:
    """An example script as a module (examples are not a package)."""
    module_name = f"socar_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


fleet = load("fleet")
generate = load("generate")


# -- the reference, in plain Python --------------------------------------------------------------------


def ms(value: str) -> int:
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def valid(call: dict[str, Any]) -> bool:
    p = call["properties"]

    def number(name: str, low: float, high: float) -> bool:
        return type(p.get(name)) in (int, float) and low <= p[name] <= high

    return (
        all(isinstance(p.get(k), str) and p[k] for k in ("car_id", "area"))
        and number("lat", -90, 90)
        and number("lon", -180, 180)
        and number("speed", 0, 400)
        and p.get("status") in ("available", "in_use", "reserved", "maintenance")
        and call["userId"] == p["car_id"]
    )


def state_of(call: dict[str, Any]) -> dict[str, Any]:
    p = call["properties"]
    return {
        "car_id": p["car_id"], "lat": float(p["lat"]), "lon": float(p["lon"]), "speed": float(p["speed"]),
        "status": p["status"], "area": p["area"], "at": call["timestamp"],
    }  # fmt: skip


def latest_per_car(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per car, its newest valid reading by event time (of equal times, the one that arrived last)."""
    newest: dict[str, tuple[int, dict[str, Any]]] = {}
    for call in calls:
        if valid(call):
            t, car = ms(call["timestamp"]), call["userId"]
            if car not in newest or t >= newest[car][0]:
                newest[car] = (t, state_of(call))
    return {car: value for car, (_, value) in newest.items()}


def area_minutes(calls: list[dict[str, Any]], before_ms: int | None = None) -> list[dict[str, Any]]:
    """Per area and minute of event time: readings, mean speed, distinct cars (valid readings only)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for call in calls:
        t = ms(call["timestamp"])
        if valid(call) and (before_ms is None or t < before_ms):
            groups.setdefault((call["properties"]["area"], t - t % 60_000), []).append(call["properties"])
    rows = []
    for (area, start), items in sorted(groups.items()):
        mean_speed = round(sum(float(r["speed"]) for r in items) / len(items), 3)
        cars = len({r["car_id"] for r in items})
        rows.append(
            {"area": area, "minute": fleet.iso(start), "readings": len(items), "mean_speed": mean_speed, "cars": cars}
        )
    return rows


def as_event(call: dict[str, Any], n: int) -> dict[str, Any]:
    """A collector call as processors see it on the `events` stream (see processing.records)."""
    return {
        "event_id": f"e-{n}", "type": "track", "event": call["event"], "user_id": call["userId"],
        "anonymous_id": None, "timestamp": call["timestamp"], "received_at": call["timestamp"], "source": "test",
        "properties": call["properties"], "context": None, "traits": None,
    }  # fmt: skip


def run_both(calls: list[dict[str, Any]], close_at: int | None = None) -> tuple[TestDriver, TestDriver]:
    """The fleet processor on `calls`; the area processor on the fleet's by-area stream."""
    cars, areas = fleet.build_pipelines(redis_url="redis://127.0.0.1:1/0", grace_s=GRACE_MS / 1000)
    first = TestDriver(cars)
    for n, call in enumerate(calls):
        first.send(as_event(call, n), key=call["userId"], timestamp=call["timestamp"])
    second = TestDriver(areas)
    for record in first.outputs("socar-gps-by-area"):
        second.send(record["value"], key=record["key"], timestamp=record["timestamp"])
    if close_at is not None:
        second.advance_time(close_at)
    return first, second


def reading(car: str, t: int, *, area: str = "gangnam", speed: float = 30.0, **props: Any) -> dict[str, Any]:
    p = {"car_id": car, "lat": 37.5, "lon": 127.0, "speed": speed, "status": "in_use", "area": area, **props}
    return {"type": "track", "event": "gps", "userId": car, "timestamp": fleet.iso(t), "properties": p}


# -- unit tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"lat": 123.4}, "lat: 123.4 is outside [-90, 90]"),
        ({"speed": "fast"}, "speed: expected a number, got 'fast'"),
        ({"speed": -1}, "speed: -1 is outside [0, 400]"),
        ({"status": "flying"}, "status: expected one of available, in_use, reserved, maintenance, got 'flying'"),
        ({"area": None}, "area: required, a non-empty string"),
        ({"car_id": "car-9"}, "car_id: 'car-9' differs from the event's userId 'car-1'"),
        ({"lon": None, "status": None}, "lon: required; status: expected one of"),
    ],
)
def test_an_invalid_reading_is_dead_lettered_with_its_reason(change: dict[str, Any], reason: str) -> None:
    bad = reading("car-1", BASE_MS)
    bad["properties"].update(change)
    bad["properties"] = {k: v for k, v in bad["properties"].items() if v is not None}
    cars, _ = run_both([bad, reading("car-1", BASE_MS + 1000)])
    [error] = cars.errors()
    assert error["reason"].startswith("ValueError: invalid gps reading of car-")
    assert reason in error["reason"]
    assert error["value"]["properties"] == bad["properties"]
    assert [v["at"] for v in cars.state("socar_cars").values()] == [fleet.iso(BASE_MS + 1000)]


def test_the_latest_reading_per_car_wins_by_event_time() -> None:
    rng = random.Random(4)
    calls = generate.Fleet(cars=15, seed=3, invalid=0.05).readings(900, BASE_MS, step_ms=200)
    for call in calls:  # a third arrive late, by up to 20 s: an old reading must never move a car back
        if rng.random() < 0.33:
            call["timestamp"] = fleet.iso(ms(call["timestamp"]) - rng.randrange(20_000))
    expected = latest_per_car(calls)
    cars, _ = run_both(calls)
    assert cars.state("socar_cars") == expected
    delivered: dict[str, list[int]] = {}
    for record in cars.sink("redis"):  # what goes to Redis: per car, in event-time order, the same last one
        delivered.setdefault(record["key"], []).append(record["timestamp"])
        assert record["value"] == {**record["value"], "car_id": record["key"]}
    assert all(times == sorted(times) for times in delivered.values())
    assert {r["key"]: r["value"] for r in cars.sink("redis")} == expected
    assert len(cars.errors()) == sum(not valid(c) for c in calls) > 10


def test_per_minute_aggregates_per_area_match_the_reference() -> None:
    rng = random.Random(9)
    calls = generate.Fleet(cars=30, seed=8, invalid=0.02).readings(3000, BASE_MS, step_ms=100)  # 5 minutes
    for call in calls:  # out of order within the grace period
        call["timestamp"] = fleet.iso(ms(call["timestamp"]) - rng.randrange(GRACE_MS))
    last = max(ms(c["timestamp"]) for c in calls)
    _, areas = run_both(calls)
    open_minute = last - last % 60_000
    assert sorted(areas.table("socar_area_minutes"), key=lambda r: (r["area"], r["minute"])) == area_minutes(
        calls, before_ms=open_minute
    )  # the last minute is still open
    areas.advance_time(open_minute + 60_000 + GRACE_MS)
    rows = sorted(areas.table("socar_area_minutes"), key=lambda r: (r["area"], r["minute"]))
    assert rows == area_minutes(calls)
    assert len({r["area"] for r in rows}) == len(generate.AREAS)
    assert areas.late() == []
    windows = areas.outputs("socar-area-minutes.table.socar_area_minutes")
    assert all(w["timestamp"] == ms(w["value"]["minute"]) + 59_999 for w in windows)  # event time: end - 1


def test_a_reading_later_than_the_grace_period_goes_to_the_late_table() -> None:
    calls = [
        reading("car-1", BASE_MS + 1_000, speed=10),
        reading("car-2", BASE_MS + 30_000, speed=20),
        reading("car-1", BASE_MS + 60_000 + GRACE_MS - 1, speed=40),  # minute 0 still open
        reading("car-3", BASE_MS + 59_000, speed=60),  # within grace: counted
        reading("car-1", BASE_MS + 60_000 + GRACE_MS, speed=50),  # closes minute 0
        reading("car-4", BASE_MS + 59_999, speed=99),  # too late
    ]
    cars, areas = run_both(calls, close_at=BASE_MS + 10 * 60_000)
    assert areas.table("socar_area_minutes") == [
        {"area": "gangnam", "minute": fleet.iso(BASE_MS), "readings": 3, "mean_speed": 30.0, "cars": 3},
        {"area": "gangnam", "minute": fleet.iso(BASE_MS + 60_000), "readings": 2, "mean_speed": 45.0, "cars": 1},
    ]
    [late] = areas.late()
    assert late["value"]["car_id"] == "car-4"
    assert "window(s) closed" in late["reason"]
    assert cars.state("socar_cars", "car-4")["speed"] == 99.0  # late for its minute, still the car's latest


def test_the_generator_dry_run_prints_readings() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE / "generate.py"), "--dry-run", "--seconds", "0.35", "--rate", "200",
         "--cars", "7", "--invalid", "0"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    calls = [orjson.loads(line) for line in out.splitlines()]
    assert len(calls) >= 60
    assert all(valid(c) for c in calls)
    assert {c["userId"] for c in calls} == {f"car-{i:04d}" for i in range(7)}


# -- end to end: `headwater up` with both processors, a real Redis ------------------------------------------


def wait_for(check: Callable[[], tuple[bool, Any]], what: str, hw: RunningHeadwater, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        ok, seen = check()
        if ok:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s; last seen {seen!r:.600}\n{hw.log_text()}")
        time.sleep(0.25)


def wait_rows(hw: RunningHeadwater, sql: str, expected: list[list[Any]], timeout: float = 120) -> None:
    """Like hw.wait_rows, but a table the processor has not created yet is only "not yet"."""

    def check() -> tuple[bool, Any]:
        response = httpx.post(
            f"{hw.url}/api/query", json={"sql": sql}, headers={"Authorization": f"Bearer {hw.keys['read']}"}, timeout=60
        )
        if response.status_code != 200:
            return False, response.text
        return response.json()["rows"] == expected, response.json()["rows"]

    wait_for(check, sql, hw, timeout)


def normal(state: dict[str, Any]) -> dict[str, Any]:
    """A car's state with `at` as epoch ms (the processor passes on the events stream's ISO spelling)."""
    return {**state, "at": ms(state["at"])} if "at" in state else state


def by_area_records(data_dir: Path) -> int:
    """Records in the stream `socar-gps-by-area` so far (what the fleet processor has written)."""
    admin = open_log(make_settings(data_dir)).stream(fleet.BY_AREA_STREAM).admin()
    try:
        return sum(admin.end_offsets().values())
    finally:
        admin.close()


@pytest.mark.slow
def test_socar_example_end_to_end(tmp_path: Path, redis_server: Any) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    prefix = f"socar-{uuid.uuid4().hex[:8]}"
    spec = f"{EXAMPLE / 'fleet.py'}:pipelines"
    env = child_env(data_dir, flush_interval_ms=200, processors=json.dumps([spec]), processor_checkpoint_ms=100)
    env.update(SOCAR_REDIS_URL=redis_server.url, SOCAR_REDIS_KEY=f"{prefix}:car:{{key}}")
    hw = RunningHeadwater(data_dir, env, keys=keys).start()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        cars = generate.Fleet(cars=20, seed=12, invalid=0.03)
        base = int(time.time() * 1000) // 60_000 * 60_000 - minutes(20)
        calls: list[dict[str, Any]] = []
        with httpx.Client(timeout=30) as http:
            # a minute of readings at a time, as cars send them live (five minutes at once would be a backlog,
            # whose catch-up can put readings past the grace period: see the README's limits)
            for minute in range(5):
                chunk = cars.readings(120, base + minute * 60_000, step_ms=500)
                assert generate.send(http, hw.url, keys["write"], chunk) == len(chunk)
                calls += chunk
                done = sum(valid(c) for c in calls)
                wait_for(lambda done=done: (by_area_records(data_dir) == done, done), f"minute {minute} re-keyed", hw)
            rng = random.Random(1)
            beacons = [  # one reading per area ten minutes on: closes every area's minutes 0-4
                generate.reading_call(generate.Car(f"beacon-{area}", area, *generate.AREAS[area], "available"), 0.0,
                                      base + minutes(10), False, rng)
                for area in sorted(generate.AREAS)
            ]  # fmt: skip
            assert generate.send(http, hw.url, keys["write"], beacons) == len(beacons)
            calls += beacons

        expected = {car: normal(value) for car, value in latest_per_car(calls).items()}
        assert len(expected) == 20 + len(generate.AREAS)

        def redis_state() -> tuple[bool, Any]:
            seen = {}
            for car in expected:
                stored = client.hgetall(f"{prefix}:car:{car}")
                seen[car] = normal(
                    {k: v if k in ("car_id", "status", "area", "at") else float(v) for k, v in stored.items()}
                )
            return seen == expected, seen

        wait_for(redis_state, "the latest state per car in Redis", hw)
        for car, value in expected.items():
            assert int(client.get(f"{prefix}:car:{car}:event_time")) == value["at"]  # type: ignore[arg-type]

        def served() -> tuple[bool, Any]:
            seen = {}
            for car in expected:
                response = httpx.get(
                    f"{hw.url}/api/state/socar_cars/{car}", headers={"x-api-key": keys["read"]}, timeout=10
                )
                seen[car] = normal(response.json()["value"]) if response.status_code == 200 else response.status_code
            return seen == expected, seen

        wait_for(served, "the state table socar_cars", hw)

        rows = area_minutes(calls, before_ms=base + minutes(5))
        assert len(rows) > 20
        sql = "SELECT area, minute, readings, mean_speed, cars FROM socar_area_minutes ORDER BY area, minute"
        wait_rows(hw, sql, [[r["area"], r["minute"], r["readings"], r["mean_speed"], r["cars"]] for r in rows])
        wait_rows(
            hw,
            "SELECT count(*) FROM processor_errors WHERE processor = 'socar-fleet' "
            "AND reason LIKE 'ValueError: invalid gps reading of %'",
            [[sum(not valid(c) for c in calls)]],
        )
    finally:
        client.close()
        hw.stop()
