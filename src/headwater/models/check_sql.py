"""The SQL of each kind of data check (`headwater.models.checks`).

Every kind is one SELECT of its *failing items*, each with a column `__hw_rows` (the rows of the table it
stands for), and `wrapped` turns it into the one query a check runs: how many items, how many rows, and a sample
of at most `SAMPLE` items. A check passes when no item fails.

| kind | an item | failing (`__hw_rows`) |
|---|---|---|
| not_null | a row with a NULL in one of the columns | 1 per row |
| unique | a value (of the column or columns) found more than once; NULLs are not compared | its rows |
| accepted_values | a value not in `values` (NULL is accepted: use not_null) | its rows |
| row_count | a day (or the whole table) whose rows are outside [min, max] | 1 per day |
| row_count_match | a day whose rows differ from compare_table's by more than tolerance x compare_table's | 1 per day |
| freshness | the table, when its newest time is older than max_age_minutes (or it is empty) | 1 |

Days are UTC days of `time_column`: the `days` days before today (and today with `include_today`), a day with
no row counting 0.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headwater.models.checks import Check

SAMPLE = 5
ITEMS = "__hw_items"
FAILING = "__hw_failing"
ROWS = "__hw_rows"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def column_sql(column: str) -> str:
    """A column name quoted; anything else (`properties->>'plan'`) is an SQL expression used as written."""
    return ident(column) if _IDENT.match(column) else f"({column})"


def literal(value: Any) -> str:
    """An SQL literal of a TOML scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _ts(moment: datetime | date) -> str:
    return f"TIMESTAMP '{moment.isoformat(sep=' ') if isinstance(moment, datetime) else moment.isoformat()}'"


def _filter(*conditions: str | None) -> str:
    kept = [f"({c}\n)" for c in conditions if c]
    return " WHERE " + " AND ".join(kept) if kept else ""


def day_range(check: Check, now: datetime) -> tuple[date, date]:
    """The first and last day a per-day check looks at."""
    today = now.date()
    last = today if check.include_today else today - timedelta(days=1)
    return today - timedelta(days=check.days), last


def _days_cte(first: date, last: date) -> str:
    return (
        f"__hw_days AS (SELECT CAST(range AS DATE) AS day FROM range({_ts(first)}, {_ts(last + timedelta(days=1))}, "
        "INTERVAL 1 DAY))"
    )


def _window(time_column: str, first: date, last: date) -> str:
    col = column_sql(time_column)
    return f"{col} >= {_ts(first)} AND {col} < {_ts(last + timedelta(days=1))}"


def _daily(table: str, time_column: str, count_column: str | None, where: str | None, first: date, last: date) -> str:
    count = f"CAST(round(sum({column_sql(count_column)})) AS BIGINT)" if count_column else "count(*)"
    return (
        f"SELECT CAST({column_sql(time_column)} AS DATE) AS day, {count} AS n FROM {ident(table)}"
        f"{_filter(_window(time_column, first, last), where)} GROUP BY 1"
    )


def failing_sql(check: Check, now: datetime) -> str:
    """The SELECT of the check's failing items (see the module docstring); `now` is naive UTC."""
    table, where, kind = ident(check.table), check.where, check.kind
    if kind == "not_null":
        nulls = " OR ".join(f"{column_sql(c)} IS NULL" for c in check.columns)
        return f"SELECT *, 1 AS {ROWS} FROM {table}{_filter(nulls, where)}"
    if kind == "unique":
        keys = ", ".join(column_sql(c) for c in check.columns)
        present = " AND ".join(f"{column_sql(c)} IS NOT NULL" for c in check.columns)
        return (
            f"SELECT {keys}, count(*) AS rows, count(*) AS {ROWS} FROM {table}{_filter(present, where)} "
            f"GROUP BY ALL HAVING count(*) > 1 ORDER BY rows DESC"
        )
    if kind == "accepted_values":
        col = column_sql(check.columns[0])
        values = ", ".join(literal(v) for v in check.values)
        return (
            f"SELECT {col} AS value, count(*) AS rows, count(*) AS {ROWS} FROM {table}"
            f"{_filter(f'{col} IS NOT NULL AND {col} NOT IN ({values})', where)} GROUP BY 1 ORDER BY rows DESC"
        )
    low = check.min if check.min is not None else 0
    high = check.max if check.max is not None else 2**62
    if kind == "row_count" and check.per is None:
        return (
            f"SELECT rows, 1 AS {ROWS} FROM (SELECT count(*) AS rows FROM {table}{_filter(where)}) "
            f"WHERE rows NOT BETWEEN {low} AND {high}"
        )
    if kind == "row_count":
        assert check.time_column is not None
        first, last = day_range(check, now)
        counts = _daily(check.table, check.time_column, None, where, first, last)
        return (
            f"WITH {_days_cte(first, last)}, __hw_counts AS ({counts}) "
            f"SELECT d.day, coalesce(c.n, 0) AS rows, 1 AS {ROWS} FROM __hw_days d LEFT JOIN __hw_counts c USING (day) "
            f"WHERE coalesce(c.n, 0) NOT BETWEEN {low} AND {high} ORDER BY d.day"
        )
    if kind == "row_count_match":
        assert check.time_column is not None and check.compare_table is not None
        first, last = day_range(check, now)
        mine = _daily(check.table, check.time_column, check.count_column, where, first, last)
        theirs = _daily(
            check.compare_table, check.compare_time_column or check.time_column, check.compare_count_column,
            check.compare_where, first, last,
        )  # fmt: skip
        return (
            f"WITH {_days_cte(first, last)}, __hw_a AS ({mine}), __hw_b AS ({theirs}) "
            "SELECT d.day, coalesce(a.n, 0) AS rows, coalesce(b.n, 0) AS compare_rows, "
            f"coalesce(a.n, 0) - coalesce(b.n, 0) AS difference, 1 AS {ROWS} "
            "FROM __hw_days d LEFT JOIN __hw_a a USING (day) LEFT JOIN __hw_b b USING (day) "
            f"WHERE abs(coalesce(a.n, 0) - coalesce(b.n, 0)) > {check.tolerance!r} * coalesce(b.n, 0) ORDER BY d.day"
        )
    if kind == "freshness":
        assert check.time_column is not None and check.max_age_minutes is not None
        oldest = now - timedelta(minutes=check.max_age_minutes)
        latest = f"CAST(max({column_sql(check.time_column)}) AS TIMESTAMP)"
        return (
            f"SELECT latest, round(date_diff('second', latest, {_ts(now)}) / 60.0, 1) AS age_minutes, 1 AS {ROWS} "
            f"FROM (SELECT {latest} AS latest FROM {table}{_filter(where)}) "
            f"WHERE latest IS NULL OR latest < {_ts(oldest)}"
        )
    raise ValueError(f"unknown check kind {kind!r}")


def wrapped(failing: str) -> str:
    """One query answering (items, failing rows, sample columns...): one row whatever the outcome."""
    return (
        f"WITH __hw_f AS ({failing}\n) "
        f"SELECT n.{ITEMS}, n.{FAILING}, s.* EXCLUDE ({ROWS}) "
        f"FROM (SELECT count(*) AS {ITEMS}, CAST(coalesce(sum({ROWS}), 0) AS BIGINT) AS {FAILING} FROM __hw_f) n "
        f"LEFT JOIN (SELECT * FROM __hw_f LIMIT {SAMPLE}) s ON true"
    )
