"""The plans in force: the active plan of each source, re-read every `plan_refresh_s`, with one compiled
Validator per plan version (shared by the lake writer's enforcement, the collector's ingest transforms and the
live view)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa

from headwater.plan.model import Plan
from headwater.plan.validate import Validator

log = logging.getLogger(__name__)
ANY_SOURCE = "*"


def plan_ref(plan: Plan) -> str:
    """`name@M-R-A`: what `plan_version` holds and reasons name."""
    return f"{plan.name}@{plan.version}"


class ActivePlans:
    """source -> Plan as `load()` gives it (PlanStore.active_plans), at most `refresh_s` old.

    A failed refresh keeps the plans read before (logged); when nothing could be read yet the error is raised,
    so that no batch goes through unchecked because the catalog's database was away for a moment.
    """

    def __init__(
        self, load: Callable[[], dict[str, Plan]], refresh_s: float = 5.0, undeclared: bool | str = True
    ) -> None:
        self.load = load
        self.refresh_s = refresh_s
        self.undeclared = undeclared  # what the validators list of undeclared properties (Validator's argument)
        self._plans: dict[str, Plan] | None = None
        self._read_at = 0.0
        self._validators: dict[str, Validator] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_engine(cls, engine: sa.Engine, refresh_s: float = 5.0, undeclared: bool | str = True) -> ActivePlans:
        """Plans of the PlanStore in the catalog's database `engine`."""
        from headwater.plan.store import PlanStore

        return cls(PlanStore(engine).active_plans, refresh_s, undeclared)

    def current(self) -> dict[str, Plan]:
        """source (or `*`) -> its active plan."""
        with self._lock:
            if self._plans is not None and time.monotonic() - self._read_at < self.refresh_s:
                return self._plans
            try:
                plans = self.load()
            except Exception:
                if self._plans is None:
                    raise
                log.warning("active tracking plans not re-read; keeping the ones read before", exc_info=True)
                self._read_at = time.monotonic()
                return self._plans
            self._plans, self._read_at = plans, time.monotonic()
            used = {plan_ref(p) for p in plans.values()}
            self._validators = {ref: v for ref, v in self._validators.items() if ref in used}
            return plans

    def for_source(self, source: str) -> Plan | None:
        """The plan of `source`: its own, else the one for every source (`*`), else None."""
        plans = self.current()
        return plans.get(source) or plans.get(ANY_SOURCE)

    def by_source(self, sources: list[str]) -> dict[str, Plan]:
        """The plan of each of `sources` that has one."""
        plans = self.current()
        found = {s: plans.get(s) or plans.get(ANY_SOURCE) for s in sources}
        return {s: p for s, p in found.items() if p is not None}

    def validator(self, plan: Plan) -> Validator:
        """The compiled validator of a plan version (compiled once while it is active)."""
        ref = plan_ref(plan)
        with self._lock:
            found = self._validators.get(ref)
            if found is None or found.plan is not plan:
                found = self._validators[ref] = Validator(plan, self.undeclared, ingested=True)
            return found
