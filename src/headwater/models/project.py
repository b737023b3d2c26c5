"""A models project: the `name.sql` files of `settings.models_dir`, their header configuration and dependencies.

A model is one SELECT over `events`, other models and lake tables. Leading comment lines configure it:

    -- materialized: table | incremental      (default table: a full refresh each build)
    -- partition_by: day_column               (incremental: a DATE/TIMESTAMP column; the table is partitioned by day)
    -- lookback_days: 3                       (incremental: days before the newest built one that are recomputed)
    -- schedule: 0 3 * * * | on_change       (cron in UTC, or when an input table changed; default on_change)
    -- description: Daily active users per source

Dependencies are the table names the SELECT reads (sqlglot, DuckDB dialect) that name other models; a cycle or a
reference to nothing known is a ModelError naming the file and the model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlglot
from croniter import croniter
from sqlglot import exp

from headwater.core.errors import ModelError

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
BUILT_IN = frozenset(
    {"events", "quarantine", "persons", "person_merges", "plan_violations", "model_runs", "check_results",
     "alert_history"}
)  # fmt: skip
"""Tables and views every Headwater has: a model cannot take their names."""
KEYS = frozenset({"materialized", "partition_by", "lookback_days", "schedule", "description"})
_HEADER = re.compile(r"^\s*--\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")
ON_CHANGE = "on_change"


@dataclass(frozen=True)
class Model:
    """One model: its SQL, configuration and the tables it reads."""

    name: str
    path: Path
    sql: str
    materialized: str = "table"  # table | incremental
    partition_by: str | None = None
    lookback_days: int = 3
    schedule: str = ON_CHANGE
    description: str = ""
    refs: tuple[str, ...] = ()  # every table name the SELECT reads
    deps: tuple[str, ...] = ()  # the refs that are models

    @property
    def definition(self) -> str:
        """A hash of what decides the table's content: a change makes the model due."""
        text = f"{self.sql}\0{self.materialized}\0{self.partition_by}\0{self.lookback_days}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def config(self) -> dict[str, Any]:
        return {
            "materialized": self.materialized, "partition_by": self.partition_by,
            "lookback_days": self.lookback_days if self.materialized == "incremental" else None,
            "schedule": self.schedule, "description": self.description,
        }  # fmt: skip


@dataclass
class Project:
    """The models of a directory in dependency order, and the files that could not be used (name -> error)."""

    directory: Path | None
    models: dict[str, Model] = field(default_factory=dict)  # in dependency order (inputs first)
    errors: dict[str, str] = field(default_factory=dict)
    stamp: tuple[tuple[str, int, int], ...] = ()  # (file, mtime_ns, size) when loaded

    def downstream(self, names: set[str]) -> set[str]:
        """`names` and every model that reads them, directly or not."""
        found = set(names)
        for model in self.models.values():  # dependency order: inputs are seen first
            if found.intersection(model.deps):
                found.add(model.name)
        return found

    def raise_errors(self) -> None:
        if self.errors:
            raise ModelError("; ".join(self.errors[name] for name in sorted(self.errors)))


def stamp(directory: Path | None) -> tuple[tuple[str, int, int], ...]:
    """What changes when a model file (or checks.toml) is added, removed or edited: cheap to compare every tick."""
    if directory is None or not directory.is_dir():
        return ()
    out = []
    for path in sorted(directory.iterdir()):
        if path.suffix in (".sql", ".toml") and path.is_file():
            info = path.stat()
            out.append((path.name, info.st_mtime_ns, info.st_size))
    return tuple(out)


def parse_header(path: Path, sql: str) -> dict[str, str]:
    """The `-- key: value` lines before the first line of SQL."""
    found: dict[str, str] = {}
    for line in sql.splitlines():
        if not line.strip():
            continue
        if not line.lstrip().startswith("--"):
            break
        match = _HEADER.match(line)
        if match and match.group(1).lower() in KEYS:
            found[match.group(1).lower()] = match.group(2)
    return found


def table_refs(sql: str) -> tuple[str, ...]:
    """The names of the tables a SELECT reads (CTE names excluded), in order of appearance."""
    tree = sqlglot.parse_one(sql, dialect="duckdb")
    if not isinstance(tree, exp.Query):
        raise ModelError("not a SELECT")
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    refs: dict[str, None] = {}
    for table in tree.find_all(exp.Table):
        if table.catalog or (table.db and table.db.lower() != "main") or not table.name:
            continue
        name = table.name.lower()
        if name not in ctes:
            refs[name] = None
    return tuple(refs)


def parse_model(path: Path) -> Model:
    """One file as a Model (its deps are resolved by `load_project`); ModelError naming the file."""
    name = path.stem
    where = f"{path.name} (model {name})"
    if not NAME.match(name):
        raise ModelError(f"{where}: a model name is lower case letters, digits and _ (at most 63), starting "
                         "with a letter")  # fmt: skip
    if name in BUILT_IN:
        raise ModelError(f"{where}: {name} is a built-in table; rename the file")
    text = path.read_text(encoding="utf-8")
    sql = text.strip().rstrip(";").strip()
    if not sql:
        raise ModelError(f"{where}: the file is empty")
    head = parse_header(path, text)
    materialized = head.get("materialized", "table").lower()
    if materialized not in ("table", "incremental"):
        raise ModelError(f"{where}: materialized is table or incremental, not {materialized!r}")
    partition_by = head.get("partition_by") or None
    if materialized == "incremental" and not partition_by:
        raise ModelError(f"{where}: an incremental model needs `-- partition_by: <date or timestamp column>`")
    if partition_by and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", partition_by):
        raise ModelError(f"{where}: partition_by is a column name, not {partition_by!r}")
    try:
        lookback = int(head.get("lookback_days", "3"))
        if lookback < 0:
            raise ValueError
    except ValueError:
        raise ModelError(f"{where}: lookback_days is a whole number of days ≥ 0") from None
    schedule = head.get("schedule", ON_CHANGE).strip() or ON_CHANGE
    if schedule != ON_CHANGE and not croniter.is_valid(schedule):
        raise ModelError(f"{where}: schedule {schedule!r} is neither a cron expression nor on_change")
    try:
        refs = table_refs(sql)
    except (sqlglot.errors.ParseError, ModelError) as exc:
        raise ModelError(f"{where}: not one SELECT: {str(exc).splitlines()[0][:300]}") from None
    return Model(name, path, sql, materialized, partition_by, lookback, schedule, head.get("description", ""), refs)


def load_project(directory: Path | None, known: set[str] | None = None, strict: bool = True) -> Project:
    """The models of `directory` in dependency order. `known`: the tables that exist besides models (lake tables
    and built-in views; None: references are not checked). `strict`: raise one ModelError for every problem;
    else broken models (and those that read them) are left out and listed in `errors`."""
    project = Project(directory, stamp=stamp(directory))
    if directory is None or not directory.is_dir():
        return project
    parsed: dict[str, Model] = {}
    for path in sorted(directory.glob("*.sql")):
        try:
            parsed[path.stem] = parse_model(path)
        except ModelError as exc:
            project.errors[path.stem] = str(exc)
        except (OSError, UnicodeDecodeError) as exc:
            project.errors[path.stem] = f"{path.name} (model {path.stem}): cannot read: {exc}"
    names = set(parsed) | set(project.errors)
    with_deps: dict[str, Model] = {}
    for name, model in parsed.items():
        deps = tuple(r for r in model.refs if r in names and r != name)
        if name in model.refs:
            project.errors[name] = f"{model.path.name} (model {name}): reads itself"
            continue
        if known is not None:
            missing = [r for r in model.refs if r not in names and r not in known and r not in BUILT_IN]
            if missing:
                project.errors[name] = (
                    f"{model.path.name} (model {name}): reads {', '.join(missing)}, which is neither a model nor "
                    "a table"
                )
                continue
        with_deps[name] = Model(**{**model.__dict__, "deps": deps})
    project.models = _order(with_deps, project.errors)
    if strict:
        project.raise_errors()
    return project


def _order(models: dict[str, Model], errors: dict[str, str]) -> dict[str, Model]:
    """Models in dependency order (Kahn, ties by name); cycles and models reading a broken one go to `errors`."""
    ordered: dict[str, Model] = {}
    pending = dict(models)
    while pending:
        ready = sorted(n for n, m in pending.items() if all(d in ordered for d in m.deps))
        if ready:
            for name in ready:
                ordered[name] = pending.pop(name)
            continue
        broken = sorted(n for n, m in pending.items() if any(d in errors for d in m.deps))
        if broken:
            for name in broken:
                model = pending.pop(name)
                bad = [d for d in model.deps if d in errors]
                errors[name] = f"{model.path.name} (model {name}): reads model {', '.join(bad)}, which has an error"
            continue
        cycle = _cycle(pending)
        text = " -> ".join([*cycle, cycle[0]])
        for name in sorted(pending):
            model = pending[name]
            where = f"{model.path.name} (model {name})"
            errors[name] = (
                f"{where}: dependency cycle {text}" if name in cycle else f"{where}: reads a model of a cycle"
            )
        pending.clear()
    return ordered


def _cycle(pending: dict[str, Model]) -> list[str]:
    """One cycle among `pending` (every model there waits for another one there)."""
    start = sorted(pending)[0]
    path, seen = [start], {start: 0}
    while True:
        nxt = sorted(d for d in pending[path[-1]].deps if d in pending)[0]
        if nxt in seen:
            return path[seen[nxt] :]
        seen[nxt] = len(path)
        path.append(nxt)
