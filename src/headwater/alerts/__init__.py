"""Operational alerting: built-in and user rules (and other condition sources, such as trend alerts) evaluated
by the ops worker, with firing/resolved state, silences and history in the catalog database, sent to webhooks.

Entry points: `AlertEvaluator(settings, catalog_engine, extra_conditions).tick(now)` (evaluator.py), the
`Condition` / `ConditionSource` protocols (conditions.py), `AlertStore` (store.py: what the API reads).
"""

from headwater.alerts.conditions import BaseCondition, Condition, ConditionSource, Context, Finding, MetricCondition
from headwater.alerts.evaluator import AlertEvaluator
from headwater.alerts.store import AlertStore

__all__ = [
    "AlertEvaluator", "AlertStore", "BaseCondition", "Condition", "ConditionSource", "Context", "Finding",
    "MetricCondition",
]  # fmt: skip
