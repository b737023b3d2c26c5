"""Data checks: declared in `<models_dir>/checks.toml`, run as one SQL query each, results kept in the catalog.

```toml
[[checks]]
table = "events"                  # any table or view of the SQL surface, or a model
kind = "not_null"                 # not_null | unique | accepted_values | row_count | row_count_match | freshness
column = "event"                  # or columns = ["a", "b"]: a column name, or an SQL expression
where = "type = 'track'"          # optional SQL filter
severity = "error"                # error (default) | warn
schedule = "*/30 * * * *"         # optional cron (UTC); none: after each build of the model named by `table`,
                                  # hourly for a table that is not a model
name = "track_events_have_a_name" # optional; generated from table, kind and columns
description = "..."               # optional
```

Kind fields: accepted_values `values = [...]`; row_count `min` / `max` (at least one) and optionally
`per = "day"` with `time_column` and `days` (7) and `include_today` (false); row_count_match `time_column`,
`compare_table`, optional `compare_time_column` (the same), `count_column` / `compare_count_column` (a column
to sum instead of counting rows), `compare_where`, `tolerance` (relative, 0), `days`, `include_today`; freshness
`time_column` and `max_age_minutes`. The SQL of each kind: `headwater.models.check_sql`.

A run records one row per check in the catalog table `headwater_check_results` (`RESULTS`); the latest row of a
check says whether it passes, and when a check is due next (`CheckRunner.due_checks`), so restarts repeat nothing.
"""

from __future__ import annotations

import logging
import re
import time
import tomllib
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from croniter import croniter

from headwater.core.database import create_tables
from headwater.core.errors import CheckError
from headwater.core.settings import Settings
from headwater.models.check_sql import FAILING, ITEMS, failing_sql, wrapped

log = logging.getLogger(__name__)
CHECKS_FILE = "checks.toml"
KINDS = ("not_null", "unique", "accepted_values", "row_count", "row_count_match", "freshness")
SEVERITIES = ("error", "warn")
DEFAULT_SCHEDULE = "0 * * * *"  # checks of tables that are not models, without a schedule: hourly
HISTORY_DAYS = 90  # results older than this are deleted after a run
MAX_TEXT = 300  # characters of a sampled value
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_REQUIRED = {
    "not_null": ("columns",),
    "unique": ("columns",),
    "accepted_values": ("columns", "values"),
    "row_count": (),
    "row_count_match": ("time_column", "compare_table"),
    "freshness": ("time_column", "max_age_minutes"),
}
_ALLOWED = {
    "not_null": {"columns"},
    "unique": {"columns"},
    "accepted_values": {"columns", "values"},
    "row_count": {"per", "time_column", "min", "max", "days", "include_today"},
    "row_count_match": {
        "time_column", "compare_table", "compare_time_column", "count_column", "compare_count_column",
        "compare_where", "tolerance", "days", "include_today",
    },
    "freshness": {"time_column", "max_age_minutes"},
}  # fmt: skip
_COMMON = {"name", "table", "kind", "where", "severity", "schedule", "description"}

METADATA = sa.MetaData()
RESULTS = sa.Table(
    "headwater_check_results",
    METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("check", sa.String(128), nullable=False),
    sa.Column("table", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("severity", sa.String(8), nullable=False),
    sa.Column("status", sa.String(8), nullable=False),  # pass | fail | error
    sa.Column("failing", sa.BigInteger, nullable=True),  # None when the query failed
    sa.Column("detail", sa.Text, nullable=False),  # JSON: message, sample, items, query (and error)
    sa.Column("started_at", sa.DateTime, nullable=False),  # naive UTC
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Index("ix_headwater_check_results_check", "check", "started_at"),
    sa.Index("ix_headwater_check_results_started", "started_at"),
)


@dataclass(frozen=True)
class Check:
    """One declared check (see the module docstring for the fields)."""

    name: str
    table: str
    kind: str
    columns: tuple[str, ...] = ()
    values: tuple[Any, ...] = ()
    where: str | None = None
    severity: str = "error"
    schedule: str | None = None
    description: str | None = None
    per: str | None = None
    time_column: str | None = None
    min: int | None = None
    max: int | None = None
    days: int = 7
    include_today: bool = False
    compare_table: str | None = None
    compare_time_column: str | None = None
    count_column: str | None = None
    compare_count_column: str | None = None
    compare_where: str | None = None
    tolerance: float = 0.0
    max_age_minutes: float | None = None

    def public(self) -> dict[str, Any]:
        """The declaration as JSON (fields left at their defaults omitted, `columns` as declared)."""
        out: dict[str, Any] = {"name": self.name, "table": self.table, "kind": self.kind, "severity": self.severity,
                               "schedule": self.schedule}  # fmt: skip
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in out and value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def sql(self, now: datetime | None = None) -> str:
        """The SELECT of this check's failing items (`now`: naive or aware UTC, default the current time)."""
        return failing_sql(self, _naive(now or datetime.now(UTC)))


@dataclass
class CheckResult:
    run_id: str
    check: str
    table: str
    kind: str
    severity: str
    status: str  # pass | fail | error
    failing: int | None
    detail: dict[str, Any]
    started_at: datetime  # aware UTC
    duration_s: float

    @property
    def blocking(self) -> bool:
        """Failed or errored, with severity error (what makes `headwater models test` exit 1)."""
        return self.status != "pass" and self.severity == "error"

    def public(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "check": self.check, "table": self.table, "kind": self.kind,
            "severity": self.severity, "status": self.status, "failing": self.failing, "detail": self.detail,
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"), "duration_s": round(self.duration_s, 3),
        }  # fmt: skip


# --- loading


def load_checks(models_dir: Path | None) -> list[Check]:
    """The checks of `<models_dir>/checks.toml` (none when the directory or the file is absent); CheckError
    naming the file, the check and the field when one is wrong."""
    if models_dir is None:
        return []
    path = Path(models_dir) / CHECKS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CheckError(f"{path}: cannot read: {exc}") from None
    return parse_checks(text, str(path))


def parse_checks(text: str, source: str = CHECKS_FILE) -> list[Check]:
    """Checks from the text of a checks.toml (`source` names it in errors)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CheckError(f"{source}: not valid TOML: {exc}") from None
    extra = sorted(set(doc) - {"checks"})
    if extra:
        raise CheckError(f"{source}: unknown top-level key {extra[0]!r} (declare checks as [[checks]] tables)")
    entries = doc.get("checks", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CheckError(f"{source}: `checks` must be an array of tables ([[checks]])")
    out: list[Check] = []
    names: set[str] = set()
    for index, entry in enumerate(entries, 1):
        check = _parse_one(entry, f"{source}: check #{index}" + (f" ({entry['name']})" if "name" in entry else ""))
        if check.name in names:
            if "name" in entry:
                raise CheckError(f"{source}: check #{index}: field 'name': {check.name!r} is used twice")
            n = 2
            while f"{check.name}_{n}" in names:
                n += 1
            check = Check(**{**check.__dict__, "name": f"{check.name}_{n}"})
        names.add(check.name)
        out.append(check)
    return out


def _parse_one(entry: dict[str, Any], where: str) -> Check:
    def bad(name: str, problem: str) -> CheckError:
        return CheckError(f"{where}: field {name!r}: {problem}")

    def text(name: str, required: bool = False) -> str | None:
        value = entry.get(name)
        if value is None:
            if required:
                raise bad(name, "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad(name, "a non-empty string")
        return value.strip()

    def table_name(name: str, required: bool = False) -> str | None:
        value = text(name, required)
        if value is not None and not _TABLE.match(value):
            raise bad(name, f"{value!r} is not a table name (letters, digits, _)")
        return value

    def number(name: str, low: float, whole: bool = False) -> Any:
        value = entry.get(name)
        if value is None:
            return None
        ok = isinstance(value, int) or (isinstance(value, float) and not whole)
        if isinstance(value, bool) or not ok or value < low:
            raise bad(name, f"a {'whole ' if whole else ''}number >= {low:g}")
        return value

    kind = text("kind", True) or ""
    if kind not in KINDS:
        raise bad("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    unknown = sorted(set(entry) - _COMMON - _ALLOWED[kind] - ({"column"} if "columns" in _ALLOWED[kind] else set()))
    if unknown:
        allowed = sorted(_COMMON | _ALLOWED[kind])
        raise bad(unknown[0], f"not a field of a {kind} check (fields: {', '.join(allowed)})")
    table = table_name("table", True)
    assert table is not None
    columns: tuple[str, ...] = ()
    if "columns" in _ALLOWED[kind]:
        if ("column" in entry) == ("columns" in entry):
            raise bad("column", "give `column` or `columns` (a list), one of them")
        raw = [entry["column"]] if "column" in entry else entry["columns"]
        field_name = "column" if "column" in entry else "columns"
        if not isinstance(raw, list) or not raw or not all(isinstance(c, str) and c.strip() for c in raw):
            raise bad(field_name, "a column name or SQL expression (`columns`: a non-empty list of them)")
        if kind == "accepted_values" and len(raw) != 1:
            raise bad(field_name, "accepted_values checks one column")
        columns = tuple(c.strip() for c in raw)
    for name in _REQUIRED[kind]:
        if name != "columns" and entry.get(name) is None:
            raise bad(name, f"missing (a {kind} check needs it)")
    values: tuple[Any, ...] = ()
    if kind == "accepted_values":
        raw_values = entry["values"]
        if not isinstance(raw_values, list) or not raw_values:
            raise bad("values", "a non-empty list")
        if not all(isinstance(v, str | int | float) for v in raw_values):
            raise bad("values", "strings, numbers or booleans")
        values = tuple(raw_values)
    severity = text("severity") or "error"
    if severity not in SEVERITIES:
        raise bad("severity", f"{severity!r} is not one of {', '.join(SEVERITIES)}")
    schedule = text("schedule")
    if schedule is not None and not croniter.is_valid(schedule):
        raise bad("schedule", f"{schedule!r} is not a cron expression (minute hour day month weekday)")
    per = text("per")
    if per not in (None, "day"):
        raise bad("per", 'only "day" (or leave it out: the whole table)')
    time_column = text("time_column")
    if per == "day" and time_column is None:
        raise bad("time_column", 'missing (per = "day" counts rows per day of this column)')
    if kind == "row_count" and per is None and ({"time_column", "days", "include_today"} & set(entry)):
        raise bad("per", 'missing: set per = "day" to count rows per day of time_column')
    low, high = number("min", 0, whole=True), number("max", 0, whole=True)
    if kind == "row_count" and low is None and high is None:
        raise bad("min", "give min, max or both")
    if low is not None and high is not None and low > high:
        raise bad("min", f"{low} is above max {high}")
    days = number("days", 1, whole=True)
    if days is not None and days > 366:
        raise bad("days", "at most 366")
    include_today = entry.get("include_today", False)
    if not isinstance(include_today, bool):
        raise bad("include_today", "true or false")
    tolerance = number("tolerance", 0)
    max_age = number("max_age_minutes", 0)
    if max_age is not None and max_age <= 0:
        raise bad("max_age_minutes", "a number > 0")
    given = text("name")
    if given is None:
        parts = [table, kind, *(re.sub(r"[^A-Za-z0-9_]+", "_", c).strip("_") for c in columns)]
        if kind == "row_count_match":
            parts.append(str(entry["compare_table"]))
        name = "_".join(p for p in parts if p)[:128]
    elif not _NAME.match(given):
        raise bad("name", f"{given!r}: letters, digits, _ . : - (up to 128)")
    else:
        name = given
    return Check(
        name=name, table=table, kind=kind, columns=columns, values=values, where=text("where"),
        severity=severity, schedule=schedule, description=text("description"), per=per, time_column=time_column,
        min=low, max=high, days=days or 7, include_today=include_today,
        compare_table=table_name("compare_table"), compare_time_column=text("compare_time_column"),
        count_column=text("count_column"), compare_count_column=text("compare_count_column"),
        compare_where=text("compare_where"), tolerance=float(tolerance or 0.0), max_age_minutes=max_age,
    )  # fmt: skip


def checks_on(checks: Iterable[Check], tables: Collection[str]) -> list[Check]:
    """The checks whose table is one of `tables` (a model just built, say)."""
    return [c for c in checks if c.table in tables]


# --- running


def _latest_fire(cron: str, moment: datetime) -> datetime:
    """The latest time of `cron` at or before `moment` (croniter's get_prev is strictly before)."""
    previous: datetime = croniter(cron, moment).get_prev(datetime)
    following: datetime = croniter(cron, previous).get_next(datetime)
    return following if following <= moment else previous


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        value = value.hex()
    elif isinstance(value, list | tuple):
        return [_jsonable(v) for v in value[:20]]
    elif isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in list(value.items())[:50]}
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _message(check: Check, items: int, failing: int) -> str:
    if not items:
        return "pass"
    cols = ", ".join(check.columns)
    if check.kind == "not_null":
        return f"{failing} rows with a NULL in {cols}"
    if check.kind == "unique":
        return f"{items} values of {cols} occur more than once ({failing} rows)"
    if check.kind == "accepted_values":
        return f"{failing} rows with {items} values of {cols} not accepted"
    if check.kind == "row_count":
        low, high = check.min if check.min is not None else 0, check.max if check.max is not None else "∞"
        return f"{f'{items} days' if check.per else 'the table'} outside {low}..{high} rows"
    if check.kind == "row_count_match":
        return f"{items} days differ from {check.compare_table} by more than {check.tolerance:g} (relative)"
    return f"no row newer than {check.max_age_minutes:g} minutes"


class CheckRunner:
    """Runs checks on the models' query engine and records their results in the catalog database.

    `engine` is the catalog's SQLAlchemy engine (opened from settings when None) or the QueryEngine to run the
    checks' SQL on (`query=` also gives it; otherwise `headwater.models.engine.build_engine(settings)` is built on
    first use). `close()` closes what the runner opened.
    """

    def __init__(self, settings: Settings, engine: Any = None, *, query: Any = None) -> None:
        self.settings = settings
        if engine is not None and not isinstance(engine, sa.Engine):
            query, engine = engine, None
        self._own_catalog = engine is None
        if engine is None:
            from headwater.lake.coordination import open_engine

            engine = open_engine(settings.effective_catalog_uri)
        self.catalog: sa.Engine = engine
        create_tables(engine, METADATA)
        self._query = query
        self._own_query = query is None

    @property
    def query(self) -> Any:
        if self._query is None:
            from headwater.models.engine import build_engine

            self._query = build_engine(self.settings)
        return self._query

    def close(self) -> None:
        if self._own_query and self._query is not None:
            self._query.close()
            self._query = None
        if self._own_catalog:
            self.catalog.dispose()

    def __enter__(self) -> CheckRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> list[Check]:
        """The checks of `settings.models_dir`."""
        return load_checks(self.settings.models_dir)

    def run(self, checks: Sequence[Check] | None = None, now: datetime | None = None) -> list[CheckResult]:
        """Run `checks` (default: all declared) one after the other, record each result, return them. `now` (UTC;
        default: the clock when each check starts) is the time checks are judged at and recorded with.

        A check whose query fails gets status `error`; nothing raises out of here but a CheckError for a
        checks.toml that cannot be read (when `checks` is None)."""
        todo = list(self.load() if checks is None else checks)
        run_id = uuid.uuid4().hex
        results = [self._run_one(check, run_id, now) for check in todo]
        if results:
            self._prune()
        return results

    def _run_one(self, check: Check, run_id: str, now: datetime | None) -> CheckResult:
        started = _naive(now or datetime.now(UTC)).replace(tzinfo=UTC)
        clock = time.perf_counter()
        sql = ""
        try:
            sql = check.sql(started)
            answer = self.query.arrow(wrapped(sql))
            rows = answer.to_pylist()
            items, failing = int(rows[0][ITEMS]), int(rows[0][FAILING])
            sample = [{k: _jsonable(v) for k, v in r.items() if k not in (ITEMS, FAILING)} for r in rows]
            sample = sample if items else []
            status = "fail" if items else "pass"
            detail: dict[str, Any] = {"message": _message(check, items, failing), "items": items, "sample": sample}
        except Exception as exc:  # a check that cannot run is a result, not a crash of the scheduler
            log.warning("check %s could not run: %s", check.name, exc)
            status, failing, detail = "error", None, {"message": f"cannot run: {exc}", "error": str(exc)[:2000]}
        detail["query"] = sql
        result = CheckResult(run_id, check.name, check.table, check.kind, check.severity, status, failing, detail,
                             started, time.perf_counter() - clock)  # fmt: skip
        self._record(result)
        return result

    def _record(self, result: CheckResult) -> None:
        row = {
            "run_id": result.run_id, "check": result.check, "table": result.table, "kind": result.kind,
            "severity": result.severity, "status": result.status, "failing": result.failing,
            "detail": orjson.dumps(result.detail, default=str).decode(), "started_at": _naive(result.started_at),
            "duration_s": result.duration_s,
        }  # fmt: skip
        try:
            with self.catalog.begin() as conn:
                conn.execute(RESULTS.insert().values(**row))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("cannot record the result of check %s: %s", result.check, exc)

    def _prune(self) -> None:
        cutoff = _naive(datetime.now(UTC)) - timedelta(days=HISTORY_DAYS)
        try:
            with self.catalog.begin() as conn:
                conn.execute(RESULTS.delete().where(RESULTS.c.started_at < cutoff))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("cannot prune old check results: %s", exc)

    def declared(self) -> list[Check] | None:
        """The checks of `settings.models_dir`, None when checks.toml is wrong. The file's state is a result too
        (check `checks.toml`, kind `file`): an error row when it turns wrong, a pass when it is right again, so
        a broken file alerts as a failing check does."""
        try:
            checks = self.load()
            problem = None
        except CheckError as exc:
            checks, problem = None, str(exc)
        try:
            with self.catalog.connect() as conn:
                last = conn.execute(
                    sa.select(RESULTS.c.status, RESULTS.c.detail)
                    .where(RESULTS.c.check == CHECKS_FILE)
                    .order_by(RESULTS.c.id.desc())
                    .limit(1)
                ).first()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("cannot read check results: %s", exc)
            return checks
        if problem is not None and (last is None or orjson.loads(last.detail).get("error") != problem):
            log.warning("data checks not run: %s", problem)
        elif problem is not None or last is None or last.status == "pass":
            return checks
        if problem is not None:
            status, failing, detail = "error", None, {"message": problem, "error": problem}
        else:
            status, failing, detail = "pass", 0, {"message": f"{CHECKS_FILE} is valid again"}
        run_id, now = uuid.uuid4().hex, datetime.now(UTC)
        self._record(CheckResult(run_id, CHECKS_FILE, CHECKS_FILE, "file", "error", status, failing, detail, now, 0.0))
        return checks

    def run_due(self, now: datetime, models: Collection[str] = ()) -> list[CheckResult]:
        """Run the declared checks due at `now` (`due_checks`); for the scheduler's tick."""
        checks = self.declared()
        return self.run(self.due_checks(now, checks, models), now) if checks else []

    def run_for(self, tables: Collection[str]) -> list[CheckResult]:
        """Run the declared checks of `tables` (after a build of those models)."""
        checks = self.declared()
        return self.run(checks_on(checks, tables)) if checks else []

    def due_checks(
        self, now: datetime, checks: Sequence[Check] | None = None, models: Collection[str] = ()
    ) -> list[Check]:
        """The checks to run at `now`: those whose cron time (their schedule; hourly for a table that is not
        one of `models`) passed since they last ran. Checks of a model without a schedule run after its builds
        only (`checks_on`), never here."""
        todo = list(self.load() if checks is None else checks)
        last = self.last_started()
        moment = _naive(now)
        due = []
        for check in todo:
            if check.schedule is None and check.table in models:
                continue
            previous = _latest_fire(check.schedule or DEFAULT_SCHEDULE, moment)
            ran = last.get(check.name)
            if ran is None or ran < previous:
                due.append(check)
        return due

    def last_started(self) -> dict[str, datetime]:
        """When each check last ran (naive UTC)."""
        query = sa.select(RESULTS.c.check, sa.func.max(RESULTS.c.started_at)).group_by(RESULTS.c.check)
        with self.catalog.connect() as conn:
            return {str(name): at for name, at in conn.execute(query)}

    def history(self, names: Collection[str] | None = None, per_check: int = 20) -> dict[str, list[CheckResult]]:
        """The latest `per_check` results of each check (of `names`, or all), newest first."""
        rank = sa.func.row_number().over(partition_by=RESULTS.c.check, order_by=RESULTS.c.id.desc()).label("rank")
        inner = sa.select(RESULTS, rank)
        if names is not None:
            inner = inner.where(RESULTS.c.check.in_(list(names)))
        ranked = inner.subquery()
        query = sa.select(ranked).where(ranked.c.rank <= per_check).order_by(ranked.c.check, ranked.c.rank)
        out: dict[str, list[CheckResult]] = {}
        with self.catalog.connect() as conn:
            for r in conn.execute(query).mappings():
                out.setdefault(r["check"], []).append(_stored(r))
        return out


def _stored(r: Any) -> CheckResult:
    """A CheckResult from a row of RESULTS."""
    return CheckResult(
        r["run_id"], r["check"], r["table"], r["kind"], r["severity"], r["status"], r["failing"],
        orjson.loads(r["detail"]), r["started_at"].replace(tzinfo=UTC), float(r["duration_s"]),
    )  # fmt: skip


__all__ = [
    "CHECKS_FILE", "KINDS", "RESULTS", "Check", "CheckResult", "CheckRunner", "checks_on", "load_checks",
    "parse_checks",
]  # fmt: skip
