"""Stream processing: throughput, end-to-end latency and state lookups (issue #8's floors).

1. Records/s of three pipelines: a stateless filter + map, a tumbling-window count by key, and a
   PMU-like rule (interval join of bet request/response frames, a join against a campaign
   reference table, keyed state with an expiry timer in process()). Each runs through the real
   `ProcessorRunner` on the embedded log, pre-filled with collector envelopes; the clock runs from
   creating the runner until it has applied everything and written its last checkpoint. The same
   pipelines also run through `TestDriver` and straight through `Task` (operators only: no log, no
   decoding), and the log read and the envelope decoding are timed alone, to show where time goes.
   Rates are given per wall second and per CPU second of this process (the steadier figure when
   other work shares the two cores). The pipeline furthest below its floor is then run once more,
   on half the records, under cProfile.
2. Latency from HTTP ack to processor output at a steady rate (default 5 k events/s), on a real
   `headwater up` with a processor that forwards each event to the stream `latency-out`, read back
   by tailing that stream; once with the default checkpoint interval, once with 20 ms.
3. State lookups: `GET /api/state/<table>/<key>` on the same server when the endpoint exists, and
   `ServedReader.get` on the processor's state file in any case.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import RunningHeadwater, child_env, emit, make_keys
from headwater.core.settings import Settings
from headwater.log import Record, open_log
from headwater.processing import Context, Pipeline, ReferenceTable, TestDriver, Timer, seconds
from headwater.processing.records import decode_events
from headwater.processing.runtime import ProcessorRunner
from headwater.processing.state import ServedReader, StateStore
from headwater.processing.task import Task

BASE_MS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
BET_TYPES = ("simple", "couple", "trio", "quinte")
Envelope = tuple[bytes, bytes]  # (key, value) as the collector appends them


# -- data -------------------------------------------------------------------------------------------
def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _envelope(user: str, event: str, ts: int, properties: dict[str, Any]) -> Envelope:
    body = {"type": "track", "event": event, "userId": user, "timestamp": _iso(ts), "properties": properties}
    meta = {"ra": ts + 50, "src": "bench", "ep": "track"}
    return user.encode(), orjson.dumps({"m": meta, "e": body})


def web_events(n: int, users: int = 1000) -> list[Envelope]:
    """Page / click / purchase / login events of `users` users, 1 ms apart."""
    kinds = ("page", "click", "page", "purchase", "login")
    return [
        _envelope(f"u{i % users}", kinds[i % 5], BASE_MS + i, {"path": f"/p/{i % 50}", "value": i % 100})
        for i in range(n)
    ]


def pmu_frames(bets: int, terminals: int = 500) -> list[Envelope]:
    """T031 bet requests (one every ms), their T031R responses 5-55 ms later (5% rejected), and T034
    cancellations of 5% of the bets 0.5 s later; keyed by terminal, in time order."""
    frames: list[tuple[int, int, Envelope]] = []
    for j in range(bets):
        ts, terminal, bet = BASE_MS + j, f"t{j % terminals}", f"b{j}"
        request = {"bet_id": bet, "bet_type": BET_TYPES[j % 4], "stake": 1 + j % 20, "race": f"R{j // 60_000}"}
        frames.append((ts, 0, _envelope(terminal, "T031", ts, request)))
        status = "rejected" if j % 20 == 7 else "ok"
        frames.append(
            (ts + 5 + j % 50, 1, _envelope(terminal, "T031R", ts + 5 + j % 50, {"bet_id": bet, "status": status}))
        )
        if j % 20 == 3:
            frames.append((ts + 500, 2, _envelope(terminal, "T034", ts + 500, {"bet_id": bet})))
    frames.sort(key=lambda f: (f[0], f[1]))
    return [f[2] for f in frames]


CAMPAIGNS = [
    {"campaign": f"{bt}-{n}", "bet_type": bt, "min_stake": 2 + 3 * n, "coupon": 5 * (n + 1),
     "start": BASE_MS - (0 if n == 0 else 86_400_000), "end": BASE_MS + (10**10 if n == 0 else -1)}
    for bt in BET_TYPES for n in range(2)
]  # fmt: skip


# -- pipelines --------------------------------------------------------------------------------------
def stateless_pipeline() -> Pipeline:
    p = Pipeline("bench-stateless")
    (
        p.source("events")
        .filter(lambda e: e["event"] in ("page", "purchase"))
        .map(lambda e: {"user": e["user_id"], "path": e["properties"]["path"], "value": e["properties"]["value"]})
        .to_stream("bench-stateless-out")
    )
    return p


def window_pipeline() -> Pipeline:
    p = Pipeline("bench-window")
    p.source("events").tumbling_window(seconds(10), grace=seconds(1)).count().final().to_stream("bench-window-out")
    return p


def _reward(ctx: Context, value: dict[str, Any]) -> None:
    if value["kind"] == "cancel":
        coupon = ctx.state.get("coupon")
        if coupon is not None:
            ctx.state.delete("coupon")
            ctx.emit({**coupon, "kind": "revoke"})
        return
    if ctx.state.exists("coupon"):
        return  # one coupon per bet: the best campaign that came first
    coupon = {"kind": "coupon", "bet_id": value["bet_id"], "campaign": value["campaign"], "value": value["coupon"]}
    ctx.state.set("coupon", coupon)
    ctx.schedule("expire", ctx.timestamp + seconds(30))
    ctx.emit(coupon)


def _expire(ctx: Context, timer: Timer) -> None:
    ctx.state.delete("coupon")


def pmu_pipeline() -> Pipeline:
    p = Pipeline("bench-pmu")
    campaigns = ReferenceTable.from_rows("campaigns", CAMPAIGNS, key="bet_type", many=True)
    frames = p.source("events").map_key(lambda e: e["properties"]["bet_id"])
    kind = frames.branch(
        request=lambda e: e["event"] == "T031", response=lambda e: e["event"] == "T031R",
        cancel=lambda e: e["event"] == "T034",
    )  # fmt: skip
    bets = (
        kind["request"]
        .join(
            kind["response"],
            within=seconds(2),
            merge=lambda req, resp: {**req["properties"], "status": resp["properties"]["status"]},
        )
        .filter(lambda bet: bet["status"] == "ok")
    )
    eligible = bets.join_table(
        campaigns, key=lambda bet: bet["bet_type"],
        merge=lambda bet, c: {**bet, "campaign": c["campaign"], "coupon": c["coupon"], "min": c["min_stake"],
                              "start": c["start"], "end": c["end"]},
    ).filter(lambda r: r["stake"] >= r["min"] and r["start"] <= BASE_MS < r["end"])  # fmt: skip  # race day
    cancels = kind["cancel"].map(lambda e: {"kind": "cancel", "bet_id": e["properties"]["bet_id"]})
    rewards = eligible.map(lambda r: {**r, "kind": "bet"}).merge(cancels).process(_reward, _expire)
    rewards.to_stream("bench-pmu-coupons").to_state(
        "coupons", key=lambda c: c["bet_id"], value=lambda c: None if c["kind"] == "revoke" else c
    )
    return p


# -- throughput ---------------------------------------------------------------------------------------
def _settings(data_dir: Path) -> Settings:
    Settings.config_file = None
    return Settings(data_dir=data_dir)


def prefill(settings: Settings, records: list[Envelope]) -> None:
    producer = open_log(settings).producer()
    try:
        for i in range(0, len(records), 5000):
            producer.append(list(records[i : i + 5000])).result()
    finally:
        producer.close()


class Clock:
    """Wall and CPU time of a stretch of work (CPU time is the figure to trust when other work
    shares the two cores: it is what the records cost this process, all its threads included)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def rates(self, records: int) -> dict[str, Any]:
        return {
            "records_per_s": round(records / self.wall), "records_per_cpu_s": round(records / self.cpu),
            "seconds": round(self.wall, 3), "cpu_seconds": round(self.cpu, 3),
        }  # fmt: skip


def through_runner(
    settings: Settings, make: Callable[[], Pipeline], profile: cProfile.Profile | None = None
) -> dict[str, Any]:
    """Run `make()` on the pre-filled log until every record is applied and checkpointed."""
    event_log = open_log(settings)
    admin = event_log.admin()
    ends = admin.end_offsets()
    admin.close()
    total = sum(ends.values())
    pipeline = make()
    if profile is not None:
        profile.enable()
    with Clock() as clock:
        runner = ProcessorRunner(
            pipeline, event_log, settings.processors_dir, new_run=True,
            checkpoint_interval_ms=settings.processor_checkpoint_ms, max_batch=settings.processor_max_batch,
        )  # fmt: skip
        while not runner.tasks or any(runner.tasks[p].next_offset < end for p, end in ends.items() if end):
            runner.poll(0.01)
        runner.checkpoint()
    if profile is not None:
        profile.disable()
    result = {
        "records": total, **clock.rates(total),
        "records_out": runner.stats["out"], "late": runner.stats["late"], "errors": runner.stats["errors"],
        "checkpoints": runner.checkpoints, "checkpoint_ms": settings.processor_checkpoint_ms,
    }  # fmt: skip
    runner.close()
    return result


def log_read_and_decode(settings: Settings) -> dict[str, Any]:
    """The runner's input side alone: consumer polls of max_batch records, then decode_events."""
    event_log = open_log(settings)
    consumer = event_log.consumer(f"bench-read-{time.monotonic_ns()}")
    batches: list[list[Record]] = []
    with Clock() as read:
        while batch := consumer.poll(settings.processor_max_batch, 0):
            batches.append(batch)
    consumer.close()
    total = sum(len(b) for b in batches)
    with Clock() as decode:
        for batch in batches:
            by_partition: dict[int, list[Record]] = {}
            for record in batch:
                by_partition.setdefault(record.partition, []).append(record)
            for records in by_partition.values():
                for _ in decode_events(records, event_log.log_id):
                    pass
    return {"log_read": read.rates(total), "decode_events": decode.rates(total)}


def decoded(records: list[Envelope]) -> list[tuple[str | None, Any, int]]:
    """The records as the runner hands them to tasks (same decoder), for the in-process runs."""
    fake = [Record(0, i, key, value, 0) for i, (key, value) in enumerate(records)]
    return [(key, value, ts) for key, value, ts, _ in decode_events(fake, "bench")]


def through_driver(
    make: Callable[[], Pipeline], items: list[tuple[str | None, Any, int]], partitions: int
) -> dict[str, Any]:
    driver = TestDriver(make(), partitions=partitions)
    with Clock() as clock:
        for key, value, ts in items:
            driver.send(value, key=key, timestamp=ts)
    return clock.rates(len(items))


def through_tasks(
    make: Callable[[], Pipeline], items: list[tuple[str | None, Any, int]], partitions: int
) -> dict[str, Any]:
    """Operators only: Task.process on in-memory state, outputs taken every 5000 records."""
    pipeline = make()
    for table in pipeline.tables.values():
        table.refresh(force=True)
    store = StateStore(None)
    tasks = [Task(pipeline, p, store, pipeline.tables, "bench") for p in range(partitions)]
    offsets = [0] * partitions
    out = 0
    with Clock() as clock:
        for n, (key, value, ts) in enumerate(items):
            part = 0 if key is None else zlib.crc32(key.encode()) % partitions
            tasks[part].process(key, value, ts, offsets[part])
            offsets[part] += 1
            if n % 5000 == 4999:
                out += sum(len(v) for t in tasks for v in t.take_outputs().values())
        out += sum(len(v) for t in tasks for v in t.take_outputs().values())
    return {**clock.rates(len(items)), "records_out": out}


def profile_top(profile: cProfile.Profile, limit: int = 15) -> list[str]:
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(limit)
    lines = text.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    root = str(Path(__file__).resolve().parent.parent)
    return [" ".join(line.replace(root + "/", "").split()) for line in lines[start : start + limit + 1] if line.strip()]


def _case(name: str, make: Callable[[], Pipeline], data: Callable[[], list[Envelope]], work: Path) -> dict[str, Any]:
    settings = _settings(work / name)
    prefill(settings, data())
    gc.collect()  # the generated records are gone: the runner's heap is its own
    runner = through_runner(settings, make)
    items = decoded(data())
    return {
        "runner": runner,
        "input_side": log_read_and_decode(settings),
        "test_driver": through_driver(make, items, settings.log_partitions),
        "operators_only": through_tasks(make, items, settings.log_partitions),
    }


def throughput(records: int, bets: int, work: Path, profile: str | None = None) -> dict[str, Any]:
    cases: dict[str, tuple[Callable[[], Pipeline], Callable[[int], list[Envelope]], int, int]] = {
        "stateless_filter_map": (stateless_pipeline, web_events, records, 100_000),
        "tumbling_window_count": (window_pipeline, web_events, records, 50_000),
        "pmu_join_table_state": (pmu_pipeline, pmu_frames, bets, 20_000),
    }
    out: dict[str, Any] = {}
    slowest: tuple[float, str] = (float("inf"), "")
    for name, (make, gen, size, floor) in cases.items():
        _progress(f"throughput: {name}")
        result = _case(name, make, functools.partial(gen, size), work)
        runner = result["runner"]
        if name.startswith("pmu"):
            per = bets / runner["records"]  # bets per input record
            result.update(bets=bets, floor_bets_per_s=floor)
            result["bets_per_s"] = round(runner["records_per_s"] * per)
            result["bets_per_cpu_s"] = round(runner["records_per_cpu_s"] * per)
        else:
            per = 1.0
            result["floor_records_per_s"] = floor
        result["meets_floor"] = runner["records_per_s"] * per >= floor
        result["meets_floor_on_cpu_time"] = runner["records_per_cpu_s"] * per >= floor
        out[name] = result
        ratio = runner["records_per_cpu_s"] * per / floor
        if ratio < slowest[0]:
            slowest = (ratio, name)
    name = profile or slowest[1]
    make, gen, size, _ = cases[name]
    _progress(f"throughput: profiling {name}")
    settings = _settings(work / f"{name}-profile")
    prefill(settings, gen(size // 2))
    gc.collect()
    profiler = cProfile.Profile()
    profiled = through_runner(settings, make, profiler)
    out["profile"] = {
        "pipeline": name, "records": profiled["records"],
        "note": "cProfile of the runner, half the records, on the pipeline furthest below its floor in CPU time; "
        "top 15 by tottime",
        "records_per_s_under_profiler": profiled["records_per_s"], "top": profile_top(profiler),
    }  # fmt: skip
    return out


def _progress(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")


# -- latency -----------------------------------------------------------------------------------------
LATENCY_PIPELINE = """
from headwater.processing import Pipeline

pipeline = Pipeline("latency")
(
    pipeline.source("events")
    .map(lambda e: {"req": e["properties"]["req"], "user": e["user_id"]})
    .to_stream("latency-out")
    .to_state("last_seen", key=lambda v: v["user"])
)
"""


class OutputTail(threading.Thread):
    """Tails `latency-out`, noting when each request's events were first readable."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="latency-tail", daemon=True)
        self.settings = settings
        self.stop = threading.Event()
        self.seen: list[tuple[int, float]] = []  # (request id, read time) per event

    def run(self) -> None:
        stream = open_log(self.settings).stream("latency-out")
        reader = stream.reader()
        positions = dict.fromkeys(range(stream.partitions), 0)
        try:
            while not self.stop.is_set():
                got = False
                for partition, end in reader.end_offsets().items():
                    while positions[partition] < end:
                        records = reader.read(partition, positions[partition], 5000)
                        if not records:
                            break
                        now = time.monotonic()
                        got = True
                        self.seen.extend((orjson.loads(r.value)["v"]["req"], now) for r in records)
                        positions[partition] = records[-1].offset + 1
                if not got:
                    time.sleep(0.001)
        finally:
            reader.close()


async def _post(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], head: bytes, body: bytes) -> int:
    """One HTTP/1.1 keep-alive POST on a raw connection (httpx costs ~1 ms of CPU a request: too
    much for a client sharing two cores with the server); returns the status."""
    reader, writer = conn
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    header = await reader.readuntil(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def send_load(url: str, key: str, rate: float, batch: int, seconds_: float, warmup: float) -> dict[str, Any]:
    """Paced NDJSON requests of `batch` events over 16 keep-alive connections; ack time per request."""
    acks: dict[int, float] = {}
    sends: dict[int, float] = {}
    failures = 0
    period = batch / rate
    total = int((seconds_ + warmup) / period)
    measured_from = int(warmup / period)
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /track HTTP/1.1\r\nHost: {host}:{port}\r\nx-api-key: {key}\r\n"
        "Content-Type: application/x-ndjson\r\nContent-Length: "
    ).encode()
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    started = time.monotonic()

    async def connection() -> None:
        nonlocal failures
        conn = await asyncio.open_connection(host, int(port))
        while (req := await queue.get()) is not None:
            body = b"\n".join(
                orjson.dumps({"event": "PING", "userId": f"u{(req * batch + i) % 1000}", "req": req, "i": i})
                for i in range(batch)
            )
            sent = time.monotonic()
            status = await _post(conn, head, body)
            if status != 200:
                failures += 1
            elif req >= measured_from:
                acks[req], sends[req] = time.monotonic(), sent
        conn[1].close()

    workers = [asyncio.create_task(connection()) for _ in range(16)]
    for req in range(total):
        delay = started + req * period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(req)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - started
    return {
        "acks": acks, "sends": sends, "failures": failures, "events": total * batch,
        "achieved_events_per_s": round(total * batch / elapsed), "measured_requests": total - measured_from,
    }  # fmt: skip


def _ms_quantiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 3), "p99_ms": round(q[98] * 1000, 3), "max_ms": round(values[-1] * 1000, 3)}


def latency_run(
    work: Path, checkpoint_ms: int, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    data_dir = work / f"latency-{checkpoint_ms}"
    data_dir.mkdir(parents=True)
    spec = work / "latency_pipeline.py"
    spec.write_text(LATENCY_PIPELINE)
    keys = make_keys(data_dir)
    env = child_env(data_dir, processors=json.dumps([f"{spec}:pipeline"]), processor_checkpoint_ms=checkpoint_ms)
    running = RunningHeadwater(data_dir, env, keys=keys).start()
    settings = _settings(data_dir)
    tail = OutputTail(settings)
    lookups = None
    try:
        tail.start()
        load = asyncio.run(send_load(running.url, keys["write"], args.rate, args.batch, args.latency_seconds, 2.0))
        expected = load["events"]
        deadline = time.monotonic() + 30
        while len(tail.seen) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        tail.stop.set()
        tail.join(5)
        acks, sends = load["acks"], load["sends"]
        ack_to_read = [read - acks[req] for req, read in tail.seen if req in acks]
        send_to_read = [read - sends[req] for req, read in tail.seen if req in sends]
        result = {
            "checkpoint_ms": checkpoint_ms, "target_events_per_s": args.rate,
            "achieved_events_per_s": load["achieved_events_per_s"], "events_per_request": args.batch,
            "events_sent": expected, "events_read": len(tail.seen), "failed_requests": load["failures"],
            "measured_events": len(ack_to_read), "ack_to_output": _ms_quantiles(ack_to_read),
            "send_to_output": _ms_quantiles(send_to_read),
            "negative_ack_to_output": sum(1 for v in ack_to_read if v < 0),
        }  # fmt: skip
        if checkpoint_ms == args.lookup_checkpoint_ms:
            lookups = state_lookups(running, keys["read"], settings, args.lookups)
    finally:
        tail.stop.set()
        running.stop()
    return result, lookups


# -- state lookups ------------------------------------------------------------------------------------
def state_lookups(running: RunningHeadwater, read_key: str, settings: Settings, count: int) -> dict[str, Any]:
    """p50/p99 of lookups of the `last_seen` state table (1000 keys), server otherwise idle."""
    manifest = json.loads((settings.processors_dir / "latency" / "manifest.json").read_text())
    path = settings.processors_dir / "latency" / f"state-{manifest['run']}.db"
    reader = ServedReader(path)
    keys = [f"u{i % 1000}" for i in range(count)]
    timings = []
    for key in keys:
        started = time.perf_counter()
        found = reader.get("last_seen", key)
        timings.append(time.perf_counter() - started)
        assert found is not None, key
    reader.close()
    out: dict[str, Any] = {"served_reader_get": _ms_quantiles(timings), "lookups": count}
    headers = {"Authorization": f"Bearer {read_key}"}
    with httpx.Client(base_url=running.url, timeout=10) as client:
        probe = client.get("/api/state/last_seen/u1", headers=headers)
        if probe.status_code != 200:
            out["http"] = None
            out["http_note"] = f"GET /api/state/last_seen/u1 answered {probe.status_code}: endpoint not available yet"
            return out
        timings = []
        for key in keys:
            started = time.perf_counter()
            response = client.get(f"/api/state/last_seen/{key}", headers=headers)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
        out["http"] = _ms_quantiles(timings)
        out["http_without_key_status"] = client.get("/api/state/last_seen/u1").status_code
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="events per stateless / window run")
    parser.add_argument("--bets", type=int, default=60_000, help="bets in the PMU run (about 2.05 frames each)")
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s sent over HTTP for latency")
    parser.add_argument("--batch", type=int, default=10, help="events per HTTP request for latency")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="measured seconds per latency run")
    parser.add_argument("--checkpoints", default="50,20", help="checkpoint intervals (ms) for the latency runs")
    parser.add_argument("--lookup-checkpoint-ms", type=int, default=20, help="which latency run also measures lookups")
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--profile", help="pipeline to profile (default: the furthest below its floor)")
    parser.add_argument("--skip", default="", help="comma-separated: throughput, latency")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="hw-bench-processing-") as tmp:
        work = Path(tmp)
        if "throughput" not in skip:
            result["throughput"] = throughput(args.records, args.bets, work, args.profile)
        if "latency" not in skip:
            runs = []
            for checkpoint_ms in (int(c) for c in args.checkpoints.split(",")):
                _progress(f"latency: checkpoint every {checkpoint_ms} ms")
                run, lookups = latency_run(work, checkpoint_ms, args)
                runs.append(run)
                if lookups is not None:
                    result["state_lookup"] = lookups
            result["latency"] = runs
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["anchors"] = {
        "issue": "Faust: tens of thousands of events/s per core; PyFlink Python UDFs ~120k/s per core; "
        "Quix Streams stateless ~70k msg/s on 4 vCPU",
        "quixstreams": "installable from PyPI (3.28.1 checked) but needs a Kafka broker: no head-to-head in this run",
    }
    emit("processing", result)


if __name__ == "__main__":
    main()
