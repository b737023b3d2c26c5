"""How a child of `headwater up` tells the supervisor it is ready, or why it could not start.

The supervisor names each child in `HEADWATER_CHILD` and a status folder in `HEADWATER_STATUS_DIR`;
the child writes `<name>.ready` once it serves (HTTP answering, writer consuming, …) or
`<name>.failed` (one line: the reason) when it stops during start-up. Outside `up` both are no-ops.
"""

from __future__ import annotations

import os
from pathlib import Path


def _status_file(suffix: str) -> Path | None:
    name, folder = os.environ.get("HEADWATER_CHILD"), os.environ.get("HEADWATER_STATUS_DIR")
    if not name or not folder:
        return None
    return Path(folder) / f"{name.replace(':', '_')}.{suffix}"


def report_ready() -> None:
    """Tell `up` this child is ready (idempotent)."""
    path = _status_file("ready")
    if path is not None and not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # server workers may write at once
        tmp.write_text(str(os.getpid()))
        tmp.replace(path)


def report_failure(reason: str) -> None:
    """Tell `up` why this child stops before it was ready (the first line of `reason`)."""
    path = _status_file("failed")
    if path is not None:
        line = (reason.strip().splitlines() or ["no reason given"])[0]
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # server workers may write at once
        tmp.write_text(line)
        tmp.replace(path)
