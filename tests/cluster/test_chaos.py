"""Chaos on a Kafka + PostgreSQL + S3 deployment under concurrent load: 2 collectors and 2 lake writers on one
topic, catalog and warehouse; kill -9 a collector, kill -9 a writer mid-commit, restart Kafka, stop and start
PostgreSQL. Afterwards every acknowledged event is in the lake exactly once, and no answer claimed to accept
what it did not."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster.support import (
    Node,
    Sender,
    data_dirs,
    kill_while_committing,
    lake_ids,
    lake_lag,
    running,
    start_all,
    wait_lake_has,
    wait_until,
)
from tests.services import KafkaBroker, PostgresServer, S3Server, cluster_settings

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SENDERS, SENDER_PAUSE = 3, 0.2  # each sender: a 50-event batch, then this pause: a few hundred events/s in all
TUNING = {
    "query_max_rows": 5_000_000,  # the checks read every event id
    "maintenance_interval_s": 2,  # compaction and snapshot expiry run during the chaos, racing the appends
    "compact_min_files": 8,
}


def test_chaos_every_acknowledged_event_exactly_once(
    tmp_path: Path, kafka_broker: KafkaBroker, postgres_server: PostgresServer, s3_server: S3Server
) -> None:
    settings = {**cluster_settings(kafka_broker, postgres_server, s3_server, f"chaos-{uuid.uuid4().hex[:8]}"), **TUNING}
    dirs, keys = data_dirs(tmp_path, ["collector1", "collector2", "writer1", "writer2"])
    read_key = keys["read"]
    collectors = [Node("server", dirs[name], settings) for name in ("collector1", "collector2")]
    writers = [Node("writer", dirs[name], settings) for name in ("writer1", "writer2")]
    nodes = collectors + writers
    timeline: list[str] = []
    began = time.monotonic()

    def note(what: str) -> None:
        acked = sum(len(sender.acked) for sender in senders)
        timeline.append(f"{time.monotonic() - began:6.1f}s {what} ({acked} events acknowledged so far)")
        print(timeline[-1], flush=True)  # shown by pytest when the test fails

    def load(seconds: float) -> None:
        """Let the senders run; a process that died on its own is restarted (as a process manager would) and
        recorded: the test fails on it at the end."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for node in nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    note(f"{node.name} exited on its own with {node.proc.returncode}; restarting it")
                    node.check_alive()
                    node.spawn()
            time.sleep(0.2)

    stop = threading.Event()
    senders = [Sender(f"s{i}", collectors, keys["write"], stop, pause=SENDER_PAUSE) for i in range(SENDERS)]
    for sender in senders:
        sender.give_up_after = 60  # once everything is back a batch is acknowledged at once
    with running(nodes):
        try:
            start_all(nodes)
            note("2 collectors and 2 writers ready")
            for sender in senders:
                sender.start()
            load(4)

            collectors[0].kill9()
            note("kill -9 collector1")
            load(2)
            collectors[0].start()
            note("collector1 restarted")
            load(3)

            note(kill_while_committing(writers[0], s3_server.port))
            load(1)
            writers[0].start()
            note("writer1 restarted")
            load(3)

            note("restarting Kafka")
            kafka_broker.restart(timeout=120)
            note("Kafka back")
            load(4)

            postgres_server.stop()
            note("PostgreSQL stopped")
            load(6)
            postgres_server.start()
            note("PostgreSQL started")
            load(5)
        finally:
            stop.set()
            if not kafka_broker.running:
                kafka_broker.start(timeout=120)
            if not postgres_server.running:
                postgres_server.start()
        for sender in senders:
            sender.join(90)
        note("senders done")
        assert not any(sender.is_alive() for sender in senders), "a sender is still retrying"
        load(0.5)  # a process that died during the last phase is restarted for the checks

        acked = {m for sender in senders for m in sender.acked}
        sent = set().union(*(sender.sent for sender in senders))
        assert len(acked) > 2000, f"load too small to mean anything: {len(acked)} events acknowledged"
        reader = collectors[1]
        topic = str(settings["kafka_topic"])
        wait_until("writers caught up (lake lag 0)", lambda: lake_lag(kafka_broker.bootstrap, topic) == 0, 120, 1.0)
        wait_lake_has(reader, read_key, acked, timeout=120)
        note("lake holds every acknowledged event")
        time.sleep(3)  # anything still being written (a late duplicate) lands before the final look
        stored, duplicated = wait_until("final look at the lake", lambda: lake_ids(collectors[0], read_key), 60)
        deaths = {n.name: f"exit codes {n.unexpected_exits}\n{n.log_text()}" for n in nodes if n.unexpected_exits}

    answers = sum((sender.statuses for sender in senders), Counter())
    report = "\n".join(timeline) + f"\nanswers: {dict(answers)}, acknowledged {len(acked)} events"
    print(f"answers: {dict(answers)}, acknowledged {len(acked)} events")
    assert not duplicated, f"{len(duplicated)} events stored more than once, e.g. {sorted(duplicated.items())[:5]}"
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged events missing, e.g. {sorted(missing)[:5]}"
    assert stored <= sent, f"events never sent are in the lake: {sorted(stored - sent)[:5]}"
    problems = []  # the other failures, all reported at once
    violations = [v for sender in senders for v in sender.violations]
    if violations:
        problems.append(f"{len(violations)} answers broke the collector's contract, e.g. {violations[:3]}")
    unacked = [m for sender in senders for m in sender.unacked]
    if unacked:
        problems.append(f"{len(unacked)} events never acknowledged within 60 s once everything was back")
    for node in collectors:
        if node.query_errors:
            problems.append(f"POST /api/query on {node.name} failed once everything was back: {node.query_errors[:3]}")
    problems += [f"{name} exited on its own: {what}" for name, what in deaths.items()]
    assert not problems, "\n".join(problems) + f"\n{report}"
