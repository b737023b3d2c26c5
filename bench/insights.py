"""Insights on the query benchmark's data (bench/queries.py): Headwater's insight engine (the API's path,
result cache off) against the same compiled DuckDB SQL over a view `events` on the plain Parquet copy, and
ClickHouse (chdb) queries of the same definitions, written the way PostHog writes them (windowFunnel,
arrays). Hot: one warm-up, then the median of --runs. Run alone: python -m bench.insights (same options as
bench.queries; the data must exist, it is made with --keep semantics).
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from headwater.insights.engine import InsightEngine, compile_query, parse, shape

if TYPE_CHECKING:
    from bench.queries import Peers
    from headwater.query.engine import QueryEngine

JAN = {"date_from": "2025-01-01T00:00:00", "date_to": "2025-02-01T00:00:00"}
Q1 = {"date_from": "2025-01-01T00:00:00", "date_to": "2025-04-01T00:00:00"}
SPECS: dict[str, dict[str, Any]] = {
    "trend_users_by_day_90d": {"kind": "trend", "series": [{"event": "LOGIN", "measure": "users"}],
                               "interval": "day", **Q1},
    "trend_count_by_day_90d": {"kind": "trend", "series": [{"event": "LOGIN", "measure": "count"}],
                               "interval": "day", **Q1},
    "funnel_3_steps_1d_window_1_month": {"kind": "funnel", "steps": [{"event": "LOGIN"}, {"event": "VIEW"},
                                         {"event": "PURCHASE"}], "window_seconds": 86400, **JAN},
    "retention_8_weeks": {"kind": "retention", "start_event": "LOGIN", "return_event": "PURCHASE", "period": "week",
                          "periods": 8, "date_from": "2025-01-01T00:00:00", "date_to": "2025-03-01T00:00:00"},
    "journeys_3_deep_1_month": {"kind": "journey", "event": "PURCHASE", "depth": 3, **JAN},
}  # fmt: skip


def _t(value: str) -> str:
    return value.replace("T", " ")


def ch_trend(spec: dict[str, Any], src: str) -> tuple[str, Callable[[list[list[Any]]], list[list[Any]]]]:
    series = spec["series"][0]
    measure = "uniqExact(user_id)" if series["measure"] == "users" else "count()"
    sql = (
        f"SELECT toStartOfDay(timestamp) AS bucket, {measure} FROM {src} WHERE event = '{series['event']}' "
        f"AND timestamp >= '{_t(spec['date_from'])}' AND timestamp < '{_t(spec['date_to'])}' "
        "GROUP BY bucket ORDER BY bucket"
    )
    return sql, lambda rows: [[0, "current", naive(b), None, float(v)] for b, v in rows]


def ch_funnel(spec: dict[str, Any], src: str) -> tuple[str, Callable[[list[list[Any]]], list[list[Any]]]]:
    """windowFunnel: the deepest step reached by a chain that starts in the range and ends within the window."""
    steps = [s["event"] for s in spec["steps"]]
    start, end, window = _t(spec["date_from"]), _t(spec["date_to"]), spec["window_seconds"]
    conditions = [f"event = '{steps[0]}' AND timestamp < '{end}'"] + [f"event = '{s}'" for s in steps[1:]]
    counts = ", ".join(f"countIf(level >= {i + 1})" for i in range(len(steps)))
    names = ", ".join(f"'{s}'" for s in steps)
    sql = (
        f"SELECT {counts} FROM (SELECT user_id, windowFunnel({window})(toDateTime(timestamp), {', '.join(conditions)}) "
        f"AS level FROM {src} WHERE timestamp >= '{start}' "
        f"AND timestamp < toDateTime('{end}') + INTERVAL {window} SECOND AND event IN ({names}) GROUP BY user_id) "
        "WHERE level > 0"
    )
    return sql, lambda rows: [[None, *rows[0], *([None, None] * (len(steps) - 1))]]


def ch_retention(spec: dict[str, Any], src: str) -> tuple[str, Callable[[list[list[Any]]], list[list[Any]]]]:
    """One pass: each person's first start event and the distinct weeks of their return events, as arrays."""
    periods = spec["periods"]
    sql = (
        f"WITH people AS (SELECT minIf(timestamp, event = '{spec['start_event']}') AS first_ts, "
        f"groupUniqArrayIf(toMonday(timestamp), event = '{spec['return_event']}') AS weeks FROM {src} "
        f"WHERE event IN ('{spec['start_event']}', '{spec['return_event']}') GROUP BY user_id "
        f"HAVING countIf(event = '{spec['start_event']}') > 0 AND first_ts >= '{_t(spec['date_from'])}' "
        f"AND first_ts < '{_t(spec['date_to'])}') "
        f"SELECT toMonday(first_ts) AS cohort, n, count() FROM people ARRAY JOIN arrayConcat([0], "
        f"arrayFilter(x -> x BETWEEN 1 AND {periods}, arrayMap(w -> intDiv(dateDiff('day', toMonday(first_ts), w), 7), "
        f"weeks))) AS n GROUP BY cohort, n ORDER BY cohort, n"
    )

    def rows_of(found: list[list[Any]]) -> list[list[Any]]:
        sizes = {naive(c): v for c, n, v in found if n == 0}
        out = [[c, size, None, 0] for c, size in sizes.items()]
        return out + [[naive(c), sizes[naive(c)], n, v] for c, n, v in found if n > 0]

    return sql, rows_of


def ch_journey(spec: dict[str, Any], src: str) -> tuple[str, Callable[[list[list[Any]]], list[list[Any]]]]:
    """Each person's events in time order as an array, sliced from the first anchor event."""
    depth, anchor = spec["depth"], spec["event"]
    sql = (
        f"WITH people AS (SELECT arrayMap(x -> x.2, arraySort(groupArray((timestamp, event)))) AS evs FROM {src} "
        f"WHERE timestamp >= '{_t(spec['date_from'])}' AND timestamp < '{_t(spec['date_to'])}' GROUP BY user_id), "
        f"p AS (SELECT arraySlice(evs, indexOf(evs, '{anchor}'), {depth + 1}) AS path FROM people "
        f"WHERE has(evs, '{anchor}')) "
        f"SELECT 'edge' AS kind, step, path[step] AS source, path[step + 1] AS target, '' AS route, count() AS users "
        f"FROM p ARRAY JOIN range(1, length(path)) AS step GROUP BY step, source, target "
        f"UNION ALL SELECT * FROM (SELECT 'path', 0, '', '', arrayStringConcat(path, ' → ') AS route, count() AS users "
        f"FROM p GROUP BY route ORDER BY users DESC, route LIMIT 50)"
    )

    def rows_of(found: list[list[Any]]) -> list[list[Any]]:
        return [
            [k, step, src_, tgt, None, users] if k == "edge" else [k, None, None, None, route, users]
            for k, step, src_, tgt, route, users in found
        ]

    return sql, rows_of


CLICKHOUSE = {"trend": ch_trend, "funnel": ch_funnel, "retention": ch_retention, "journey": ch_journey}
COLUMNS = {
    "trend": ["series", "period", "bucket", "breakdown", "value"],
    "funnel": ["breakdown", "step0", "step1", "step2", "median_s1", "avg_s1", "median_s2", "avg_s2"],
    "retention": ["cohort", "size", "period", "returned"],
    "journey": ["kind", "step", "source", "target", "path", "users"],
}


def naive(value: Any) -> Any:
    """A UTC datetime without its zone (DuckDB's TIMESTAMP), as Headwater's insight SQL returns them."""
    if isinstance(value, int):  # chdb hands DateTime (seconds) to Arrow as an integer
        return dt.datetime.fromtimestamp(value, dt.UTC).replace(tzinfo=None)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day)
    return value


def comparable(kind: str, result: Any, counts_only: bool = False) -> Any:
    """The parts of a shaped result that two engines must agree on; order-free where SQL order is not defined."""
    if kind == "funnel" and counts_only:
        return [[s["count"] for s in line["steps"]] for line in result]
    if kind == "journey":
        edges = sorted(result["edges"], key=lambda e: (e["step"], e["source"], e["target"]))
        return {"edges": edges, "paths": sorted(result["paths"], key=lambda p: (-p["users"], p["path"]))}
    return result


NOTES = {
    "funnel": "chdb: windowFunnel gives the step counts, not the per-step median/avg times: counts compared",
}


def run_insights(engine: QueryEngine, peers: Peers, runs: int) -> dict[str, dict[str, Any]]:
    from bench.queries import row, same, timed

    insight_engine = InsightEngine(engine, cache_entries=0)  # every run computes; the API would cache
    out = {}
    for name, spec in SPECS.items():
        query = parse(spec)
        kind = spec["kind"]
        answers: list[dict[str, Any]] = []

        def headwater(spec: dict[str, Any] = spec, keep: list[dict[str, Any]] = answers) -> Any:
            answer = insight_engine.run(spec)
            keep[:] = [answer]
            return answer["result"]

        hw_s, hw_result = timed(headwater, runs)
        sql = compile_query(query)
        duck_s, (columns, duck_rows) = timed(functools.partial(peers.duckdb_rows, sql), runs)
        ch_sql, to_rows = CLICKHOUSE[kind](spec, peers.ch_source)
        ch_s, ch_rows = timed(functools.partial(peers.chdb_rows, ch_sql), runs)
        ch_result = shape(query, COLUMNS[kind], to_rows(ch_rows))
        duck_result = shape(query, columns, duck_rows)
        same_ch = same(comparable(kind, hw_result, counts_only=True), comparable(kind, ch_result, counts_only=True))
        out[name] = row(
            (hw_s, duck_s, ch_s),
            same(comparable(kind, hw_result), comparable(kind, duck_result)),
            same_ch,
            answers[0].get("answered_by"),
            NOTES.get(kind, ""),
        )
    return out


def main() -> None:
    from bench import queries
    from bench.common import emit

    args = queries.arguments(__doc__).parse_args()
    args.keep = True
    work, settings, facts = queries.prepare(args)
    engine = queries.QueryEngine(settings)
    results = run_insights(engine, queries.Peers(work / "hive"), args.runs)
    doc = {"events": args.events, "days": facts["days"], "users": facts["users"], "runs": args.runs,
           "commit": queries.commit(), "queries": results}  # fmt: skip
    emit(args.name or f"insights-{args.events}", doc)
    for name, r in results.items():
        print(name, r, file=sys.stderr)
    engine.close()


if __name__ == "__main__":
    main()
