"""Cohort members in SQL: `members_sql(definition, actor, as_of)` is one SELECT of a `member` column, each person
once, that insights inline as a CTE (`insights/sql.py` `with_cohorts`) and the cohort API runs.

`as_of`: the definition evaluated on the events before that time (a rolling `days` window ends there); None:
now, rounded up to the minute (so the SQL, a cache key, changes at most once a minute). Conditions are sets of
people combined with INTERSECT (`match: all`) or UNION (`any`); a negated condition is subtracted (EXCEPT) from
the other conditions' people, or, with nothing else to start from, from everyone who has an event before `as_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from headwater.cohorts.spec import CohortDefinition, CohortError, HasProperty, InCohort, InFunnel, Performed
from headwater.insights.sql import (
    NO_SHREDS,
    PERSON,
    Shreds,
    filters_sql,
    funnel_people_sql,
    lit,
    prop,
    ts,
    where,
)

Lookup = Callable[[int], CohortDefinition]
"""A saved cohort's definition by id (raises CohortError 404 when there is none)."""
ACTORS = {PERSON: "ids", "person_id": "persons"}
MAX_DEPTH = 5  # cohorts of cohorts
EMPTY = "SELECT NULL::VARCHAR AS member WHERE false"


def default_as_of() -> datetime:
    """Now, rounded up to the next minute (naive UTC, as lake timestamps are)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


def members_sql(
    definition: CohortDefinition,
    actor: str,
    as_of: datetime | None = None,
    lookup: Lookup | None = None,
    shred: Shreds = NO_SHREDS,
    _seen: tuple[int, ...] = (),
) -> str:
    """`SELECT ... AS member`: the people (as `actor`: `person_id` or `coalesce(user_id, anonymous_id)`) in the
    cohort as of `as_of`; `lookup` resolves `cohort` conditions (cycles and depth > 5 are errors)."""
    if actor not in ACTORS:
        raise CohortError(f"actor: one of {', '.join(ACTORS)}")
    end = as_of.astimezone(UTC).replace(tzinfo=None) if as_of and as_of.tzinfo else (as_of or default_as_of())
    positives: list[str] = []
    negatives: list[str] = []
    for condition in definition.conditions:
        sql, negate = _condition(condition, actor, end, lookup, shred, _seen)
        (negatives if negate else positives).append(sql)
    everyone = f"SELECT DISTINCT {actor} AS member FROM events WHERE {actor} IS NOT NULL AND timestamp < {ts(end)}"
    if definition.match == "all":
        body = " INTERSECT ".join(f"SELECT member FROM ({p})" for p in positives) if positives else everyone
        for negative in negatives:
            body = f"SELECT member FROM ({body}) EXCEPT SELECT member FROM ({negative})"
        return body
    parts = list(positives)
    parts += [f"SELECT member FROM ({everyone}) EXCEPT SELECT member FROM ({n})" for n in negatives]
    return " UNION ".join(f"SELECT member FROM ({p})" for p in parts)


def _condition(
    condition: object, actor: str, end: datetime, lookup: Lookup | None, shred: Shreds, seen: tuple[int, ...]
) -> tuple[str, bool]:
    """(the SQL of the people the condition names, negated?)."""
    if isinstance(condition, Performed):
        return _performed(condition, actor, end, shred), condition.negate
    if isinstance(condition, HasProperty):
        return _property(condition, actor, end, shred)
    if isinstance(condition, InFunnel):
        return _funnel(condition, actor, end, shred), False
    assert isinstance(condition, InCohort)
    if lookup is None:
        raise CohortError("conditions: a cohort condition needs the saved cohorts")
    if condition.cohort_id in seen or len(seen) >= MAX_DEPTH:
        raise CohortError(f"conditions: cohort {condition.cohort_id} refers to itself (or nests more than 5 deep)")
    inner = lookup(condition.cohort_id)
    sql = members_sql(inner, actor, end, lookup, shred, (*seen, condition.cohort_id))
    return sql, condition.negate


def _performed(c: Performed, actor: str, end: datetime, shred: Shreds) -> str:
    if c.days is not None:
        window = [f"timestamp >= {ts(end - timedelta(days=c.days))}", f"timestamp < {ts(end)}"]
    else:
        window = [f"timestamp < {ts(end)}"]
        window += [f"timestamp >= {ts(c.date_from)}"] if c.date_from else []
        window += [f"timestamp < {ts(c.date_to)}"] if c.date_to else []
    cond = where(f"event = {lit(c.event)}", *window, filters_sql(c.filters, shred, actor), f"{actor} IS NOT NULL")
    having = []
    if c.min_count > 1:
        having.append(f"count(*) >= {c.min_count}")
    if c.max_count is not None:
        having.append(f"count(*) <= {c.max_count}")
    tail = f" HAVING {' AND '.join(having)}" if having else ""
    return f"SELECT {actor} AS member FROM events WHERE {cond} GROUP BY 1{tail}"


def _property(c: HasProperty, actor: str, end: datetime, shred: Shreds) -> tuple[str, bool]:
    """The person's latest value (by event time) of the property; `neq` and `is_not_set` are the complements of
    `eq` and `is_set`, so people who never had the property are in them."""
    expr = f"CAST({prop(c.property, shred)} AS VARCHAR)"
    latest = (
        f"SELECT {actor} AS member, arg_max({expr}, timestamp) AS v FROM events "
        f"WHERE {expr} IS NOT NULL AND {actor} IS NOT NULL AND timestamp < {ts(end)} GROUP BY 1"
    )
    value = c.value
    text = lit(str(value).lower() if isinstance(value, bool) else str(value))
    test = {
        "eq": f"v = {text}",
        "neq": f"v = {text}",
        "is_set": "TRUE",
        "is_not_set": "TRUE",
        "contains": f"contains(v, {text})",
        "gt": f"TRY_CAST(v AS DOUBLE) > {lit(value)}",
        "gte": f"TRY_CAST(v AS DOUBLE) >= {lit(value)}",
        "lt": f"TRY_CAST(v AS DOUBLE) < {lit(value)}",
        "lte": f"TRY_CAST(v AS DOUBLE) <= {lit(value)}",
    }[c.op]
    return f"SELECT member FROM ({latest}) WHERE {test}", c.op in ("neq", "is_not_set")


def _funnel(c: InFunnel, actor: str, end: datetime, shred: Shreds) -> str:
    funnel = c.funnel.model_copy(update={"count_by": ACTORS[actor], "breakdown": None, "breakdown_cohorts": []})
    naive_from = funnel.date_from.astimezone(UTC).replace(tzinfo=None) if funnel.date_from.tzinfo else funnel.date_from
    if naive_from >= end:
        return EMPTY
    naive_to = funnel.date_to.astimezone(UTC).replace(tzinfo=None) if funnel.date_to.tzinfo else funnel.date_to
    if naive_to > end:
        funnel = funnel.model_copy(update={"date_to": end})
    depth = f"depth = {c.step}" if c.dropped else f"depth >= {c.step + 1}"
    return f"SELECT person AS member FROM ({funnel_people_sql(funnel, shred, end)}) WHERE {depth}"
