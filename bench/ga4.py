"""GA4 / Firebase BigQuery export import speed: days of generated export rows as Parquet, Avro and gzip'd NDJSON
into a fresh lake (day replaces), then the same days again (each replace reads and rewrites the day's files),
with the time spent reading, mapping, and writing + committing; and the reconciliation of what landed.

`python -m bench.ga4 [--days 3] [--rows 200000]` (env BENCH_GA4_ROWS, BENCH_GA4_DAYS); prints JSON, keeps it in
bench/results/ga4.json. Generated files are cached in bench/data/ga4-<rows>.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.common import emit
from headwater.core.settings import Settings
from headwater.lake.ga4 import Ga4Importer, reconciliation
from headwater.lake.ga4_map import invalid_rows, map_rows
from headwater.lake.ga4_read import Block, ExportFile, read_export
from headwater.lake.rewrite import live_files
from headwater.loadgen.ga4 import export_name, ga4_day, write_export
from headwater.query.engine import QueryEngine

FORMATS = ("parquet", "avro", "ndjson.gz")
FIRST_DAY = dt.date(2024, 6, 1)


def export_files(work: Path, days: int, rows: int) -> dict[str, list[Path]]:
    """The days' export files per format (generated once, then cached)."""
    out: dict[str, list[Path]] = {fmt: [] for fmt in FORMATS}
    for index in range(days):
        day = FIRST_DAY + dt.timedelta(days=index)
        canonical = work / "canonical" / f"{day:%Y%m%d}.parquet"
        if not canonical.exists():
            canonical.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(ga4_day(day, rows, seed=index), canonical)
        table = None
        for fmt in FORMATS:
            path = work / fmt / export_name(day, fmt)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                table = table if table is not None else pq.read_table(canonical)
                write_export(table, path, fmt)
            out[fmt].append(path)
    return out


def stage_times(paths: list[Path]) -> dict[str, float]:
    """CPU seconds to read (and conform) the files, and to check and map their rows (no writing)."""
    started = time.process_time()
    blocks: list[Block] = []
    for path in paths:
        blocks += [b for b in read_export(ExportFile.local(path)) if isinstance(b, Block)]
    read = time.process_time() - started
    started = time.process_time()
    for block in blocks:
        invalid_rows(block.rows)
        map_rows(block.rows, block.extras, False, 0, "bench")
    return {"read_cpu_s": round(read, 2), "map_cpu_s": round(time.process_time() - started, 2)}


def run_format(work: Path, fmt: str, paths: list[Path], rows: int) -> dict[str, Any]:
    lake = work / f"lake-{fmt.replace('.', '-')}"
    shutil.rmtree(lake, ignore_errors=True)
    Settings.config_file = None
    settings = Settings(data_dir=lake)
    exports = [ExportFile.local(p) for p in paths]
    result: dict[str, Any] = {"files_mb": round(sum(p.stat().st_size for p in paths) / 2**20, 1)}
    result.update(stage_times(paths))
    importer = Ga4Importer(settings, "bench")
    for label in ("first_import", "replace"):
        wall, cpu = time.perf_counter(), time.process_time()
        groups = importer.import_files(exports)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        result[label] = {
            "elapsed_s": round(wall, 2), "cpu_s": round(cpu, 2), "rows_per_s": round(rows * len(paths) / wall),
            "rows_removed": sum(g.rewrite.get("rows_removed", 0) for g in groups),
            "mb_written": round(sum(g.rewrite.get("bytes_written", 0) for g in groups) / 2**20, 1),
        }  # fmt: skip
    result["write_commit_cpu_s"] = round(
        result["first_import"]["cpu_s"] - result["read_cpu_s"] - result["map_cpu_s"], 2
    )
    query = QueryEngine(settings)
    try:
        report = reconciliation(lambda sql: query.execute(sql).rows, "bench", importer.store.days("bench"))
    finally:
        query.close()
    result["reconciliation"] = {"days": len(report["days"]), "mismatched": report["mismatched"], **report["totals"]}
    table = importer.catalog.load_table("headwater.events")
    lake_bytes = sum(f.file_size_in_bytes for f in live_files(table))  # (the replaced files wait for expiry)
    result["lake_bytes_per_row"] = round(lake_bytes / (rows * len(paths)), 1)
    importer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=int(os.environ.get("BENCH_GA4_DAYS", "3")))
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_GA4_ROWS", "200000")))
    parser.add_argument("--workdir", type=Path, default=Path("bench/data"))
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()
    work = args.workdir / f"ga4-{args.rows}"
    files = export_files(work, args.days, args.rows)
    results = {fmt: run_format(work, fmt, files[fmt], args.rows) for fmt in args.formats.split(",")}
    best = max(r["first_import"]["rows_per_s"] for r in results.values())
    emit(
        "ga4",
        {
            "days": args.days, "rows_per_day": args.rows, "formats": results,
            "projected_hours_per_billion_rows": round(1e9 / best / 3600, 1),
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
