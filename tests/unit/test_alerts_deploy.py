"""deploy/grafana/headwater.json and deploy/prometheus/headwater-alerts.yml name only metrics Headwater exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from headwater.alerts.builtins import builtin_conditions
from headwater.api.app import LogGauges
from headwater.core import metrics
from headwater.log import open_log
from tests.helpers import ROOT, make_settings

DASHBOARD = ROOT / "deploy" / "grafana" / "headwater.json"
RULES = ROOT / "deploy" / "prometheus" / "headwater-alerts.yml"
OTHERS = {"up", "node_filesystem_avail_bytes", "node_filesystem_size_bytes"}  # Prometheus' and node_exporter's
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}
PROMQL_WORDS = {
    "sum", "max", "min", "by", "on", "and", "or", "rate", "increase", "delta", "time", "vector", "histogram_quantile",
    "le", "bool",
}  # fmt: skip


def exported(tmp_path: Path) -> set[str]:
    """Every sample name /metrics can show: core.metrics' metrics, and the log gauges computed at scrape time."""
    names = set()
    for item in vars(metrics).values():
        if isinstance(item, MetricWrapperBase):
            names |= {item._name + suffix for suffix in SUFFIXES[str(item._type)]}
    event_log = open_log(make_settings(tmp_path))
    producer, admin = event_log.producer(), event_log.admin()
    try:
        names |= {family.name for family in LogGauges(admin, producer, event_log.backend).collect()}
    finally:
        producer.close()
        admin.close()
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not labels, functions, keywords or template text)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|on|without|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"e\d*", w)}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_metric_named_is_exported(tmp_path: Path) -> None:
    known = exported(tmp_path)
    assert "headwater_lake_last_commit_timestamp_seconds" in known and "headwater_consumer_lag" in known
    named: dict[str, set[str]] = {}
    for expr in dashboard_exprs() + [str(r["expr"]) for r in rule_exprs()]:
        for name in metric_names(expr):
            named.setdefault(name, set()).add(expr)
    unknown = {name: exprs for name, exprs in named.items() if name not in known | OTHERS}
    assert not unknown, unknown
    assert len([n for n in named if n.startswith("headwater_")]) >= 25  # the dashboard covers most of them


def test_dashboard_panels_and_rules_are_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "headwater-overview"
    assert all(p["targets"] for p in doc["panels"] if p["type"] != "row")
    builtins = {c.name for c in builtin_conditions(make_settings(Path("/tmp")))}
    rules = rule_exprs()
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
        labels = rule["labels"]
        assert isinstance(labels, dict) and labels["severity"] in ("warning", "critical")
        assert labels["headwater_rule"] in builtins
    covered = {r["labels"]["headwater_rule"] for r in rules}  # type: ignore[index]
    assert builtins - covered == {"model_failed", "check_failed"}  # tables, not metrics: said in the file


def test_metric_names_parser() -> None:
    expr = 'sum by (le) (rate(headwater_x_bucket{a="b"}[5m])) and on() max(up{job="h"}) > 0.5 * 24e3'
    assert metric_names(expr) == {"headwater_x_bucket", "up"}
