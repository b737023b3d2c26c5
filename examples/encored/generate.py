"""Forecast files like the ones Encored's weather provider drops: GRIB2, one file per forecast run.

Each file holds, for every forecast step, the fields a solar and wind power forecast needs over the
Korean peninsula (0.1 degree grid): 2 m temperature, downward solar radiation, 10 m wind (u, v) and
total cloud cover. Files are written under a temporary name and renamed when complete, as an
upload to object storage appears whole.

    python examples/encored/generate.py DROP_DIR --files 4 --interval 5 --steps 16
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from headwater.loadgen.grib import Field, write_grib

LAT0, LON0, STEP_DEG = 39.0, 124.0, 0.1
NJ, NI = 61, 71  # 39N..33N, 124E..131E


def fields(run: datetime, steps: int, rng: np.random.Generator) -> list[Field]:
    lat = LAT0 - STEP_DEG * np.arange(NJ)[:, None]
    out = []
    for step in range(0, 3 * steps, 3):
        hour = (run + timedelta(hours=step)).hour
        sun = max(0.0, np.sin((hour - 6) / 12 * np.pi))  # 06-18 UTC+0 stand-in for daylight
        base = {
            "2t": 283.0 - 0.6 * (lat - 33.0) + 4 * sun,
            "ssrd": 3.0e6 * sun * (1 - 0.02 * (lat - 33.0)),
            "10u": 3.0 + np.zeros((NJ, 1)),
            "10v": -1.5 + np.zeros((NJ, 1)),
            "tcc": 0.4 + np.zeros((NJ, 1)),
        }
        for name, mean in base.items():
            noise = rng.normal(0, 0.5 if name != "ssrd" else 5e4, size=(NJ, NI))
            values = np.broadcast_to(mean, (NJ, NI)) + noise
            if name in ("ssrd", "tcc"):
                values = np.clip(values, 0, None if name == "ssrd" else 1)
            level_type, level = ("heightAboveGround", 10 if name.startswith("10") else 2)
            if name in ("ssrd", "tcc"):
                level_type, level = "surface", 0
            out.append(
                Field(name, level_type, level, run.replace(tzinfo=None), step, ni=NI, nj=NJ, lat0=LAT0, lon0=LON0,
                      increment=STEP_DEG, values=values, bits_per_value=16)
            )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drop", type=Path, help="directory Headwater watches")
    parser.add_argument("--files", type=int, default=4, help="forecast runs to write")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between files")
    parser.add_argument("--steps", type=int, default=16, help="3-hourly steps per run")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    args.drop.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    first = datetime(2026, 11, 26, tzinfo=UTC)
    for index in range(args.files):
        run = first + timedelta(hours=6 * index)
        name = f"kma-{run:%Y%m%d%H}.grib2"
        tmp = write_grib(args.drop / f"{name}.tmp", fields(run, args.steps, rng))
        tmp.rename(args.drop / name)
        print(f"dropped {name} ({args.steps * 5} messages, {args.steps * 5 * NI * NJ:,} grid points)", flush=True)
        if index + 1 < args.files:
            time.sleep(args.interval)


if __name__ == "__main__":
    main()
