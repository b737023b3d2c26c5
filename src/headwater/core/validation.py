"""Pydantic validation errors as the one-line messages the API and CLI return (each names its field)."""

from __future__ import annotations

from pydantic import ValidationError


def field_errors(exc: ValidationError, root: str = "") -> str:
    """`field: message; ...`; an error of the whole document is named `root` (or left bare when empty)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or root
        message = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
