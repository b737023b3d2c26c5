"""Sources: records/s from a file drop, a Kafka topic and a RabbitMQ queue into the embedded log.

Each source runs through the real `SourceRunner` (read, decode, map, durable append with
idempotency keys, acknowledge upstream) in this process, on a log of its own. The clock runs from
the runner's creation until everything upstream is acknowledged. Upstream data is prepared first
and not timed: a file of NDJSON lines; a Kafka topic (4 partitions) on a broker started here from
Maven Central jars; a RabbitMQ queue on Debian's rabbitmq-server started here. Rates are per wall
second and per CPU second of this process (the steadier figure when other work shares the cores).
PMU's COBOL frames over RabbitMQ into a table of their own: the runner and the lander timed apart, then
the time from publishing one frame to SQL returning its row, on a real `headwater up`.

    .venv/bin/python -m bench.sources [--lines 10000000] [--kafka 500000] [--rabbit 300000]
                                      [--pmu 200000] [--only files,kafka,rabbitmq,pmu]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from tests.helpers import make_settings

from bench.common import ROOT, emit
from headwater.log.sqlite import SqliteLog
from headwater.sources.runner import SourceRunner


def _record(i: int) -> bytes:
    return orjson.dumps(
        {"event": ("view", "click", "buy")[i % 3], "userId": f"u{i % 50_000}", "timestamp": "2026-11-26T10:00:00Z",
         "page": f"/p/{i % 977}", "amount": i % 100, "n": i}
    )  # fmt: skip


def _run(data_dir: Path, expected: int, **source: Any) -> dict[str, Any]:
    settings = make_settings(data_dir, sources=[{"name": "bench", "batch_size": 5_000, **source}])
    event_log = SqliteLog.from_settings(settings)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    runner = SourceRunner(settings, settings.sources[0], event_log)
    handled = idle = 0
    while handled < expected or idle < 2:
        n = runner.step(0.2)
        handled += n
        idle = 0 if n else idle + 1
        if idle > 50:
            break
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    status = runner.status
    runner.close()
    return {
        "records": handled, "appended": status.appended, "rejected": status.rejected, "seconds": round(wall, 2),
        "records_per_s": round(handled / wall), "records_per_cpu_s": round(handled / cpu),
    }  # fmt: skip


def bench_files(work: Path, lines: int) -> dict[str, Any]:
    drop = work / "drop"
    drop.mkdir()
    path = drop / "events.ndjson"
    with path.open("wb") as out:
        for start in range(0, lines, 100_000):
            out.write(b"\n".join(_record(i) for i in range(start, min(lines, start + 100_000))) + b"\n")
    past = time.time() - 5
    os.utime(path, (past, past))
    result = _run(work / "data", lines, kind="files", format="ndjson", path=str(drop))
    return {"file_bytes": path.stat().st_size, **result}


def bench_kafka(work: Path, records: int) -> dict[str, Any]:
    from confluent_kafka import Producer
    from tests.services import KafkaBroker

    broker = KafkaBroker(work / "kafka").start()
    try:
        broker.create_topic("clicks", partitions=4)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "compression.type": "lz4"})
        for i in range(records):
            while True:
                try:
                    producer.produce("clicks", _record(i), key=str(i % 50_000))
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.flush(60)
        return _run(work / "data", records, kind="kafka", format="json", bootstrap_servers=broker.bootstrap,
                    topic="clicks")  # fmt: skip
    finally:
        broker.stop()


def bench_rabbitmq(work: Path, records: int) -> dict[str, Any]:
    import pika
    from tests.services import RabbitServer

    server = RabbitServer(work / "rabbit").start()
    try:
        connection = pika.BlockingConnection(server.parameters())
        channel = connection.channel()
        channel.queue_declare("clicks", durable=True)
        for i in range(records):
            properties = pika.BasicProperties(message_id=f"m{i}", delivery_mode=2)
            channel.basic_publish("", "clicks", _record(i), properties)
        while channel.queue_declare("clicks", passive=True).method.message_count < records:
            time.sleep(0.2)
        connection.close()
        return _run(work / "data", records, kind="rabbitmq", format="json", url=server.url, queue="clicks")
    finally:
        server.close()


def _pmu() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("pmu_frames", ROOT / "examples" / "pmu_frames" / "frames.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_pmu(work: Path, records: int, latency_samples: int = 30) -> dict[str, Any]:
    """PMU frames (COBOL, EBCDIC) from a RabbitMQ queue through the runner into the feed of a table of
    their own (the lander, as `headwater up` runs it, is timed apart); then, on a real `headwater up`,
    the time from publishing one frame to its row being returned by SQL."""
    import json

    import httpx
    import pika
    from tests.services import RabbitServer

    from bench.common import RunningHeadwater, child_env, make_keys
    from headwater.lake.tables import open_catalog
    from headwater.sources.lander import SourceLander

    frames_lib = _pmu()
    cobol = {**frames_lib.DECODER_OPTIONS}
    base = ROOT / "examples" / "pmu_frames"
    cobol["header_copybook"] = str(base / cobol["header_copybook"])
    cobol["copybooks"] = {k: str(base / v) for k, v in cobol["copybooks"].items()}
    server = RabbitServer(work / "rabbit").start()
    try:
        frames = frames_lib.generate(records, seed=5)
        connection = pika.BlockingConnection(server.parameters())
        channel = connection.channel()
        channel.queue_declare("frames", durable=True)
        for i, frame in enumerate(frames):
            channel.basic_publish("", "frames", frame, pika.BasicProperties(message_id=f"f{i}", delivery_mode=2))
        while channel.queue_declare("frames", passive=True).method.message_count < records:
            time.sleep(0.2)
        connection.close()
        source = {"kind": "rabbitmq", "format": "cobol", "url": server.url, "queue": "frames", "table": "frames",
                  "cobol": cobol}  # fmt: skip
        result = _run(work / "data", records, **source)
        settings = make_settings(work / "data", sources=[{"name": "bench", **source}])
        lander = SourceLander(open_catalog(settings), SqliteLog.from_settings(settings), settings.sources[0])
        cpu0, wall0 = time.process_time(), time.perf_counter()
        landed = 0
        while n := lander.poll(timeout_s=0.5, max_records=20_000):
            landed += n
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        lander.close()
        result["lander"] = {"rows": landed, "rows_per_s": round(landed / wall), "rows_per_cpu_s": round(landed / cpu)}

        data_dir = work / "up"
        settings_env = child_env(data_dir, sources=json.dumps([{"name": "pmu", "max_wait_ms": 20, **{
            **source, "queue": "live"}}]))  # fmt: skip
        connection = pika.BlockingConnection(server.parameters())
        channel = connection.channel()
        channel.queue_declare("live", durable=True)
        hw = RunningHeadwater(data_dir, settings_env, keys=make_keys(data_dir)).start()
        try:
            bets = frames_lib.bet_frames(latency_samples + 1, seed=9)
            latencies = []
            for i, frame in enumerate(bets):
                started = time.perf_counter()
                channel.basic_publish("", "live", frame, pika.BasicProperties(message_id=f"l{i}", delivery_mode=2))
                while True:
                    answer = httpx.post(
                        hw.url + "/api/query",
                        json={"sql": f"SELECT count(*) FROM frames WHERE _source_id = 'l{i}'"},
                        headers={"x-api-key": hw.keys["read"]},
                        timeout=10,
                    )
                    if answer.status_code == 200 and answer.json()["rows"] == [[1]]:
                        break
                    time.sleep(0.01)
                if i:  # the first creates the table
                    latencies.append(time.perf_counter() - started)
            latencies.sort()
            result["publish_to_sql_s"] = {
                "samples": len(latencies), "p50": round(latencies[len(latencies) // 2], 3),
                "p95": round(latencies[int(len(latencies) * 0.95) - 1], 3), "max": round(latencies[-1], 3),
            }  # fmt: skip
        finally:
            hw.stop()
            connection.close()
        return result
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000_000, help="NDJSON lines in the dropped file")
    parser.add_argument("--kafka", type=int, default=500_000, help="records on the Kafka topic")
    parser.add_argument("--rabbit", type=int, default=300_000, help="messages on the RabbitMQ queue")
    parser.add_argument("--pmu", type=int, default=200_000, help="PMU frames on the RabbitMQ queue")
    parser.add_argument("--only", default="files,kafka,rabbitmq,pmu")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"hw-bench-{name}-") as tmp:
            work = Path(tmp)
            if name == "files":
                results["file_drop_ndjson"] = bench_files(work, args.lines)
            elif name == "kafka":
                results["kafka_topic_json"] = bench_kafka(work, args.kafka)
            elif name == "rabbitmq":
                results["rabbitmq_queue_json"] = bench_rabbitmq(work, args.rabbit)
            elif name == "pmu":
                results["rabbitmq_pmu_cobol_frames_to_table"] = bench_pmu(work, args.pmu)
            print(name, results, flush=True)
    emit("sources", {"results": results})


if __name__ == "__main__":
    main()
