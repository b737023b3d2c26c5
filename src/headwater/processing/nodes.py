"""The operator interface every part of a pipeline implements (kept apart to avoid import cycles)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headwater.processing.task import Task

Push = Callable[[str | None, Any, int], None]
"""Takes one record: (key, value, event time in epoch ms)."""


class Node:
    """An operator: compiles, once per task, to a push function feeding `downstream`."""

    def compile(self, task: Task, downstream: Push) -> Push:
        raise NotImplementedError

    def walk(self) -> Iterable[Node]:
        yield self
