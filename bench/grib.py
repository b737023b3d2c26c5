"""GRIB decoding: grid points/s from GRIB2 files to Arrow tables (issue #10's floor: >= 5 M points/s).

Writes, at start, a GRIB2 file of `--messages` (default 20) messages on a 0.25-degree global grid
(1440 x 721 = 1,038,240 points each; 2t, 10u, 10v, msl, tp at 3-hourly steps; 16 bits per value, as
GFS and ECMWF open data use), and the same file with 30% of the points missing (bitmap). Then it
times `read_grib` over each `--repeats` times (the first pass with an empty grid cache, i.e. computing
the latitudes and longitudes once), and, as the ceiling, ecCodes alone (open each message and decode its
values into numpy, nothing else). Rates are per wall second and per CPU second of this process (the
steadier figure when other work shares the cores). Peak RSS shows the memory bound (one message at a time).

Run from the repo root: `.venv/bin/python -m bench.grib`; JSON on stdout and in bench/results/grib.json.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import eccodes
import numpy as np

from bench.common import emit
from headwater.loadgen.grib import Field, write_grib
from headwater.sources import grib

NI, NJ, INCREMENT = 1440, 721, 0.25
PARAMETERS = [
    ("2t", "heightAboveGround", 2),
    ("10u", "heightAboveGround", 10),
    ("10v", "heightAboveGround", 10),
    ("msl", "meanSea", 0),
    ("tp", "surface", 0),
]


def fields(messages: int, missing: float) -> Iterator[Field]:
    """Smooth fields plus noise (so the packing has real work), `missing` of the points NaN; one at a time."""
    rng = np.random.default_rng(7)
    lat = np.repeat(np.linspace(90, -90, NJ), NI)
    for i in range(messages):
        parameter, level_type, level = PARAMETERS[i % len(PARAMETERS)]
        values = 250 + 40 * np.cos(np.radians(lat)) + rng.normal(0, 3, NI * NJ) + i
        if missing:
            values[rng.random(NI * NJ) < missing] = np.nan
        reference = datetime(2024, 7, 1, 0, 0)
        yield Field(parameter, level_type, level, reference, step=3 * i, ni=NI, nj=NJ, increment=INCREMENT,
                    values=values, bits_per_value=16)  # fmt: skip


def time_read(path: Path, max_rows: int) -> dict[str, Any]:
    """One pass of read_grib; the tables are dropped as they come (their rows are counted)."""
    wall, cpu = time.perf_counter(), time.process_time()
    rows = nulls = tables = 0
    for table in grib.read_grib(path, path.name, max_rows=max_rows):
        rows += table.num_rows
        nulls += table.column("value").null_count
        tables += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"points": rows, "nulls": nulls, "tables": tables, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def time_eccodes(path: Path) -> dict[str, Any]:
    """ecCodes alone: each message opened and its values decoded into numpy."""
    wall, cpu = time.perf_counter(), time.process_time()
    points = 0
    with path.open("rb") as stream:
        while (handle := eccodes.codes_grib_new_from_file(stream)) is not None:
            try:
                points += len(eccodes.codes_get_values(handle))
            finally:
                eccodes.codes_release(handle)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"points": points, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    points = runs[0]["points"]
    wall = [points / r["wall_s"] for r in runs]
    cpu = [points / r["cpu_s"] for r in runs]
    return {
        "points": points,
        "points_per_s_median": round(statistics.median(wall)),
        "points_per_s_best": round(max(wall)),
        "points_per_cpu_s_median": round(statistics.median(cpu)),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-rows", type=int, default=2_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="headwater-bench-grib-") as tmp:
        started = time.perf_counter()
        full = write_grib(Path(tmp) / "global.grib2", fields(args.messages, 0.0))
        holes = write_grib(Path(tmp) / "global-missing.grib2", fields(args.messages, 0.3))
        written_s = time.perf_counter() - started
        # one-off costs of the process, not of decoding: pyarrow imports pandas on first use (~1.5 s here)
        list(grib.read_grib(write_grib(Path(tmp) / "tiny.grib2", [Field()]), "tiny"))
        result: dict[str, Any] = {
            "grid": f"{NI}x{NJ} regular_ll {INCREMENT} deg",
            "messages": args.messages,
            "file_mib": round(full.stat().st_size / 2**20, 1),
            "file_missing_mib": round(holes.stat().st_size / 2**20, 1),
            "write_s": round(written_s, 1),
            "max_rows": args.max_rows,
        }
        for name, path in (("read_grib", full), ("read_grib_30pct_missing", holes)):
            grib._grids.clear()  # the first pass computes the grid's coordinates
            result[name] = summarise([time_read(path, args.max_rows) for _ in range(args.repeats)])
        result["eccodes_values_only"] = summarise([time_eccodes(full) for _ in range(args.repeats)])
    result["floor_points_per_s"] = 5_000_000
    result["meets_floor"] = result["read_grib"]["points_per_s_median"] >= 5_000_000
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    emit("grib", result)


if __name__ == "__main__":
    main()
