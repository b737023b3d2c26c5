"""Trend alerts: rules on a saved trend insight, evaluated by the ops worker's AlertEvaluator.

A rule (table `trend_alerts` in the app store, beside the saved insights) names a saved trend, one of its series
(`series`, 0-based) and optionally one breakdown value, an `interval` (hour, day, week or month; default: the
trend's own) and a mode:
- `threshold`: the value of the last complete interval compared with `threshold` by `op` (>, >=, <, <=). With
  `>`/`>=` on a measure that only grows while its interval runs (count, users, max), the interval in progress
  fires as soon as it crosses, without waiting for its end;
- `anomaly`: the last complete interval outside its expected band (insights/anomaly.py: the same slot in the 4
  previous weeks, median ± 3 robust spreads); `op` is `outside` (default), `above` or `below`. `above`/`outside`
  also fire as soon as the interval in progress (count, users, max) is above its band.
The rule is the alert `trend.<id>`; a trend with a breakdown and no `breakdown` in the rule gives one alert
instance per line (label `breakdown`). The evaluator keeps the state (pending → firing → resolved), records the
history, logs each transition and sends one notification per transition to `webhook` and the configured
`alert_webhooks`. A disabled or deleted rule resolves its alerts ("rule removed"). Threshold rules are evaluated at
every tick of the evaluator (`alert_interval_s`), anomaly rules at most once a minute.

The saved trend runs through an InsightEngine with its date range replaced by the two intervals that matter (the
last complete one and the one in progress), its series by the rule's one, and the breakdown value, if any, turned
into a filter (`(none)`: the property is not set; a `$cohort` breakdown's line, named by its cohort, stays a line).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlparse

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from headwater.alerts.conditions import COMPARE, BaseCondition, Context, Finding
from headwater.core.database import open_store
from headwater.core.errors import AlertError
from headwater.core.settings import Settings
from headwater.core.validation import field_errors
from headwater.insights.anomaly import grid_start, step
from headwater.insights.spec import COHORT, INSIGHT, Filter, TrendQuery

log = logging.getLogger("headwater.alerts")
_METADATA = sa.MetaData()
TREND_ALERTS = sa.Table(
    "trend_alerts", _METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("insight_id", sa.Integer, nullable=False),
    sa.Column("series", sa.Integer, nullable=False, default=0),
    sa.Column("breakdown", sa.Text),
    sa.Column("mode", sa.String(16), nullable=False),  # threshold | anomaly
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("threshold", sa.Float),
    sa.Column("interval", sa.String(8)),  # None: the trend's own
    sa.Column("webhook", sa.Text, nullable=False, default=""),
    sa.Column("severity", sa.String(16), nullable=False, default="warning"),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)  # fmt: skip
THRESHOLD_OPS = (">", ">=", "<", "<=")
ANOMALY_OPS = ("outside", "above", "below")
GROWING = ("count", "users", "max")  # measures an interval in progress can only raise
UPWARD = (">", ">=", "above", "outside")
ANOMALY_EVERY_S = 60.0
"""An anomaly rule runs its trend (with weeks of history) at most once a minute; a threshold rule (two intervals,
answered from the insight cache while the data is unchanged) at every tick of the evaluator."""
SavedInsight = Callable[[int], dict[str, Any]]
"""A saved insight by id ({"id", "name", "query", ...}); raises when there is none (BoardStore.insight)."""
RunInsight = Callable[[Any], dict[str, Any]]
"""InsightEngine.run."""


class TrendAlertSpec(BaseModel):
    """What a client sends to create or replace a trend alert (errors name the field)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    insight_id: int = Field(ge=1)
    series: int = Field(0, ge=0, le=9)
    breakdown: str | None = Field(None, min_length=1, max_length=500)
    mode: Literal["threshold", "anomaly"] = "threshold"
    op: Literal[">", ">=", "<", "<=", "outside", "above", "below"] | None = None
    threshold: float | None = None
    interval: Literal["hour", "day", "week", "month"] | None = None
    webhook: str = Field("", max_length=2000)
    severity: Literal["info", "warning", "critical"] = "warning"
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TrendAlertSpec:
        if self.mode == "threshold":
            self.op = self.op or ">"
            if self.op not in THRESHOLD_OPS:
                raise ValueError(f"op: one of {', '.join(THRESHOLD_OPS)} in threshold mode")
            if self.threshold is None:
                raise ValueError("threshold: required in threshold mode")
        else:
            self.op = self.op or "outside"
            if self.op not in ANOMALY_OPS:
                raise ValueError(f"op: one of {', '.join(ANOMALY_OPS)} in anomaly mode")
        if self.webhook:
            url = urlparse(self.webhook)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError("webhook: an http:// or https:// URL")
        return self


def saved_trend(saved: dict[str, Any]) -> TrendQuery:
    """The saved insight's query as a TrendQuery (AlertError naming `insight_id` when it is not one)."""
    try:
        query = INSIGHT.validate_python(saved["query"])
    except ValidationError as exc:
        raise AlertError(f"insight_id: saved insight {saved['id']} no longer runs: {field_errors(exc)}") from None
    if not isinstance(query, TrendQuery):
        raise AlertError(f"insight_id: saved insight {saved['id']} is a {query.kind}, not a trend")
    return query


def check_rule(spec: TrendAlertSpec, saved: dict[str, Any]) -> None:
    """The rule fits its saved trend (AlertError naming the field otherwise)."""
    query = saved_trend(saved)
    if spec.series >= len(query.series):
        raise AlertError(f"series: the trend has {len(query.series)} series (0 to {len(query.series) - 1})")
    if spec.breakdown is not None and query.breakdown is None:
        raise AlertError("breakdown: the trend has no breakdown")


def window_query(query: TrendQuery, rule: dict[str, Any], now: float) -> TrendQuery:
    """The saved trend over the last complete interval and the one in progress at `now`, for the rule's series."""
    interval = rule["interval"] or query.interval
    at = datetime.fromtimestamp(now, UTC)
    probe = query.model_copy(update={"date_from": at, "interval": interval})
    current = grid_start(probe)
    filters = list(query.filters)
    breakdown = query.breakdown
    if rule["breakdown"] is not None and breakdown not in (None, COHORT) and rule["breakdown"] != "(other)":
        value = rule["breakdown"]
        filters.append(Filter(property=breakdown, op="is_not_set") if value == "(none)" else
                       Filter(property=breakdown, value=value))  # fmt: skip
        breakdown = None
    return query.model_copy(update={
        "date_from": step(current, -1, interval).replace(tzinfo=UTC),
        "date_to": step(current, 1, interval).replace(tzinfo=UTC), "interval": interval,
        "series": [query.series[rule["series"]]], "filters": filters, "breakdown": breakdown,
        "anomalies": rule["mode"] == "anomaly", "forecast": 0, "compare": False,
    })  # fmt: skip


class TrendCondition(BaseCondition):
    """One trend alert rule as an alert Condition."""

    def __init__(self, rule: dict[str, Any], saved: SavedInsight, run: RunInsight, dashboard: str = "") -> None:
        every = ANOMALY_EVERY_S if rule["mode"] == "anomaly" else 0.0
        super().__init__(f"trend.{rule['id']}", rule["severity"], kind="trend", every_s=every)
        self.rule = rule
        self.saved = saved
        self.run = run
        self.webhooks = [rule["webhook"]] if rule["webhook"] else []
        self.dashboard_url = f"{dashboard}/#/alerts?insight={rule['insight_id']}" if dashboard else ""
        self.summary = f"{rule['name']}: {self._condition()}"

    def _condition(self) -> str:
        rule = self.rule
        if rule["mode"] == "threshold":
            return f"value {rule['op']} {rule['threshold']:g} per {rule['interval'] or 'interval'}"
        return f"value {rule['op']} its expected band per {rule['interval'] or 'interval'}"

    def describe(self) -> dict[str, Any]:
        keep = ("id", "name", "insight_id", "series", "breakdown", "mode", "op", "threshold", "interval", "enabled")
        return {**super().describe(), **{k: self.rule[k] for k in keep}, "webhook": bool(self.rule["webhook"])}

    def check(self, now: float) -> dict[str, Any]:
        """What the rule sees at `now`: per line, the interval judged, its value, band and whether it holds."""
        rule = self.rule
        query = window_query(saved_trend(self.saved(rule["insight_id"])), rule, now)
        answer = self.run(query)
        lines = [line for line in answer["result"] if line["period"] == "current"]
        if rule["breakdown"] is not None and query.breakdown is not None:  # (other): kept as a breakdown line
            lines = [line for line in lines if line["breakdown"] == rule["breakdown"]]
        measure = query.series[0].measure
        if not lines and measure in ("count", "users") and query.breakdown is None:  # no event at all: zeros
            starts = [query.date_from, step(query.date_from.replace(tzinfo=None), 1, query.interval)]
            lines = [{"breakdown": None, "points": [[s.replace(tzinfo=None).isoformat(), 0.0] for s in starts]}]
        judged = [self._judge(line, measure) for line in lines]
        return {
            "rule": self.name, "interval": query.interval, "date_from": query.date_from.isoformat(),
            "date_to": query.date_to.isoformat(), "lines": judged, "would_fire": any(j["holds"] for j in judged),
            "sql": answer.get("sql"),
        }  # fmt: skip

    def _holds(self, value: float, low: float | None, high: float | None, in_progress: bool) -> bool:
        rule = self.rule
        if rule["mode"] == "threshold":
            return COMPARE[rule["op"]](value, float(rule["threshold"]))
        if low is None or high is None:
            return False  # not enough history for a band
        if in_progress or rule["op"] == "above":
            return value > high
        if rule["op"] == "below":
            return value < low
        return not low <= value <= high

    def _judge(self, line: dict[str, Any], measure: str) -> dict[str, Any]:
        """The last complete interval, or the one in progress when it already holds (growing measures only)."""
        rule = self.rule
        points = line["points"]
        bands = line.get("band") or [[p[0], None, None, None] for p in points]
        label = rule["breakdown"] if rule["breakdown"] is not None else line["breakdown"]
        judged = [0]
        if measure in GROWING and rule["op"] in UPWARD and len(points) > 1:
            judged.append(1)
        first: dict[str, Any] | None = None
        for index in judged:
            at, value = points[index]
            _, expected, low, high = bands[index]
            holds = value is not None and self._holds(float(value), low, high, in_progress=index == 1)
            entry = {"breakdown": label, "holds": holds, "value": value, "interval_start": at,
                     "in_progress": index == 1, "expected": expected, "low": low, "high": high}  # fmt: skip
            if holds:
                return entry
            first = first or entry
        assert first is not None
        return first

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        seen = self.check(ctx.now)
        found = []
        for line in seen["lines"]:
            if not line["holds"]:
                continue
            labels = {"breakdown": str(line["breakdown"])} if line["breakdown"] is not None else {}
            found.append(Finding(labels, float(line["value"]), self._summary(line, seen["interval"])))
        return found

    def _summary(self, line: dict[str, Any], interval: str) -> str:
        rule = self.rule
        where = f" [{line['breakdown']}]" if line["breakdown"] is not None else ""
        when = f"the {interval} from {line['interval_start'].replace('T', ' ')[:16]} UTC"
        when += " (in progress)" if line["in_progress"] else ""
        if rule["mode"] == "threshold":
            condition = f"{rule['op']} {rule['threshold']:g}"
        else:
            condition = f"outside its expected band {line['low']:.4g} to {line['high']:.4g} " \
                        f"(expected {line['expected']:.4g})"  # fmt: skip
        return f"{rule['name']}{where}: {line['value']:.6g} in {when}, {condition}"


class TrendAlertStore:
    """The trend alert rules (`db`: the app store's SQLAlchemy URI or SQLite path)."""

    def __init__(self, db: str) -> None:
        self.engine = open_store(db, _METADATA)

    def list(self, enabled_only: bool = False) -> list[dict[str, Any]]:
        query = sa.select(TREND_ALERTS).order_by(TREND_ALERTS.c.id)
        if enabled_only:
            query = query.where(TREND_ALERTS.c.enabled.is_(True))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).fetchall()]

    def get(self, rule_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(TREND_ALERTS).where(TREND_ALERTS.c.id == rule_id)).first()
        return _row(row) if row is not None else None

    def save(self, spec: TrendAlertSpec, user: str, rule_id: int | None = None) -> dict[str, Any] | None:
        """Insert (rule_id None) or replace a rule; the saved row (None: no rule `rule_id`)."""
        now = int(time.time() * 1000)
        values = {**spec.model_dump(), "updated_ms": now}
        with self.engine.begin() as conn:
            if rule_id is None:
                insert = TREND_ALERTS.insert().values(**values, created_by=user, created_ms=now)
                rule_id = int(conn.execute(insert.returning(TREND_ALERTS.c.id)).scalar_one())
            elif not conn.execute(TREND_ALERTS.update().where(TREND_ALERTS.c.id == rule_id).values(**values)).rowcount:
                return None
        return self.get(rule_id)

    def delete(self, rule_id: int) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(TREND_ALERTS.delete().where(TREND_ALERTS.c.id == rule_id)).rowcount)

    def close(self) -> None:
        self.engine.dispose()


def _row(row: Any) -> dict[str, Any]:
    doc = {str(k): v for k, v in row._mapping.items()}
    doc["enabled"] = bool(doc["enabled"])
    return doc


class TrendAlertSource:
    """The enabled trend alert rules as Conditions, read every tick (a ConditionSource for the AlertEvaluator).

    `saved` reads a saved insight; `runner()` gives the function that runs one (an InsightEngine's `run`), called
    at the first evaluation so that a node without trend alerts opens no query engine.
    """

    def __init__(
        self, settings: Settings, saved: SavedInsight, runner: Callable[[], RunInsight], dashboard: str = ""
    ) -> None:
        self.store = TrendAlertStore(settings.store_uri("app"))
        self.saved = saved
        self.runner = runner
        self.dashboard = dashboard
        self._run: RunInsight | None = None

    def run(self, query: Any) -> dict[str, Any]:
        if self._run is None:
            self._run = self.runner()
        return self._run(query)

    def conditions(self) -> list[TrendCondition] | None:
        try:
            rules = self.store.list(enabled_only=True)
        except Exception as exc:  # the app store is away: the alerts keep their state
            log.warning("trend alert rules could not be read: %s", exc)
            return None
        return [TrendCondition(rule, self.saved, self.run, self.dashboard) for rule in rules]

    def close(self) -> None:
        self.store.close()
