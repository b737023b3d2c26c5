"""Send GPS readings of a car-sharing fleet to Headwater's collector, as SOCAR's cars do through IoT Core.

    python examples/socar/generate.py --url http://127.0.0.1:8000 --key <write key> --rate 100 --seconds 120

Each car drives around Seoul: it belongs to an area, moves a little every reading when in use (and
now and then into a neighbouring area), stands still otherwise, and changes status from time to time.
A reading is a Segment `track` call (event `gps`, `userId` = the car id) with properties car_id, lat,
lon, speed (km/h), status and area, posted in batches to `/v1/batch`; `--invalid` breaks a share of
them on purpose (they end in the processor's dead letters). `--dry-run` prints JSON lines instead.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

AREAS = {  # area: (lat, lon) of its centre
    "gangnam": (37.4979, 127.0276),
    "jongno": (37.5730, 126.9794),
    "mapo": (37.5663, 126.9019),
    "songpa": (37.5145, 127.1059),
    "yongsan": (37.5326, 126.9905),
    "seongsu": (37.5446, 127.0557),
}
STATUSES = ("available", "in_use", "reserved", "maintenance")
STATUS_WEIGHTS = (0.45, 0.4, 0.1, 0.05)


@dataclass
class Car:
    car_id: str
    area: str
    lat: float
    lon: float
    status: str


def fleet(count: int, rng: random.Random) -> list[Car]:
    cars = []
    for i in range(count):
        area = rng.choice(sorted(AREAS))
        lat, lon = AREAS[area]
        status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
        cars.append(Car(f"car-{i:04d}", area, lat + rng.uniform(-0.01, 0.01), lon + rng.uniform(-0.01, 0.01), status))
    return cars


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def step(car: Car, rng: random.Random) -> float:
    """Move the car one reading on; return its speed in km/h."""
    if rng.random() < 0.02:
        car.status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
    if car.status != "in_use":
        return 0.0
    if rng.random() < 0.01:
        car.area = rng.choice(sorted(AREAS))
    centre_lat, centre_lon = AREAS[car.area]
    car.lat += (centre_lat - car.lat) * 0.05 + rng.uniform(-0.0005, 0.0005)
    car.lon += (centre_lon - car.lon) * 0.05 + rng.uniform(-0.0005, 0.0005)
    return round(rng.uniform(5, 70), 1)


def reading_call(car: Car, speed: float, ts_ms: int, broken: bool, rng: random.Random) -> dict[str, Any]:
    props: dict[str, Any] = {
        "car_id": car.car_id, "lat": round(car.lat, 6), "lon": round(car.lon, 6), "speed": speed,
        "status": car.status, "area": car.area,
    }  # fmt: skip
    if broken:
        defect = rng.choice(("lat", "status", "speed", "area"))
        props[defect] = {"lat": 123.4, "status": "flying", "speed": "fast", "area": None}[defect]
    return {"type": "track", "event": "gps", "userId": car.car_id, "timestamp": iso(ts_ms), "properties": props}


class Fleet:
    """A fleet that makes readings: round-robin over cars, times from `start_ms` every `step_ms`."""

    def __init__(self, cars: int = 50, seed: int = 1, invalid: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.cars = fleet(cars, self.rng)
        self.invalid = invalid
        self.next = 0

    def readings(self, count: int, start_ms: int, step_ms: int = 0) -> list[dict[str, Any]]:
        calls = []
        for i in range(count):
            car = self.cars[self.next % len(self.cars)]
            self.next += 1
            broken = self.rng.random() < self.invalid
            calls.append(reading_call(car, step(car, self.rng), start_ms + i * step_ms, broken, self.rng))
        return calls


def send(client: httpx.Client, url: str, key: str, calls: list[dict[str, Any]], batch: int = 200) -> int:
    """POST `calls` to /v1/batch in batches (retrying 503 and connection errors); return events accepted."""
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
    parser.add_argument("--rate", type=float, default=100, help="readings per second (all cars together)")
    parser.add_argument("--seconds", type=float, default=120, help="how long to send (0: until Ctrl-C)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cars", type=int, default=50)
    parser.add_argument("--invalid", type=float, default=0.01, help="share of broken readings (0..1)")
    parser.add_argument("--dry-run", action="store_true", help="print the calls as JSON lines, post nothing")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.key:
        parser.error("--key (or HEADWATER_WRITE_KEY) is required")
    cars = Fleet(args.cars, args.seed, args.invalid)
    started, tick, total, accepted, code = time.monotonic(), 0, 0, 0, 0
    with httpx.Client(timeout=30) as client:
        try:
            while not args.seconds or time.monotonic() - started < args.seconds:
                n = max(1, round(args.rate / 10))  # ten batches a second, stamped with the wall clock
                calls = cars.readings(n, int(time.time() * 1000))
                if args.dry_run:
                    sys.stdout.buffer.write(b"".join(orjson.dumps(c) + b"\n" for c in calls))
                else:
                    accepted += send(client, args.url, args.key, calls)
                total += n
                tick += 1
                time.sleep(max(0.0, started + tick / 10 - time.monotonic()))
        except KeyboardInterrupt:
            code = 130  # stopped by Ctrl-C: a calling script stops too
    if not args.dry_run:
        print(f"sent {total} readings ({accepted} accepted) to {args.url}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
