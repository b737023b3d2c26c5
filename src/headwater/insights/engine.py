"""Run insights: compile to SQL, execute in the query sandbox, shape the rows, cache by data version."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from headwater.core.errors import QueryError
from headwater.core.validation import field_errors
from headwater.insights import anomaly, from_rollups
from headwater.insights import sql as compile_sql
from headwater.insights.spec import (
    INSIGHT,
    CatalogQuery,
    ExperimentQuery,
    FunnelQuery,
    JourneyQuery,
    RetentionQuery,
    TimelineQuery,
    TrendQuery,
)
from headwater.lake.shredding import Shred, shreds
from headwater.query.engine import QueryEngine

MAX_ROWS = 200_000


class InsightError(QueryError):
    """An insight specification is invalid."""


def parse(spec: dict[str, Any]) -> Any:
    """Validate a JSON specification; errors name the field."""
    try:
        return INSIGHT.validate_python(spec)
    except ValidationError as exc:
        raise InsightError(field_errors(exc, "query")) from None


COMPILERS: dict[type, Any] = {
    TrendQuery: compile_sql.trend_sql,
    FunnelQuery: compile_sql.funnel_sql,
    RetentionQuery: compile_sql.retention_sql,
    JourneyQuery: compile_sql.journey_sql,
    ExperimentQuery: compile_sql.experiment_sql,
    TimelineQuery: compile_sql.timeline_sql,
    CatalogQuery: compile_sql.catalog_sql,
}


def compile_query(
    query: Any, shred: compile_sql.Shreds | None = None, cohorts: compile_sql.CohortResolver | None = None
) -> str:
    """The one SQL statement an insight runs; `shred` names the shredded property columns the
    `events` view exposes (without it every property is read from the JSON); `cohorts` gives the members SQL of
    the saved cohorts it refers to (inlined as CTEs)."""
    compiler = COMPILERS.get(type(query))
    if compiler is None:
        raise InsightError(f"unknown insight {type(query).__name__}")
    shred = shred or compile_sql.NO_SHREDS
    return compile_sql.with_cohorts(str(compiler(query, shred)), query, cohorts, shred)


class InsightEngine:
    """Insights over a QueryEngine; results are cached per (SQL, table versions). `cohorts` resolves the saved
    cohorts that `$cohort` filters and breakdowns name (the server passes its cohort store's)."""

    def __init__(
        self,
        query_engine: QueryEngine,
        cache_entries: int = 256,
        cohorts: compile_sql.CohortResolver | None = None,
    ) -> None:
        self.query = query_engine
        self.cohorts = cohorts
        self._cache: OrderedDict[tuple[str, tuple[str, ...]], dict[str, Any]] = OrderedDict()
        self._size = cache_entries
        self._lock = threading.Lock()
        self._shreds: tuple[str, compile_sql.Shreds] = ("", {})

    def shreds(self, version: tuple[str, ...]) -> compile_sql.Shreds:
        """The shredded properties whose columns the `events` view exposes at this data version."""
        events_version = version[0] if version else ""
        with self._lock:
            if self._shreds[0] == events_version:
                return self._shreds[1]
        found: dict[str, Shred] = {}
        try:
            found = shreds(self.query.catalog.load_table("headwater.events").schema())
        except Exception:  # no table yet, or the catalog is away: the JSON path answers
            found = {}
        if found:  # the view may be older than the schema just loaded: keep what it has
            exposed = {c.lower() for c in self.query.execute("SELECT * FROM events LIMIT 0").columns}
            found = {
                key: Shred(key, s.text, s.number if s.number and s.number.lower() in exposed else None)
                for key, s in found.items()
                if s.text.lower() in exposed
            }
        with self._lock:
            self._shreds = (events_version, found)
        return found

    def counted(self, query: Any) -> Any:
        """The query with `count_by` set: its own, else persons when identity stitching is on, else ids."""
        if query.count_by is not None:
            return query
        return query.model_copy(update={"count_by": "persons" if self.query.settings.identity_stitching else "ids"})

    def run(self, spec: dict[str, Any] | Any) -> dict[str, Any]:
        query = self.counted(parse(spec) if isinstance(spec, dict) else spec)
        version = self.query.data_version()
        sql = compile_query(query, self.shreds(version), self.cohorts)
        history = anomaly.history_query(query)  # bands and forecasts read the span before date_from too
        history_sql = compile_query(history, self.shreds(version), self.cohorts) if history is not None else ""
        key = (f"{sql}\n{history_sql}\n{anomaly.signature(query)}" if history is not None else sql, version)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return {**cached, "cached": True}
        started = time.perf_counter()
        columns, rows, truncated, answered_by = self._rows(query, sql)
        shaped = shape(query, columns, rows)
        if history is not None:
            earlier = shape(history, *self._rows(history, history_sql)[:2])
            anomaly.annotate(query, shaped, earlier, datetime.now(UTC))
        if isinstance(query, TimelineQuery) and query.count_by == "persons":
            shaped.update(self._identities(query))
        answer = {
            "kind": query.kind,
            "sql": sql,
            "result": shaped,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
            "truncated": truncated,
            "cached": False,
            "answered_by": answered_by,
        }
        if history is not None:
            answer["history_sql"] = history_sql
        with self._lock:
            self._cache[key] = answer
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return answer

    def _rows(self, query: Any, sql: str) -> tuple[list[str], list[list[Any]], bool, str]:
        """(columns, rows, truncated, answered_by): from rollups when they hold the answer, else the SQL."""
        events = from_rollups.events_of(query)
        persons = query.count_by == "persons" and from_rollups.counts_people(query)
        days = self.query.day_buckets(events, persons=persons) if events is not None else None
        if days is not None and isinstance(query, TrendQuery):
            return from_rollups.TREND_COLUMNS, from_rollups.trend_rows(query, days), False, "rollup"
        if days is not None and isinstance(query, RetentionQuery):
            return from_rollups.RETENTION_COLUMNS, from_rollups.retention_rows(query, days), False, "rollup"
        result = self.query.execute(sql, max_rows=MAX_ROWS)
        return result.columns, result.rows, result.truncated, result.answered_by

    def _identities(self, query: TimelineQuery) -> dict[str, Any]:
        """The timeline's person and its ids, as they were linked."""
        found = self.query.execute(compile_sql.identities_sql(query), max_rows=MAX_ROWS)
        ids = [dict(zip(found.columns, row, strict=True)) for row in found.rows]
        person = ids[0]["person_id"] if ids else query.person
        return {"person": person, "identities": [{k: i[k] for k in ("id", "linked_at", "reason")} for i in ids]}


def buckets(start: datetime, end: datetime, interval: str) -> list[datetime]:
    """Bucket starts as DuckDB's date_trunc gives them (weeks start on Monday)."""
    start = start.replace(tzinfo=None, microsecond=0, second=0, minute=0)
    end = end.replace(tzinfo=None)
    if interval != "hour":
        start = start.replace(hour=0)
    if interval == "week":
        start -= timedelta(days=start.weekday())
    if interval == "month":
        start = start.replace(day=1)
    out = []
    current = start
    while current < end:
        out.append(current)
        if interval == "hour":
            current += timedelta(hours=1)
        elif interval == "day":
            current += timedelta(days=1)
        elif interval == "week":
            current += timedelta(weeks=1)
        else:
            current = current.replace(year=current.year + (current.month == 12), month=current.month % 12 + 1)
    return out


def shape(query: Any, columns: list[str], rows: list[list[Any]]) -> Any:
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    if isinstance(query, TrendQuery):
        return _shape_trend(query, records)
    if isinstance(query, FunnelQuery):
        return _shape_funnel(query, records)
    if isinstance(query, RetentionQuery):
        return _shape_retention(query, records)
    if isinstance(query, JourneyQuery):
        return {
            "edges": [
                {"step": r["step"], "source": r["source"], "target": r["target"], "users": r["users"]}
                for r in records
                if r["kind"] == "edge"
            ],
            "paths": [{"path": r["path"], "users": r["users"]} for r in records if r["kind"] == "path"],
        }
    if isinstance(query, ExperimentQuery):
        return experiment_result(query, [(r["variant"], r["exposed"], r["converted"]) for r in records])
    if isinstance(query, CatalogQuery):
        events = [r for r in records if r["kind"] == "event"]
        properties = [r for r in records if r["kind"] == "property"]
        return {
            "events": [{k: r[k] for k in ("event", "events", "users", "first_seen", "last_seen")} for r in events],
            "properties": [
                {"event": r["event"], "property": r["property"], "type": r["type"], "events": r["events"],
                 "first_seen": r["first_seen"], "last_seen": r["last_seen"]}
                for r in properties
            ],
        }  # fmt: skip
    return {"columns": columns, "rows": rows}


def _shape_trend(query: TrendQuery, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    grid = buckets(query.date_from, query.date_to, query.interval)
    lines: dict[tuple[int, str, Any], dict[datetime, float]] = {}
    for r in records:
        lines.setdefault((r["series"], r["period"], r["breakdown"]), {})[r["bucket"]] = r["value"]
    out = []

    def order(item: tuple[tuple[int, str, Any], Any]) -> tuple[int, str, str]:
        return item[0][0], item[0][1], str(item[0][2])

    for (series, period, breakdown), values in sorted(lines.items(), key=order):
        spec = query.series[series]
        additive = spec.measure in ("count", "users")
        points: list[tuple[str, float | None]] = [
            (b.isoformat(), values.get(b, 0.0 if additive else None)) for b in grid
        ]
        total = sum(v for _, v in points if v is not None) if additive else None
        filled = [list(point) for point in points]
        out.append({"series": series, "event": spec.event, "measure": spec.measure, "period": period,
                    "breakdown": breakdown, "points": filled, "total": total})  # fmt: skip
    return out


def _shape_funnel(query: FunnelQuery, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        steps = []
        first = r["step0"]
        for i, step in enumerate(query.steps):
            count = r[f"step{i}"]
            previous = r[f"step{i - 1}"] if i else count
            steps.append(
                {
                    "step": i,
                    "event": step.event,
                    "count": count,
                    "conversion": count / first if first else 0.0,
                    "conversion_from_previous": count / previous if previous else 0.0,
                    "drop_off": previous - count,
                    "median_seconds": r.get(f"median_s{i}") if i else None,
                    "avg_seconds": r.get(f"avg_s{i}") if i else None,
                }
            )
        out.append({"breakdown": r["breakdown"], "steps": steps})
    return out


def _shape_retention(query: RetentionQuery, records: list[dict[str, Any]]) -> dict[str, Any]:
    cohorts: dict[datetime, dict[str, Any]] = {}
    for r in records:
        cohort = cohorts.setdefault(
            r["cohort"],
            {"cohort": r["cohort"].isoformat(), "size": r["size"], "values": [r["size"]] + [0] * query.periods},
        )
        if r["period"] is not None:
            cohort["values"][r["period"]] = r["returned"]
    table = list(cohorts.values())
    for cohort in table:
        cohort["rates"] = [v / cohort["size"] for v in cohort["values"]]
    curve = []
    for n in range(query.periods + 1):
        eligible = [
            c for c in table if _period_start(c["cohort"], n, query.period) < query.date_to.replace(tzinfo=None)
        ]
        size = sum(c["size"] for c in eligible)
        curve.append({"period": n, "rate": sum(c["values"][n] for c in eligible) / size if size else None})
    return {"cohorts": table, "curve": curve}


def _period_start(cohort_iso: str, n: int, period: str) -> datetime:
    return from_rollups.shift(datetime.fromisoformat(cohort_iso), n, period)


def experiment_result(query: ExperimentQuery, counts: list[tuple[str, int, int]]) -> dict[str, Any]:
    """Rates with Wilson intervals, and chi-square tests (scipy) overall and against the control."""
    from scipy.stats import binomtest, chi2_contingency

    def p_value(table: list[list[int]]) -> float:
        try:
            return float(chi2_contingency(table, correction=False)[1])
        except ValueError:  # a column of zeros: no evidence either way
            return 1.0

    names = [name for name, _, _ in counts]
    control: str | None = None
    if query.control in names:
        control = query.control
    elif names:
        control = "control" if "control" in names else names[0]
    base = next(((n, c) for name, n, c in counts if name == control), None)
    alpha = 1 - query.confidence
    variants = []
    for name, exposed, converted in counts:
        interval = binomtest(converted, exposed).proportion_ci(confidence_level=query.confidence, method="wilson")
        entry: dict[str, Any] = {
            "variant": name,
            "exposed": exposed,
            "converted": converted,
            "rate": converted / exposed if exposed else 0.0,
            "ci_low": float(interval.low),
            "ci_high": float(interval.high),
            "control": name == control,
        }
        if base is not None and name != control:
            n0, c0 = base
            entry["difference"] = entry["rate"] - (c0 / n0 if n0 else 0.0)
            entry["lift"] = entry["difference"] / (c0 / n0) if n0 and c0 else None
            entry["p_value"] = p_value([[converted, exposed - converted], [c0, n0 - c0]])
            entry["significant"] = entry["p_value"] < alpha
        variants.append(entry)
    overall = p_value([[c, n - c] for _, n, c in counts]) if len(counts) > 1 else None
    return {"control": control, "confidence": query.confidence, "p_value": overall, "variants": variants}
