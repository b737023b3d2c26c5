"""What the evaluator evaluates: Conditions, what they find, and the context they read.

A Condition is one alert rule. Each tick the evaluator calls `evaluate(ctx)` (when `every_s` has passed since
its last evaluation) and gets:
- a list of Findings: every alert instance (a label set) for which the condition holds now; an instance that
  is missing from the list is not true now (a pending one is dropped, a firing one resolves);
- None: cannot tell now (its data is unavailable): every instance of the rule keeps its state.
An exception counts as None and is recorded as the rule's error.

Built-in rules (`builtins.py`), user metric rules (`MetricCondition`, from `settings.alert_rules`) and other
sources (issue #14's trend alerts) are all Conditions. Sources whose rules change at runtime pass a
ConditionSource: its `conditions()` is read every tick.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import sqlalchemy as sa

from headwater.alerts.scrape import MetricsWindow
from headwater.core.alert_settings import AlertRule
from headwater.core.settings import Settings

if TYPE_CHECKING:
    from headwater.log.base import EventLog

SEVERITIES = ("info", "warning", "critical")
COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


@dataclass(slots=True)
class Finding:
    """One alert instance whose condition holds now."""

    labels: dict[str, str] = field(default_factory=dict)
    value: float | None = None
    summary: str = ""
    """Overrides the condition's summary for this instance (e.g. names the table or source)."""
    severity: str | None = None
    """Overrides the condition's severity for this instance (a data check of severity `error`)."""


@dataclass
class Context:
    """What conditions read during one tick."""

    now: float
    settings: Settings
    catalog: sa.Engine
    metrics: MetricsWindow
    open_log: Callable[[], EventLog]
    """The event log, opened once by the evaluator on first use."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared between conditions during one tick (e.g. data dir size)."""


@runtime_checkable
class Condition(Protocol):
    """One alert rule. Attributes are read every tick, so a condition may change them."""

    name: str
    """Unique among all rules: `^[a-z0-9][a-z0-9_.-]{0,127}$` (e.g. `trend.signups-drop`)."""
    kind: str
    """Shown in the API: `builtin`, `metric`, `trend`, ..."""
    severity: str
    """info | warning | critical."""
    summary: str
    """One line for notifications when a Finding has none."""
    for_s: float
    """How long the condition must hold before the alert fires (0: at the first tick it holds)."""
    every_s: float
    """Evaluate at most this often (0: every tick); between evaluations the last answer stands."""
    webhooks: Sequence[str]
    """URLs notified besides `settings.alert_webhooks` (a trend alert's own receiver)."""
    dashboard_url: str
    """Where a notification links to ("" : the Alerts page)."""

    def evaluate(self, ctx: Context) -> list[Finding] | None: ...

    def describe(self) -> dict[str, Any]:
        """The definition shown by GET /api/alerts (JSON-serialisable)."""
        ...


@runtime_checkable
class ConditionSource(Protocol):
    """Rules that change at runtime (saved trend alerts): read every tick; None when they cannot be read now
    (their alerts then keep their state instead of resolving)."""

    def conditions(self) -> Iterable[Condition] | None: ...


@dataclass
class BaseCondition:
    """Defaults shared by the conditions Headwater defines."""

    name: str
    severity: str = "warning"
    summary: str = ""
    for_s: float = 0.0
    every_s: float = 0.0
    kind: str = "builtin"
    webhooks: Sequence[str] = ()
    dashboard_url: str = ""

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "severity": self.severity, "for_s": self.for_s,
                "summary": self.summary}  # fmt: skip


class MetricCondition(BaseCondition):
    """A user rule (`[[alert_rules]]`): a metric's value, rate or increase compared with a threshold."""

    def __init__(self, rule: AlertRule) -> None:
        summary = rule.summary or self._default_summary(rule)
        super().__init__(rule.name, rule.severity, summary, rule.for_s, kind="metric")
        self.rule = rule

    @staticmethod
    def _default_summary(rule: AlertRule) -> str:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(rule.labels.items()))
        series = f"{rule.metric}{{{labels}}}" if labels else rule.metric
        if rule.function != "value":
            series = f"{rule.function}({series}[{rule.window_s:g}s])"
        if rule.aggregate != "each":
            series = f"{rule.aggregate}({series})"
        return f"{series} {rule.op} {rule.threshold:g}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.rule.model_dump()}

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        rule, window = self.rule, ctx.metrics
        if not window.up:
            return None
        if rule.function == "value":
            values = window.series(rule.metric, rule.labels)
        elif rule.function == "rate":
            values = window.rate(rule.metric, rule.window_s, rule.labels)
        else:
            values = window.increase(rule.metric, rule.window_s, rule.labels)
        if not values:
            return [] if rule.function == "value" else None  # rate/increase need two scrapes: unknown yet
        compare = COMPARE[rule.op]
        if rule.aggregate == "each":
            return [
                Finding(dict(labels), value, f"{self.summary} ({_labels_text(labels)}: {value:g})")
                for labels, value in sorted(values.items())
                if compare(value, rule.threshold)
            ]
        series = list(values.values())
        total = float(
            sum(series) if rule.aggregate == "sum" else max(series) if rule.aggregate == "max" else min(series)
        )
        return [Finding({}, total, f"{self.summary} (now {total:g})")] if compare(total, rule.threshold) else []


def _labels_text(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels)
