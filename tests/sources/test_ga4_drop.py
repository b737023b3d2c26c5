"""A file-drop source with `format = "ga4"`: export files land by day replace, the last 3 days re-checked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa

from headwater.lake.ga4 import DayStore
from headwater.loadgen.ga4 import export_name, ga4_day, intraday_of, write_export
from headwater.query.engine import QueryEngine
from headwater.sources.runner import SourceRunner
from tests.sources.support import drain, make_runner, settled

D1, D2, D3 = dt.date(2025, 4, 1), dt.date(2025, 4, 2), dt.date(2025, 4, 3)


def drop_export(folder: Path, table: pa.Table, day: dt.date, fmt: str, intraday: bool = False, shard: int = 0) -> Path:
    return settled(write_export(table, folder / export_name(day, fmt, intraday, shard), fmt))


def per_day(runner: SourceRunner) -> dict[str, int]:
    engine = QueryEngine(runner.settings)
    try:
        rows = engine.execute(
            "SELECT substr(event_id, 5, 8), count(*) FROM events WHERE source = 'src' GROUP BY 1 ORDER BY 1"
        ).rows
    finally:
        engine.close()
    return {r[0]: r[1] for r in rows}


def quarantined(runner: SourceRunner) -> list[str]:
    engine = QueryEngine(runner.settings)
    try:
        return [r[0] for r in engine.execute("SELECT reason FROM quarantine ORDER BY reason").rows]
    finally:
        engine.close()


def states(runner: SourceRunner) -> dict[str, str]:
    return {Path(r.path).name: r.state for r in runner.reader.store.recent(50)}  # type: ignore[attr-defined]


def test_days_follow_the_folder(data_dir: Path, drop: Path) -> None:
    runner = make_runner(data_dir, kind="files", format="ga4", path=str(drop), poll_seconds=0.01)
    try:
        first = ga4_day(D1, 800)
        drop_export(drop, intraday_of(first), D1, "ndjson.gz", intraday=True)
        drain(runner)
        assert per_day(runner) == {"20250401": 480}
        drop_export(drop, first, D1, "parquet")
        drain(runner)
        assert per_day(runner) == {"20250401": 800}  # the daily table supersedes the intraday one
        store = DayStore(runner.settings.effective_catalog_uri)
        imported_at = store.days("src")[0].imported_at
        second = ga4_day(D2, 500, seed=2)
        drop_export(drop, second, D2, "avro")
        drain(runner)
        assert per_day(runner) == {"20250401": 800, "20250402": 500}
        assert store.days("src")[0].imported_at == imported_at  # D1 re-checked, unchanged: not imported again
        extra = ga4_day(D2, 300, seed=5)
        drop_export(drop, extra, D2, "parquet", shard=1)  # a second shard of the same daily table
        drain(runner)
        assert per_day(runner) == {"20250401": 800, "20250402": 800}
        corrected = ga4_day(D1, 700, seed=9)
        drop_export(drop, corrected, D1, "parquet")  # BigQuery corrected the day: the file is exported again
        drain(runner)
        assert per_day(runner) == {"20250401": 700, "20250402": 800}
        (drop / export_name(D2, "parquet", shard=1)).unlink()  # upstream took a shard back
        drop_export(drop, ga4_day(D3, 100, seed=4), D3, "ndjson")
        drain(runner)  # the arrival of D3 re-checks the last 3 days: D2 follows the folder again
        assert per_day(runner) == {"20250401": 700, "20250402": 500, "20250403": 100}
        assert set(states(runner).values()) == {"done"}
        report = {d.event_date: (d.file_rows, d.imported, d.intraday) for d in store.days("src")}
        assert report == {"20250401": (700, 700, False), "20250402": (500, 500, False), "20250403": (100, 100, False)}
        store.close()
    finally:
        runner.close()


def test_files_that_cannot_be_imported_fail_with_the_reason(data_dir: Path, drop: Path) -> None:
    runner = make_runner(data_dir, kind="files", format="ga4", path=str(drop), poll_seconds=0.01)
    try:
        drop_export(drop, ga4_day(D1, 200), D1, "parquet")
        drain(runner)
        (drop / "export.json").write_bytes(b'{"event_name": "x"}\n')
        settled(drop / "export.json")
        avro = drop / export_name(D2, "avro")
        write_export(ga4_day(D2, 50), avro, "avro")
        avro.write_bytes(avro.read_bytes()[:-300])  # cut short
        settled(avro)
        drain(runner)
        assert states(runner) == {
            export_name(D1, "parquet"): "done", "export.json": "failed", export_name(D2, "avro"): "failed",
        }  # fmt: skip
        assert per_day(runner) == {"20250401": 200}
        reasons = quarantined(runner)
        assert reasons[0].startswith("day 20250402: events_20250402-000000000000.avro: not a complete Avro file")
        assert reasons[1] == "export.json: no events_YYYYMMDD or events_intraday_YYYYMMDD in the file name"
        drain(runner)  # failed files are not retried until they change
        assert quarantined(runner) == reasons
    finally:
        runner.close()
