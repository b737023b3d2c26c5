"""Saved cohorts in the account database (`app.db` in the data directory, or `app_db_uri` shared by every server),
and the resolver insights use to turn a cohort id into its members SQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from headwater.cohorts.spec import CohortDefinition, CohortError, parse_definition, referenced
from headwater.cohorts.sql import members_sql
from headwater.core.database import open_store
from headwater.insights.engine import InsightError
from headwater.insights.sql import NO_SHREDS, Shreds

_METADATA = sa.MetaData()
_COHORTS = sa.Table(
    "cohorts",
    _METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("definition", sa.Text, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)


class CohortStore:
    """`db` is a SQLAlchemy URI or the path of a SQLite file."""

    def __init__(self, db: str | Path) -> None:
        self._engine = open_store(db, _METADATA)

    def save(self, doc: dict[str, Any], user: str, cohort_id: int | None = None) -> dict[str, Any]:
        """Create (cohort_id None) or replace a cohort; the definition must compile (cohorts it names exist, no
        cycle)."""
        definition = parse_definition(doc)
        for other in referenced(definition):
            if other == cohort_id:
                raise CohortError(f"conditions: cohort {other} cannot contain itself")
            self.definition(other)
        if cohort_id is not None:
            self.get(cohort_id)
        members_sql(definition, "person_id", lookup=self._nested(cohort_id))  # cycles through others
        now = int(time.time() * 1000)
        values = {"name": definition.name, "definition": definition.model_dump_json(), "updated_ms": now}
        t = _COHORTS
        with self._engine.begin() as conn:
            if cohort_id is None:
                insert = t.insert().values(**values, created_by=user, created_ms=now).returning(t.c.id)
                cohort_id = int(conn.execute(insert).scalar_one())
            elif conn.execute(t.update().where(t.c.id == cohort_id).values(**values)).rowcount == 0:
                raise CohortError(f"no cohort {cohort_id}", 404)
        return self.get(cohort_id)

    def _nested(self, editing: int | None) -> Any:
        def lookup(other: int) -> CohortDefinition:
            if other == editing:
                raise CohortError(f"conditions: cohort {other} refers back to itself")
            return self.definition(other)

        return lookup

    def _rows(self, cohort_id: int | None) -> list[dict[str, Any]]:
        t = _COHORTS
        query = sa.select(t.c.id, t.c.name, t.c.definition, t.c.created_by, t.c.created_ms, t.c.updated_ms)
        if cohort_id is not None:
            query = query.where(t.c.id == cohort_id)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(t.c.id)).all()
        return [
            {"id": r[0], "name": r[1], "definition": orjson.loads(r[2]), "created_by": r[3], "created_ms": r[4],
             "updated_ms": r[5]}
            for r in rows
        ]  # fmt: skip

    def get(self, cohort_id: int) -> dict[str, Any]:
        found = self._rows(cohort_id)
        if not found:
            raise CohortError(f"no cohort {cohort_id}", 404)
        return found[0]

    def all(self) -> list[dict[str, Any]]:
        return self._rows(None)

    def definition(self, cohort_id: int) -> CohortDefinition:
        return parse_definition(self.get(cohort_id)["definition"])

    def delete(self, cohort_id: int) -> None:
        """Delete a cohort no other cohort refers to (409 naming them otherwise)."""
        users = [c["id"] for c in self.all() if cohort_id in referenced(parse_definition(c["definition"]))]
        if users:
            raise CohortError(f"cohort {cohort_id} is used by cohort(s) {', '.join(map(str, users))}", 409)
        with self._engine.begin() as conn:
            if conn.execute(_COHORTS.delete().where(_COHORTS.c.id == cohort_id)).rowcount == 0:
                raise CohortError(f"no cohort {cohort_id}", 404)

    def members_sql(self, cohort_id: int, actor: str, as_of: Any = None, shred: Shreds = NO_SHREDS) -> str:
        return members_sql(self.definition(cohort_id), actor, as_of, self._nested(cohort_id), shred)

    def resolver(self, cohort_id: int, actor: str, shred: Shreds = NO_SHREDS, /) -> tuple[str, str]:
        """For InsightEngine(cohorts=...): (name, members SQL as of now); an unknown id is an InsightError."""
        try:
            row = self.get(cohort_id)
            definition = parse_definition(row["definition"])
            return str(row["name"]), members_sql(definition, actor, None, self._nested(cohort_id), shred)
        except CohortError as exc:
            raise InsightError(f"$cohort: {exc}", exc.status) from None

    def close(self) -> None:
        self._engine.dispose()
