"""The Encored example (examples/encored): GRIB forecast files dropped in a directory land in the
`weather_grid` table; `run.sh --once` is run whole, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.services import free_ports


@pytest.mark.slow
def test_run_sh_lands_every_grid_point(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(
        DATA_DIR=str(tmp_path / "data"), PORT=str(free_ports()[0]), FILES="2", STEPS="3", INTERVAL="0.5",
        HEADWATER=str(Path(sys.executable).parent / "headwater"), PYTHON=sys.executable,
    )  # fmt: skip
    done = subprocess.run(
        [str(ROOT / "examples" / "encored" / "run.sh"), "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    points = 2 * 3 * 5 * 71 * 61
    assert f"weather_grid holds {points} grid points (expected {points})" in done.stdout
    assert "ssrd | J m**-2 | 25986" in done.stdout  # 2 runs x 3 steps x one 71 x 61 grid
    assert len(list((tmp_path / "data" / "done").glob("*.grib2"))) == 2  # taken files are moved aside
    assert not list((tmp_path / "data" / "drop").glob("*.grib2"))
