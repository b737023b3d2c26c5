"""checks.toml parsing (errors name the file, the check and the field), generated names, the SQL of each kind, and
when checks are due (from results in a real SQLite catalog database)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from headwater.core.database import open_store
from headwater.core.errors import CheckError
from headwater.models.check_sql import wrapped
from headwater.models.checks import RESULTS, CheckRunner, checks_on, load_checks, parse_checks
from tests.helpers import make_settings


def error_of(text: str) -> str:
    with pytest.raises(CheckError) as info:
        parse_checks(text, "models/checks.toml")
    return str(info.value)


def test_a_full_declaration_and_the_defaults() -> None:
    checks = parse_checks(
        """
        [[checks]]
        kind = "not_null"
        table = "events"
        columns = ["event", "properties->>'plan'"]
        where = "type = 'track'"

        [[checks]]
        name = "daily"
        kind = "row_count"
        table = "events"
        per = "day"
        time_column = "timestamp"
        min = 100
        severity = "warn"
        schedule = "0 6 * * *"
        description = "at least 100 events a day"

        [[checks]]
        kind = "row_count_match"
        table = "daily_orders"
        time_column = "day"
        count_column = "orders"
        compare_table = "events"
        compare_time_column = "timestamp"
        compare_where = "event = 'Order'"
        tolerance = 0.01
        days = 3
        """
    )
    nulls, daily, match = checks
    assert nulls.name == "events_not_null_event_properties_plan"
    assert nulls.columns == ("event", "properties->>'plan'") and nulls.severity == "error" and nulls.schedule is None
    assert (daily.min, daily.max, daily.days, daily.include_today) == (100, None, 7, False)
    assert daily.public() == {
        "name": "daily", "table": "events", "kind": "row_count", "severity": "warn", "schedule": "0 6 * * *",
        "description": "at least 100 events a day", "per": "day", "time_column": "timestamp", "min": 100,
    }  # fmt: skip
    assert match.name == "daily_orders_row_count_match_events"
    assert (match.tolerance, match.days, match.compare_where) == (0.01, 3, "event = 'Order'")


def test_generated_names_stay_unique_given_ones_may_not_repeat() -> None:
    twice = '[[checks]]\nkind = "unique"\ntable = "t"\ncolumn = "id"\n'
    assert [c.name for c in parse_checks(twice * 3)] == ["t_unique_id", "t_unique_id_2", "t_unique_id_3"]
    named = '[[checks]]\nname = "x"\nkind = "unique"\ntable = "t"\ncolumn = "id"\n'
    assert error_of(named * 2) == "models/checks.toml: check #2: field 'name': 'x' is used twice"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('kind = "nope"\ntable = "t"', "check #1: field 'kind': 'nope' is not one of not_null, unique"),
        ('kind = "unique"', "check #1: field 'table': missing"),
        ('kind = "unique"\ntable = "a b"\ncolumn = "x"', "field 'table': 'a b' is not a table name"),
        ('kind = "unique"\ntable = "t"', "field 'column': give `column` or `columns`"),
        ('kind = "unique"\ntable = "t"\ncolumns = []', "field 'columns': a column name or SQL expression"),
        ('kind = "unique"\ntable = "t"\ncolumn = "x"\nvalues = [1]', "field 'values': not a field of a unique check"),
        ('kind = "accepted_values"\ntable = "t"\ncolumn = "x"', "field 'values': missing (a accepted_values check"),
        ('kind = "accepted_values"\ntable = "t"\ncolumns = ["x", "y"]\nvalues = [1]', "checks one column"),
        ('kind = "accepted_values"\ntable = "t"\ncolumn = "x"\nvalues = []', "field 'values': a non-empty list"),
        ('kind = "row_count"\ntable = "t"', "field 'min': give min, max or both"),
        ('kind = "row_count"\ntable = "t"\nmin = 5\nmax = 2', "field 'min': 5 is above max 2"),
        ('kind = "row_count"\ntable = "t"\nmin = -1', "field 'min': a whole number >= 0"),
        ('kind = "row_count"\ntable = "t"\nmin = 1.5', "field 'min': a whole number >= 0"),
        ('kind = "row_count"\ntable = "t"\nmin = 1\nper = "week"', "field 'per': only \"day\""),
        ('kind = "row_count"\ntable = "t"\nmin = 1\nper = "day"', "field 'time_column': missing"),
        (
            'kind = "row_count"\ntable = "t"\nmin = 1\nper = "day"\ntime_column = "d"\ndays = 400',
            "field 'days': at most",
        ),
        ('kind = "row_count"\ntable = "t"\nmin = 1\ntime_column = "d"', "field 'per': missing: set per"),
        ('kind = "row_count_match"\ntable = "t"\ntime_column = "d"', "field 'compare_table': missing"),
        ('kind = "freshness"\ntable = "t"\ntime_column = "d"\nmax_age_minutes = 0', "field 'max_age_minutes'"),
        ('kind = "freshness"\ntable = "t"\ntime_column = "d"', "field 'max_age_minutes': missing"),
        ('kind = "not_null"\ntable = "t"\ncolumn = "x"\nseverity = "fatal"', "field 'severity': 'fatal' is not one"),
        ('kind = "not_null"\ntable = "t"\ncolumn = "x"\nschedule = "daily"', "field 'schedule': 'daily' is not a cron"),
        ('kind = "not_null"\ntable = "t"\ncolumn = "x"\nname = "a b"', "field 'name': 'a b'"),
        ('name = "mine"\nkind = "not_null"\ntable = "t"\ncolum = "x"', "check #1 (mine): field 'colum': not a field"),
    ],
)
def test_errors_name_the_file_the_check_and_the_field(body: str, expected: str) -> None:
    message = error_of(f"[[checks]]\n{body}\n")
    assert message.startswith("models/checks.toml: check #1"), message
    assert expected in message, message


def test_file_level_errors() -> None:
    assert "not valid TOML" in error_of("[[checks]\n")
    assert "unknown top-level key 'check'" in error_of('[[check]]\nkind = "unique"\n')


def test_load_checks_reads_the_models_directory(tmp_path: Path) -> None:
    assert load_checks(None) == [] and load_checks(tmp_path) == []
    (tmp_path / "checks.toml").write_text('[[checks]]\nkind = "unique"\ntable = "t"\n')
    with pytest.raises(CheckError, match=r"checks.toml: check #1: field 'column'"):
        load_checks(tmp_path)
    (tmp_path / "checks.toml").write_text('[[checks]]\nkind = "unique"\ntable = "t"\ncolumn = "id"\n')
    [check] = load_checks(tmp_path)
    assert checks_on([check], {"t"}) == [check] and checks_on([check], {"u"}) == []


def test_the_sql_of_each_kind_runs_on_duckdb() -> None:
    """Each kind's query, wrapped, on a plain DuckDB table: one row with the counts and the sample."""
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.execute(
        "CREATE TABLE t AS SELECT i AS id, i % 3 AS grp, CASE WHEN i = 4 THEN NULL ELSE 'a' END AS label, "
        "TIMESTAMP '2026-03-10 12:00:00' - (i % 4) * INTERVAL 1 DAY AS at FROM range(12) r(i)"
    )
    now = datetime(2026, 3, 11, 6, 0)
    declared = {
        'kind = "not_null"\ncolumn = "label"': (1, 1),
        'kind = "unique"\ncolumn = "grp"': (3, 12),
        'kind = "unique"\ncolumns = ["id", "grp"]': (0, 0),
        'kind = "accepted_values"\ncolumn = "label"\nvalues = ["b"]': (1, 11),
        'kind = "row_count"\nmin = 13': (1, 1),
        'kind = "row_count"\nper = "day"\ntime_column = "at"\nmin = 3\nmax = 3\ndays = 5': (1, 1),  # 4 days ago: 0
        'kind = "row_count_match"\ntime_column = "at"\ncompare_table = "t"\nwhere = "id > 0"': (1, 1),
        'kind = "freshness"\ntime_column = "at"\nmax_age_minutes = 60': (1, 1),
        'kind = "freshness"\ntime_column = "at"\nmax_age_minutes = 1440': (0, 0),
    }
    for body, (items, failing) in declared.items():
        [check] = parse_checks(f'[[checks]]\ntable = "t"\n{body}\n')
        row = db.execute(wrapped(check.sql(now))).fetchone()
        assert row is not None and row[:2] == (items, failing), (body, row)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """The catalog's database: SQLite, or a fresh PostgreSQL database (what a cluster shares)."""
    if request.param == "sqlite":
        engine = open_store(tmp_path / "catalog.db", sa.MetaData())
    else:
        uri = request.getfixturevalue("postgres_server").create_database(f"checks_{uuid.uuid4().hex[:8]}")
        engine = open_store(uri, sa.MetaData())
    yield engine
    engine.dispose()


def test_due_checks_follow_schedules_and_last_results(tmp_path: Path, catalog: sa.Engine) -> None:
    settings = make_settings(tmp_path)
    checks = parse_checks(
        '[[checks]]\nname = "hourly"\nkind = "unique"\ntable = "events"\ncolumn = "event_id"\n'
        '[[checks]]\nname = "of_model"\nkind = "unique"\ntable = "orders"\ncolumn = "id"\n'
        '[[checks]]\nname = "ten"\nkind = "unique"\ntable = "orders"\ncolumn = "id"\nschedule = "*/10 * * * *"\n'
    )
    noon = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

    def ran(name: str, at: datetime) -> None:
        row = {"run_id": "r", "check": name, "table": "t", "kind": "unique", "severity": "error", "status": "pass",
               "failing": 0, "detail": "{}", "started_at": at.replace(tzinfo=None), "duration_s": 0.1}  # fmt: skip
        with runner.catalog.begin() as conn:
            conn.execute(sa.insert(RESULTS).values(**row))

    def due(at: datetime) -> list[str]:
        return [c.name for c in runner.due_checks(at, checks, models={"orders"})]

    with CheckRunner(settings, catalog) as runner:
        assert due(noon) == ["hourly", "ten"]  # never ran; a model's check without schedule waits for builds
        assert [c.name for c in runner.due_checks(noon, checks)] == ["hourly", "of_model", "ten"]  # no models
        ran("hourly", noon + timedelta(seconds=5))
        ran("ten", noon + timedelta(minutes=5))
        assert due(noon + timedelta(minutes=9)) == []
        assert due(noon + timedelta(minutes=10)) == ["ten"]
        assert due(noon + timedelta(minutes=59)) == ["ten"]
        assert due(noon + timedelta(hours=1)) == ["hourly", "ten"]
    with CheckRunner(settings, catalog) as runner:  # restart-safe: the results in the catalog say what ran
        assert due(noon + timedelta(minutes=9)) == []
        ran("hourly", noon + timedelta(minutes=30))
        history = runner.history(["hourly", "ten", "other"], per_check=1)
        assert {k: [r.started_at for r in v] for k, v in history.items()} == {
            "hourly": [noon + timedelta(minutes=30)], "ten": [noon + timedelta(minutes=5)],
        }  # fmt: skip
        assert len(runner.history(per_check=5)["hourly"]) == 2


def test_a_wrong_checks_file_is_recorded_once_then_cleared(tmp_path: Path, catalog: sa.Engine) -> None:
    settings = make_settings(tmp_path, models_dir=tmp_path)
    with CheckRunner(settings, catalog) as runner:
        assert runner.declared() == [] and runner.history() == {}  # no file: nothing, nothing recorded
        (tmp_path / "checks.toml").write_text('[[checks]]\nkind = "unique"\n')
        assert runner.declared() is None and runner.declared() is None
        [error] = runner.history()["checks.toml"]
        assert (error.status, error.kind, error.severity) == ("error", "file", "error")
        assert "field 'table': missing" in error.detail["error"] and error.blocking
        (tmp_path / "checks.toml").write_text('[[checks]]\nkind = "unique"\ntable = "t"\n')  # another error
        assert runner.declared() is None
        (tmp_path / "checks.toml").write_text('[[checks]]\nkind = "unique"\ntable = "t"\ncolumn = "id"\n')
        assert [c.name for c in runner.declared() or []] == ["t_unique_id"]
        assert runner.declared() is not None
        statuses = [r.status for r in runner.history(per_check=10)["checks.toml"]]
        assert statuses == ["pass", "error", "error"]  # newest first
