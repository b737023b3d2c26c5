"""SQL literals for values built into SQL text (insights, the SQL server's bound parameters)."""

from __future__ import annotations


def lit(value: object) -> str:
    """A SQL literal for a string, number, boolean or None."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"
