"""The migration steps, one list per component, each taking it from `from_version` to `from_version + 1`.

Rules for a step: idempotent (a step cut short by kill -9 runs again from the start at the next start), and,
for a database step, done in the transaction that also moves the component's version row (so the step and its
record commit together). A local step (files of the data directory) is recorded in FORMAT.json after it ran.
To change a format: bump its version in `formats.py` and append the step here; `prepare` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headwater.upgrade.formats import log_files, set_user_version, user_version


@dataclass(frozen=True)
class Step:
    id: str
    component: str  # log (files of the data dir), catalog or accounts (databases, maybe shared)
    from_version: int
    description: str
    run: Callable[[Any], None]  # log: the data dir; catalog / accounts: a SQLAlchemy connection in a transaction


def _log_1_2(data_dir: Path) -> None:
    """Write the log format into every log database that has none (user_version 0 is format 1 here)."""
    for path in log_files(data_dir):
        if user_version(path) < 2:
            set_user_version(path, 2)


def _nothing(_conn: Any) -> None:
    """Format 2 only adds the headwater_format row, which the runner writes with the step."""


STEPS: tuple[Step, ...] = (
    Step("log-1-2", "log", 1, "write the log format into the log databases (PRAGMA user_version)", _log_1_2),
    Step("catalog-1-2", "catalog", 1, "record the catalog format in table headwater_format", _nothing),
    Step("accounts-1-2", "accounts", 1, "record the account store format in table headwater_format", _nothing),
)


def steps_from(component: str, version: int, target: int) -> list[Step]:
    """The steps that take `component` from `version` to `target`, in order (a gap is a bug: raise)."""
    out: list[Step] = []
    for v in range(version, target):
        found = [s for s in STEPS if s.component == component and s.from_version == v]
        if len(found) != 1:
            raise RuntimeError(f"no single upgrade step for {component} {v} -> {v + 1}")
        out.append(found[0])
    return out
