from __future__ import annotations

import time
from pathlib import Path

from headwater.log.sqlite import SqliteLog, decode_batch, encode_batch


def open_log(tmp_path: Path, partitions: int = 4) -> SqliteLog:
    return SqliteLog(tmp_path / "events.db", tmp_path / "offsets.db", partitions)


def drain(consumer, timeout: float = 0.05) -> list:  # type: ignore[no-untyped-def]
    out = []
    while batch := consumer.poll(10_000, timeout):
        out.extend(batch)
    return out


def test_batch_codec_roundtrip() -> None:
    records = [(b"k", b"v1"), (None, b""), (b"", b"x" * 1000)]
    assert decode_batch(encode_batch(records)) == records


def test_offsets_are_dense_per_partition_and_keyed(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    producer = log.producer()
    futures = [
        producer.append([(f"user{i % 7}".encode(), f"v{i}".encode()) for i in range(j, j + 10)])
        for j in range(0, 200, 10)
    ]
    assert sum(f.result().written for f in futures) == 200
    producer.close()
    records = drain(log.consumer("g"))
    assert len(records) == 200
    by_partition: dict[int, list[int]] = {}
    key_partition: dict[bytes | None, int] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record.offset)
        assert key_partition.setdefault(record.key, record.partition) == record.partition
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))
    # order within a key is the append order
    user0 = [int(r.value[1:]) for r in records if r.key == b"user0"]
    assert user0 == sorted(user0)


def test_consumer_group_resumes_from_committed(tmp_path: Path) -> None:
    log = open_log(tmp_path, partitions=1)
    producer = log.producer()
    producer.append([(b"k", str(i).encode()) for i in range(10)]).result()
    consumer = log.consumer("g")
    first = consumer.poll(4, 0)
    assert [r.offset for r in first][:4] == [0, 1, 2, 3]
    consumer.commit({0: 4})
    consumer.close()
    again = log.consumer("g")
    assert [r.offset for r in drain(again)] == list(range(4, 10))
    other = log.consumer("other")  # groups are independent
    assert len(drain(other)) == 10
    admin = log.admin()
    assert admin.lag("g") == 6 and admin.end_offsets() == {0: 10}
    producer.close()


def test_dedupe_by_source_and_message_id(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    producer = log.producer(dedupe_window_s=3600)
    first = producer.append([(b"a", b"1"), (b"a", b"2"), (b"a", b"3")], [("s", "m1"), ("s", "m1"), None]).result()
    assert first.written == 2 and first.duplicates == [1]
    second = producer.append([(b"a", b"4"), (b"a", b"5")], [("s", "m1"), ("other", "m1")]).result()
    assert second.written == 1 and second.duplicates == [0]
    producer.close()
    assert sorted(r.value for r in drain(log.consumer("g"))) == [b"1", b"3", b"5"]


def test_dedupe_window_expires(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    producer = log.producer(dedupe_window_s=0.2)
    assert producer.append([(b"a", b"1")], [("s", "m")]).result().written == 1
    time.sleep(0.3)
    assert producer.append([(b"a", b"2")], [("s", "m")]).result().written == 1
    producer.close()


def test_two_producers_share_dense_offsets_and_dedupe(tmp_path: Path) -> None:
    import threading

    first, second = open_log(tmp_path, 2), open_log(tmp_path, 2)  # as two collector processes would
    producers = [first.producer(), second.producer()]

    def send(index: int) -> None:
        producer = producers[index % 2]
        for batch in range(20):
            records = [(f"u{i}".encode(), f"{index}-{batch}-{i}".encode()) for i in range(10)]
            ids = [("s", f"{batch}-{i}") for i in range(10)]  # every thread sends the same ids
            producer.append(records, ids).result()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = drain(first.consumer("g"))
    assert len(records) == 200  # each messageId stored once across both producers
    for partition in (0, 1):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))
    for producer in producers:
        producer.close()


def test_retention_only_deletes_what_every_group_consumed(tmp_path: Path) -> None:
    log = open_log(tmp_path, partitions=1)
    producer = log.producer(retention_s=0)
    slow, fast = log.consumer("slow"), log.consumer("fast")
    for i in range(5):
        producer.append([(b"k", str(i).encode())]).result()
    drain(fast)
    fast.commit()
    slow.commit({0: 2})
    time.sleep(0.01)
    producer.enforce_retention()
    assert [r.offset for r in drain(log.consumer("slow"))] == [2, 3, 4]
    slow.commit({0: 5})
    producer.enforce_retention()
    late = log.consumer("late")  # a new group starts at the earliest record still there
    assert drain(late) == []
    producer.append([(b"k", b"5")]).result()
    assert [r.offset for r in drain(late)] == [5]  # offsets keep counting after retention
    producer.close()


def test_partition_count_is_fixed_at_creation(tmp_path: Path) -> None:
    open_log(tmp_path, partitions=3)
    assert open_log(tmp_path, partitions=8).partitions == 3


def test_size_retention_deletes_only_consumed_batches(tmp_path: Path) -> None:
    log = open_log(tmp_path, partitions=1)
    producer = log.producer(retention_s=3600, retention_bytes=200_000)
    consumer = log.consumer("g")
    for i in range(100):
        producer.append([(b"k", bytes([i % 256]) * 10_000)]).result()
    producer.enforce_retention()
    fresh = log.consumer("fresh")
    assert len(drain(fresh)) == 100  # nothing consumed: nothing deleted
    fresh.commit()
    consumer.commit({0: 80})
    producer.enforce_retention()
    remaining = [r.offset for r in drain(log.consumer("later"))]
    assert remaining[-20:] == list(range(80, 100))  # every unconsumed record is still there
    assert len(remaining) < 40  # consumed data beyond the size limit is gone though young
    assert log.admin().size_bytes() < 600_000
    producer.close()


def test_idle_groups_stop_holding_back_retention(tmp_path: Path) -> None:
    import headwater.log.sqlite as sqlite_log

    log = open_log(tmp_path, partitions=1)
    producer = log.producer(retention_s=0)
    log.consumer("abandoned")  # registered, never commits
    active = log.consumer("active")
    producer.append([(b"k", b"v")]).result()
    drain(active)
    active.commit()
    producer.enforce_retention()
    assert len(drain(log.consumer("probe1"))) == 1  # the abandoned group still counts
    saved, sqlite_log.GROUP_EXPIRY_MS = sqlite_log.GROUP_EXPIRY_MS, 200
    try:
        time.sleep(0.3)
        active.commit()  # still active; "abandoned" and "probe1" are now idle
        producer.enforce_retention()
    finally:
        sqlite_log.GROUP_EXPIRY_MS = saved
    assert drain(log.consumer("probe2")) == []
    producer.close()


def test_reads_start_inside_a_batch_and_keep_keys_and_times(tmp_path: Path) -> None:
    log = open_log(tmp_path, partitions=1)
    producer = log.producer()
    producer.append([(b"k", b"a"), (None, b"b"), (b"", b"c")]).result()
    producer.append([(b"k", b"d")]).result()
    producer.close()
    consumer = log.consumer("g")
    consumer.seek(0, 1)
    records = drain(consumer)
    assert [(r.offset, r.key, r.value) for r in records] == [(1, None, b"b"), (2, b"", b"c"), (3, b"k", b"d")]
    assert all(r.partition == 0 and r.timestamp_ms > 0 and type(r).__name__ == "Record" for r in records)
    assert records[0]._asdict()["value"] == b"b"


def test_duplicates_are_dropped_and_the_rest_spread_over_partitions(tmp_path: Path) -> None:
    log = open_log(tmp_path, partitions=3)
    producer = log.producer()
    first = producer.append([(b"u1", b"1"), (None, b"2")], [("s", "m1"), None]).result()
    again = producer.append([(b"u1", b"1"), (b"u2", b"3"), (None, b"4")], [("s", "m1"), ("s", "m2"), None]).result()
    producer.close()
    assert (first.written, first.duplicates) == (2, [])
    assert (again.written, again.duplicates) == (2, [0])
    values = sorted(r.value for r in drain(log.consumer("g")))
    assert values == [b"1", b"2", b"3", b"4"]
