"""Headwater's stream processors against Quix Streams, on one Kafka broker, in the same run (issue #8).

One Kafka 4 broker (KRaft, `tests.services.KafkaBroker`) holds two input topics of 4 partitions with
the same N events (default 300 000: 1000 users, page/click/page/purchase/login, 1 ms apart, keyed by
user with Kafka's murmur2 partitioner, Kafka timestamp = event time):
- `quix.in`: plain JSON events `{"event", "user_id", "timestamp", "properties": {"path", "value"}}`;
- `hw.bench-in`: the same events as processor-output records `{"k", "v", "t", "id"}`
  (`headwater.processing.records.encode_output`), so neither side does HTTP-envelope normalisation.

Two pipelines on each system: a stateless filter + map to an output topic, and a tumbling 10 s
window count by key (`.final()`) to an output topic. Quix runs with its default at-least-once
guarantee and with `processing_guarantee="exactly-once"` (both commit every 5 s, its default);
Headwater runs `ProcessorRunner` on the Kafka log backend, which is always transactional, with its
default 50 ms checkpoint interval and, for a like-for-like commit rate, with 5 s.

Each run is its own subprocess (Quix's inside the venv `.tools/quix-venv`, installed here from
bench/quix-requirements.txt when missing), timed from building the application/runner until every
input record was processed and the last commit/checkpoint is done. Reported: records/s (and the
rate from the first processed record on, without group join and setup), CPU seconds of that
stretch (all the process's threads, librdkafka's included), the whole subprocess's CPU (startup and
imports too), the broker's CPU during the run, peak RSS (VmHWM), and the outputs read back from the output
topic (read_committed) against the expected count. Every configuration runs --repeats times (default
3, rounds interleaved); the run of median records/s is reported, with every run's rates beside it.
The broker's internal topics are created before the first measured run.

    .venv/bin/python -m bench.quix_compare [--records 300000] [--repeats 3]   (about 3.5 minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUIX_VENV = ROOT / ".tools" / "quix-venv"
QUIX_PY = QUIX_VENV / "bin" / "python"
REQUIREMENTS = ROOT / "bench" / "quix-requirements.txt"
PARTITIONS = 4
USERS = 1000
WINDOW_MS = 10_000
KINDS = ("page", "click", "page", "purchase", "login")
QUIX_IN = "quix.in"
HW_PREFIX = "hw"  # Headwater's kafka_topic: streams are the topics `hw.<stream>`
HW_IN = "bench-in"
CASES = ("stateless_filter_map", "tumbling_window_count")
RUN_TIMEOUT_S = 240


# -- data (both sides) --------------------------------------------------------------------------------
def event(i: int, base_ms: int) -> tuple[str, dict[str, Any], int]:
    user, ts = f"u{i % USERS}", base_ms + i
    iso = datetime.fromtimestamp(ts / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {"event": KINDS[i % 5], "user_id": user, "timestamp": iso,
            "properties": {"path": f"/p/{i % 50}", "value": i % 100}}  # fmt: skip
    return user, body, ts


def keep(e: dict[str, Any]) -> bool:
    return e["event"] in ("page", "purchase")


def project(e: dict[str, Any]) -> dict[str, Any]:
    return {"user": e["user_id"], "path": e["properties"]["path"], "value": e["properties"]["value"]}


# -- workers (each in its own process) -----------------------------------------------------------------
def quix_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in the quix venv: only the standard library, orjson and quixstreams here."""
    from quixstreams import Application

    seen = {"n": 0}
    marks: dict[str, float] = {}
    app: Application | None = None

    def processed(_topic: str, _partition: int, _offset: int) -> None:
        seen["n"] += 1
        if seen["n"] == 1:
            marks["first"] = time.perf_counter()
        if seen["n"] >= args.records and app is not None:
            app.stop()  # the loop ends; run() then commits the checkpoint (force=True)

    wall, cpu = time.perf_counter(), time.process_time()
    app = Application(
        broker_address=args.bootstrap, consumer_group=args.name, auto_offset_reset="earliest",
        processing_guarantee=args.guarantee, state_dir=args.work, loglevel="WARNING",
        on_message_processed=processed,
    )  # fmt: skip
    source = app.topic(QUIX_IN, value_deserializer="json")
    out = app.topic(args.output, value_serializer="json")
    sdf = app.dataframe(source)
    if args.case == "stateless_filter_map":
        sdf = sdf.filter(keep).apply(project)
    else:
        sdf = sdf.tumbling_window(WINDOW_MS).count().final()
    sdf.to_topic(out)
    app.run(timeout=30)  # the timeout only guards against input that never comes
    return _timed(args.records, seen["n"], wall, cpu, marks.get("first"))


def headwater_worker(args: argparse.Namespace) -> dict[str, Any]:
    from headwater.core.settings import Settings
    from headwater.log import open_log
    from headwater.processing import Pipeline, seconds
    from headwater.processing.runtime import ProcessorRunner

    Settings.config_file = None
    settings = Settings(
        data_dir=Path(args.work), log_backend="kafka", kafka_bootstrap_servers=args.bootstrap, kafka_topic=HW_PREFIX,
        kafka_partitions=PARTITIONS, kafka_replication_factor=1,
    )  # fmt: skip
    event_log = open_log(settings)
    admin = event_log.stream(HW_IN).admin()
    ends = admin.end_offsets()
    admin.close()
    pipeline = Pipeline(args.name)
    if args.case == "stateless_filter_map":
        pipeline.source(HW_IN).filter(keep).map(project).to_stream(args.output)
    else:
        pipeline.source(HW_IN).tumbling_window(seconds(10)).count().final().to_stream(args.output)
    first: float | None = None
    deadline = time.monotonic() + RUN_TIMEOUT_S - 30
    wall, cpu = time.perf_counter(), time.process_time()
    runner = ProcessorRunner(
        pipeline, event_log, settings.processors_dir, new_run=True,
        checkpoint_interval_ms=args.checkpoint_ms, max_batch=settings.processor_max_batch,
    )  # fmt: skip

    def behind() -> bool:
        tasks = runner.tasks
        return any(p not in tasks or tasks[p].next_offset < end for p, end in ends.items() if end)

    while behind() and time.monotonic() < deadline:
        if runner.poll(0.01) and first is None:
            first = time.perf_counter()
    runner.checkpoint()
    done = sum(min(max(t.next_offset, 0), ends.get(p, 0)) for p, t in runner.tasks.items())
    result = _timed(sum(ends.values()), done, wall, cpu, first)
    runner.close()
    return result


def _timed(total: int, consumed: int, wall: float, cpu: float, first: float | None) -> dict[str, Any]:
    end, cpu = time.perf_counter(), time.process_time() - cpu
    seconds = end - wall
    steady = (consumed - 1) / (end - first) if first is not None and end > first and consumed > 1 else None
    return {
        "records": total, "consumed": consumed, "complete": consumed >= total,
        "seconds": round(seconds, 3), "records_per_s": round(consumed / seconds),
        "setup_s": round(first - wall, 3) if first is not None else None,
        "records_per_s_from_first_record": round(steady) if steady else None,
        "cpu_seconds": round(cpu, 3), "records_per_cpu_s": round(consumed / cpu) if cpu else None,
        "peak_rss_mib": _peak_rss_mib(),
    }  # fmt: skip


def _peak_rss_mib() -> float | None:
    """VmHWM: the high-water mark of this process's own memory map (ru_maxrss would start from the
    parent's peak, inherited through fork)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


# -- the parent ----------------------------------------------------------------------------------------
def _progress(text: str) -> None:
    print(f"[quix_compare] {text}", file=sys.stderr, flush=True)


def _pinned_version() -> str:
    for line in REQUIREMENTS.read_text().splitlines():
        if line.startswith("quixstreams=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit(f"{REQUIREMENTS} pins no quixstreams version")


def _quix_version() -> str | None:
    if not QUIX_PY.exists():
        return None
    probe = (
        "import quixstreams, confluent_kafka; "
        "print(quixstreams.__version__, confluent_kafka.__version__, confluent_kafka.libversion()[0])"
    )
    result = subprocess.run([str(QUIX_PY), "-c", probe], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_quix() -> dict[str, str]:
    """The quix venv with the pinned version (created or brought up to the requirements file)."""
    found = _quix_version()
    if found is None or found.split()[0] != _pinned_version():
        _progress(f"installing Quix Streams {_pinned_version()} into {QUIX_VENV}")
        if not QUIX_PY.exists():
            subprocess.run(["python3", "-m", "venv", str(QUIX_VENV)], check=True)
        pip = [str(QUIX_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)]
        subprocess.run(pip, check=True)
        found = _quix_version()
        if found is None:
            raise SystemExit(f"Quix Streams did not install into {QUIX_VENV}")
    quix, client, librdkafka = found.split()
    return {"quixstreams": quix, "quix_confluent_kafka": client, "quix_librdkafka": librdkafka}


def _base_ms() -> int:
    """A day ago, on a window boundary: Kafka 4 refuses timestamps more than an hour ahead and
    deletes segments older than a week."""
    return (int(time.time() * 1000) - 86_400_000) // WINDOW_MS * WINDOW_MS


def fill(bootstrap: str, records: int, base_ms: int) -> None:
    """Both input topics, with one producer (same partitioner, batching and compression)."""
    import orjson
    from confluent_kafka import Producer

    from headwater.processing.records import encode_output

    producer = Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20, "acks": "all",
         "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000}
    )  # fmt: skip
    for i in range(records):
        user, body, ts = event(i, base_ms)
        key = user.encode()
        producer.produce(QUIX_IN, orjson.dumps(body), key, timestamp=ts)
        producer.produce(f"{HW_PREFIX}.{HW_IN}", encode_output(user, body, ts, f"in-{i}")[1], key, timestamp=ts)
        if i % 20_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the input records were not all acknowledged")


def warm_up(broker: Any) -> None:
    """Create the broker's internal topics (__consumer_offsets on the first group commit,
    __transaction_state on the first transactional producer) before any measured run, which would
    otherwise pay for them alone."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-warm-up"})
    consumer.commit(offsets=[TopicPartition(QUIX_IN, 0, 0)], asynchronous=False)
    consumer.close()
    broker.create_topic("bench-warm-up", 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "bench-warm-up"})
    producer.init_transactions(60)
    producer.begin_transaction()
    producer.produce("bench-warm-up", b"{}")
    producer.commit_transaction(60)


def expected(records: int, base_ms: int) -> dict[str, Any]:
    """What each pipeline should output. Windows close on stream time: per key for Quix's default
    `.final()` (closing_strategy="key"), per partition for Headwater (see processing/windows.py)."""
    from headwater.log.kafka import murmur2

    part = {f"u{u}": (murmur2(f"u{u}".encode()) & 0x7FFFFFFF) % PARTITIONS for u in range(USERS)}
    counts: dict[tuple[str, int], int] = {}
    key_time: dict[str, int] = {}
    part_time: dict[int, int] = {}
    kept = 0
    for i in range(records):
        user, body, ts = event(i, base_ms)
        kept += keep(body)
        start = ts - ts % WINDOW_MS
        counts[(user, start)] = counts.get((user, start), 0) + 1
        key_time[user] = max(key_time.get(user, 0), ts)
        part_time[part[user]] = max(part_time.get(part[user], 0), ts)

    def closed(time_of: Any) -> dict[str, int]:
        done = [n for (user, start), n in counts.items() if start + WINDOW_MS <= time_of(user)]
        return {"outputs": len(done), "count_sum": sum(done)}

    return {
        "stateless_filter_map": {"outputs": kept},
        "tumbling_window_count": {
            "quix": closed(lambda user: key_time[user]),
            "headwater": closed(lambda user: part_time[part[user]]),
        },
    }


def read_outputs(bootstrap: str, topic: str) -> dict[str, Any]:
    """Committed records of `topic` (read_committed), and the sum of window counts if any."""
    import orjson
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-read-{time.monotonic_ns()}", "enable.auto.commit": False,
         "enable.partition.eof": True, "isolation.level": "read_committed"}
    )  # fmt: skip
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    pending, outputs, count_sum = set(meta.partitions), 0, 0
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(10_000, 1.0):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                continue
            outputs += 1
            value = orjson.loads(message.value() or b"{}")
            value = value.get("v", value)  # Headwater's {"k","v","t","id"}
            if "start" in value:
                count_sum += value["value"]
    consumer.close()
    return {"outputs": outputs, "count_sum": count_sum} if count_sum else {"outputs": outputs}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(
    broker: Any, system: str, case: str, variant: str, work: Path, records: int, checkpoint_ms: int, rep: int
) -> dict[str, Any]:
    name = f"{system}-{case}-{variant}-{rep}".replace("_", "-")
    output = f"{name}-out"
    workdir = work / name
    workdir.mkdir(parents=True)
    common = ["--case", case, "--bootstrap", broker.bootstrap, "--records", str(records), "--name", name,
              "--output", output, "--work", str(workdir)]  # fmt: skip
    if system == "quix":
        broker.create_topic(output, PARTITIONS)
        command = [str(QUIX_PY), str(Path(__file__).resolve()), "--worker", "quix", "--guarantee", variant, *common]
        out_topic = output
    else:
        command = [sys.executable, "-m", "bench.quix_compare", "--worker", "headwater",
                   "--checkpoint-ms", str(checkpoint_ms), *common]  # fmt: skip
        out_topic = f"{HW_PREFIX}.{output}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEADWATER_", "Quix__"))}
    load = [round(x, 2) for x in os.getloadavg()]
    broker_before = _cpu_s(broker.proc.pid)
    log_path = workdir / "worker.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log_file)
        killer = threading.Timer(RUN_TIMEOUT_S, proc.kill)
        killer.start()
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: the child's CPU time comes with it
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    broker_cpu = _cpu_s(broker.proc.pid) - broker_before
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{out[-2000:]}\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    result.update(
        process_cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3), broker_cpu_seconds=round(broker_cpu, 3),
        load_average_before=load,
    )  # fmt: skip
    if system == "headwater":
        result["checkpoint_ms"] = checkpoint_ms
    result["output"] = read_outputs(broker.bootstrap, out_topic)
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median records/s, with every run's rates beside it."""
    ranked = sorted(runs, key=lambda r: r["records_per_s"])
    out = dict(ranked[(len(ranked) - 1) // 2])
    for field in ("records_per_s", "records_per_s_from_first_record", "records_per_cpu_s"):
        out[f"{field}_all_runs"] = [r[field] for r in runs]
    out["output_as_expected_all_runs"] = [r["output"] for r in runs]
    return out


VARIANTS = (  # (label, system, variant, Headwater checkpoint interval)
    ("quix_at_least_once", "quix", "at-least-once", 0),
    ("quix_exactly_once", "quix", "exactly-once", 0),
    ("headwater_exactly_once", "headwater", "eos-50ms", 50),
    ("headwater_exactly_once_checkpoint_5s", "headwater", "eos-5s", 5000),
)

UNFAIR = [
    "librdkafka differs: quixstreams 3.28 requires confluent-kafka < 2.13 (librdkafka 2.12), Headwater runs 2.16.",
    "Headwater's input records carry {k, v, t, id} around the event (about 40 bytes more to read and parse "
    "per record) and its outputs are wrapped the same way; Quix reads and writes the bare JSON event.",
    "Output producers keep each system's defaults: Headwater compresses with lz4 (linger 5 ms), Quix sends "
    "uncompressed (librdkafka's defaults); on one host compression only costs CPU.",
    "Commit cadence differs by default: Headwater checkpoints every 50 ms (one Kafka transaction each, for "
    "latency), Quix commits every 5 s; the headwater_exactly_once_checkpoint_5s runs match Quix's interval.",
    "State stores differ: Quix keeps window state in RocksDB (rocksdict), Headwater in SQLite; both write "
    "a changelog topic. Quix's default .final() closes windows on per-key stream time, Headwater on "
    "per-partition stream time (same outputs for this data).",
    "Quix's stop condition adds an on_message_processed callback per record (one Python call); Headwater's "
    "loop checks task offsets after each batch.",
    "One Kafka broker shares the machine's cores with the measured process; broker CPU is reported per run.",
]


def _headwater_versions() -> dict[str, str]:
    import confluent_kafka

    jars = sorted((ROOT / ".tools" / "jars" / "kafka").glob("kafka-clients-*.jar"))
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr.splitlines()
    return {
        "headwater_confluent_kafka": str(confluent_kafka.__version__),
        "headwater_librdkafka": confluent_kafka.libversion()[0],
        "kafka": jars[0].stem.removeprefix("kafka-clients-") if jars else "unknown",
        "java": java[0] if java else "unknown",
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=int(os.environ.get("BENCH_QUIX_RECORDS", "300000")))
    parser.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_QUIX_REPEATS", "3")))
    parser.add_argument("--worker", choices=("quix", "headwater"), help=argparse.SUPPRESS)
    for option in ("--case", "--bootstrap", "--name", "--output", "--work", "--guarantee"):
        parser.add_argument(option, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint-ms", type=int, default=50, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = quix_worker if args.worker == "quix" else headwater_worker
        sys.stdout.write(json.dumps(worker(args)) + "\n")
        return

    sys.path.insert(0, str(ROOT))
    from tests.services import KafkaBroker

    from bench.common import emit

    started = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    versions = {**ensure_quix(), **_headwater_versions()}
    base_ms = _base_ms()
    results: dict[str, Any] = {case: {} for case in CASES}
    with tempfile.TemporaryDirectory(prefix="hw-bench-quix-") as tmp:
        work = Path(tmp)
        broker = KafkaBroker(work / "kafka")
        try:
            broker.start(timeout=90)
            broker.create_topic(QUIX_IN, PARTITIONS)
            broker.create_topic(f"{HW_PREFIX}.{HW_IN}", PARTITIONS)
            _progress(f"writing {args.records} events to each input topic")
            filled = time.monotonic()
            fill(broker.bootstrap, args.records, base_ms)
            fill_s = time.monotonic() - filled
            warm_up(broker)
            runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for rep in range(args.repeats):  # interleaved, so drift in the machine's load spreads over all
                for case in CASES:
                    for label, system, variant, checkpoint_ms in VARIANTS:
                        _progress(f"round {rep + 1}/{args.repeats} {case}: {label}")
                        run = run_one(broker, system, case, variant, work, args.records, checkpoint_ms, rep)
                        runs.setdefault((case, label), []).append(run)
            for (case, label), found in runs.items():
                results[case][label] = median_run(found)
        finally:
            with contextlib.suppress(Exception):
                broker.stop()
    want = expected(args.records, base_ms)
    for case in CASES:
        for label, run in results[case].items():
            system = label.split("_", 1)[0]
            goal = want[case] if case == "stateless_filter_map" else want[case][system]
            got = run.pop("output_as_expected_all_runs")
            run["output_as_expected"] = all(output == goal for output in got)
    emit(
        "quix_compare",
        {
            "setup": (
                f"1 Kafka broker (KRaft, -Xmx512m) on this machine; input topics of {PARTITIONS} partitions with "
                f"{args.records} JSON events of {USERS} users, 1 ms apart, keyed by user; each run a fresh consumer "
                "group in its own subprocess, timed from building the app/runner to the last commit after the "
                "last input record; the median of the runs by records/s"
            ),
            "versions": versions,
            "records": args.records,
            "input_fill_s": round(fill_s, 1),
            "expected_outputs": want,
            **results,
            "unfair": UNFAIR,
            "load_average_at_start": load_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "total_s": round(time.monotonic() - started, 1),
        },
    )


if __name__ == "__main__":
    if "--worker" in sys.argv and "quix" in sys.argv:
        here = str(Path(__file__).resolve().parent)  # bench/ must not shadow modules (bench/kafka.py)
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    main()
