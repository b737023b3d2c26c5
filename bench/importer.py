"""`headwater import` throughput: NDJSON in the seed's format, end to end into Iceberg."""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import orjson

from bench.common import emit
from headwater.core.settings import Settings
from headwater.lake.importer import Importer
from headwater.loadgen.generate import NAMES
from headwater.runtime.stages import build_stages


def write_file(path: Path, rows: int) -> None:
    rng = random.Random(3)
    start = 1_735_689_600  # 2025-01-01
    with path.open("wb") as out:
        for _ in range(rows):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start + rng.randrange(365 * 86400)))
            user = f"{rng.choice(NAMES)}{rng.randrange(10)}"
            out.write(orjson.dumps({"event": "LOGIN", "userId": user, "dateTime": when}))
            out.write(b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("bench/data"))
    parser.add_argument(
        "--stages", action="store_true", help="run the lake writer's stages, as `headwater import` does by default"
    )
    args = parser.parse_args()
    work = args.workdir / "import"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = work / "events.ndjson"
    write_file(source, args.rows)
    stages = build_stages if args.stages else None
    importer = Importer(Settings(data_dir=work / "headwater"), source="bench", stages=stages)
    started = time.perf_counter()
    counts = importer.import_file(source)
    elapsed = time.perf_counter() - started
    rate = counts["rows"] / elapsed
    emit(
        "import-stages" if args.stages else "import",
        {
            "stages": args.stages,
            "rows": counts["rows"],
            "bytes": source.stat().st_size,
            "elapsed_s": round(elapsed, 2),
            "rows_per_s": round(rate, 1),
            "projected_minutes_for_200M": round(200_000_000 / rate / 60, 1),
        },
    )


if __name__ == "__main__":
    main()
