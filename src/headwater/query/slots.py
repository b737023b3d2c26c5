"""Admission control for queries: a few run at once, a bounded line waits briefly, the rest are told to retry.

Ingestion shares the machine with queries; an unbounded number of heavy queries would take every core (and the
memory limit) from the collector and the lake writer. Beyond `query_concurrency` running and `query_queue`
waiting (each at most `query_queue_wait_s`), a query is refused with 429 and a Retry-After.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from headwater.core import metrics
from headwater.core.errors import QueryError

log = logging.getLogger(__name__)
T = TypeVar("T")


class QueryBusy(QueryError):
    """No query slot within the wait: HTTP 429 with `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, 429)
        self.retry_after = retry_after


def _lower_thread_priority(nice: int) -> None:
    """Raise this thread's niceness (Linux: per thread; threads it starts inherit it)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError) as exc:  # not Linux, or not allowed: queries simply run at normal priority
        log.warning("query threads keep their priority: %s", exc)


class QuerySlots:
    """At most `concurrency` queries at once per event loop; up to `queue` wait up to `wait_s` for a slot.

    Queries run on their own threads at niceness `nice`; build the query engine with `build()` so DuckDB's worker
    threads, started with it, inherit that niceness too: the collector's event loop and the lake writer, at normal
    priority, get the cores first when both want them.
    """

    def __init__(self, concurrency: int, queue: int, wait_s: float, nice: int = 0) -> None:
        initializer = functools.partial(_lower_thread_priority, nice) if nice else None
        self.pool = ThreadPoolExecutor(concurrency + 1, "query", initializer=initializer)
        self.concurrency = concurrency
        self.queue = queue
        self.wait_s = wait_s
        self.running = 0
        self.waiting = 0
        self._semaphore: asyncio.Semaphore | None = None

    def _busy(self, why: str) -> QueryBusy:
        metrics.QUERY_ERRORS.labels("busy").inc()
        retry = max(1, math.ceil(self.wait_s / 2)) if self.wait_s else 1
        return QueryBusy(
            f"too many queries at once ({self.running} running, {self.waiting} waiting; {why}): "
            f"retry in {retry} s, or raise query_concurrency",
            retry,
        )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body; raise QueryBusy when none frees up in time."""
        if self._semaphore is None:  # created on the loop that serves the requests
            self._semaphore = asyncio.Semaphore(self.concurrency)
        semaphore = self._semaphore
        if semaphore.locked():
            if self.waiting >= self.queue:
                raise self._busy(f"the line of {self.queue} is full")
            self.waiting += 1
            metrics.QUERIES_WAITING.inc()
            try:
                await asyncio.wait_for(semaphore.acquire(), self.wait_s)
            except TimeoutError:
                raise self._busy(f"none finished within {self.wait_s:g} s") from None
            finally:
                self.waiting -= 1
                metrics.QUERIES_WAITING.dec()
        else:
            await semaphore.acquire()
        self.running += 1
        metrics.QUERIES_RUNNING.inc()
        try:
            yield
        finally:
            self.running -= 1
            metrics.QUERIES_RUNNING.dec()
            semaphore.release()

    def build(self, factory: Callable[[], T]) -> T:
        """Call `factory` on a query thread (engines whose threads must inherit the query priority)."""
        return self.pool.submit(factory).result()

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """Run `call(*args)` on a query thread once a slot is free (QueryBusy when none frees up in time)."""
        async with self.slot():
            return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(call, *args))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
