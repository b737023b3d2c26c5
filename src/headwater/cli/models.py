"""`headwater models list|run|test`: the SQL models of `models_dir` (headwater.models) and their data checks.

They work on the catalog of the data directory (or `catalog_uri`), like `plan`; `run` builds in this process with
the models' bounded resources, records the runs where the ops worker records its own, then runs the checks of the
models it built. `test` runs checks and exits 1 when one with severity error fails or cannot run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from headwater.cli.options import ConfigOpt, DataDirOpt

models_app = typer.Typer(
    help="SQL models (a directory of name.sql files) built as lake tables, and their data checks (checks.toml).",
    no_args_is_help=True,
)
ModelsDirOpt = Annotated[
    Path | None, typer.Option("--models-dir", "-m", help="The models directory (default: the models_dir setting).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
console = Console(soft_wrap=True, highlight=False)


def _out(payload: Any) -> None:
    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _rows(n: Any) -> str:
    return "—" if n is None else f"{int(n):,}"


def register(app: typer.Typer) -> None:
    from headwater.cli.main import fail, settings_from

    app.add_typer(models_app, name="models")

    def open_scheduler(config: Path | None, data_dir: Path | None, models_dir: Path | None) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from headwater.models.scheduler import ModelScheduler

        settings = settings_from(config, data_dir=data_dir, models_dir=models_dir)
        if settings.models_dir is None:
            fail("no models directory: set models_dir in the settings, or pass --models-dir DIR")
            return None
        if not settings.models_dir.is_dir():
            fail(f"models directory {settings.models_dir} does not exist")
        try:
            return ModelScheduler(settings)
        except SQLAlchemyError as exc:
            fail(f"cannot open the catalog database: {str(exc).strip().splitlines()[0]}")

    @models_app.command("list")
    def list_models(
        models_dir: ModelsDirOpt = None, as_json: JsonOpt = False, config: ConfigOpt = None, data_dir: DataDirOpt = None
    ) -> None:
        """Every model in dependency order: materialisation, schedule, inputs, last run and next run."""
        scheduler = open_scheduler(config, data_dir, models_dir)
        try:
            status = scheduler.status()
        finally:
            scheduler.close()
        if as_json:
            _out(status)
            return
        table = RichTable("model", "materialized", "schedule", "reads", "last run", "rows", "s", "next run")
        for m in status["models"]:
            last = m["last_run"] or {}
            when = f"{last.get('status', '')} {str(last.get('finished_at') or '')[:19]}".strip() or "never"
            if m["error"]:
                table.add_row(escape(m["name"]), "[red]error[/red]", "", "", escape(when), "", "", "")
                continue
            config_ = m["config"]
            kind = config_["materialized"] + (f" by {config_['partition_by']}" if config_["partition_by"] else "")
            duration = f"{last['duration_s']:.1f}" if last.get("duration_s") is not None else ""
            nxt = m["next_run"] or ("due" if m["due"] else "on change")
            table.add_row(escape(m["name"]), kind, escape(config_["schedule"]), escape(", ".join(m["refs"])),
                          escape(when), _rows(last.get("rows")), duration, nxt)  # fmt: skip
        console.print(table)
        for m in status["models"]:
            if m["error"]:
                console.print(f"[red]error:[/red] {escape(m['error'])}")

    @models_app.command("run")
    def run(
        names: Annotated[list[str] | None, typer.Argument(help="Models to build (default: all).")] = None,
        full_refresh: Annotated[
            bool, typer.Option("--full-refresh", help="Rebuild incremental models from scratch.")
        ] = False,
        downstream: Annotated[bool, typer.Option("--downstream", help="Also build the models that read them.")] = False,
        no_checks: Annotated[bool, typer.Option("--no-checks", help="Do not run the built models' checks.")] = False,
        models_dir: ModelsDirOpt = None,
        as_json: JsonOpt = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Build models now, in dependency order, then their checks; exit 1 when a build fails."""
        from headwater.core.errors import ModelError

        scheduler = open_scheduler(config, data_dir, models_dir)

        def progress(step: str, info: dict[str, Any]) -> None:
            if as_json:
                return
            name = escape(str(info.get("model", "")))
            if step == "start":
                console.print(f"building {name} ({info['materialized']})…")
            elif step == "done" and info["status"] == "ok":
                console.print(f"  [green]ok[/green] {name}: {_rows(info.get('rows'))} rows "
                              f"({info.get('mode')}) in {info['duration_s']:.1f} s")  # fmt: skip
            elif step == "done":
                console.print(f"  [red]failed[/red] {name}: {escape(str(info.get('error')))}")
            elif step == "skip":
                console.print(f"  [yellow]skipped[/yellow] {name}: {escape(str(info.get('error')))}")
            elif step == "checks":
                for r in info["results"]:
                    style = "green" if r["status"] == "pass" else "red" if r["severity"] == "error" else "yellow"
                    message = escape(str(r["detail"].get("message", "")))
                    said = "" if r["status"] == "pass" else f": {message}"
                    console.print(f"  check [{style}]{r['status']}[/{style}] {escape(r['check'])}{said}")

        try:
            runs = scheduler.run(names or None, full_refresh=full_refresh, downstream=downstream, progress=progress,
                                 checks=not no_checks)  # fmt: skip
        except ModelError as exc:
            fail(str(exc))
            return
        finally:
            scheduler.close()
        if as_json:
            _out(runs)
        if any(r["status"] == "failed" for r in runs):
            raise typer.Exit(1)

    @models_app.command("test")
    def test(
        names: Annotated[
            list[str] | None, typer.Argument(help="Checks, or tables / models whose checks run (default: all).")
        ] = None,
        models_dir: ModelsDirOpt = None,
        as_json: JsonOpt = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Run the data checks of checks.toml; exit 1 when a check of severity error fails or cannot run."""
        from headwater.core.errors import HeadwaterError
        from headwater.models.checks import CheckRunner, load_checks

        settings = settings_from(config, data_dir=data_dir, models_dir=models_dir)
        try:
            declared = load_checks(settings.models_dir)
        except HeadwaterError as exc:
            fail(str(exc))
            return
        chosen = [c for c in declared if not names or c.name in names or c.table in names]
        unknown = sorted(set(names or ()) - {c.name for c in declared} - {c.table for c in declared})
        if unknown:
            fail(f"no check named, nor on a table named, {', '.join(unknown)}")
        if not chosen:
            where = f" in {settings.models_dir}/checks.toml" if settings.models_dir else ""
            console.print(f"no checks declared{where}")
            return
        with CheckRunner(settings) as runner:
            results = []
            for check in chosen:
                if not as_json:
                    console.print(f"checking {escape(check.name)} ({check.kind} on {escape(check.table)})…")
                results += runner.run([check])
                r = results[-1]
                if not as_json:
                    style = "green" if r.status == "pass" else "red" if r.severity == "error" else "yellow"
                    said = "" if r.status == "pass" else f": {escape(str(r.detail.get('message', '')))}"
                    console.print(f"  [{style}]{r.status}[/{style}]{said}")
        if as_json:
            _out([r.public() for r in results])
        failed = [r for r in results if r.blocking]
        if not as_json:
            console.print(f"{len(results) - len(failed)} of {len(results)} checks pass (severity error)")
        if failed:
            raise typer.Exit(1)
