"""`headwater source NAME` (run one source) and `headwater sources` (their state)."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table as RichTable

from headwater.cli.options import ConfigOpt, DataDirOpt
from headwater.core.errors import HeadwaterError


def register(app: typer.Typer) -> None:
    from headwater.cli.main import fail, settings_from

    @app.command("source")
    def source(
        name: Annotated[str, typer.Argument(help="Name of a source (a \\[\\[sources]] table in the settings).")],
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Run one source (Kafka topic, RabbitMQ queue or file drop) until Ctrl-C; `up` runs the enabled ones."""
        from headwater.runtime.processes import run_source

        try:
            run_source(settings_from(config, data_dir=data_dir), name)
        except HeadwaterError as exc:
            fail(str(exc))

    @app.command("sources")
    def sources(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """List the configured sources with their state, throughput, lag and last error."""
        from headwater.sources.status import read_status

        settings = settings_from(config, data_dir=data_dir)
        rows = [read_status(settings, s) for s in settings.sources]
        if as_json:
            sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
            return
        if not rows:
            Console(stderr=True).print("no sources configured: add [[sources]] tables to headwater.toml (see README)")
            return
        table = RichTable("source", "kind", "format", "target", "state", "records", "rejected", "rate/s", "lag",
                          "last error")  # fmt: skip
        for row in rows:
            table.add_row(
                row["name"], row["kind"], row["format"], row["target"], row["state"],
                str(row.get("records_in", "")), str(row.get("rejected", "")), str(row.get("rate", "")),
                str(row.get("lag", "")), (row.get("last_error") or "")[:80],
            )  # fmt: skip
        Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200).print(table)
