"""The event log: durable, partitioned, ordered offsets, consumer groups (Kafka's model)."""

from headwater.log.base import AppendResult, Consumer, LogAdmin, Producer, Record
from headwater.log.sqlite import SqliteLog

__all__ = ["AppendResult", "Consumer", "LogAdmin", "Producer", "Record", "SqliteLog"]
