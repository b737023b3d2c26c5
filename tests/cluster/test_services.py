"""The real services the cluster tests run on: each fixture starts a working Kafka, PostgreSQL or S3 server."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from pyarrow import fs

from tests.services import KafkaBroker, PostgresServer, S3Server, cluster_env, cluster_settings

pytestmark = pytest.mark.cluster


def consume(bootstrap: str, topic: str, group: str, count: int, timeout: float = 30) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    messages: list[Message] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                continue
            messages.append(message)
        if messages:
            consumer.commit(message=messages[-1], asynchronous=False)
    finally:
        consumer.close()
    return messages


def test_kafka_produce_consume_and_restart(kafka_broker: KafkaBroker) -> None:
    topic = f"services-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True, "acks": "all"})
    delivered: list[Message] = []
    producer.produce(topic, key=b"k", value=b"hello", on_delivery=lambda err, msg: delivered.append(err or msg))
    assert producer.flush(30) == 0
    assert len(delivered) == 1 and isinstance(delivered[0], Message), delivered

    [message] = consume(kafka_broker.bootstrap, topic, "group-a", 1)
    assert (message.key(), message.value()) == (b"k", b"hello")

    port = kafka_broker.port
    kafka_broker.restart()
    assert kafka_broker.port == port
    [again] = consume(kafka_broker.bootstrap, topic, "group-b", 1)  # a new group reads from the start
    assert again.value() == b"hello" and again.offset() == message.offset()
    assert consume(kafka_broker.bootstrap, topic, "group-a", 1, timeout=3) == []  # group-a's commit survived


def test_postgres_table_survives_restart(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("services_check")
    with psycopg.connect(postgres_server.dsn("services_check"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO t VALUES (1, 'one')")
    postgres_server.restart()
    with psycopg.connect(postgres_server.dsn("services_check")) as conn:
        assert conn.execute("SELECT id, name FROM t").fetchall() == [(1, "one")]
    assert postgres_server.uri("services_check").startswith("postgresql+psycopg://postgres@127.0.0.1:")


def test_s3_write_and_read_back(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket("services-check")
    s3 = fs.S3FileSystem(
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        endpoint_override=s3_server.endpoint,
        scheme="http",
        region="us-east-1",
    )
    with s3.open_output_stream(f"{bucket}/dir/object.txt") as out:
        out.write(b"hello s3")
    with s3.open_input_stream(f"{bucket}/dir/object.txt") as stream:
        assert stream.read() == b"hello s3"
    assert (s3_server.basedir / bucket / "dir" / "object.txt").read_bytes() == b"hello s3"  # plain files
    infos = s3.get_file_info(fs.FileSelector(bucket, recursive=True))
    assert sorted((info.path, info.type) for info in infos) == [
        (f"{bucket}/dir", fs.FileType.Directory),
        (f"{bucket}/dir/object.txt", fs.FileType.File),
    ]
    s3.delete_file(f"{bucket}/dir/object.txt")
    assert s3.get_file_info(f"{bucket}/dir/object.txt").type == fs.FileType.NotFound


def test_cluster_settings(kafka_broker: KafkaBroker, postgres_server: PostgresServer, s3_server: S3Server) -> None:
    settings = cluster_settings(kafka_broker, postgres_server, s3_server, "settings-check")
    assert settings == {
        "log_backend": "kafka",
        "kafka_bootstrap_servers": kafka_broker.bootstrap,
        "kafka_topic": "hw-settings-check",
        "catalog_uri": postgres_server.uri("hw_settings_check"),
        "warehouse": "s3://hw-settings-check/wh",
        "s3_endpoint": s3_server.endpoint,
        "s3_access_key_id": "headwater",
        "s3_secret_access_key": "headwater-secret",
        "s3_region": "us-east-1",
    }
    assert postgres_server.database_exists("hw_settings_check")
    assert s3_server.bucket_exists("hw-settings-check")
    assert cluster_env(settings)["HEADWATER_CATALOG_URI"] == settings["catalog_uri"]
    with pytest.raises(ValueError, match="already used"):
        cluster_settings(kafka_broker, postgres_server, s3_server, "settings-check")
