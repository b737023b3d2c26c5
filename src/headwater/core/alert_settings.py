"""The typed settings of one user alert rule (`[[alert_rules]]` tables in headwater.toml); part of `Settings`."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
Comparison = Literal[">", ">=", "<", "<=", "==", "!="]


class AlertRule(BaseModel):
    """A condition on one metric Headwater exports (`/metrics`), evaluated every `alert_interval_s`.

    Field descriptions are the user-facing documentation (`headwater config docs --alerts`).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name of the rule: lower case, digits, `_ . -`; shown in notifications.")
    metric: str = Field(
        description="Metric name as /metrics shows it (counters with their `_total` suffix), e.g. "
        "`headwater_events_rejected_total`."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Label values a series must have (others are ignored)."
    )
    function: Literal["value", "rate", "increase"] = Field(
        "value", description="Compare the value itself, its per-second rate, or its increase over `window_s`."
    )
    window_s: float = Field(300.0, gt=0, description="Window of `rate` and `increase`.")
    aggregate: Literal["sum", "max", "min", "each"] = Field(
        "sum", description="How matching series combine: one sum/max/min, or each series its own alert."
    )
    op: Comparison = Field(">", description="Comparison with the threshold that makes the rule true.")
    threshold: float = Field(description="The threshold.")
    for_s: float = Field(0.0, ge=0, description="How long the condition must hold before the alert fires.")
    severity: Literal["info", "warning", "critical"] = Field("warning", description="Severity in notifications.")
    summary: str = Field("", description="One line for the notification (default: the condition itself).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not RULE_NAME.match(value):
            raise ValueError(f"alert rule name {value!r}: use lower case letters, digits, '_', '.', '-'")
        return value

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if not METRIC_NAME.match(value):
            raise ValueError(f"metric {value!r} is not a Prometheus metric name")
        return value
