"""Helpers of the source tests: a SourceRunner on a real embedded log, and what it appended."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from headwater.log.sqlite import SqliteLog
from headwater.sources.runner import SourceRunner
from tests.helpers import make_settings, read_stream


def settled(path: Path) -> Path:
    """Age a dropped file: the files reader skips files modified in the last second (still being written)."""
    past = time.time() - 5
    os.utime(path, (past, past))
    return path


def put_file(folder: Path, name: str, data: bytes) -> Path:
    """Drop a file whole into a watched folder."""
    path = folder / name
    path.write_bytes(data)
    return settled(path)


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in rows) + b"\n"


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
