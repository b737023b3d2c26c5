"""The event log: durable, partitioned, ordered offsets, consumer groups (Kafka's model).

`open_log(settings)` is the one place a backend is chosen; everything else sees `EventLog`.
"""

from headwater.core.settings import Settings
from headwater.log.base import AppendResult, Consumer, EventLog, LogAdmin, Producer, Record, TailReader
from headwater.log.sqlite import SqliteLog


def open_log(settings: Settings) -> EventLog:
    """The configured event log: embedded SQLite, or Kafka."""
    if settings.log_backend == "kafka":
        from headwater.log.kafka import KafkaLog  # confluent-kafka is only loaded when used

        return KafkaLog.from_settings(settings)
    return SqliteLog.from_settings(settings)


__all__ = [
    "AppendResult", "Consumer", "EventLog", "LogAdmin", "Producer", "Record", "SqliteLog", "TailReader", "open_log",
]  # fmt: skip
