"""Recognise the query shapes that rollups and table metadata answer exactly (parsed with sqlglot).

Supported: one SELECT over `events` (no joins, subqueries, HAVING, DISTINCT or window functions) whose
measures are `count(*)`, `count(DISTINCT user_id)`, `count(DISTINCT coalesce(user_id, anonymous_id))`,
`min(timestamp)` and `max(timestamp)`, and whose other expressions (group keys, WHERE conditions) depend
on `timestamp` only through day-level functions (date, week, month, year, ...; hour-level ones for counts)
and on `event`. A bare `timestamp >= X` / `timestamp < Y` at the top of the WHERE clause is allowed
when X and Y fall on bucket boundaries (checked when the query runs). Everything else is left to the raw data.

The trick that keeps answers identical: such expressions have one value per (day or hour, event) bucket,
so DuckDB evaluates the user's own expressions over one row per bucket (`BUCKETS`), and only the measures
are merged from rollups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp

BUCKETS = "__hw_buckets"
BUCKET_ID = "__hw_bucket"
DAY_UNITS = frozenset({"DAY", "WEEK", "MONTH", "QUARTER", "YEAR", "DECADE", "CENTURY", "MILLENNIUM", "ISOYEAR"})
HOUR_UNITS = frozenset({"HOUR"})
DAY_FUNCTIONS = (
    exp.Year, exp.Month, exp.Day, exp.DayOfMonth, exp.DayOfWeek, exp.DayOfWeekIso, exp.DayOfYear,
    exp.Quarter, exp.Week, exp.WeekOfYear, exp.YearOfWeek, exp.YearOfWeekIso,
)  # fmt: skip
UNIT_FUNCTIONS = {"date_part", "datepart", "date_trunc", "datetrunc"}
# evaluated per bucket they would differ from per row (random) or are not part of the data (clocks)
VOLATILE = (
    exp.Rand, exp.Randn, exp.Uuid, exp.CurrentTimestamp, exp.CurrentDate, exp.CurrentTime, exp.CurrentDatetime,
)  # fmt: skip
VOLATILE_NAMES = frozenset(
    {"random", "setseed", "uuid", "gen_random_uuid", "uuidv4", "uuidv7", "now", "today", "current_timestamp",
     "get_current_timestamp", "get_current_time", "nextval", "currval", "current_localtimestamp"}
)  # fmt: skip
# the `events` view's fixed columns: a GROUP BY name that is one of them means the column, not an alias
EVENT_COLUMNS = frozenset(
    {"event_id", "type", "event", "user_id", "anonymous_id", "group_id", "previous_id", "timestamp", "received_at",
     "sent_at", "source", "properties", "context", "traits"}
)  # fmt: skip


class Unsupported(Exception):
    """The query is not one of the shapes; it runs on the raw data."""


@dataclass
class Measure:
    kind: str  # count | users | persons | min_time | max_time
    position: int  # in the SELECT list


@dataclass
class Shape:
    select: exp.Select
    measures: list[Measure]
    grain: str  # day | hour
    uses_event: bool
    bounds: list[tuple[str, exp.Expression]] = field(default_factory=list)  # (">=" | "<", constant)

    @property
    def needs_people(self) -> bool:
        return any(m.kind in ("users", "persons") for m in self.measures)

    @property
    def needs_metadata_only(self) -> bool:
        return not self.uses_event and all(m.kind in ("count", "min_time", "max_time") for m in self.measures)

    def bucket_sql(self) -> str:
        """The user's query over one row per bucket: the measures become the bucket list of each group."""
        select = self.select.copy()
        positions = {m.position for m in self.measures}
        projections = []
        for index, item in enumerate(select.expressions):
            if index in positions:
                projections.append(exp.Null().as_(f"__hw_m{index}"))
            else:
                projections.append(item)
        projections.append(exp.Anonymous(this="list", expressions=[exp.column(BUCKET_ID)]).as_("__hw_ids"))
        select.set("expressions", projections)
        select.set("from_", exp.From(this=exp.to_table(BUCKETS)))
        for part in ("order", "limit", "offset"):
            select.set(part, None)
        return select.sql(dialect="duckdb")


def _is_column(node: exp.Expression, name: str) -> bool:
    return isinstance(node, exp.Column) and node.name.lower() == name and node.table.lower() in ("", "events")


def _unit(node: exp.Expression) -> str | None:
    """The literal unit of a date_trunc / date_part / extract, upper case."""
    unit = node.args.get("unit")
    if isinstance(node, exp.Extract):
        unit = node.this
    if isinstance(node, exp.Anonymous) and node.expressions:
        unit = node.expressions[0]
    if isinstance(unit, exp.Var | exp.Literal | exp.Column | exp.Identifier):
        return str(unit.name).upper()
    return None


def _grain_of_wrapper(node: exp.Expression) -> str | None:
    """'day' / 'hour' when `node` turns a timestamp into a value constant over a day / hour."""
    if isinstance(node, DAY_FUNCTIONS):
        return "day"
    if isinstance(node, exp.Hour):
        return "hour"
    if isinstance(node, exp.Cast) and node.to.this == exp.DataType.Type.DATE:
        return "day"
    is_unit_function = isinstance(node, exp.TimestampTrunc | exp.DateTrunc | exp.Extract) or (
        isinstance(node, exp.Anonymous) and str(node.this).lower() in UNIT_FUNCTIONS
    )
    if is_unit_function:
        unit = _unit(node)
        if unit in DAY_UNITS:
            return "day"
        if unit in HOUR_UNITS:
            return "hour"
    return None


def _check_bucket_constant(node: exp.Expression) -> tuple[str, bool]:
    """Raise Unsupported unless `node` is constant within a bucket; return (grain, uses_event)."""
    grain, uses_event = "day", False
    for column in node.find_all(exp.Column):
        if _is_column(column, "event"):
            uses_event = True
            continue
        if not _is_column(column, "timestamp"):
            raise Unsupported(f"column {column.sql()} is not in rollups")
        wrapper: Any = column.parent
        while isinstance(wrapper, exp.Paren):
            wrapper = wrapper.parent
        wrapper_grain = _grain_of_wrapper(wrapper) if isinstance(wrapper, exp.Expression) else None
        if wrapper_grain is None:
            raise Unsupported("timestamp is used below day or hour level")
        if wrapper_grain == "hour":
            grain = "hour"
    for bad in (exp.Subquery, exp.Window, exp.AggFunc, exp.Select):
        if node.find(bad) is not None:
            raise Unsupported(f"{bad.__name__} in a key or condition")
    if node.find(*VOLATILE) is not None:
        raise Unsupported("a volatile function")
    for function in node.find_all(exp.Anonymous):
        if str(function.this).lower() in VOLATILE_NAMES:
            raise Unsupported("a volatile function")
    return grain, uses_event


def _measure(node: exp.Expression) -> str | None:
    target = node.this if isinstance(node, exp.Alias) else node
    if isinstance(target, exp.Count):
        inner = target.this
        if isinstance(inner, exp.Star) or (isinstance(inner, exp.Literal) and not inner.is_string):
            return "count"
        if isinstance(inner, exp.Distinct) and len(inner.expressions) == 1:
            arg = inner.expressions[0]
            if _is_column(arg, "user_id"):
                return "users"
            if isinstance(arg, exp.Coalesce) and _is_column(arg.this, "user_id"):
                rest = arg.expressions
                if len(rest) == 1 and _is_column(rest[0], "anonymous_id"):
                    return "persons"
        raise Unsupported("a count other than count(*) / count(DISTINCT user_id)")
    if isinstance(target, exp.Min | exp.Max) and _is_column(target.this, "timestamp"):
        return "min_time" if isinstance(target, exp.Min) else "max_time"
    if target.find(exp.AggFunc) is not None:
        raise Unsupported("an aggregate rollups do not hold")
    return None


def _conjuncts(node: exp.Expression) -> list[exp.Expression]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _range_bound(condition: exp.Expression) -> tuple[str, exp.Expression] | None:
    """`timestamp >= X` / `timestamp < X` (or mirrored) with X a constant: (op, X)."""
    flipped = {exp.GTE: "<", exp.LT: ">="}  # X >= timestamp means timestamp <= X: not a bucket bound
    direct = {exp.GTE: ">=", exp.LT: "<"}
    for kind in (exp.GTE, exp.LT, exp.GT, exp.LTE):
        if not isinstance(condition, kind):
            continue
        left, right = condition.this, condition.expression
        if _is_column(left, "timestamp") and right.find(exp.Column) is None:
            if kind in direct:
                return direct[kind], right
            raise Unsupported("> and <= on timestamp cut a bucket")
        if _is_column(right, "timestamp") and left.find(exp.Column) is None:
            mirrored = {exp.LTE: ">=", exp.GT: "<"}.get(kind)
            if mirrored is None:
                raise Unsupported(f"{flipped.get(kind, kind)} on timestamp cuts a bucket")
            return mirrored, left
    return None


def parse_shape(sql: str) -> Shape:
    """The shape of `sql`, or Unsupported."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise Unsupported(f"sqlglot: {exc}") from None
    if not isinstance(tree, exp.Select):
        raise Unsupported("not a plain SELECT")
    for part in ("with_", "joins", "having", "qualify", "distinct", "windows", "sample", "pivots", "laterals"):
        if tree.args.get(part):
            raise Unsupported(f"{part} is not supported")
    source = tree.args.get("from_")
    table = source.this if isinstance(source, exp.From) else None
    if not isinstance(table, exp.Table) or table.name.lower() != "events" or table.args.get("db"):
        raise Unsupported("not FROM events")
    if any(table.args.get(part) for part in ("sample", "joins", "pivots", "laterals")):
        raise Unsupported("not FROM events")
    measures: list[Measure] = []
    constant: list[exp.Expression] = []  # keys and conditions: each must be constant within a bucket
    for index, item in enumerate(tree.expressions):
        if isinstance(item, exp.Star):
            raise Unsupported("SELECT *")
        kind = _measure(item)
        if kind is not None:
            measures.append(Measure(kind, index))
        else:
            constant.append(item.this if isinstance(item, exp.Alias) else item)
    if not measures:
        raise Unsupported("no measure")
    bounds: list[tuple[str, exp.Expression]] = []
    where = tree.args.get("where")
    if where is not None:  # bounds stay in the query too: on bucket starts they are exact when aligned
        for condition in _conjuncts(where.this):
            bound = _range_bound(condition)
            if bound is not None:
                bounds.append(bound)
            else:
                constant.append(condition)
    aliases = {item.alias.lower() for item in tree.expressions if isinstance(item, exp.Alias)}
    group = tree.args.get("group")
    for key in group.expressions if group is not None else []:
        name = key.name.lower() if isinstance(key, exp.Column) else ""
        shredded = name.startswith(("p_", "n_"))  # may be a column of a shredded property
        if name in aliases and name not in EVENT_COLUMNS and not shredded and not key.table:
            continue  # an alias of a SELECT item, checked above (a column of that name would win)
        if not isinstance(key, exp.Literal):
            constant.append(key)
    checked = [_check_bucket_constant(node) for node in constant]
    grain = "hour" if any(g == "hour" for g, _ in checked) else "day"
    uses_event = any(event for _, event in checked)
    shape = Shape(tree, measures, grain, uses_event, bounds)
    if shape.needs_people and grain == "hour":
        raise Unsupported("people per hour are not in rollups")
    timed = any(m.kind in ("min_time", "max_time") for m in measures)
    if timed and (uses_event or grain == "hour" or shape.needs_people):
        raise Unsupported("min/max time comes from day partitions over all events, beside counts only")
    return shape
