"""Insight specifications: validated with pydantic, so an API caller gets field-level errors."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

PROPERTY_NAME = r"^[A-Za-z0-9_$][A-Za-z0-9_$ .:-]{0,127}$"
COLUMNS = (
    "event", "type", "user_id", "anonymous_id", "source", "group_id",
    # added by the writer's stages (headwater.plan, headwater.enrich): NULL in events written before
    "plan_version", "session_id", "browser", "browser_version", "os", "os_version", "device_type", "country",
    "region", "city", "ip", "channel", "referrer_domain", "utm_source", "utm_medium", "utm_campaign", "utm_term",
    "utm_content", "click_id", "is_bot", "bot_reason",
)  # fmt: skip
COHORT = "$cohort"  # Filter property / breakdown naming saved cohorts (members SQL inlined as CTEs by insights/sql.py)
Interval = Literal["hour", "day", "week", "month"]
CountBy = Literal["persons", "ids"]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Insight(Spec):
    """Every insight counts people as `count_by` says: `persons` (ids linked by identity stitching count once:
    the SQL column `person_id`) or `ids` (each `coalesce(user_id, anonymous_id)` on its own). Unset: persons
    when the `identity_stitching` setting is on, else ids."""

    count_by: CountBy | None = None


class Filter(Spec):
    """A condition on a column (`event`, `user_id`, `source`, …) or a property (`properties.plan`)."""

    property: Annotated[str, Field(pattern=PROPERTY_NAME)]
    op: Literal["eq", "neq", "contains", "gt", "gte", "lt", "lte", "is_set", "is_not_set"] = "eq"
    value: str | float | int | bool | None = None

    @model_validator(mode="after")
    def _value_needed(self) -> Filter:
        if self.property == COHORT:  # a saved cohort's members (headwater.cohorts): {"op": "eq"|"neq", "value": id}
            if self.op not in ("eq", "neq"):
                raise ValueError(f"op: {COHORT} takes eq or neq, got {self.op!r}")
            if isinstance(self.value, bool) or not str(self.value).isdigit():
                raise ValueError(f"value: {COHORT} needs a cohort id (an integer)")
            self.value = int(str(self.value))
        if self.op not in ("is_set", "is_not_set") and self.value is None:
            raise ValueError(f"value: required for op {self.op!r}")
        if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float):
            raise ValueError(f"value: op {self.op!r} needs a number")
        return self


class CohortBreakdown(Spec):
    """`breakdown: "$cohort"` with `breakdown_cohorts: [ids]`: one line (trend) or row (funnel) per cohort, labelled
    with its name; a person in several cohorts counts in each, people in none of them are left out."""

    breakdown_cohorts: list[int] = Field([], max_length=20)

    @model_validator(mode="after")
    def _cohorts_named(self) -> CohortBreakdown:
        if getattr(self, "breakdown", None) == COHORT and not self.breakdown_cohorts:
            raise ValueError(f"breakdown_cohorts: required with breakdown {COHORT!r}")
        return self


class DateRange(Insight):
    date_from: datetime
    date_to: datetime

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.date_to <= self.date_from:
            raise ValueError("date_to: must be after date_from")
        return self


class TrendSeries(Spec):
    event: str = Field(min_length=1)
    measure: Literal["count", "users", "sum", "avg", "min", "max", "p50", "p90", "p95", "p99"] = "count"
    property: Annotated[str, Field(pattern=PROPERTY_NAME)] | None = None
    filters: list[Filter] = []

    @model_validator(mode="after")
    def _property_needed(self) -> TrendSeries:
        if self.measure not in ("count", "users") and not self.property:
            raise ValueError(f"property: required for measure {self.measure!r}")
        return self


class TrendQuery(DateRange, CohortBreakdown):
    kind: Literal["trend"] = "trend"
    series: list[TrendSeries] = Field(min_length=1, max_length=10)
    interval: Interval = "day"
    breakdown: Annotated[str, Field(pattern=PROPERTY_NAME)] | None = None
    top_n: int = Field(10, ge=1, le=100)
    compare: bool = False
    filters: list[Filter] = []
    anomalies: bool = False
    """Add each line's expected band and mark points outside it (insights/anomaly.py)."""
    forecast: int = Field(0, ge=0, le=366)
    """Extend each line this many intervals ahead, with an interval and a backtested error (insights/forecast.py)."""


class FunnelStep(Spec):
    event: str = Field(min_length=1)
    filters: list[Filter] = []


class Exclusion(Spec):
    event: str = Field(min_length=1)
    from_step: int = Field(0, ge=0)
    to_step: int | None = None


class FunnelQuery(DateRange, CohortBreakdown):
    kind: Literal["funnel"] = "funnel"
    steps: list[FunnelStep] = Field(min_length=2, max_length=10)
    window_seconds: int = Field(14 * 86400, ge=1, le=365 * 86400)
    order: Literal["ordered", "strict", "any"] = "ordered"
    exclusions: list[Exclusion] = []
    breakdown: Annotated[str, Field(pattern=PROPERTY_NAME)] | None = None
    top_n: int = Field(10, ge=1, le=100)
    filters: list[Filter] = []

    @model_validator(mode="after")
    def _exclusions_in_range(self) -> FunnelQuery:
        last = len(self.steps) - 1
        for index, exclusion in enumerate(self.exclusions):
            to_step = last if exclusion.to_step is None else exclusion.to_step
            if not exclusion.from_step < to_step <= last:
                raise ValueError(f"exclusions[{index}]: needs from_step < to_step <= {last}")
            if self.order == "any":
                raise ValueError(f"exclusions[{index}]: not supported with order 'any'")
        return self


class RetentionQuery(DateRange):
    kind: Literal["retention"] = "retention"
    start_event: str = Field(min_length=1)
    return_event: str = Field(min_length=1)
    period: Literal["day", "week", "month"] = "week"
    periods: int = Field(8, ge=1, le=60)
    filters: list[Filter] = []


class JourneyQuery(DateRange):
    kind: Literal["journey"] = "journey"
    event: str = Field(min_length=1)
    direction: Literal["after", "before"] = "after"
    depth: int = Field(4, ge=1, le=10)
    top: int = Field(50, ge=1, le=500)
    filters: list[Filter] = []  # which events make up the paths (a `$cohort` filter: whose paths)


class ExperimentQuery(DateRange):
    """Conversion per variant: people exposed (first `exposure_event` with a `variant_property`)
    who did `goal_event` within `window_seconds` after their exposure."""

    kind: Literal["experiment"] = "experiment"
    exposure_event: str = Field(min_length=1)
    variant_property: Annotated[str, Field(pattern=PROPERTY_NAME)]
    goal_event: str = Field(min_length=1)
    window_seconds: int = Field(14 * 86400, ge=1, le=365 * 86400)
    control: str | None = None
    confidence: float = Field(0.95, gt=0.5, lt=1)
    filters: list[Filter] = []  # on the exposure events (a `$cohort` filter: who is counted)


class TimelineQuery(Insight):
    kind: Literal["timeline"] = "timeline"
    person: str = Field(min_length=1)
    limit: int = Field(200, ge=1, le=5000)


class CatalogQuery(Insight):
    kind: Literal["catalog"] = "catalog"


InsightQuery = Annotated[
    TrendQuery | FunnelQuery | RetentionQuery | JourneyQuery | ExperimentQuery | TimelineQuery | CatalogQuery,
    Field(discriminator="kind"),
]

INSIGHT = TypeAdapter(InsightQuery)
