"""Plan enforcement: the lake writer's first stage (`headwater.core.stages`).

For each source with an active plan (its own, else the plan for every source `*`; PlanStore, re-read every
`plan_refresh_s`), each track event is checked by the plan's Validator and handled by its mode (the event's
`x-enforcement`, else the plan's `enforcement`; `unplanned` for events the plan does not name):

- `allow`: stored; its violations in the `plan_violations` column.
- `warn`: the same, and its violations counted in `headwater_plan_violations` (view `plan_violations`).
- `quarantine`: an event with violations goes to quarantine instead, with a reason listing every one
  (`plan shop@1-2-0: $.properties.revenue: type: expected number, got string; ...`); they are counted.
- `drop-properties`: top-level properties the schema does not declare are removed from `properties`; any
  other violation is handled as in `warn`.

Every row of a source with a plan gets `plan_version` (`name@M-R-A`, the version it was checked against) and
`plan_violations` (a JSON list of {path, rule, expected, got}, NULL when none). A batch of sources without a
plan passes untouched (no columns added). `undeclared` findings are not violations: they are counted (the plan
browser shows what is sent but not planned) and drive drop-properties, but neither flag nor quarantine an event.

Re-running a batch after a crash gives the same rows (the checks are pure); the counts may grow twice
(`headwater.plan.violations`).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from headwater.core.settings import Settings
from headwater.core.stages import StageBatch
from headwater.plan.active import ActivePlans, plan_ref
from headwater.plan.model import Plan
from headwater.plan.validate import INFORMATIONAL, shown_key
from headwater.plan.violations import ViolationCounts

log = logging.getLogger(__name__)
COUNTED_MODES = ("warn", "quarantine", "drop-properties")
REASON_VIOLATIONS = 20  # a quarantine reason lists this many violations, then how many more
_TOP_LEVEL = re.compile(r'^\$\.properties(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[(".*")\])$')


def describe(violation: dict[str, Any]) -> str:
    """`$.properties.revenue: type: expected number, got string`."""
    return f"{violation['path']}: {violation['rule']}: expected {violation['expected']}, got {violation['got']}"


def reason_for(ref: str, violations: list[dict[str, Any]]) -> str:
    """A quarantine reason naming the plan version and every violation (the first REASON_VIOLATIONS)."""
    shown = "; ".join(describe(v) for v in violations[:REASON_VIOLATIONS])
    more = len(violations) - REASON_VIOLATIONS
    return f"plan {ref}: {shown}" + (f"; and {more} more" if more > 0 else "")


def top_level_key(path: str) -> str | None:
    """The property name of a top-level path (`$.properties.a`, `$.properties["a b"]`), else None."""
    found = _TOP_LEVEL.match(path)
    if found is None:
        return None
    if found.group(1) is not None:
        return found.group(1)
    try:
        key = orjson.loads(found.group(2))
    except orjson.JSONDecodeError:
        return None
    return key if isinstance(key, str) else None


def personal_paths(plan: Plan) -> set[tuple[str, str]]:
    """(plan version, violation path with `[]` for array indexes) of the properties the plan declares personal."""
    out = set()
    for spec in plan.events.values():
        for prop in spec.properties:
            if prop.personal is not None:
                text = "$.properties"
                for part in prop.path.split("."):
                    name = part[:-2] if part.endswith("[]") else part
                    text += shown_key(name) + ("[]" if part.endswith("[]") else "")
                out.add((plan_ref(plan), text))
    return out


class PlanStage:
    """Enforces the active tracking plans on each batch (see the module docstring)."""

    name = "plan"

    def __init__(self, settings: Settings, engine: sa.Engine, plans: ActivePlans | None = None) -> None:
        # undeclared properties are listed only where a mode acts on them (drop-properties): elsewhere they are
        # informational, and listing them for every event doubled the cost of enforcement (bench/trusted.py)
        self.plans = plans or ActivePlans.from_engine(engine, settings.plan_refresh_s, undeclared="acted-on")
        self.counts = ViolationCounts(engine)
        self._personal: dict[str, set[tuple[str, str]]] = {}  # plan version -> its personal properties' paths

    def apply(self, batch: StageBatch) -> StageBatch:
        events = batch.events
        if events.num_rows == 0:
            return batch
        source = events.column("source")
        with_plan = self.plans.by_source([s for s in pc.unique(source).to_pylist() if s is not None])
        if not with_plan:
            return batch
        names = pa.array(sorted(with_plan), pa.string())
        refs = pa.array([plan_ref(with_plan[s]) for s in names.to_pylist()], pa.string())
        version = refs.take(pc.index_in(source, value_set=names))
        found = [self._check(events, source, plan, [s for s, p in with_plan.items() if p is plan])
                 for plan in {id(p): p for p in with_plan.values()}.values()]  # fmt: skip
        violations = pa.concat_tables(found)
        personal: set[tuple[str, str]] = set()
        for plan in with_plan.values():
            if plan_ref(plan) not in self._personal:
                self._personal = {**self._personal, plan_ref(plan): personal_paths(plan)}
            personal |= self._personal[plan_ref(plan)]
        flags = self._handle(batch, violations, personal)
        batch.events = batch.events.append_column(pa.field("plan_version", pa.string()), version).append_column(
            pa.field("plan_violations", pa.string()), flags
        )
        return batch

    def _check(self, events: pa.Table, source: pa.ChunkedArray, plan: Plan, sources: list[str]) -> pa.Table:
        """Violations of `plan` by the rows of `sources`, with their row in `events`, mode and plan version."""
        rows = np.flatnonzero(pc.is_in(source, value_set=pa.array(sources, pa.string())).to_numpy(zero_copy_only=False))
        columns = [c for c in ("event", "properties", "type") if c in events.column_names]
        picked = events.select(columns).take(pa.array(rows, pa.int64())) if len(rows) < events.num_rows else events
        found = self.plans.validator(plan).check(picked.select(columns))
        at = pa.array(rows, pa.int64()).take(found.column("row")) if len(rows) < events.num_rows else found["row"]
        planned = pa.array(sorted(plan.events), pa.string())
        modes = pa.array([plan.mode_of(e) for e in planned.to_pylist()] + [plan.unplanned], pa.string())
        which = pc.fill_null(pc.index_in(found.column("event"), value_set=planned), len(planned))
        return (
            found.set_column(0, "row", at)
            .append_column("mode", modes.take(which))
            .append_column("plan_version", pa.array([plan_ref(plan)] * found.num_rows, pa.string()))
        )

    def _handle(self, batch: StageBatch, violations: pa.Table, personal: set[tuple[str, str]]) -> pa.Array:
        """Quarantine, drop undeclared properties, count; returns the `plan_violations` column."""
        events = batch.events
        n = events.num_rows
        if violations.num_rows == 0:
            return pa.nulls(n, pa.string())
        rule, mode = violations.column("rule"), violations.column("mode")
        blocking = pc.invert(pc.is_in(rule, value_set=pa.array(sorted(INFORMATIONAL), pa.string())))
        extra = pc.or_(pc.equal(rule, "undeclared"), pc.equal(rule, "additionalProperties"))
        top = pc.match_substring_regex(violations.column("path"), _TOP_LEVEL.pattern)
        dropped = pc.and_(pc.equal(mode, "drop-properties"), pc.and_(extra, top))
        bad = pc.and_(pc.equal(mode, "quarantine"), blocking)
        rows = violations.column("row").to_numpy()
        quarantined = np.unique(rows[bad.to_numpy(zero_copy_only=False)])
        if len(quarantined):
            self._quarantine(batch, violations.filter(pc.is_in(violations["row"], pa.array(quarantined))), quarantined)
        if pc.any(dropped).as_py():
            self._drop(batch, violations.filter(dropped))
        counted = violations.filter(pc.is_in(mode, value_set=pa.array(COUNTED_MODES)))
        if counted.num_rows:
            picked = events.select(["source", "received_at"]).take(counted.column("row"))
            counted = counted.append_column("source", picked["source"])
            self.counts.add(counted.append_column("received_at", picked["received_at"]), personal)
        keep = pc.and_(blocking, pc.invert(dropped))
        keep = pc.and_(keep, pc.invert(pc.is_in(violations["row"], pa.array(quarantined, pa.int64()))))
        return _flags(violations.filter(keep), n)

    def _quarantine(self, batch: StageBatch, violations: pa.Table, rows: np.ndarray) -> None:
        by_row: dict[int, list[dict[str, Any]]] = {}
        for v in violations.filter(
            pc.invert(pc.is_in(violations["rule"], pa.array(sorted(INFORMATIONAL))))
        ).to_pylist():
            by_row.setdefault(v["row"], []).append(v)
        batch.quarantine(
            [int(r) for r in rows], [reason_for(by_row[int(r)][0]["plan_version"], by_row[int(r)]) for r in rows]
        )

    def _drop(self, batch: StageBatch, violations: pa.Table) -> None:
        """Remove the named top-level properties from those rows' `properties` (only those rows are parsed)."""
        keys: dict[int, set[str]] = {}
        for row, path in zip(violations["row"].to_pylist(), violations["path"].to_pylist(), strict=True):
            key = top_level_key(path)
            if key is not None:
                keys.setdefault(row, set()).add(key)
        column = batch.events.column("properties")
        texts = column.take(pa.array(sorted(keys), pa.int64())).to_pylist()
        changed = []
        for row, text in zip(sorted(keys), texts, strict=True):
            props = orjson.loads(text) if text else {}
            kept = {k: v for k, v in props.items() if k not in keys[row]} if isinstance(props, dict) else props
            changed.append(orjson.dumps(kept).decode() if kept else None)
        replaced = _replace(column, sorted(keys), changed)
        index = batch.events.column_names.index("properties")
        batch.events = batch.events.set_column(index, batch.events.field("properties"), replaced)

    def close(self) -> None:
        pass


def _replace(column: pa.ChunkedArray, rows: list[int], texts: list[str | None]) -> pa.Array:
    """`column` with the values at `rows` replaced by `texts`, without converting the others to Python."""
    n = len(column)
    patch = np.full(n, -1, dtype=np.int64)
    patch[rows] = np.arange(len(rows))
    mask = pa.array(patch >= 0)
    fresh = pa.array(texts, pa.string()).take(pa.array(np.maximum(patch, 0)))
    return pc.if_else(mask, fresh, column.combine_chunks())


_FLAGS_SQL = (
    "SELECT \"row\", to_json(list({'path': path, 'rule': rule, 'expected': expected, 'got': got} "
    'ORDER BY hw_n))::VARCHAR AS flags FROM flag_rows GROUP BY "row" ORDER BY "row"'
)
_flags_db = threading.local()


def _flags(violations: pa.Table, n: int) -> pa.Array:
    """The `plan_violations` column: per row, the JSON list of its violations, NULL when none (built by DuckDB:
    a flagged row costs no Python)."""
    if violations.num_rows == 0:
        return pa.nulls(n, pa.string())
    db = getattr(_flags_db, "db", None)
    if db is None:
        db = _flags_db.db = duckdb.connect(":memory:", config={"threads": 1})
    picked = violations.select(["row", "path", "rule", "expected", "got"])
    db.register("flag_rows", picked.append_column("hw_n", pa.array(np.arange(picked.num_rows))))  # kept in order
    try:
        grouped = db.execute(_FLAGS_SQL).to_arrow_table()
    finally:
        db.unregister("flag_rows")
    rows = grouped.column("row").to_numpy()
    patch = np.full(n, -1, dtype=np.int64)
    patch[rows] = np.arange(len(rows))
    return grouped.column("flags").combine_chunks().take(pa.array(np.maximum(patch, 0), mask=patch < 0))
