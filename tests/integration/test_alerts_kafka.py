"""log_retention_risk on Kafka: the topic's own retention.ms, and the oldest record a consumer group has not read
(read from the topic at the group's committed offset), against a real broker."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from headwater.alerts.builtins import RetentionRisk
from headwater.alerts.conditions import Context
from headwater.alerts.scrape import MetricsWindow
from headwater.lake.coordination import open_engine
from headwater.log.kafka import KafkaLog
from tests.helpers import make_settings
from tests.services import KafkaBroker

pytestmark = pytest.mark.kafka


def test_retention_risk_from_topic_retention_and_committed_offsets(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    event_log = KafkaLog(kafka_broker.bootstrap, topic, partitions=2, replication_factor=1,
                         topic_config={"retention.ms": str(3_600_000)})  # fmt: skip
    producer = event_log.producer()
    producer.append([(f"k{i}".encode(), b"{}") for i in range(20)]).result(30)
    producer.close()
    consumer = event_log.consumer("lake")
    deadline = time.monotonic() + 90
    read = 0
    while read < 20:  # read everything, commit one record short on each partition
        assert time.monotonic() < deadline
        read += len(consumer.poll(100, 0.5))
    ends = event_log.admin().end_offsets()
    consumer.commit({p: end - 1 for p, end in ends.items() if end > 0})
    consumer.close()
    settings = make_settings(tmp_path, port=0, log_backend="kafka", kafka_bootstrap_servers=kafka_broker.bootstrap,
                             kafka_topic=topic, kafka_partitions=2, alert_retention_fraction=0.5)  # fmt: skip
    window = MetricsWindow(settings)  # no server runs: the rule reads the log itself
    engine = open_engine(settings.effective_catalog_uri)
    rule = RetentionRisk("log_retention_risk")
    try:
        now = time.time()
        window.scrape(now)
        assert rule.evaluate(Context(now, settings, engine, window, lambda: event_log)) == []
        assert rule.retention_s(settings, now) == 3600.0  # retention.ms of the topic, not log_retention_hours
        later = now + 1900  # the unread records are now older than half the topic's retention
        window.scrape(later)
        found = rule.evaluate(Context(later, settings, engine, window, lambda: event_log))
        assert found is not None and [f.labels for f in found] == [{"group": "lake"}]
        assert found[0].value is not None and 1890 < found[0].value < 1900 + 120
    finally:
        window.close()
        engine.dispose()
