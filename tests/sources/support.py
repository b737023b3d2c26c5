"""Helpers of the source tests: a SourceRunner on a real embedded log, and what it appended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headwater.log.sqlite import SqliteLog
from headwater.sources.runner import SourceRunner
from tests.helpers import make_settings, read_stream


def make_runner(data_dir: Path, settings_overrides: dict[str, Any] | None = None, **source: Any) -> SourceRunner:
    settings = make_settings(data_dir, sources=[{"name": "src", **source}], **(settings_overrides or {}))
    return SourceRunner(settings, settings.sources[0], SqliteLog.from_settings(settings), base_dir=data_dir)


def drain(runner: SourceRunner, idle_steps: int = 3, timeout_s: float = 0.05) -> int:
    """Step until the reader has given nothing `idle_steps` times in a row; return deliveries handled."""
    total = idle = 0
    while idle < idle_steps:
        handled = runner.step(timeout_s)
        total += handled
        idle = 0 if handled else idle + 1
    return total


def log_envelopes(event_log: Any, stream: str | None = None) -> list[dict[str, Any]]:
    """Every envelope in the events log (or a stream), partition by partition."""
    return read_stream(event_log, stream)


def events_of(envelopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["e"] for e in envelopes if "e" in e]


def quarantined(envelopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in envelopes if "q" in e]
