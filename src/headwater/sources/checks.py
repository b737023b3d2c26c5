"""`headwater doctor` for sources: is each configured source reachable and its format usable?

Nothing is changed upstream: no consumer group joins, no queue is declared (a RabbitMQ copy queue is
created by the source when it first runs, not by a check), no file is taken.
"""

from __future__ import annotations

from pathlib import Path

from headwater.core.errors import HeadwaterError
from headwater.core.settings import Settings
from headwater.core.source_settings import SourceSettings

Outcome = tuple[bool, str, str]
"""(ok, what was found, what to change)."""


def check_source(settings: Settings, source: SourceSettings, base_dir: Path) -> Outcome:
    try:
        if source.format not in ("csv", "parquet", "grib"):
            from headwater.sources.formats import RecordFormat

            RecordFormat(source, base_dir)  # copybooks parse, the Avro schema loads
        if source.kind == "files":
            return _files(settings, source)
        if source.kind == "kafka":
            return _kafka(source)
        return _rabbitmq(source)
    except HeadwaterError as exc:
        return False, str(exc), f"fix the [[sources]] table named {source.name!r} (headwater config docs --sources)"


def _files(settings: Settings, source: SourceSettings) -> Outcome:
    from headwater.sources.files import FilesReader

    reader = FilesReader(source, settings)
    try:
        waiting = reader.scan()
        counts = reader.store.counts()
    finally:
        reader.close()
    taken = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none taken yet"
    return True, f"{source.path}: {len(waiting)} file(s) matching {source.pattern!r} waiting; {taken}", ""


def _kafka(source: SourceSettings) -> Outcome:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": source.bootstrap_servers, **source.client_options})
    try:
        metadata = admin.list_topics(topic=source.topic, timeout=10)
    except Exception as exc:  # librdkafka: brokers down, auth refused
        return False, f"{source.bootstrap_servers}: {exc}", "are the brokers reachable from here (client_options)?"
    topic = metadata.topics.get(source.topic)
    if topic is None or topic.error is not None:
        reason = topic.error.str() if topic is not None and topic.error is not None else "not found"
        return False, f"topic {source.topic!r}: {reason}", "create the topic or fix `topic`"
    return True, f"topic {source.topic!r}: {len(topic.partitions)} partitions, group {source.consumer_group}", ""


def _rabbitmq(source: SourceSettings) -> Outcome:
    import pika
    from pika.exceptions import AMQPError, ChannelClosedByBroker

    params = pika.URLParameters(source.url)
    params.connection_attempts, params.socket_timeout = 1, 10
    try:
        connection = pika.BlockingConnection(params)
    except AMQPError as exc:
        where = f"{params.host}:{params.port}"
        return (
            False,
            f"RabbitMQ {where}: {type(exc).__name__} {exc}",
            "is the broker up, are `url`'s credentials right?",
        )
    try:
        channel = connection.channel()
        if source.exchange:
            channel.exchange_declare(source.exchange, passive=True)
            detail = f"exchange {source.exchange!r} exists; the source binds queue {source.queue!r} to it"
        else:
            depth = channel.queue_declare(source.queue, passive=True).method.message_count
            detail = f"queue {source.queue!r}: {depth} messages ready"
    except ChannelClosedByBroker as exc:
        what = f"exchange {source.exchange!r}" if source.exchange else f"queue {source.queue!r}"
        return False, f"{what}: {exc.reply_text}", "create it, or fix `queue` / `exchange`"
    finally:
        if connection.is_open:
            connection.close()
    return True, detail, ""
