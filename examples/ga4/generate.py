"""GA4 / Firebase BigQuery export files as a BigQuery export job leaves them: per day an intraday table
exported during the day, then the daily table, for `--days` days, in the real export schema.

Files are written under a `.part` name and renamed when complete (an upload appears whole).

    python examples/ga4/generate.py DROP_DIR --days 3 --rows 5000 --format avro --interval 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import pyarrow as pa

from headwater.loadgen.ga4 import export_name, ga4_day, intraday_of, write_export


def drop(folder: Path, name: str, table: pa.Table, fmt: str) -> None:
    part = folder / (name + ".part")
    write_export(table, part, fmt)
    part.rename(folder / name)
    print(f"dropped {name}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--rows", type=int, default=5000, help="rows of each daily table")
    parser.add_argument("--format", default="avro", choices=["parquet", "avro", "ndjson", "ndjson.gz"])
    parser.add_argument("--first-day", default="2025-03-01")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between files")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    first = dt.date.fromisoformat(args.first_day)
    for index in range(args.days):
        day = first + dt.timedelta(days=index)
        daily = ga4_day(day, args.rows, seed=index)
        drop(args.folder, export_name(day, args.format, intraday=True), intraday_of(daily), args.format)
        time.sleep(args.interval)
        drop(args.folder, export_name(day, args.format), daily, args.format)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
