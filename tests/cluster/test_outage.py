"""A Kafka outage seen from a collector: 503 + Retry-After while Kafka is away (never 200 for what it could not
write), health and metrics say so, and intake resumes by itself once Kafka is back; the events accepted after
the recovery reach the lake."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.support import (
    Node,
    Sender,
    batch_body,
    data_dirs,
    lake_ids,
    metric_value,
    running,
    start_all,
    wait_lake_has,
    wait_until,
)
from tests.services import KafkaBroker, PostgresServer, S3Server, cluster_settings

pytestmark = pytest.mark.cluster

LOG_UP = 'headwater_log_up{backend="kafka"}'


def partition_lag(metrics: str, partition: int) -> float | None:
    return metric_value(metrics, f'headwater_consumer_partition_lag{{group="lake",partition="{partition}"}}')


def test_kafka_outage_503_then_recovers_without_restart(
    tmp_path: Path, kafka_broker: KafkaBroker, postgres_server: PostgresServer, s3_server: S3Server
) -> None:
    settings = cluster_settings(kafka_broker, postgres_server, s3_server, f"outage-{uuid.uuid4().hex[:8]}")
    dirs, keys = data_dirs(tmp_path, ["collector", "writer"])
    collector, writer = Node("server", dirs["collector"], settings), Node("writer", dirs["writer"], settings)
    write_key, read_key = keys["write"], keys["read"]
    with running([collector, writer]):
        start_all([collector, writer])
        health = collector.health()
        assert health["log"]["backend"] == "kafka" and health["log"]["reachable"] is True, health

        before = [f"before-{i}" for i in range(100)]
        response = collector.track(batch_body(before), write_key)
        assert response.status_code == 200, response.text
        wait_lake_has(collector, read_key, set(before), timeout=90)
        metrics = wait_until("lake lag per partition in /metrics", lambda: _lag_lines(collector), timeout=60)
        assert metric_value(metrics, LOG_UP) == 1.0, metrics
        lags = [partition_lag(metrics, p) for p in range(12)]  # kafka_partitions defaults to 12
        assert all(lag is not None and lag >= 0 for lag in lags), f"per-partition lag lines: {lags}\n{metrics}"

        pid = collector.pid
        stop = threading.Event()
        # an SDK-like sender across the whole outage: batches caught by Kafka's stop get 503 (ack timeout) or 200
        sender = Sender("across", [collector], write_key, stop, pause=0.1)
        sender.give_up_after = 60
        sender.start()
        try:
            time.sleep(1)
            refused: list[str] = []
            try:
                kafka_broker.stop()
                odd_health: list[str] = []
                down = wait_until("/healthz reports Kafka unreachable", lambda: _unreachable(collector, odd_health), 60)
                assert down["log"]["backend"] == "kafka" and down["log"]["problem"], down
                assert down["status"] != "ok", down
                metrics = collector.metrics()
                assert metric_value(metrics, LOG_UP) == 0.0, metrics

                for attempt in range(6):  # with Kafka known to be down, every batch is refused
                    ids = [f"down-{attempt}-{i}" for i in range(20)]
                    response = collector.track(batch_body(ids), write_key, timeout=60)
                    assert response.status_code == 503, f"{response.status_code} while Kafka is down: {response.text}"
                    retry_after = response.headers.get("retry-after", "")
                    assert retry_after.isdigit() and int(retry_after) >= 1, dict(response.headers)
                    payload = response.json()
                    assert payload.get("success") is False and not payload.get("accepted"), payload
                    refused += ids
                    time.sleep(0.5)
                # the sender's batch in flight when Kafka stopped waits for the ack timeout (10 s) before its
                # 503: keep Kafka away until then, or an outage shorter than that is never seen by the sender
                wait_until("the sender gets 503 while Kafka is down", lambda: sender.statuses["503"] > 0, 60)
            finally:
                if not kafka_broker.running:
                    kafka_broker.start(timeout=120)

            back = time.monotonic()
            after = [f"after-{i}" for i in range(100)]
            body = batch_body(after)  # retried as is (same messageIds) until accepted
            odd: list[str] = []
            wait_until(
                "collector accepts again after Kafka's return", lambda: _accepted(collector, body, write_key, odd), 60
            )
            assert not odd, f"answers other than 200 or 503 + Retry-After after Kafka's return: {odd[:3]}"
            print(f"first 200 {time.monotonic() - back:.1f} s after Kafka was back")
            assert collector.alive and collector.pid == pid, "the collector was restarted"
            more = [f"after-more-{i}" for i in range(100)]
            response = collector.track(batch_body(more), write_key)
            assert response.status_code == 200, response.text
            stop.set()
            sender.join(90)
            assert not sender.is_alive(), "the sender never got its last batch acknowledged"

            up = wait_until("/healthz reports Kafka reachable", lambda: collector.health()["log"]["reachable"], 30)
            assert up is True
            assert metric_value(collector.metrics(), LOG_UP) == 1.0
            acked = set(before) | set(after) | set(more) | set(sender.acked)
            stored = wait_lake_has(collector, read_key, acked, timeout=120)
            wait_until("lake lag back to 0 on every partition", lambda: _lag_lines(collector, zero=True), timeout=60)
            _, duplicated = lake_ids(collector, read_key)
        finally:
            stop.set()  # the sender stops retrying whatever happened

    assert not odd_health, f"/healthz failed while Kafka was going down: {odd_health[:3]}"
    assert not sender.violations, f"answers breaking the contract during the outage: {sender.violations[:3]}"
    assert sender.statuses["503"] > 0, f"the sender never saw a 503: {dict(sender.statuses)}"
    assert not (stored & set(refused)), f"refused (503) events are in the lake: {sorted(stored & set(refused))[:5]}"
    assert not duplicated, f"stored more than once: {sorted(duplicated.items())[:5]}"


def _lag_lines(collector: Node, zero: bool = False) -> str | None:
    """/metrics once it has the lake group's lag for partition 0 (for every partition at 0 with `zero`)."""
    text = collector.metrics()
    if zero:
        return text if all(partition_lag(text, p) == 0 for p in range(12)) else None
    return text if partition_lag(text, 0) is not None else None


def _unreachable(collector: Node, odd: list[str]) -> dict[str, Any] | None:
    """/healthz once it says Kafka is unreachable; answers other than 200 are recorded in `odd`."""
    response = collector.get("/healthz")
    if response.status_code != 200:
        odd.append(f"{response.status_code} {response.text[:300]}")
        return None
    health: dict[str, Any] = response.json()
    return health if health["log"]["reachable"] is False else None


def _accepted(collector: Node, body: bytes, key: str, odd: list[str]) -> bool:
    response = collector.track(body, key, timeout=60)
    if response.status_code != 200 and (
        response.status_code != 503 or not response.headers.get("retry-after", "").isdigit()
    ):
        odd.append(f"{response.status_code} {dict(response.headers)} {response.text[:300]}")
    return response.status_code == 200
