"""The GA4 example (examples/ga4): BigQuery export files dropped in a folder land by day replace, and the
reconciliation agrees; `run.sh --once` is run whole, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.services import free_ports


@pytest.mark.slow
def test_run_sh_imports_every_day_and_reconciles(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(
        DATA_DIR=str(tmp_path / "data"), PORT=str(free_ports()[0]), DAYS="2", ROWS="1000", INTERVAL="0.3",
        HEADWATER=str(Path(sys.executable).parent / "headwater"), PYTHON=sys.executable,
    )  # fmt: skip
    done = subprocess.run(
        [str(ROOT / "examples" / "ga4" / "run.sh"), "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "events holds 2000 rows of the daily tables (expected 2000)" in done.stdout
    assert any(line.startswith("│ 20250302 ") and " 1000 " in line for line in done.stdout.splitlines())
    assert "0 of 2 days differ" in done.stderr
