"""The live view's plan check: each event shown with the violations the active plan finds in it, before the lake
writer enforces anything (so a sender can be debugged while it sends)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pyarrow as pa

from headwater.plan.active import ActivePlans, plan_ref
from headwater.plan.model import Plan

log = logging.getLogger(__name__)


class LiveViolations:
    """Adds `plan_version`, `plan_mode` and `violations` (a list of {path, rule, expected, got}) to live rows of
    sources with an active plan; one Validator call per plan for a page of rows."""

    def __init__(self, plans: ActivePlans) -> None:
        self.plans = plans

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`rows` (LiveTail rows), annotated in place; returned for convenience. Never raises: the live view
        shows the events without annotations when the plans cannot be read."""
        try:
            self._annotate(rows)
        except Exception:
            log.warning("live view: tracking plan check skipped", exc_info=True)
        return rows

    def _annotate(self, rows: list[dict[str, Any]]) -> None:
        checked = [r for r in rows if r.get("rejected") is None and isinstance(r.get("source"), str)]
        if not checked:
            return
        by_source = self.plans.by_source(sorted({r["source"] for r in checked}))
        groups: dict[str, tuple[Plan, list[dict[str, Any]]]] = {}
        for row in checked:
            plan = by_source.get(row["source"])
            if plan is not None:
                groups.setdefault(plan_ref(plan), (plan, []))[1].append(row)
        for ref, (plan, members) in groups.items():
            table = pa.table(
                {
                    "event": pa.array([r.get("event") for r in members], pa.string()),
                    "type": pa.array([r.get("type") or "track" for r in members], pa.string()),
                    "properties": pa.array([_text(r.get("properties")) for r in members], pa.string()),
                }
            )
            found = self.plans.validator(plan).check(table).to_pylist()
            for row in members:
                row["plan_version"] = ref
                row["plan_mode"] = plan.mode_of(row.get("event")) if row.get("type", "track") == "track" else None
                row["violations"] = []
            for v in found:
                members[v["row"]]["violations"].append({k: v[k] for k in ("path", "rule", "expected", "got")})


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
