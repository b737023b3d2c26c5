"""Command-line options shared by the `headwater` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (default ./headwater.toml)."),
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data directory (default ./.headwater).")]
