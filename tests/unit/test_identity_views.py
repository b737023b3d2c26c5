"""Catalog tables exposed to SQL: what a query needs, incremental identity copies, `person_id` on `events`, person
keys found after their ids were linked, and the generic views (typed, text, missing tables)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import sqlalchemy as sa

from headwater.lake.identity import IdentityMap, Link
from headwater.lake.persons import PersonKeys
from headwater.query.catalog_views import CatalogViews

AT = datetime(2026, 1, 15, 10)


def pair(user: str, anon: str) -> Link:
    return Link("pair", user, anon, AT, f"{user}-{anon}", "identify")


@pytest.fixture
def views(tmp_path: Path) -> Iterator[tuple[CatalogViews, sa.Engine]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    db = duckdb.connect(":memory:")
    db.execute(
        "CREATE VIEW events AS SELECT * FROM (VALUES ('e1', NULL, 'phone'), ('e2', 'ana', 'phone'), "
        "('e3', NULL, 'laptop'), ('e4', 'bob', NULL)) t(event_id, user_id, anonymous_id)"
    )
    things = sa.table("things", sa.column("name", sa.String), sa.column("n", sa.BigInteger))  # no metadata needed
    found = CatalogViews(
        db, engine, {"things": sa.select(things.c.name, things.c.n), "texty": "SELECT 1 AS a, 'x' AS b"}, 0.0
    )
    found.person_view()
    try:
        yield found, engine
    finally:
        db.close()
        engine.dispose()


def rows(views: CatalogViews, sql: str, persons: bool = False) -> list[tuple[object, ...]]:
    cursor = views.db.cursor()
    if persons:
        cursor.execute("SET search_path = 'hw_persons,main'")
    return cursor.execute(sql).fetchall()


def test_what_a_query_needs(views: tuple[CatalogViews, sa.Engine]) -> None:
    found, _ = views
    assert found.needs("SELECT count(DISTINCT person_id) FROM events") == (set(), True)
    assert found.needs("SELECT id FROM persons p JOIN person_merges m ON m.from_person = p.id") == (
        {"persons"}, False,
    )  # fmt: skip
    assert found.needs("SELECT 'person_id, persons' AS x FROM events") == (set(), False)  # only in a string
    assert found.needs("SELECT * FROM things") == ({"things"}, False)
    assert found.needs("SELECT count(*) FROM events") == (set(), False)
    assert found.needs("SELECT person_id FROM events WHERE ((") == (set(), True)  # sqlglot fails: the text says


def test_person_id_follows_the_identities(views: tuple[CatalogViews, sa.Engine]) -> None:
    found, engine = views
    sql = "SELECT event_id, person_id FROM events ORDER BY event_id"
    assert rows(found, sql, persons=True) == [("e1", "phone"), ("e2", "ana"), ("e3", "laptop"), ("e4", "bob")]
    plan = rows(found, "EXPLAIN SELECT person_id FROM events", persons=True)
    assert "JOIN" not in str(plan)  # nothing linked: no join
    identities = IdentityMap(engine)
    identities.apply([pair("ana", "phone"), pair("ana", "laptop")])
    found.refresh_identities()
    assert rows(found, sql, persons=True) == [("e1", "ana"), ("e2", "ana"), ("e3", "ana"), ("e4", "bob")]
    assert "JOIN" in str(rows(found, "EXPLAIN SELECT person_id FROM events", persons=True))
    identities.apply([Link("alias", "bob", "ana", AT, "alias-1", "alias")])
    found.refresh_identities()  # only the changed rows are copied
    assert {p for _, p in rows(found, sql, persons=True)} == {"bob"}
    assert sorted(rows(found, "SELECT id, person_id, reason FROM persons")) == [
        ("ana", "bob", "identify"), ("bob", "bob", "alias"), ("laptop", "bob", "identify"),
        ("phone", "bob", "identify"),
    ]  # fmt: skip
    identities.forget(["bob"])  # a deletion: copied again whole
    found.refresh_identities()
    assert rows(found, "SELECT count(*) FROM persons") == [(0,)]
    assert rows(found, sql, persons=True)[0] == ("e1", "phone")


def test_keys_found_after_the_link(views: tuple[CatalogViews, sa.Engine]) -> None:
    found, engine = views
    IdentityMap(engine).apply([pair("ana", "phone"), pair("ana", "laptop")])
    assert len(found.person_remap("v1").keys) == 0  # the writer has not given these ids keys yet
    assigned = PersonKeys(engine)
    assigned.prepare(pa.array(["phone", "ana", "laptop"], pa.string()))
    assert len(found.person_remap("v1").keys) == 0  # kept for the same events version
    _, keys, reps = found.person_remap("v2")
    by_id = assigned.known_keys(["ana", "phone", "laptop"])
    smallest = min(by_id.values())
    assert sorted(keys.tolist()) == sorted(k for k in by_id.values() if k != smallest)
    assert set(reps.tolist()) == {smallest}


def test_generic_views(views: tuple[CatalogViews, sa.Engine]) -> None:
    found, engine = views
    found.refresh_view("things")  # its table does not exist yet: an empty view with the select's types
    assert rows(found, "SELECT * FROM things") == []
    assert [r[1] for r in rows(found, "DESCRIBE things")] == ["VARCHAR", "BIGINT"]
    found.refresh_view("texty")
    assert rows(found, "SELECT * FROM texty") == [(1, "x")]
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE things (name VARCHAR, n BIGINT)"))
        conn.execute(sa.text("INSERT INTO things VALUES ('a', 1), ('b', 2)"))
    found.refresh_s = 3600.0
    found.refresh_view("things")  # copied less than refresh_s ago: kept
    assert rows(found, "SELECT count(*) FROM things") == [(0,)]
    found.refresh_view("things", force=True)
    assert rows(found, "SELECT * FROM things ORDER BY n") == [("a", 1), ("b", 2)]
    found.refresh_s = 0.0
    assert found.prepare("SELECT * FROM things") is False
