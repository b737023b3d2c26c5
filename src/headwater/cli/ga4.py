"""`headwater import --format ga4`: GA4 / Firebase BigQuery export files, a day replaced at a time, and the
reconciliation of days between export files (or recorded imports) and the lake."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table as RichTable

from headwater.cli.main import _progress, console, fail
from headwater.core.errors import HeadwaterError
from headwater.core.settings import Settings


def import_ga4(
    files: list[Path], source: str, report: bool, since: str | None, until: str | None, as_json: bool,
    settings: Settings,
) -> None:  # fmt: skip
    """`import --format ga4`: day replaces, or (--report) the reconciliation of files or recorded imports."""
    from headwater.core.erasure import Suppressor
    from headwater.lake.coordination import open_engine
    from headwater.lake.ga4 import DayStore, Ga4Importer, count_files, reconciliation
    from headwater.lake.ga4_read import ExportFile
    from headwater.query.engine import QueryEngine

    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        fail(f"no such file: {', '.join(missing)}")
    if not files and not report:
        fail("give the export files to import")
    exports = [ExportFile.local(p) for p in files]
    try:
        if report:
            engine = open_engine(settings.effective_catalog_uri)
            store = DayStore(settings.effective_catalog_uri)
            try:
                suppressor = Suppressor(engine, settings.privacy_salt or None, refresh_s=0.0)
                expected = count_files(exports, suppressor) if exports else store.days(source, since, until)
            finally:
                store.close()
                engine.dispose()
            query = QueryEngine(settings)
            try:
                out = reconciliation(lambda sql: query.execute(sql).rows, source, expected, since, until)
            finally:
                query.close()
            print_reconciliation(out, as_json)
            return
        importer = Ga4Importer(settings, source)
        started = time.monotonic()
        with _progress() as progress:
            tasks = {e.name: progress.add_task(e.name, total=None) for e in exports}
            try:
                groups = importer.import_files(exports, lambda name, n: progress.advance(tasks[name], n))
            finally:
                importer.close()
    except (HeadwaterError, ValueError) as exc:
        fail(str(exc))
    elapsed = time.monotonic() - started
    days = [c for g in groups for c in g.days.values()]
    totals: dict[str, Any] = {
        k: sum(getattr(c, k) for c in days) for k in ("file_rows", "quarantined", "suppressed", "imported")
    }
    totals.update(undated=sum(g.undated for g in groups), days=len(days), elapsed_s=round(elapsed, 2))
    totals["rows_per_s"] = round(totals["file_rows"] / elapsed, 1) if elapsed else 0
    totals["groups"] = [g.as_dict() for g in groups]
    sys.stdout.write(orjson.dumps(totals).decode() + "\n")


def print_reconciliation(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        columns = ("event_date", "file_rows", "quarantined", "suppressed", "expected", "lake_rows", "difference")
        table = RichTable(*columns, title=f"GA4 reconciliation of source {out['source']!r}")
        for day in out["days"]:
            table.add_row(*(str(day[c]) for c in columns), style="red" if day["difference"] else None)
        Console(width=max(Console().width, 110)).print(table)  # the column names whole
        console.print(f"{out['mismatched']} of {len(out['days'])} days differ")
    if out["mismatched"]:
        raise typer.Exit(2)
