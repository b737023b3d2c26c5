"""The example models project `make up` builds: it loads, its order follows its dependencies, its checks parse."""

from __future__ import annotations

from pathlib import Path

from headwater.models.checks import load_checks
from headwater.models.project import load_project

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "models"


def test_the_example_project_loads_in_dependency_order_with_its_checks() -> None:
    project = load_project(EXAMPLE, known={"events"})
    assert list(project.models) == ["daily_activity", "daily_totals"]
    assert project.models["daily_totals"].deps == ("daily_activity",)
    assert project.models["daily_activity"].materialized == "incremental"
    checks = load_checks(EXAMPLE)
    assert {c.kind for c in checks} == {"not_null", "freshness", "unique", "row_count_match"}
    assert {c.table for c in checks} == {"events", "daily_activity"}
