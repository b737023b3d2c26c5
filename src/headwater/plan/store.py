"""Plan versions in the catalog database: every pushed version kept forever, one active version per source.

Tables (SQLAlchemy Core; SQLite on one machine, PostgreSQL in a cluster):
- `headwater_plans` (name, version, body, pushed_at, pushed_by): `body` is the JSON object {file path: text} of
  the plan directory as pushed, so a version can be shown, diffed and re-loaded exactly; `pushed_at` in ms.
- `headwater_plan_active` (source, name, version, activated_at): the version enforced for a source; source `*`
  applies to every source without its own row.

A version never changes: pushing the same name and version again with the same files is a no-op, with other
files an error. Every push and activation that changes something writes a `plan.changed` row to the audit
trail (`headwater.auth.audit`).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from headwater.auth.audit import AuditLog
from headwater.core.database import create_tables, open_store
from headwater.plan.compat import parse_version
from headwater.plan.load import PLAN_FILE, PlanError, plan_from_files
from headwater.plan.model import Plan

log = logging.getLogger(__name__)
DEFAULT_SOURCE = "*"
_METADATA = sa.MetaData()
PLANS = sa.Table(
    "headwater_plans",
    _METADATA,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("pushed_at", sa.BigInteger, nullable=False),
    sa.Column("pushed_by", sa.String(255), nullable=False, default=""),
)
ACTIVE = sa.Table(
    "headwater_plan_active",
    _METADATA,
    sa.Column("source", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("activated_at", sa.BigInteger, nullable=False),
)


class PlanNotFound(PlanError):
    """No such plan version."""


def ensure_tables(engine: sa.Engine) -> None:
    create_tables(engine, _METADATA)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def split_ref(text: str) -> tuple[str | None, str]:
    """`"shop@1-2-0"` → ("shop", "1-2-0"); `"1-2-0"` → (None, "1-2-0"); ValueError when the version is not one."""
    name, _, version = text.rpartition("@")
    parse_version(version)
    return name or None, version


class PlanStore:
    """Push, activate and read plan versions (see the module docstring)."""

    def __init__(self, engine: sa.Engine, audit: AuditLog | None = None) -> None:
        self.engine = engine
        ensure_tables(engine)
        self.audit = audit or AuditLog(engine)
        self._owned = False
        self._plans: dict[tuple[str, str], Plan] = {}  # versions never change: parsed once per process
        self._lock = threading.Lock()

    def push(
        self,
        plan: Plan,
        files: dict[str, str],
        *,
        actor: str | None = None,
        address: str = "",
        actor_kind: str | None = None,
    ) -> int:
        """Store a version: 1 when stored, 0 when the same files were already stored under it; PlanError when
        that version holds other files (a changed plan needs a new version)."""
        header = orjson.loads(files.get(PLAN_FILE, "{}"))
        if not isinstance(header, dict) or (header.get("name"), header.get("version")) != (plan.name, plan.version):
            raise PlanError(f"{PLAN_FILE} of the files does not name {plan.name} {plan.version}")
        body = orjson.dumps(files, option=orjson.OPT_SORT_KEYS).decode()
        row = {"name": plan.name, "version": plan.version, "body": body, "pushed_at": _now(), "pushed_by": actor or ""}
        for _ in range(2):
            existing = self._body(plan.name, plan.version)
            if existing is not None:
                if orjson.loads(existing) == files:
                    return 0
                raise PlanError(f"{plan.name} {plan.version} was pushed before with other content: a changed plan "
                                "needs a new version (`headwater plan check` says which)")  # fmt: skip
            try:
                with self.engine.begin() as conn:
                    conn.execute(PLANS.insert().values(**row))
            except sa.exc.IntegrityError:
                continue  # pushed by someone else at the same moment: compare with theirs
            with self._lock:
                self._plans[(plan.name, plan.version)] = plan
            details = {"change": "pushed", "plan": f"{plan.name}@{plan.version}", "events": len(plan.events)}
            self._record(actor, f"{plan.name}@{plan.version}", details, address, actor_kind)
            return 1
        raise PlanError(f"{plan.name} {plan.version}: could not be stored, try again")

    def activate(
        self,
        source: str,
        name: str,
        version: str,
        *,
        actor: str | None = None,
        address: str = "",
        actor_kind: str | None = None,
    ) -> None:
        """Make `name@version` the plan of `source` (`*`: every source without its own)."""
        if not source or len(source) > 255:
            raise PlanError("source: a source name, or * for every source")
        if self._body(name, version) is None:
            raise PlanNotFound(f"no plan {name}@{version}: push it first (headwater plan push DIR)")
        previous: str | None = None
        for attempt in range(3):  # two activations of one source at once: the loser reads the winner's row
            try:
                with self.engine.begin() as conn:
                    query = sa.select(ACTIVE.c.name, ACTIVE.c.version).where(ACTIVE.c.source == source)
                    found = conn.execute(query).first()
                    previous = f"{found.name}@{found.version}" if found is not None else None
                    if found is not None and (found.name, found.version) == (name, version):
                        return
                    conn.execute(ACTIVE.delete().where(ACTIVE.c.source == source))
                    row = {"source": source, "name": name, "version": version, "activated_at": _now()}
                    conn.execute(ACTIVE.insert().values(**row))
                break
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise
        details = {"change": "activated", "source": source, "plan": f"{name}@{version}", "previous": previous}
        self._record(actor, f"{name}@{version}", details, address, actor_kind)

    def deactivate(self, source: str, *, actor: str | None = None, address: str = "",
                   actor_kind: str | None = None) -> bool:  # fmt: skip
        """No plan for `source` any more (it falls back to `*`, or to none); False when it had none."""
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(ACTIVE.c.name, ACTIVE.c.version).where(ACTIVE.c.source == source)).first()
            if found is None:
                return False
            conn.execute(ACTIVE.delete().where(ACTIVE.c.source == source))
        details = {"change": "deactivated", "source": source, "previous": f"{found.name}@{found.version}"}
        self._record(actor, f"{found.name}@{found.version}", details, address, actor_kind)
        return True

    def active(self) -> dict[str, dict[str, Any]]:
        """source → {"name", "version", "activated_at"} of every active row (one small query, no parsing)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ACTIVE).order_by(ACTIVE.c.source)).all()
        return {r.source: {"name": r.name, "version": r.version, "activated_at": iso(r.activated_at)} for r in rows}

    def active_plans(self) -> dict[str, Plan]:
        """source (or `*`) → its active Plan; versions already parsed come from memory."""
        return {source: self.get(row["name"], row["version"]) for source, row in self.active().items()}

    def get(self, name: str, version: str) -> Plan:
        """A stored version (PlanNotFound when there is none)."""
        with self._lock:
            cached = self._plans.get((name, version))
        if cached is not None:
            return cached
        plan = plan_from_files(self.files(name, version))
        with self._lock:
            self._plans[(name, version)] = plan
        return plan

    def files(self, name: str, version: str) -> dict[str, str]:
        """The files of a stored version, as pushed."""
        body = self._body(name, version)
        if body is None:
            raise PlanNotFound(f"no plan {name}@{version} (see `headwater plan list`)")
        files: dict[str, str] = orjson.loads(body)
        return files

    def versions(self, name: str | None = None) -> list[dict[str, Any]]:
        """Stored versions (newest first within each name) with where each is active."""
        query = sa.select(PLANS.c.name, PLANS.c.version, PLANS.c.pushed_at, PLANS.c.pushed_by)
        if name is not None:
            query = query.where(PLANS.c.name == name)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        active: dict[tuple[str, str], list[str]] = {}
        for source, row in self.active().items():
            active.setdefault((row["name"], row["version"]), []).append(source)
        out = [
            {"name": r.name, "version": r.version, "pushed_at": iso(r.pushed_at), "pushed_by": r.pushed_by,
             "active_for": sorted(active.get((r.name, r.version), []))}
            for r in rows
        ]  # fmt: skip
        out.sort(key=lambda v: (v["name"], tuple(-x for x in parse_version(v["version"]))))
        return out

    def predecessor(self, name: str, version: str) -> str | None:
        """The highest stored version of `name` below `version` (what a push of `version` is compared with)."""
        below = [v["version"] for v in self.versions(name) if parse_version(v["version"]) < parse_version(version)]
        return max(below, key=parse_version, default=None)

    def resolve(self, ref: str) -> tuple[str, str]:
        """`name@M-R-A`, or `M-R-A` of the plan active for `*` (else the only plan name stored) → (name, version)."""
        try:
            name, version = split_ref(ref)
        except ValueError as exc:
            raise PlanError(f"{ref!r}: give name@M-R-A (shop@1-2-0) or a version M-R-A: {exc}") from None
        if name is None:
            active = self.active()
            names = {row["name"] for row in active.values()} or {v["name"] for v in self.versions()}
            if DEFAULT_SOURCE in active:
                name = active[DEFAULT_SOURCE]["name"]
            elif len(names) == 1:
                name = names.pop()
            else:
                raise PlanError(f"{ref!r}: several plans ({', '.join(sorted(names)) or 'none'}): write name@{version}")
        return name, version

    def close(self) -> None:
        if self._owned:
            self.engine.dispose()

    def _body(self, name: str, version: str) -> str | None:
        query = sa.select(PLANS.c.body).where(PLANS.c.name == name, PLANS.c.version == version)
        with self.engine.connect() as conn:
            found = conn.execute(query).scalar()
        return str(found) if found is not None else None

    def _record(
        self, actor: str | None, target: str, details: dict[str, Any], address: str, actor_kind: str | None
    ) -> None:
        """The change is made: a failure to record it is logged, not raised."""
        try:
            self.audit.record(
                actor or "system", "plan.changed", target, details, address=address, actor_kind=actor_kind
            )
        except Exception:
            log.exception("audit row not written: plan.changed by %s on %s %s", actor or "system", target, details)


def open_plan_store(uri: str) -> PlanStore:
    """A store on its own engine (closed by `close()`): for commands run outside the server."""
    store = PlanStore(open_store(uri, _METADATA))
    store._owned = True
    return store


def _now() -> int:
    return int(time.time() * 1000)


def publish(
    store: PlanStore,
    files: dict[str, str],
    *,
    activate: str | None = None,
    force: bool = False,
    actor: str | None = None,
    address: str = "",
    actor_kind: str | None = None,
) -> dict[str, Any]:
    """Check (load, lint, version against the highest stored version below it) and push `files`, then activate
    them for `activate` when given. PlanError with the problems when there is an error (`force`: push even when
    the version does not fit the changes). Returns what happened, with the warnings and the changes."""
    from headwater.plan.compat import version_problems
    from headwater.plan.lint import check_files

    loaded = check_files(files)
    if loaded.errors or loaded.plan is None:
        raise PlanError(f"the plan has {len(loaded.errors)} error(s)", loaded.errors)
    plan = loaded.plan
    base = store.predecessor(plan.name, plan.version)
    changes: list[Any] = []
    if base is not None:
        changes, problems = version_problems(store.get(plan.name, base), plan)
        if problems and not force:
            raise PlanError(problems[0].message, problems)
    stored = store.push(plan, files, actor=actor, address=address, actor_kind=actor_kind)
    if activate is not None:
        store.activate(activate, plan.name, plan.version, actor=actor, address=address, actor_kind=actor_kind)
    return {
        "plan": f"{plan.name}@{plan.version}",
        "name": plan.name,
        "version": plan.version,
        "stored": bool(stored),
        "activated": activate,
        "compared_with": base,
        "changes": [c.public() for c in changes],
        "warnings": [p.public() for p in loaded.problems if p.level != "error"],
    }


def plan_json(plan: Plan, active_for: list[str] | None = None) -> dict[str, Any]:
    """A version as the API and `plan show --json` give it: settings, then each event with its properties."""
    events = []
    for event in sorted(plan.events.values(), key=lambda e: e.name):
        props = [
            {"path": p.path, "types": list(p.types), "required": p.required, "description": p.description,
             "personal": p.personal, "consent": p.consent}
            for p in event.properties
        ]  # fmt: skip
        events.append({
            "name": event.name, "description": event.description, "mode": plan.mode_of(event.name),
            "own_mode": event.mode, "file": event.file, "properties": props, "schema": event.schema,
        })  # fmt: skip
    return {
        "name": plan.name, "version": plan.version, "ref": f"{plan.name}@{plan.version}",
        "description": plan.description, "enforcement": plan.enforcement, "unplanned": plan.unplanned,
        "naming": plan.naming, "active_for": active_for or [], "events": events,
    }  # fmt: skip
