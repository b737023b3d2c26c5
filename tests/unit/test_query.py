from __future__ import annotations

from pathlib import Path

import pytest

from headwater.core.errors import QueryError
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings


@pytest.fixture
def engine(data_dir: Path) -> QueryEngine:
    return QueryEngine(make_settings(data_dir, query_max_rows=5, query_timeout_s=1))


@pytest.mark.parametrize(
    ("sql", "status", "fragment"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", 403, "/etc/passwd"),
        ("SELECT * FROM read_text('/etc/hostname')", 403, "disabled"),
        ("SELECT * FROM glob('/*')", 403, "disabled"),
        ("SELECT * FROM read_parquet('http://example.com/x.parquet')", 403, ""),
        ("INSTALL httpfs", 403, "only SELECT"),
        ("LOAD iceberg", 403, "only SELECT"),
        ("ATTACH '/tmp/x.db' AS x", 403, "only SELECT"),
        ("COPY (SELECT 1) TO '/tmp/out.csv'", 403, "only SELECT"),
        ("CREATE TABLE t (a INT)", 403, "only SELECT"),
        ("DROP VIEW events", 403, "only SELECT"),
        ("SET enable_external_access = true", 403, "only SELECT"),
        ("PRAGMA enable_profiling", 403, "only SELECT"),
        ("SELECT 1; SELECT 2", 400, "exactly one statement"),
        ("SELEKT 1", 400, "syntax"),
        ("", 400, "empty"),
        ("SELECT * FROM nowhere", 400, "nowhere"),
    ],
)
def test_sandbox_refuses(engine: QueryEngine, sql: str, status: int, fragment: str) -> None:
    with pytest.raises(QueryError) as info:
        engine.execute(sql)
    assert info.value.status == status
    assert fragment.lower() in str(info.value).lower()


def test_configuration_is_locked(engine: QueryEngine) -> None:
    names = "'enable_external_access', 'lock_configuration'"
    rows = engine.execute(f"SELECT value FROM duckdb_settings() WHERE name IN ({names}) ORDER BY name").rows
    assert rows == [["false"], ["true"]]


def test_row_cap_and_truncation(engine: QueryEngine) -> None:
    result = engine.execute("SELECT * FROM range(100)")
    assert len(result.rows) == 5 and result.truncated
    assert not engine.execute("SELECT * FROM range(3)").truncated


def test_time_limit(engine: QueryEngine) -> None:
    with pytest.raises(QueryError) as info:
        engine.execute("SELECT count(*) FROM range(10000000000) a")
    assert info.value.status == 408


def test_empty_tables_have_columns(engine: QueryEngine) -> None:
    result = engine.execute("SELECT * FROM events")
    assert result.rows == [] and "properties" in result.columns and "event_id" in result.columns
    assert engine.execute("SELECT count(*) FROM quarantine").rows == [[0]]
