"""The GA4 example (examples/ga4): BigQuery export files dropped in a folder land by day replace, and the
reconciliation agrees; `run.sh --once` is run whole, as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_example
from tests.services import free_ports


@pytest.mark.slow
def test_run_sh_imports_every_day_and_reconciles(tmp_path: Path) -> None:
    done = run_example("ga4", tmp_path / "data", free_ports()[0], DAYS="2", ROWS="1000", INTERVAL="0.3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "events holds 2000 rows of the daily tables (expected 2000)" in done.stdout
    assert any(line.startswith("│ 20250302 ") and " 1000 " in line for line in done.stdout.splitlines())
    assert "0 of 2 days differ" in done.stderr
