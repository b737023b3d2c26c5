"""`headwater audit`: read the audit trail from the catalog database; `record_cli` for the commands that change
keys and users on this machine."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from headwater.cli.options import ConfigOpt, DataDirOpt
from headwater.core.settings import Settings

FORMATS = ("table", "csv", "ndjson")
EPILOG = (
    "Actions: key.created, key.revoked, user.created, user.role_changed, user.deleted, user.password_changed, "
    "share.created, share.revoked, settings.started, settings.changed, privacy.deletion_requested, "
    "privacy.deletion_completed, plan.changed, login.succeeded, login.failed.\n\n"
    "Examples: headwater audit --since 2024-05-01 --action key;  headwater audit --format csv --limit 0 > audit.csv"
)


def record_cli(settings: Settings, action: str, target: str, details: dict[str, Any] | None = None) -> None:
    """Record an action done by this command as `cli:<os user>@<host>`; a failure is a warning, not an error
    (the change is already made)."""
    import socket

    from headwater.auth.audit import AuditLog, cli_actor

    try:
        audit = AuditLog(settings.effective_catalog_uri)
        try:
            audit.record(cli_actor(), action, target, details, address=socket.gethostname(), actor_kind="cli")
        finally:
            audit.close()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        Console(stderr=True).print(f"[yellow]warning:[/yellow] not recorded in the audit trail: {escape(reason)}")


def register(app: typer.Typer) -> None:
    from headwater.cli.main import fail, settings_from

    @app.command("audit", epilog=EPILOG)
    def audit(
        since: Annotated[
            str | None, typer.Option(help="From this time: ISO 8601 (UTC unless an offset is given) or epoch ms.")
        ] = None,
        until: Annotated[str | None, typer.Option(help="Before this time (same forms as --since).")] = None,
        action: Annotated[
            str | None,
            typer.Option(help="An action (key.created) or its first part (key); several separated by commas."),
        ] = None,
        actor: Annotated[
            str | None,
            typer.Option(help="A user or key name, cli:USER@HOST or system; a prefix when it ends with *."),
        ] = None,
        output: Annotated[str, typer.Option("--format", "-f", help="table, csv or ndjson.")] = "table",
        limit: Annotated[int, typer.Option(help="Most rows, newest first (0 = all).", min=0)] = 100,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Show the audit trail (who changed keys, users, share links, settings, deletions; when; from where).

        Reads the catalog database directly, like `keys` and `users`; newest first.
        """
        from sqlalchemy.exc import SQLAlchemyError

        from headwater.auth.audit import AuditLog, csv_lines, ndjson_lines, parse_time_ms

        if output not in FORMATS:
            fail("--format must be table, csv or ndjson")
        filters: dict[str, Any] = {"action": action, "actor": actor}
        for name, value in (("since", since), ("until", until)):
            if value:
                try:
                    filters[f"{name}_ms"] = parse_time_ms(value)
                except ValueError as exc:
                    fail(f"--{name}: {exc}")
        settings = settings_from(config, data_dir=data_dir)
        try:
            log = AuditLog(settings.effective_catalog_uri)
        except SQLAlchemyError as exc:
            fail(f"cannot open the catalog database: {str(exc).strip().splitlines()[0]}")
        try:
            rows = log.pages(limit=limit or None, **filters)
            if output == "csv":
                for chunk in csv_lines(rows):
                    sys.stdout.write(chunk)
            elif output == "ndjson":
                for line in ndjson_lines(rows):
                    sys.stdout.buffer.write(line)
            else:
                _print_table(list(rows), limit)
        except SQLAlchemyError as exc:
            fail(f"cannot read the audit trail: {str(exc).strip().splitlines()[0]}")
        finally:
            log.close()


def summary(row: dict[str, Any]) -> str:
    """A row's details in a line: settings rows name what changed (their snapshot is in the exports)."""
    import orjson

    details = row["details"]
    if row["action"] == "settings.started":
        return "first start: settings recorded"
    if row["action"] == "settings.changed":
        return "changed: " + ", ".join(details.get("changed") or [])
    return orjson.dumps(details).decode()[:200] if details else ""


def _print_table(rows: list[dict[str, Any]], limit: int) -> None:
    from rich.text import Text

    table = RichTable("id", "time (UTC)", "actor", "action", "target", "address", "details")
    for row in rows:
        cells = (str(row["id"]), row["at"].replace("T", " ").rstrip("Z"), f"{row['actor']} ({row['actor_kind']})",
                 row["action"], row["target"], row["address"], summary(row))  # fmt: skip
        table.add_row(*(Text(cell) for cell in cells))  # text, not markup
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200).print(table)
    more = " (newest first; --limit for more)" if limit and len(rows) == limit else ""
    Console(stderr=True).print(f"{len(rows)} rows{more}", markup=False)
