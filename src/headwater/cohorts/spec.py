"""Cohort definitions, validated with pydantic so an API caller gets field-level errors.

A definition is `{"name", "description", "match": "all"|"any", "conditions": [...]}`; a condition is one of
- `performed`: did `event` (with `filters`) between `min_count` and `max_count` times in the last `days` days, or
  between `date_from` and `date_to`; `negate`: did not;
- `property`: the person's latest value of a property or column compares with `op`/`value` (`is_not_set`: never
  had one);
- `funnel`: reached step `step` (0-based) of a funnel; `dropped`: reached step `step - 1` but not `step`;
- `cohort`: is (or, `negate`, is not) in another saved cohort.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from headwater.core.errors import QueryError
from headwater.core.validation import field_errors
from headwater.insights.spec import COHORT, PROPERTY_NAME, Filter, FunnelQuery, Spec
from headwater.insights.sql import cohort_ids

MAX_CONDITIONS = 20


class CohortError(QueryError):
    """A cohort definition is invalid or names something missing (status 400, 404 for a missing cohort)."""


class Performed(Spec):
    type: Literal["performed"]
    event: str = Field(min_length=1)
    min_count: int = Field(1, ge=1)
    max_count: int | None = Field(None, ge=1)
    days: int | None = Field(None, ge=1, le=3650)
    date_from: datetime | None = None
    date_to: datetime | None = None
    filters: list[Filter] = []
    negate: bool = False

    @model_validator(mode="after")
    def _window(self) -> Performed:
        if self.max_count is not None and self.max_count < self.min_count:
            raise ValueError("max_count: must be at least min_count")
        if self.days is not None and (self.date_from is not None or self.date_to is not None):
            raise ValueError("days: give days or date_from/date_to, not both")
        if self.days is None and self.date_from is None and self.date_to is None:
            self.days = 30
        if self.date_from and self.date_to and self.date_to <= self.date_from:
            raise ValueError("date_to: must be after date_from")
        if any(f.property == COHORT for f in self.filters):
            raise ValueError("filters: use a cohort condition rather than a $cohort filter")
        return self


class HasProperty(Spec):
    type: Literal["property"]
    property: Annotated[str, Field(pattern=PROPERTY_NAME)]
    op: Literal["eq", "neq", "contains", "gt", "gte", "lt", "lte", "is_set", "is_not_set"] = "eq"
    value: str | float | int | bool | None = None

    @model_validator(mode="after")
    def _value(self) -> HasProperty:
        if self.property == COHORT:
            raise ValueError("property: use a cohort condition for $cohort")
        Filter(property=self.property, op=self.op, value=self.value)  # same rules as an insight filter
        return self


class InFunnel(Spec):
    type: Literal["funnel"]
    funnel: FunnelQuery
    step: int = Field(ge=0)
    dropped: bool = False

    @model_validator(mode="after")
    def _step(self) -> InFunnel:
        if self.step >= len(self.funnel.steps):
            raise ValueError(f"step: the funnel has {len(self.funnel.steps)} steps (0-based)")
        if cohort_ids(self.funnel):
            raise ValueError("funnel: use a cohort condition rather than a $cohort filter")
        if self.dropped and self.step == 0:
            raise ValueError("step: dropped needs step >= 1 (who reached step - 1 but not step)")
        return self


class InCohort(Spec):
    type: Literal["cohort"]
    cohort_id: int = Field(ge=1)
    negate: bool = False


Condition = Annotated[Performed | HasProperty | InFunnel | InCohort, Field(discriminator="type")]


class CohortDefinition(Spec):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    match: Literal["all", "any"] = "all"
    conditions: list[Condition] = Field(min_length=1, max_length=MAX_CONDITIONS)


DEFINITION = TypeAdapter(CohortDefinition)


def parse_definition(doc: dict[str, Any]) -> CohortDefinition:
    """A definition from JSON; errors name the field (CohortError, 400)."""
    try:
        return DEFINITION.validate_python(doc)
    except ValidationError as exc:
        raise CohortError(field_errors(exc, "cohort")) from None


def referenced(definition: CohortDefinition) -> list[int]:
    """The other cohorts a definition names."""
    return [c.cohort_id for c in definition.conditions if isinstance(c, InCohort)]
