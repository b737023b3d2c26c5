"""`headwater sql-server`: the PostgreSQL wire protocol for BI tools and psql (`headwater.sqlwire`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headwater.cli.options import ConfigOpt, DataDirOpt


def register(app: typer.Typer) -> None:
    """Add the `sql-server` command to `app`."""
    from headwater.cli.main import fail, settings_from

    @app.command("sql-server")
    def sql_server(
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
        host: Annotated[
            str | None, typer.Option("--host", help="Address to bind (default: the `host` setting).")
        ] = None,
        port: Annotated[
            int | None,
            typer.Option("--port", "-p", help="Port (default: the `sql_port` setting, else 5433; 0 = any free one)."),
        ] = None,
        port_file: Annotated[
            Path | None, typer.Option(help="Write the bound port to this file once listening.")
        ] = None,
    ) -> None:
        """Serve the lake over the PostgreSQL wire protocol (read-only): psql, Metabase, Superset, any PG driver.

        Sign in with a read or admin key (user = the key's name, password = the key) or as a web user with SQL
        access (analyst or admin)."""
        from headwater.core.errors import HeadwaterError
        from headwater.sqlwire.server import serve

        settings = settings_from(config, data_dir=data_dir, host=host)
        chosen = port if port is not None else settings.sql_port if settings.sql_port is not None else 5433
        try:
            serve(settings, chosen, port_file)
        except HeadwaterError as exc:
            fail(str(exc))
