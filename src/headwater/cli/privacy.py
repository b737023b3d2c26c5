"""`headwater privacy delete|status|worker`: deletion requests from the command line."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from headwater.cli.options import ConfigOpt, DataDirOpt

privacy_app = typer.Typer(help="Delete people's data (GDPR) and follow deletion requests.", no_args_is_help=True)


def _read_ids(path: Path | None) -> list[str]:
    if path is None:
        return []
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def register(app: typer.Typer) -> None:
    from headwater.cli.main import fail, settings_from

    app.add_typer(privacy_app, name="privacy")

    @privacy_app.command("delete")
    def delete(
        user_id: Annotated[list[str] | None, typer.Option("--user-id", "-u", help="A user id (repeat it).")] = None,
        anonymous_id: Annotated[
            list[str] | None, typer.Option("--anonymous-id", "-a", help="An anonymous id (repeat the option).")
        ] = None,
        users_file: Annotated[
            Path | None, typer.Option("--users-file", help="File of user ids, one per line ('-' for stdin).")
        ] = None,
        anonymous_file: Annotated[
            Path | None, typer.Option("--anonymous-file", help="File of anonymous ids, one per line.")
        ] = None,
        suppress_days: Annotated[
            float, typer.Option("--suppress-days", help="Drop later events carrying these ids for N days.")
        ] = 0.0,
        wait: Annotated[
            bool,
            typer.Option("--wait", help="Carry the request out here and wait (no running platform needed)."),
        ] = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Request the deletion of people's data everywhere Headwater keeps it; prints the request id.

        `headwater up` carries requests out in the background; `--wait` does it in this command and shows progress."""
        from headwater.cli.audit import record_cli
        from headwater.core.erasure import Suppressor, hash_id, open_board
        from headwater.privacy.requests import DeletionStore, check_days, validate_ids

        settings = settings_from(config, data_dir=data_dir)
        try:
            check_days(suppress_days)
            users, anons = validate_ids(
                {"user_ids": [*(user_id or []), *_read_ids(users_file)],
                 "anonymous_ids": [*(anonymous_id or []), *_read_ids(anonymous_file)]}
            )  # fmt: skip
        except (ValueError, OSError) as exc:
            message = str(exc).replace("user_ids", "--user-id").replace("anonymous_ids", "--anonymous-id")
            fail(message.replace("suppress_days", "--suppress-days"))
        engine = open_board(settings.effective_catalog_uri)
        try:
            store = DeletionStore(engine)
            created = store.create(users, anons, "cli", suppress_days=suppress_days)
            salt = Suppressor(engine, settings.privacy_salt).salt
            hashed = sorted(hash_id(i, salt) for i in {*users, *anons})
            record_cli(settings, "privacy.deletion_requested", created.id, {"ids_hashed": hashed})
        finally:
            engine.dispose()
        print(created.id)
        if wait:
            _wait(settings, created.id)

    @privacy_app.command("status")
    def status(
        request_id: Annotated[str | None, typer.Argument(help="A request id (default: the newest).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Show deletion requests: state, step, rows removed per table, timings."""
        from headwater.core.erasure import open_board
        from headwater.privacy.requests import DeletionStore

        settings = settings_from(config, data_dir=data_dir)
        engine = open_board(settings.effective_catalog_uri)
        try:
            store = DeletionStore(engine)
            if request_id is not None:
                found = store.get(request_id)
                if found is None:
                    fail(f"no deletion request {request_id!r} (see `headwater privacy status`)")
                    return
                sys.stdout.write(orjson.dumps(found.public(), option=orjson.OPT_INDENT_2).decode() + "\n")
                return
            rows = [d.public() for d in store.list(50)]
        finally:
            engine.dispose()
        if as_json:
            sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
            return
        table = RichTable("id", "state", "step", "created", "completed", "ids", "rows removed")
        for row in rows:
            removed = sum(row["rows_removed"].values())
            completed = (row["completed_at"] or "")[:19]
            table.add_row(
                row["id"], row["state"], row["step"], row["created_at"][:19], completed, str(row["ids_requested"]),
                str(removed),
            )  # fmt: skip
        Console(soft_wrap=True).print(table)

    @privacy_app.command("worker")
    def worker(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
        """Carry out deletion requests until stopped (`headwater up` runs this)."""
        from headwater.runtime.processes import run_privacy_worker

        run_privacy_worker(settings_from(config, data_dir=data_dir))


def _wait(settings: object, request_id: str) -> None:
    from headwater.core.settings import Settings
    from headwater.privacy.requests import COMPLETED
    from headwater.privacy.worker import PrivacyWorker

    assert isinstance(settings, Settings)
    worker = PrivacyWorker(settings)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.2), daemon=True)
    thread.start()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("deletion: pending", total=None)
            while True:
                found = worker.store.get(request_id)
                assert found is not None
                state = f"deletion {request_id}: {found.state} ({found.progress.get('step', 'queued')})"
                if found.state == "expiring":
                    state += f", completes at {found.public()['expires_at']}"
                progress.update(task, description=state)
                if found.state in (COMPLETED, "failed"):
                    break
                time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=30)
        worker.close()
    sys.stdout.write(orjson.dumps(found.public(), option=orjson.OPT_INDENT_2).decode() + "\n")
    if found.state != COMPLETED:
        raise typer.Exit(1)
