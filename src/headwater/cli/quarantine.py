"""`headwater quarantine replay`: quarantined events sent through the pipeline again (headwater.plan.replay)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from headwater.cli.options import ConfigOpt, DataDirOpt
from headwater.core.settings import Settings

if TYPE_CHECKING:
    from headwater.plan.ingest import IngestTransform

quarantine_app = typer.Typer(help="Replay quarantined events after the plan or the sender is fixed.",
                             no_args_is_help=True)  # fmt: skip
EPILOG = (
    "Example: headwater quarantine replay --reason 'plan shop@1-0-0' --since 2d --dry-run;  "
    "then the same with --yes. Replaying the same rows again lands nothing twice."
)


def register(app: typer.Typer) -> None:
    from headwater.cli.main import fail, settings_from

    app.add_typer(quarantine_app, name="quarantine")

    @quarantine_app.command("replay", epilog=EPILOG)
    def replay(
        reason: Annotated[str, typer.Option(help="Rows whose reason contains this text (e.g. 'plan shop@1-0-0').")],
        since: Annotated[str, typer.Option(help="Received from: ISO 8601 (UTC unless an offset), epoch ms or an age.")],
        until: Annotated[str | None, typer.Option(help="Received before (same forms; default now).")] = None,
        source: Annotated[str | None, typer.Option(help="Only this source's rows.")] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Count what would be replayed; append nothing.")
        ] = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Append matching quarantined events to the event log again, exactly once; they meet the plan active now.

        Events that still fail the collector's checks stay in quarantine and are counted as invalid."""
        from headwater.cli.audit import record_cli
        from headwater.plan.replay import parse_when, quarantined_rows, replay_rows

        try:
            start = parse_when(since)
            end = parse_when(until) if until else None
        except ValueError as exc:
            fail(f"--since/--until: {exc}")
            return
        if end is not None and end <= start:
            fail("--until must be after --since")
        settings = settings_from(config, data_dir=data_dir)
        err = Console(stderr=True)
        rows = quarantined_rows(settings, start, end, reason, source)
        if rows.num_rows == 0:
            _print({"matched": 0, "replayed": 0}, as_json, "no quarantined rows match")
            return
        if not dry_run and not yes:
            if not sys.stdin.isatty():
                fail(f"{rows.num_rows} quarantined rows match: add --yes to replay them (or --dry-run to count)")
            typer.confirm(f"Replay {rows.num_rows} quarantined events?", abort=True)
        transform = None if dry_run else _transform(settings)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task("replaying", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            result = replay_rows(settings, rows, dry_run=dry_run, transform=transform, progress=advance)
        if not dry_run:
            details = {"reason": reason, "since": start.isoformat(), "until": end.isoformat() if end else None,
                       "source": source, **result.public()}  # fmt: skip
            record_cli(settings, "quarantine.replayed", reason, details)
        verb = "would replay" if dry_run else "replayed"
        count = len(rows) - result.invalid - result.dropped if dry_run else result.replayed
        text = f"{verb} {count} of {result.matched} quarantined events"
        if result.already:
            text += f" ({result.already} replayed before: not again)"
        if result.invalid:
            text += f"; {result.invalid} still invalid, left in quarantine"
        _print(result.public() | {"replayed": count}, as_json, text)


def _transform(settings: Settings) -> IngestTransform:
    """The collector's ingest transforms (personal data, consent) for events that never met them."""
    from headwater.lake.coordination import open_engine
    from headwater.plan.ingest import IngestTransform

    return IngestTransform.open(open_engine(settings.effective_catalog_uri), settings)


def _print(result: dict[str, object], as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        sys.stdout.write(text + "\n")
