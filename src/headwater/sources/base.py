"""What every source reader provides to the runner: deliveries, acknowledgement, lag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Delivery:
    """One upstream record as read, before decoding.

    `stable_id` is the same every time the upstream system delivers this record again (a Kafka
    topic:partition:offset, a file key and record number, an AMQP message id or content hash):
    the log drops an append whose (source, stable_id) it already holds, so re-delivery after a
    crash stores nothing twice. `token` is what the reader needs to acknowledge it.
    """

    payload: bytes
    stable_id: str
    token: Any = None
    value: dict[str, Any] | None = None
    """Set when the reader decoded the record itself (CSV and Parquet files): the format is skipped."""
    received_ms: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    """Set when the reader could not read this part of the upstream (a corrupt file): quarantined as is."""


class SourceReader(Protocol):
    """One kind of upstream system. Readers reconnect by themselves; the runner only retries."""

    def read(self, max_records: int, timeout_s: float) -> list[Delivery]:
        """Up to `max_records` deliveries, waiting at most `timeout_s` for the first one.

        Raises SourceUnavailable when the upstream cannot be reached (the runner backs off and calls
        again; the reader reconnects), SourceError when it is misconfigured (the runner stops).
        """
        ...

    def acknowledge(self, deliveries: list[Delivery]) -> None:
        """Tell upstream these deliveries are durable in the log (called in read order, never early)."""
        ...

    def lag(self) -> int | None:
        """Records waiting upstream (None when the upstream cannot say)."""
        ...

    def progress(self) -> dict[str, Any]:
        """Reader-specific state for the status page (files in progress, partitions, queue depth)."""
        ...

    def close(self) -> None: ...
