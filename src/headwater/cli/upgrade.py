"""`headwater upgrade [--check]`: the format of each part of the data directory, and the upgrade of older ones."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from headwater.cli.options import ConfigOpt, DataDirOpt

if TYPE_CHECKING:
    from headwater.upgrade.status import Status

CHECK_EXIT = {"current": 0, "upgrade": 1, "newer": 2}
VERDICTS = {
    "current": "up to date",
    "upgrade": "an upgrade is pending: `headwater upgrade` (or the next start) runs it",
    "newer": "written by a newer Headwater: this version will not open it",
}


def register(app: typer.Typer) -> None:
    from headwater.cli.main import console, fail, settings_from

    @app.command("upgrade")
    def upgrade(
        check: Annotated[
            bool,
            typer.Option(
                "--check", help="Only show formats and pending steps (exit 0: current, 1: upgrade pending, 2: newer)."
            ),
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Show the format of the data directory, log, catalog, account stores and settings; upgrade older ones.

        Every process upgrades an older data directory when it starts (after a backup, see upgrade_backup) and
        refuses a newer one; this command does it ahead of time, with progress, or only looks (--check)."""
        from headwater.core.errors import HeadwaterError
        from headwater.upgrade import check as inspect_status
        from headwater.upgrade import prepare

        settings = settings_from(config, formats=False, data_dir=data_dir)
        try:
            if check:
                status = inspect_status(settings)
            else:
                status = prepare(settings, progress=lambda message: console.print(escape(message), highlight=False))
        except HeadwaterError as exc:
            fail(str(exc))
            raise  # unreachable
        except Exception as exc:  # e.g. the catalog database is unreachable
            fail(f"cannot read the formats: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
            raise
        states = {c.state for c in status.components}
        verdict = "newer" if "newer" in states else "upgrade" if "upgrade" in states else "current"
        if as_json:
            document = {**status.as_dict(), "verdict": verdict}
            sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            _print(status, verdict)
        if check:
            raise typer.Exit(CHECK_EXIT[verdict])


def _print(status: Status, verdict: str) -> None:
    from headwater.upgrade.status import backups

    out = Console(soft_wrap=True, highlight=False)
    table = Table("component", "where", "found", "this version", "state")
    table.columns[1].overflow = "fold"
    for c in status.components:
        found = "-" if c.found.version is None else str(c.found.version)
        table.add_row(c.name, escape(c.where), found, str(c.current), c.state)
    out.print(table)
    for c in status.components:
        for step in c.steps:
            out.print(f"pending: {step.id}: {escape(step.description)}")
    for message in status.newer:
        out.print(f"[red]newer:[/red] {escape(message)}")
    in_progress = (status.document or {}).get("upgrade")
    if in_progress:
        done = ", ".join(in_progress.get("steps_done", [])) or "none"
        out.print(f"an upgrade from format {in_progress.get('from')} is in progress (steps done: {done})")
    for path in backups(Path(status.data_dir)):
        out.print(f"backup: {escape(str(path))}")
    out.print(VERDICTS[verdict])
