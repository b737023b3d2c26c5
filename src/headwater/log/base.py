"""Interfaces of the event log, shaped like Kafka's producer / consumer / admin clients.

A Kafka backend implements the same three protocols; consumers (the lake writer, stream
processors) depend only on these, so moving to Kafka changes configuration, not code.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class Record(NamedTuple):
    """One record as a consumer sees it (a NamedTuple: consumers create millions of them)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


@dataclass(slots=True)
class AppendResult:
    """What one append did: records written, and the indexes dropped as duplicates."""

    written: int = 0
    duplicates: list[int] = field(default_factory=list)


class Producer(Protocol):
    partitions: int

    def partition_for(self, key: bytes | None) -> int: ...

    def append(
        self,
        records: list[tuple[bytes | None, bytes]],
        idempotency_keys: list[tuple[str, str] | None] | None = None,
    ) -> Future[AppendResult]:
        """Queue records; the future resolves once they are durable (fsynced)."""
        ...

    async def append_async(
        self, records: list[tuple[bytes | None, bytes]], idempotency_keys: list[tuple[str, str] | None] | None = None
    ) -> AppendResult:
        """Append from asyncio code; returns once the records are durable."""
        ...

    def close(self) -> None: ...


class Consumer(Protocol):
    group: str

    def committed(self) -> dict[int, int]: ...

    def seek(self, partition: int, offset: int) -> None: ...

    def position(self, partition: int) -> int: ...

    def poll(self, max_records: int, timeout_s: float) -> list[Record]: ...

    def commit(self, offsets: dict[int, int] | None = None) -> None:
        """Commit the next offset to read per partition (default: the current positions)."""
        ...

    def close(self) -> None: ...


class LogAdmin(Protocol):
    partitions: int

    def end_offsets(self) -> dict[int, int]: ...

    def group_offsets(self) -> dict[str, dict[int, int]]: ...

    def lag(self, group: str) -> int: ...

    def size_bytes(self) -> int: ...
