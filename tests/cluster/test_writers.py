"""Two lake writers really share the topic's partitions (Kafka's consumer group `lake`), and when one is killed
the survivor takes its partitions over: events sent afterwards (each batch sent twice, like an SDK retry) land
exactly once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.cluster.support import (
    Node,
    batch_body,
    data_dirs,
    group_members,
    lake_ids,
    running,
    send_until_acked,
    start_all,
    wait_lake_has,
    wait_until,
)
from tests.services import KafkaBroker, PostgresServer, S3Server, cluster_settings

pytestmark = pytest.mark.cluster

PARTITIONS = 12  # kafka_partitions' default


def _members(bootstrap: str, count: int) -> list[tuple[str, list[int]]] | None:
    """The group's members once there are `count` of them, each owning partitions, all partitions owned."""
    members = group_members(bootstrap)
    owned = sorted(p for _, partitions in members for p in partitions)
    if len(members) == count and all(partitions for _, partitions in members) and owned == list(range(PARTITIONS)):
        return members
    return None


def test_two_writers_share_partitions_and_the_survivor_takes_over(
    tmp_path: Path, kafka_broker: KafkaBroker, postgres_server: PostgresServer, s3_server: S3Server
) -> None:
    settings = {
        **cluster_settings(kafka_broker, postgres_server, s3_server, f"writers-{uuid.uuid4().hex[:8]}"),
        "query_max_rows": 1_000_000,
    }
    dirs, keys = data_dirs(tmp_path, ["collector", "writer1", "writer2"])
    collector = Node("server", dirs["collector"], settings)
    writers = [Node("writer", dirs[name], settings) for name in ("writer1", "writer2")]
    write_key, read_key = keys["write"], keys["read"]
    with running([collector, *writers]):
        start_all([collector, *writers])
        members = wait_until("both writers own partitions", lambda: _members(kafka_broker.bootstrap, 2), 90)
        assert all(writer.alive for writer in writers), "a writer died (its group membership outlives it for 10 s)"
        first, second = (set(partitions) for _, partitions in members)
        assert not first & second, f"a partition owned twice: {members}"

        sent: set[str] = set()
        for batch in range(4):  # 400 events over ~200 users: every partition gets some
            ids = [f"shared-{batch}-{i}" for i in range(100)]
            send_until_acked([collector], batch_body(ids), write_key)
            sent.update(ids)
        wait_lake_has(collector, read_key, sent, timeout=90)
        members = group_members(kafka_broker.bootstrap)
        assert len(members) == 2, f"a writer left the group while both were running: {members}"
        assert all(writer.alive for writer in writers), "a writer died"

        ids = [f"buffered-{i}" for i in range(100)]  # likely still in writer2's buffer when it dies
        send_until_acked([collector], batch_body(ids), write_key)
        sent.update(ids)
        writers[1].kill9()
        killed = time.monotonic()
        for batch in range(4):
            ids = [f"after-{batch}-{i}" for i in range(100)]
            body = batch_body(ids)
            send_until_acked([collector], body, write_key)
            send_until_acked([collector], body, write_key)  # a retry: same messageIds, stored once
            sent.update(ids)
        wait_until("the survivor owns every partition", lambda: _members(kafka_broker.bootstrap, 1), 90)
        stored = wait_lake_has(collector, read_key, sent, timeout=120)
        print(f"every event stored {time.monotonic() - killed:.1f} s after the kill")
        time.sleep(2)  # a late duplicate would land now
        stored, duplicated = lake_ids(collector, read_key)
        total = collector.sql("SELECT count(*) FROM events", read_key)[0][0]
        assert writers[0].alive, "the surviving writer died"

    assert not duplicated, f"{len(duplicated)} events stored more than once, e.g. {sorted(duplicated.items())[:5]}"
    assert stored == sent, f"missing {sorted(sent - stored)[:5]}, unexpected {sorted(stored - sent)[:5]}"
    assert total == len(sent), f"{total} rows for {len(sent)} events"
