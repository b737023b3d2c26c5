"""Compile insight specifications to one DuckDB SQL query each (shown to the user as is).

Names are validated by the spec (a strict pattern) and values are rendered as SQL literals,
so the text is safe to run; it also runs inside the query sandbox like any user SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from headwater.core.sql_literals import lit
from headwater.insights.spec import (
    COHORT,
    COLUMNS,
    CatalogQuery,
    ExperimentQuery,
    Filter,
    FunnelQuery,
    Insight,
    JourneyQuery,
    RetentionQuery,
    TimelineQuery,
    TrendQuery,
)
from headwater.lake.shredding import Shred

Shreds = Mapping[str, Shred]
"""The events table's shredded properties by name (lake/shredding.py); empty: every property is read from JSON."""
NO_SHREDS: Shreds = {}
PERSON = "coalesce(user_id, anonymous_id)"  # an id: what `count_by: ids` counts
QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


class CohortResolver(Protocol):
    def __call__(self, cohort_id: int, actor: str, shred: Shreds = ..., /) -> tuple[str, str]:
        """(name, members SQL: `SELECT ... AS member`) of a saved cohort counted as `actor`, reading the shredded
        property columns `shred` names; raises InsightError when there is no such cohort."""
        ...


COHORT_LABELS = "cohort_labels"  # the CTE of (member, label) rows a `$cohort` breakdown joins


def actor(q: Insight, table: str = "") -> str:
    """Who an insight counts: `person_id` (a person, through identity stitching: the engine then reads `events`
    with that column) with `count_by: persons`, else the raw id. `table`: a qualifier (`e`)."""
    prefix = f"{table}." if table else ""
    if q.count_by == "persons":
        return f"{prefix}person_id"
    return f"coalesce({prefix}user_id, {prefix}anonymous_id)"


def ts(value: datetime) -> str:
    """A TIMESTAMP literal in UTC (lake timestamps are naive UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return f"TIMESTAMP '{value.isoformat(sep=' ')}'"


def _split(name: str) -> tuple[str, str]:
    root, _, key = name.partition(".")
    if root not in ("properties", "context", "traits") or not key:
        root, key = "properties", name
    return root, key


def prop(name: str, shred: Shreds = NO_SHREDS) -> str:
    """A column, or a property as text: `plan` / `properties.plan` / `context.ip` / `traits.email`.

    A shredded property reads its text column, which holds exactly what the JSON path gives.
    """
    if name in COLUMNS:
        return name
    root, key = _split(name)
    if root == "properties" and key in shred:
        return '"' + shred[key].text + '"'
    return f"json_extract_string({root}, {lit('$.' + chr(34) + key + chr(34))})"


def number(name: str, shred: Shreds = NO_SHREDS) -> str:
    """A property as a DOUBLE (NULL when its text is not a number); a numeric shredded property reads
    its number column, which holds exactly that."""
    root, key = _split(name)
    found = shred.get(key) if root == "properties" and name not in COLUMNS else None
    if found is not None and found.number:
        return '"' + found.number + '"'
    return f"TRY_CAST({prop(name, shred)} AS DOUBLE)"


def cohort_cte(cohort_id: int) -> str:
    return f"cohort_{cohort_id}"


def filter_sql(item: Filter, shred: Shreds = NO_SHREDS, who: str = PERSON) -> str:
    """A filter's condition; `who`: the insight's actor, which a `$cohort` filter looks up in the cohort's CTE."""
    if item.property == COHORT:
        return f"{who} {'IN' if item.op == 'eq' else 'NOT IN'} (SELECT member FROM {cohort_cte(int(str(item.value)))})"
    expr = prop(item.property, shred)
    if item.op == "is_set":
        return f"{expr} IS NOT NULL"
    if item.op == "is_not_set":
        return f"{expr} IS NULL"
    if item.op == "contains":
        return f"contains({expr}, {lit(str(item.value))})"
    if item.op in ("gt", "gte", "lt", "lte"):
        symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[item.op]
        return f"{number(item.property, shred)} {symbol} {lit(item.value)}"
    value = item.value
    text = lit(str(value).lower() if isinstance(value, bool) else str(value))
    return f"{expr} {'=' if item.op == 'eq' else 'IS DISTINCT FROM'} {text}"


def where(*conditions: str) -> str:
    kept = [c for c in conditions if c]
    return " AND ".join(f"({c})" for c in kept) if kept else "TRUE"


def filters_sql(filters: list[Filter], shred: Shreds = NO_SHREDS, who: str = PERSON) -> str:
    return where(*(filter_sql(f, shred, who) for f in filters))


def trend_sql(q: TrendQuery, shred: Shreds = NO_SHREDS) -> str:
    span = int((q.date_to - q.date_from).total_seconds())
    periods = [("current", 0), ("previous", span)] if q.compare else [("current", 0)]
    parts = []
    who = actor(q)
    by_cohort = q.breakdown == COHORT
    source = f"events JOIN {COHORT_LABELS} ON {COHORT_LABELS}.member = {who}" if by_cohort else "events"
    for index, series in enumerate(q.series):
        value = number(series.property, shred) if series.property else "NULL"
        breakdown = f"coalesce(CAST({prop(q.breakdown, shred)} AS VARCHAR), '(none)')" if q.breakdown else "NULL"
        if by_cohort:
            breakdown = f"{COHORT_LABELS}.label"
        for period, shift in periods:
            cond = where(
                f"event = {lit(series.event)}",
                f"timestamp >= {ts(q.date_from)} - INTERVAL {shift} SECOND",
                f"timestamp < {ts(q.date_to)} - INTERVAL {shift} SECOND",
                filters_sql(series.filters, shred, who),
                filters_sql(q.filters, shred, who),
            )
            parts.append(
                f"SELECT {index} AS series, '{period}' AS period, "
                f"date_trunc('{q.interval}', timestamp + INTERVAL {shift} SECOND) AS bucket, "
                f"{breakdown} AS breakdown, {who} AS person, {value} AS v FROM {source} WHERE {cond}"
            )
    measures = []
    for index, series in enumerate(q.series):
        if series.measure == "count":
            agg = "count(*)"
        elif series.measure == "users":
            agg = "count(DISTINCT person)"
        elif series.measure in QUANTILES:
            agg = f"quantile_cont(v, {QUANTILES[series.measure]})"
        else:
            agg = f"{series.measure}(v)"
        measures.append(f"WHEN {index} THEN CAST({agg} AS DOUBLE)")
    label = "breakdown"
    if q.breakdown and not by_cohort:
        label = "CASE WHEN breakdown IN (SELECT breakdown FROM top) THEN breakdown ELSE '(other)' END"
    body = "\n  UNION ALL ".join(parts)
    return (
        f"WITH base AS (\n  {body}\n),\n"
        f"top AS (SELECT breakdown FROM base WHERE period = 'current' GROUP BY breakdown "
        f"ORDER BY count(*) DESC, breakdown LIMIT {q.top_n})\n"
        f"SELECT series, period, bucket, {label} AS breakdown, CASE series {' '.join(measures)} END AS value\n"
        f"FROM base GROUP BY 1, 2, 3, 4 ORDER BY series, period, breakdown, bucket"
    )


def funnel_sql(q: FunnelQuery, shred: Shreds = NO_SHREDS) -> str:
    ctes = funnel_ctes(q, shred)
    n = len(q.steps)
    if q.order == "any":
        times = ", ".join(f"NULL::DOUBLE AS median_s{i}, NULL::DOUBLE AS avg_s{i}" for i in range(1, n))
    else:
        times = ", ".join(
            f"median(epoch(t{i}) - epoch(t{i - 1})) AS median_s{i}, avg(epoch(t{i}) - epoch(t{i - 1})) AS avg_s{i}"
            for i in range(1, n)
        )
    source = "best"
    if q.breakdown == COHORT:  # the person's cohorts, not a property of the first step
        source = f"(SELECT best.* REPLACE ({COHORT_LABELS}.label AS breakdown) FROM best JOIN {COHORT_LABELS} "
        source += f"ON {COHORT_LABELS}.member = best.person)"
    ctes.append(
        f"top AS (SELECT breakdown FROM {source} GROUP BY breakdown ORDER BY count(*) DESC, breakdown LIMIT {q.top_n})"
    )
    label = "CASE WHEN breakdown IN (SELECT breakdown FROM top) THEN breakdown ELSE '(other)' END"
    if q.breakdown == COHORT:
        label = "breakdown"
    counts = ", ".join(f"count(*) FILTER (WHERE depth >= {i + 1}) AS step{i}" for i in range(n))
    return (
        "WITH " + ",\n".join(ctes) + f"\nSELECT {label if q.breakdown else 'NULL'} AS breakdown, {counts}, {times}\n"
        f"FROM {source} GROUP BY ALL ORDER BY step0 DESC, breakdown"
    )


def funnel_people_sql(q: FunnelQuery, shred: Shreds = NO_SHREDS, until: datetime | None = None) -> str:
    """Each person who started the funnel with the depth of their deepest attempt (`person`, `depth`: 1 = step 0);
    `until`: only the events before it count (a cohort as of a past moment must not see later conversions)."""
    return "WITH " + ",\n".join(funnel_ctes(q, shred, until)) + "\nSELECT person, depth FROM best"


def funnel_ctes(q: FunnelQuery, shred: Shreds = NO_SHREDS, until: datetime | None = None) -> list[str]:
    """The funnel's CTEs up to `best`: one row per person, their deepest attempt (`depth`, step times `t<i>`);
    `until`: no event from that time on (else the conversion window may run past `date_to`)."""
    n = len(q.steps)
    who = actor(q)
    window = f"INTERVAL {q.window_seconds} SECOND"
    flags = [
        f"({where(f'event = {lit(step.event)}', filters_sql(step.filters, shred, who))}) AS s{i}"
        for i, step in enumerate(q.steps)
    ]
    flags += [f"(event = {lit(x.event)}) AS x{i}" for i, x in enumerate(q.exclusions)]
    breakdown = "NULL"
    if q.breakdown and q.breakdown != COHORT:
        breakdown = f"coalesce(CAST({prop(q.breakdown, shred)} AS VARCHAR), '(none)')"
    relevant = " OR ".join([f"s{i}" for i in range(n)] + [f"x{i}" for i in range(len(q.exclusions))])
    events_cond = where(
        f"timestamp >= {ts(q.date_from)}",
        f"timestamp < {ts(q.date_to)} + {window}",
        f"timestamp < {ts(until)}" if until is not None else "",
        filters_sql(q.filters, shred, who),
    )
    ctes = [
        f"e AS (SELECT * FROM (SELECT {actor(q)} AS person, timestamp AS ts, event_id, {breakdown} AS breakdown, "
        f"{', '.join(flags)} FROM events WHERE {events_cond})"
        + ("" if q.order == "strict" else f" WHERE {relevant}")
        + ")"
    ]
    if q.order == "any":
        starts = " OR ".join(f"s{i}" for i in range(n))
        ctes.append(f"a AS (SELECT person, ts AS t0, breakdown FROM e WHERE ({starts}) AND ts < {ts(q.date_to)})")
        reached = " + ".join(
            f"(EXISTS (SELECT 1 FROM e WHERE e.person = a.person AND e.s{i} AND e.ts >= a.t0 "
            f"AND e.ts <= a.t0 + {window}))::INT"
            for i in range(n)
        )
        ctes.append(f"attempts AS (SELECT a.*, {reached} AS depth FROM a)")
    else:
        ctes.append(f"a0 AS (SELECT person, ts AS t0, breakdown FROM e WHERE s0 AND ts < {ts(q.date_to)})")
        for i in range(1, n):
            after = f"e.ts > a.t{i - 1} AND e.ts <= a.t0 + {window}"
            if q.order == "strict":  # the very next event of the person must be this step
                nxt = f"(SELECT CASE WHEN arg_min(e.s{i}, (e.ts, e.event_id)) THEN min(e.ts) END FROM e "
                nxt += f"WHERE e.person = a.person AND {after})"
            else:  # the earliest matching event after the previous step: an ASOF join, O(n log n) per step
                # where a correlated subquery is quadratic in one person's events (measured: bench/queries.py);
                # DuckDB 1.5 matches a NULL left key in an ASOF join, hence the IS NOT NULL
                ctes.append(f"e{i} AS (SELECT person, ts FROM e WHERE s{i})")
                ctes.append(
                    f"a{i} AS (SELECT a.*, CASE WHEN a.t{i - 1} IS NOT NULL AND x.ts <= a.t0 + {window} "
                    f"THEN x.ts END AS t{i} "
                    f"FROM a{i - 1} a ASOF LEFT JOIN e{i} x ON a.person = x.person AND a.t{i - 1} < x.ts)"
                )
                continue
            ctes.append(
                f"a{i} AS (SELECT a.*, CASE WHEN a.t{i - 1} IS NOT NULL THEN {nxt} END AS t{i} FROM a{i - 1} a)"
            )
        depth = " + ".join(["1"] + [f"(t{i} IS NOT NULL)::INT" for i in range(1, n)])
        excluded = []
        for k, x in enumerate(q.exclusions):
            to_step = n - 1 if x.to_step is None else x.to_step
            upper = f"coalesce(a.t{to_step}, a.t0 + {window})"
            excluded.append(
                f"EXISTS (SELECT 1 FROM e WHERE e.person = a.person AND e.x{k} "
                f"AND e.ts > a.t{x.from_step} AND e.ts < {upper})"
            )
        keep = f" WHERE NOT ({' OR '.join(excluded)})" if excluded else ""
        ctes.append(f"attempts AS (SELECT a.*, {depth} AS depth FROM a{n - 1} a{keep})")
    ctes.append(
        "best AS (SELECT * FROM attempts QUALIFY row_number() OVER (PARTITION BY person ORDER BY depth DESC, t0) = 1)"
    )
    return ctes


def retention_sql(q: RetentionQuery, shred: Shreds = NO_SHREDS) -> str:
    period = q.period
    return (
        f"WITH firsts AS (SELECT {actor(q)} AS person, min(timestamp) AS first_ts FROM events "
        f"WHERE {where(f'event = {lit(q.start_event)}', filters_sql(q.filters, shred, actor(q)))} GROUP BY person),\n"
        f"cohort AS (SELECT person, date_trunc('{period}', first_ts) AS cohort FROM firsts "
        f"WHERE first_ts >= {ts(q.date_from)} AND first_ts < {ts(q.date_to)}),\n"
        f"returns AS (SELECT DISTINCT c.person, c.cohort, "
        f"date_diff('{period}', c.cohort, date_trunc('{period}', e.timestamp)) AS n "
        f"FROM cohort c JOIN events e ON {actor(q, 'e')} = c.person "
        f"WHERE e.event = {lit(q.return_event)} AND e.timestamp >= c.cohort + INTERVAL 1 {period}),\n"
        f"sizes AS (SELECT cohort, count(*) AS size FROM cohort GROUP BY cohort)\n"
        f"SELECT s.cohort, s.size, r.n AS period, count(r.person) AS returned FROM sizes s "
        f"LEFT JOIN returns r ON r.cohort = s.cohort AND r.n BETWEEN 1 AND {q.periods} "
        f"GROUP BY ALL ORDER BY s.cohort, period"
    )


def journey_sql(q: JourneyQuery, shred: Shreds = NO_SHREDS) -> str:
    window = where(
        f"timestamp >= {ts(q.date_from)}", f"timestamp < {ts(q.date_to)}", filters_sql(q.filters, shred, actor(q))
    )
    if q.direction == "after":
        span, order = f"s.rn BETWEEN a.rn0 AND a.rn0 + {q.depth}", "ASC"
    else:
        span, order = f"s.rn BETWEEN a.rn0 - {q.depth} AND a.rn0", "ASC"
    return (
        f"WITH seq AS (SELECT {actor(q)} AS person, event, "
        f"row_number() OVER (PARTITION BY {actor(q)} ORDER BY timestamp, event_id) AS rn FROM events WHERE {window}),\n"
        f"anchor AS (SELECT person, min(rn) AS rn0 FROM seq WHERE event = {lit(q.event)} GROUP BY person),\n"
        f"path AS (SELECT s.person, s.rn - a.rn0 AS step, s.event FROM seq s JOIN anchor a USING (person) "
        f"WHERE {span}),\n"
        f"edges AS (SELECT person, step, lag(event) OVER (PARTITION BY person ORDER BY step) AS source, "
        f"event AS target FROM path),\n"
        f"paths AS (SELECT string_agg(event, ' → ' ORDER BY step {order}) AS path FROM path GROUP BY person)\n"
        f"SELECT * FROM (SELECT 'edge' AS kind, step, source, target, NULL AS path, count(*) AS users FROM edges "
        f"WHERE source IS NOT NULL GROUP BY ALL)\n"
        f"UNION ALL SELECT * FROM (SELECT 'path', NULL, NULL, NULL, path, count(*) AS users FROM paths "
        f"GROUP BY path ORDER BY users DESC, path LIMIT {q.top})\n"
        f"ORDER BY kind, step, users DESC, source, target, path"
    )


def experiment_sql(q: ExperimentQuery, shred: Shreds = NO_SHREDS) -> str:
    variant = f"CAST({prop(q.variant_property, shred)} AS VARCHAR)"
    exposed = where(
        f"event = {lit(q.exposure_event)}",
        f"timestamp >= {ts(q.date_from)}",
        f"timestamp < {ts(q.date_to)}",
        f"{variant} IS NOT NULL",
        filters_sql(q.filters, shred, actor(q)),
    )
    return (
        f"WITH exposures AS (SELECT person, arg_min(variant, (ts, event_id)) AS variant, min(ts) AS exposed_at "
        f"FROM (SELECT {actor(q)} AS person, {variant} AS variant, timestamp AS ts, event_id FROM events "
        f"WHERE {exposed}) GROUP BY person),\n"
        f"converted AS (SELECT x.person FROM exposures x WHERE EXISTS (SELECT 1 FROM events e "
        f"WHERE {actor(q, 'e')} = x.person AND e.event = {lit(q.goal_event)} "
        f"AND e.timestamp >= x.exposed_at AND e.timestamp <= x.exposed_at + INTERVAL {q.window_seconds} SECOND))\n"
        f"SELECT x.variant, count(*) AS exposed, count(c.person) AS converted "
        f"FROM exposures x LEFT JOIN converted c USING (person) GROUP BY x.variant ORDER BY x.variant"
    )


def _person_of(who: str) -> str:
    """The person of an id (itself when it was never linked), from the `persons` view."""
    return f"(SELECT coalesce(max(person_id), {who}) FROM persons WHERE id = {who})"


def timeline_sql(q: TimelineQuery, shred: Shreds = NO_SHREDS) -> str:
    """An id's events, newest first; with `count_by: persons`, its person's (every id linked to it, on every
    device): the rows whose `coalesce(user_id, anonymous_id)` is one of the person's ids are exactly the rows
    whose `person_id` is the person, without joining every event to the identities."""
    del shred
    who = lit(q.person)
    columns = "timestamp, type, event, user_id, anonymous_id, properties, context, traits, source, event_id"
    if q.count_by != "persons":
        condition = f"user_id = {who} OR anonymous_id = {who}"
    else:
        person = _person_of(who)
        condition = (
            f"coalesce(user_id, anonymous_id) IN (SELECT id FROM persons WHERE person_id = {person} "
            f"UNION ALL SELECT {person})"
        )
    return f"SELECT {columns} FROM events WHERE {condition} ORDER BY timestamp DESC, event_id DESC LIMIT {q.limit}"


def identities_sql(q: TimelineQuery) -> str:
    """The ids of the timeline's person, in the order they were linked (none when the id was never linked)."""
    return (
        f"SELECT id, person_id, linked_at, reason FROM persons WHERE person_id = {_person_of(lit(q.person))} "
        "ORDER BY linked_at, id"
    )


def catalog_sql(q: CatalogQuery, shred: Shreds = NO_SHREDS) -> str:
    del shred
    return (
        "SELECT 'event' AS kind, event, NULL AS property, NULL AS type, count(*) AS events, "
        f"count(DISTINCT {actor(q)}) AS users, min(timestamp) AS first_seen, max(timestamp) AS last_seen "
        "FROM events GROUP BY event\n"
        "UNION ALL SELECT 'property', event, key, json_type(json_extract(properties, '$.\"' || key || '\"')), "
        "count(*), NULL, min(timestamp), max(timestamp) FROM "
        "(SELECT event, timestamp, properties, unnest(json_keys(properties)) AS key FROM events "
        "WHERE properties IS NOT NULL) GROUP BY ALL\n"
        "ORDER BY kind, event, property, type"
    )


def cohort_ids(q: object) -> list[int]:
    """The saved cohorts an insight refers to (`$cohort` filters, a `$cohort` breakdown), in first-use order."""
    found: list[int] = []
    groups = [getattr(q, "filters", [])]
    groups += [part.filters for part in getattr(q, "series", []) + getattr(q, "steps", [])]
    for group in groups:
        found += [int(str(f.value)) for f in group if f.property == COHORT]
    if getattr(q, "breakdown", None) == COHORT:
        found += list(getattr(q, "breakdown_cohorts", []))
    return list(dict.fromkeys(found))


def with_cohorts(sql: str, q: Insight, resolver: CohortResolver | None, shred: Shreds = NO_SHREDS) -> str:
    """`sql` with the members of the cohorts it refers to as CTEs in front (`cohort_<id>`, and `cohort_labels`
    for a breakdown), so the SQL shown is the SQL run and a changed cohort changes the text (the cache key)."""
    ids = cohort_ids(q)
    if not ids:
        return sql
    from headwater.insights.engine import InsightError  # the engine imports this module

    if resolver is None:
        raise InsightError("cohorts are not available here (no cohort store)")
    who = actor(q)
    names: dict[int, str] = {}
    ctes = []
    for cohort_id in ids:
        name, members = resolver(cohort_id, who, shred)
        names[cohort_id] = name
        ctes.append(f"{cohort_cte(cohort_id)} AS (\n  {members}\n)")
    if getattr(q, "breakdown", None) == COHORT:
        chosen = list(dict.fromkeys(getattr(q, "breakdown_cohorts", [])))
        taken = [names[i] for i in chosen]
        labels = [names[i] if taken.count(names[i]) == 1 else f"{names[i]} (#{i})" for i in chosen]
        union = " UNION ALL ".join(
            f"SELECT member, {lit(label)} AS label FROM {cohort_cte(i)}"
            for i, label in zip(chosen, labels, strict=True)
        )
        ctes.append(f"{COHORT_LABELS} AS ({union})")
    head = "WITH " + ",\n".join(ctes)
    if sql.startswith("WITH "):
        return head + ",\n" + sql[len("WITH ") :]
    return head + "\n" + sql
