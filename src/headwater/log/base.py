"""Interfaces of the event log, shaped like Kafka's producer / consumer / admin clients.

A Kafka backend implements the same three protocols; consumers (the lake writer, stream
processors) depend only on these, so moving to Kafka changes configuration, not code.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from headwater.core.erasure import ErasureSet


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

    def append_fenced(
        self,
        records: list[tuple[bytes | None, bytes]],
        fence: str | list[str | None],
        positions: list[int],
        idempotency_keys: list[tuple[str, str] | None] | None = None,
    ) -> Future[AppendResult]:
        """Append records a deterministic writer (a stream processor) derived from its input.

        `positions` grow along the writer's input (one per record); the log keeps the next position
        per `fence` (one for all records, or one per record; None: not fenced, e.g. a record that
        carries an idempotency key instead) and drops records below it, so
        re-running the same input after a crash writes nothing twice. Logs that cannot check this
        (`deduplicates = False`) append everything; consumers drop repeats by the id each record
        carries.
        """
        ...

    def in_flight(self) -> int:
        """Records (or requests) handed to the producer and not yet durable: the producer's lag."""
        ...

    def close(self) -> None: ...


class Consumer(Protocol):
    group: str
    generation: int
    """Changes whenever the group rebalanced (partitions revoked or assigned): drop what was buffered."""

    def assignment(self) -> list[int]:
        """Partitions this member owns now."""
        ...

    def committed(self) -> dict[int, int]: ...

    def seek(self, partition: int, offset: int) -> None: ...

    def positions(self) -> dict[int, int]:
        """Next offset to read of each owned partition whose position is known."""
        ...

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

    def size_bytes(self) -> int | None:
        """Bytes the log holds on local disk (None when the log is remote and keeps its own retention)."""
        ...

    def problem(self) -> str | None:
        """Why the log cannot take writes now (unreachable, missing topic), or None when it can."""
        ...

    def close(self) -> None: ...


class TailReader(Protocol):
    """Reads records by position without a consumer group (live view; nothing is committed)."""

    def end_offsets(self) -> dict[int, int]: ...

    def read(self, partition: int, position: int, max_records: int) -> list[Record]: ...

    def close(self) -> None: ...


class OutputRecord(NamedTuple):
    """A record a stream processor writes: its position along the processor's input partition
    `partition`, its event time, and (wall-clock timer outputs) an idempotency key."""

    key: bytes | None
    value: bytes
    partition: int
    position: int
    timestamp: int
    idempotency: tuple[str, str] | None


class Checkpointer(Protocol):
    """The log's part of a stream processor's checkpoint (see `processing.runtime` for the order)."""

    offsets_in_log: bool
    """True: `write` commits the input offsets with the outputs, and they are where to resume.
    False: the processor's state store keeps them (written right after `write`)."""
    changelog: bool
    """True: state changes go to a changelog in the log, and a worker that gains a partition
    restores its state from there (partitions move between machines)."""

    def write(
        self,
        outputs: dict[str, list[OutputRecord]],
        changes: dict[int, list[tuple[bytes, bytes | None]]],
        offsets: dict[int, int],
    ) -> dict[int, int]:
        """Make outputs (by stream, in the order given), state changes and offsets durable as one
        unit; return the changelog's next offset per input partition written (empty without one)."""
        ...

    def restore(self, partition: int, start: int) -> Iterator[tuple[int, list[tuple[bytes, bytes | None]]]]:
        """Batches of changelog records of `partition` from offset `start`, each with the next offset."""
        ...

    def changelog_end(self, partition: int) -> int:
        """Next offset of the changelog partition (0 without a changelog)."""
        ...

    def committed(self) -> dict[int, int]:
        """Input offsets committed with the outputs (only when `offsets_in_log`)."""
        ...

    def close(self) -> None: ...


class EventLog(Protocol):
    """One event log, configured from settings: makes producers, consumers, admins and readers."""

    backend: str
    log_id: str
    """Names this log in event ids and in the offsets each lake snapshot records."""
    offsets_key: str
    """Name of the snapshot property in which the lake records this log's offsets."""
    partitions: int
    deduplicates: bool
    """True when append() itself drops repeated idempotency keys (else consumers must)."""
    erasable: bool
    """True when `erase` rewrites records in place (the embedded log); False for Kafka, whose records
    leave only by retention."""

    def producer(self) -> Producer: ...

    def consumer(self, group: str) -> Consumer: ...

    def admin(self) -> LogAdmin: ...

    def reader(self) -> TailReader: ...

    def partition_for(self, key: bytes) -> int:
        """The partition a producer sends `key` to (to route records read back from the lake)."""
        ...

    def checkpointer(self, name: str, consumer: Consumer) -> Checkpointer:
        """Checkpoints of the processor run `name` that reads this log through `consumer`."""
        ...

    def erase(self, ids: ErasureSet) -> dict[str, int]:
        """Replace the value of every record holding one of `ids` (its key, or a string in its value) by
        ERASED, in this log and its named streams, offsets unchanged; records erased per log/stream.
        Logs that cannot (`erasable = False`) return {}."""
        ...

    def stream(self, name: str) -> EventLog:
        """Another named stream on the same log (processor outputs, source feeds), with the same
        partition count; created when missing."""
        ...
