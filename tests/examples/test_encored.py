"""The Encored example (examples/encored): GRIB forecast files dropped in a directory land in the
`weather_grid` table; `run.sh --once` is run whole, as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_example
from tests.services import free_ports


@pytest.mark.slow
def test_run_sh_lands_every_grid_point(tmp_path: Path) -> None:
    done = run_example("encored", tmp_path / "data", free_ports()[0], FILES="2", STEPS="3", INTERVAL="0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    points = 2 * 3 * 5 * 71 * 61
    assert f"weather_grid holds {points} grid points (expected {points})" in done.stdout
    assert "ssrd | J m**-2 | 25986" in done.stdout  # 2 runs x 3 steps x one 71 x 61 grid
    assert len(list((tmp_path / "data" / "done").glob("*.grib2"))) == 2  # taken files are moved aside
    assert not list((tmp_path / "data" / "drop").glob("*.grib2"))
