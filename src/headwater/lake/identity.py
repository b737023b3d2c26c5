"""Identity stitching: user ids and anonymous ids linked into persons, incrementally, by the lake writer.

A stage of the writer (`IdentityStage`, see `headwater.core.stages`) reads the links each batch carries and
applies them to two tables of the catalog's database (SQLite on one machine, PostgreSQL in a cluster):
- `headwater_identities` (id, person_id, linked_at, reason, seq): every id that was ever linked, mapped to its
  person. A person's id is the user id that first claimed it; an id never linked is its own person and has no
  row. `seq` grows with every change, so readers (the query engine) copy only the rows changed since they last
  looked (`headwater_identity_state` holds the last `seq`, and `resets`, bumped when rows are deleted).
- `headwater_person_merges` (from_person, into_person, merged_at, reason, event_id): every merge, with the event
  time and the event that caused it, and the merges that were refused (reason `conflict`).

Links (vectorised: the rows that carry one are picked with Arrow compute, repeats removed, then only links the
process does not already know to be applied reach the database):
- `identify`, or any event with both a user id and an anonymous id (reason `identify` / `event`): the anonymous
  id joins the person of the user id.
- `alias` (previous_id -> user_id, reason `alias`): the person of the previous id (itself when it was never
  linked) is merged into the person of the user id.

Rules:
1. An anonymous id joins the person of the first user id it is seen with (in the order batches are written;
   within a batch, by event time).
2. A later, different user id seen with an anonymous id that already belongs to another person does NOT merge
   the two persons (a shared device): nothing moves, and the refused link is recorded once in the merges with
   reason `conflict`, `from_person` the user id and `into_person` the anonymous id. `alias` is the explicit way
   to merge identified persons.
3. A merge re-points every id of the old person to the new one in one UPDATE, so chains resolve as they happen
   (a -> b, then b -> c: a's ids belong to c's person); there is no nightly rebuild.
4. Applying a batch again (the writer reads it again from the log after a crash) changes nothing: links that are
   already applied are no-ops, and a refused merge is recorded once.
5. The first id of every person maps to itself, so `persons` lists all of a person's ids, the first included.

Changes are made in one transaction per batch that has new links. It starts by bumping the state row, which
serialises writers (a row lock on PostgreSQL, the write lock on SQLite) so that `seq` values become visible in
order; links are first checked without that lock, so a batch whose links are all known only reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from headwater.core.database import create_tables
from headwater.core.settings import Settings
from headwater.core.stages import StageBatch

log = logging.getLogger(__name__)
METADATA = sa.MetaData()
IDENTITIES = sa.Table(
    "headwater_identities",
    METADATA,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("person_id", sa.String, nullable=False, index=True),
    sa.Column("linked_at", sa.DateTime, nullable=False),  # event time (UTC) of the link that added the id
    sa.Column("reason", sa.String(16), nullable=False),  # identify | alias | event
    sa.Column("seq", sa.BigInteger, nullable=False, index=True),
)
PERSON_MERGES = sa.Table(
    "headwater_person_merges",
    METADATA,
    sa.Column("from_person", sa.String, primary_key=True),
    sa.Column("into_person", sa.String, primary_key=True),
    sa.Column("reason", sa.String(16), primary_key=True),  # alias | conflict (refused, not applied)
    sa.Column("merged_at", sa.DateTime, nullable=False),  # event time (UTC)
    sa.Column("event_id", sa.String, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)
IDENTITY_STATE = sa.Table(
    "headwater_identity_state",
    METADATA,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("resets", sa.BigInteger, nullable=False),
)
STATE_ROW = "identities"
MAX_CACHED = 2_000_000  # ids whose person this process remembers; past it the cache restarts
_CHUNK = 500


@dataclass(frozen=True)
class Link:
    """`a` and `b` are linked: kind `pair` (b is an anonymous id seen with user id a) or `alias` (b is the
    previous id of user id a)."""

    kind: str
    user: str
    other: str
    at: datetime
    event_id: str
    reason: str


@dataclass
class Applied:
    """What one `apply` changed."""

    linked: int = 0  # rows added to headwater_identities
    merged: int = 0  # persons merged into another
    conflicts: int = 0  # merges refused (shared devices)
    seq: int | None = None  # the seq of the change (None: nothing changed)
    persons: dict[str, str] = field(default_factory=dict)  # every id involved -> its person after the change


def create_identity_tables(engine: sa.Engine) -> None:
    """The identity tables and their state row (safe when several processes start at once)."""
    create_tables(engine, METADATA)
    with engine.connect() as conn:
        found = conn.execute(sa.select(IDENTITY_STATE.c.seq).where(IDENTITY_STATE.c.name == STATE_ROW)).first()
    if found is None:
        with engine.begin() as conn:
            conn.execute(_insert(conn, IDENTITY_STATE, ["name"]).values(name=STATE_ROW, seq=0, resets=0))


def among(conn: sa.Connection, column: sa.ColumnElement[Any], ids: Iterable[str]) -> sa.ColumnElement[bool]:
    """`column IN ids` with the ids as one parameter, whatever their number (a JSON array on SQLite, an array
    on PostgreSQL): one statement, nothing to compile per id."""
    values = sorted(set(ids))
    if conn.dialect.name == "postgresql":
        return column == sa.func.any(sa.bindparam("ids", values, type_=postgresql.ARRAY(sa.String), unique=True))
    listed: sa.Select[Any] = sa.select(sa.column("value")).select_from(
        sa.func.json_each(sa.bindparam("ids", orjson.dumps(values).decode(), unique=True))
    )
    return column.in_(listed.scalar_subquery())


def _insert(conn: sa.Connection, table: sa.Table, keys: list[str]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL."""
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing(index_elements=keys)


class IdentityMap:
    """The identity tables of the catalog's database: links applied, ids looked up, changes read."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_identity_tables(engine)
        self._known: dict[str, str] = {}  # id -> a person label it had (ids with one label stay together forever)
        self._refused: set[tuple[str, str]] = set()  # (user, anonymous) pairs already recorded as conflicts

    # --- writing
    def unknown(self, links: list[Link]) -> list[Link]:
        """The links this process has not seen applied (or refused) already: the others change nothing."""
        known, refused = self._known, self._refused
        fresh = []
        for link in links:
            if link.kind == "pair" and (link.user, link.other) in refused:
                continue
            person = known.get(link.user)
            if person is None or known.get(link.other) != person:
                fresh.append(link)
        return fresh

    def apply(self, links: list[Link]) -> Applied:
        """Apply `links` in order (see the module docstring). Reads first; one write transaction only when
        something changes."""
        links = self.unknown(links)
        if not links:
            return Applied()
        ids = {i for link in links for i in (link.user, link.other)}
        with self.engine.connect() as conn:
            plan = self._plan(conn, ids, links)
        if plan.changes():
            with self.engine.begin() as conn:
                seq = self._bump(conn)
                plan = self._plan(conn, ids, links)  # again under the lock: another writer may have moved ids
                applied = self._write(conn, plan, seq) if plan.changes() else Applied()
        else:
            applied = Applied()
        applied.persons = plan.final_persons()
        self._remember(applied.persons, plan.refused_pairs)
        return applied

    def _plan(self, conn: sa.Connection, ids: set[str], links: list[Link]) -> _Plan:
        """The links' effect on the persons the database has now (two queries: the ids' persons, and the
        conflicts already recorded)."""
        merges = PERSON_MERGES
        users = {link.user for link in links if link.kind == "pair"}
        refused: set[tuple[str, str]] = set()
        if users:
            query = sa.select(merges.c.from_person, merges.c.into_person).where(
                merges.c.reason == "conflict", among(conn, merges.c.from_person, users)
            )
            refused = {(str(f), str(t)) for f, t in conn.execute(query)}
        return _Plan(self._persons(conn, ids), links, refused)

    def _remember(self, persons: dict[str, str], refused: set[tuple[str, str]]) -> None:
        if len(self._known) + len(persons) > MAX_CACHED:
            self._known.clear()
        if len(self._refused) > MAX_CACHED // 10:
            self._refused.clear()
        self._known.update(persons)
        self._refused.update(refused)

    @staticmethod
    def _bump(conn: sa.Connection) -> int:
        """Take the writers' lock (the state row) and return the next seq."""
        state = IDENTITY_STATE
        conn.execute(sa.update(state).where(state.c.name == STATE_ROW).values(seq=state.c.seq + 1))
        return int(conn.execute(sa.select(state.c.seq).where(state.c.name == STATE_ROW)).scalar_one())

    @staticmethod
    def _persons(conn: sa.Connection, ids: Iterable[str]) -> dict[str, str]:
        query = sa.select(IDENTITIES.c.id, IDENTITIES.c.person_id).where(among(conn, IDENTITIES.c.id, ids))
        return {str(i): str(p) for i, p in conn.execute(query)}

    @staticmethod
    def _write(conn: sa.Connection, plan: _Plan, seq: int) -> Applied:
        final = plan.resolve
        sqlite_ = conn.dialect.name == "sqlite"
        rows = [
            (i, final(p), at.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite_ else at, reason, seq)
            for i, (p, at, reason) in plan.added.items()
        ]  # the driver's executemany: SQLAlchemy's per-row work costs more than the insert itself
        if rows:
            marks = ", ".join(["?" if sqlite_ else "%s"] * 5)
            conn.exec_driver_sql(
                f"INSERT INTO {IDENTITIES.name} (id, person_id, linked_at, reason, seq) VALUES ({marks})", rows
            )
        moves = [{"old": old, "new": final(old), "seq": seq} for old in plan.redirect]
        if moves:
            conn.execute(
                sa.update(IDENTITIES)
                .where(IDENTITIES.c.person_id == sa.bindparam("old"))
                .values(person_id=sa.bindparam("new"), seq=sa.bindparam("seq")),
                moves,
            )
        merges = [
            {"from_person": f, "into_person": t if reason == "conflict" else final(t), "reason": reason,
             "merged_at": at, "event_id": event_id, "seq": seq}
            for f, t, reason, at, event_id in plan.merges
        ]  # fmt: skip
        if merges:
            conn.execute(_insert(conn, PERSON_MERGES, ["from_person", "into_person", "reason"]), merges)
        conflicts = sum(1 for m in plan.merges if m[2] == "conflict")
        return Applied(len(rows), len(plan.redirect), conflicts, seq)

    def forget(self, ids: Iterable[str]) -> int:
        """A privacy deletion: the rows of `ids`, the rows of the persons named after one of them (a person's id
        is a user id: the label goes with it), and the merges naming any of those ids, deleted, the bytes
        overwritten on SQLite; readers copy everything again (`resets` is bumped). An id of another person keeps
        that person's other rows. Returns identity rows deleted."""
        gone = set(ids)
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.execute(sa.text("PRAGMA secure_delete = ON"))
            conn.execute(
                sa.update(IDENTITY_STATE)
                .where(IDENTITY_STATE.c.name == STATE_ROW)
                .values(seq=IDENTITY_STATE.c.seq + 1, resets=IDENTITY_STATE.c.resets + 1)
            )
            query = sa.select(IDENTITIES.c.id).where(among(conn, IDENTITIES.c.person_id, gone))
            gone.update(str(i) for i in conn.execute(query).scalars())
            deleted = conn.execute(sa.delete(IDENTITIES).where(among(conn, IDENTITIES.c.id, gone))).rowcount or 0
            merges = PERSON_MERGES.c
            named = sa.or_(among(conn, merges.from_person, gone), among(conn, merges.into_person, gone))
            conn.execute(sa.delete(PERSON_MERGES).where(named))
        self._known.clear()
        self._refused.clear()
        return deleted

    # --- reading
    def state(self) -> tuple[int, int]:
        """(seq, resets): a change of either means the identities changed."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(IDENTITY_STATE.c.seq, IDENTITY_STATE.c.resets).where(IDENTITY_STATE.c.name == STATE_ROW)
            ).first()
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)

    def person_of(self, ids: Iterable[str]) -> dict[str, str]:
        """Each id's person (an id without a row is its own person)."""
        wanted = set(ids)
        with self.engine.connect() as conn:
            found = self._persons(conn, wanted)
        return {i: found.get(i, i) for i in wanted}

    def ids_of(self, person: str) -> list[str]:
        """Every id of a person (the person's own id first)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(IDENTITIES.c.id).where(IDENTITIES.c.person_id == person)).scalars()
            found = sorted(str(i) for i in rows)
        return [person, *(i for i in found if i != person)]


class _Plan:
    """The effect of links on the current persons of the ids they name, computed in memory. `refused`: the
    conflicts already recorded, as (user id, anonymous id)."""

    def __init__(self, current: dict[str, str], links: list[Link], refused: set[tuple[str, str]]) -> None:
        self.current = current
        self.added: dict[str, tuple[str, datetime, str]] = {}  # id -> (person, linked_at, reason)
        self.redirect: dict[str, str] = {}  # merged person -> person it went into
        self.merges: list[tuple[str, str, str, datetime, str]] = []  # (from, into, reason, at, event_id)
        self.refused_pairs: set[tuple[str, str]] = set()  # (user id, anonymous id) of the refused links
        self.ids: set[str] = set()
        recorded = set(refused)
        for link in links:
            self.ids.update((link.user, link.other))
            found = self._person(link.user)
            user = found or link.user
            other = self._person(link.other)
            if other is None:
                self._add(link.other, user, link)
                if link.kind == "alias":  # the previous id was its own person until now
                    self.merges.append((link.other, user, "alias", link.at, link.event_id))
            elif other == user:
                pass
            elif link.kind == "alias":
                self.redirect[other] = user
                self.merges.append((other, user, "alias", link.at, link.event_id))
            else:  # rule 2: a shared device; recorded once per (user id, anonymous id), not applied
                pair = (link.user, link.other)
                self.refused_pairs.add(pair)
                if pair not in recorded:
                    recorded.add(pair)
                    self.merges.append((link.user, link.other, "conflict", link.at, link.event_id))
                continue
            if found is None:
                self._add(link.user, user, link)

    def _add(self, id_: str, person: str, link: Link) -> None:
        self.added[id_] = (person, link.at, link.reason)

    def resolve(self, person: str) -> str:
        seen = 0
        while person in self.redirect:
            person = self.redirect[person]
            seen += 1
            if seen > len(self.redirect):  # cannot happen (a merge target is never merged back into itself)
                raise RuntimeError("a cycle of person merges")
        return person

    def _person(self, id_: str) -> str | None:
        found = self.added.get(id_)
        person = found[0] if found is not None else self.current.get(id_)
        return self.resolve(person) if person is not None else None

    def changes(self) -> bool:
        return bool(self.added or self.redirect or self.merges)

    def final_persons(self) -> dict[str, str]:
        return {i: p for i in self.ids if (p := self._person(i)) is not None}


# --- the writer's stage
_LINK_COLUMNS = ["type", "user_id", "anonymous_id", "previous_id", "timestamp", "event_id"]


def _firsts(rows: pa.Table, other: str) -> pa.Table:
    """One row per (user_id, `other`): the earliest (rows come sorted by time)."""
    grouped = rows.group_by(["user_id", other], use_threads=False).aggregate(
        [("timestamp", "first"), ("event_id", "first"), ("type", "first")]
    )
    return grouped.rename_columns(["user_id", "other", "timestamp", "event_id", "type"])


def links_of(events: pa.Table, skip: Iterable[int] = ()) -> list[Link]:
    """The links a batch of `events` rows carries (rows in `skip` left out), each once (its earliest event), in
    event-time order. Picking and de-duplicating are Arrow compute; Python sees one row per distinct link."""
    if not events.num_rows:
        return []
    user = events.column("user_id")
    anonymous = events.column("anonymous_id")
    previous = events.column("previous_id")
    pair = pc.fill_null(pc.and_(pc.is_valid(user), pc.not_equal(user, anonymous)), False)
    alias = pc.fill_null(pc.and_(pc.equal(events.column("type"), "alias"), pc.not_equal(user, previous)), False)
    skipped = sorted(set(skip))
    if skipped:
        keep = np.ones(events.num_rows, dtype=bool)
        keep[skipped] = False
        pair, alias = pc.and_(pair, pa.array(keep)), pc.and_(alias, pa.array(keep))
    found: list[tuple[datetime, str, int, Link]] = []
    for order, (kind, mask, other) in enumerate((("alias", alias, "previous_id"), ("pair", pair, "anonymous_id"))):
        if not pc.any(mask).as_py():
            continue
        rows = events.select(_LINK_COLUMNS).filter(mask)
        rows = _firsts(rows.sort_by([("timestamp", "ascending"), ("event_id", "ascending")]), other)
        columns = [rows.column(name).to_pylist() for name in rows.column_names]
        for user_id, other_id, at, event_id, etype in zip(*columns, strict=True):
            reason = "alias" if kind == "alias" else etype if etype in ("identify", "alias") else "event"
            found.append((at, event_id, order, Link(kind, user_id, other_id, at, event_id, reason)))
    found.sort(key=lambda item: item[:3])
    return [link for *_, link in found]


class IdentityStage:
    """The lake writer's identity step: links applied before the batch lands (idempotent when it lands again)."""

    name = "identity"

    def __init__(self, engine: sa.Engine) -> None:
        self.map = IdentityMap(engine)

    def apply(self, batch: StageBatch) -> StageBatch:
        links = links_of(batch.events, batch.quarantined)
        if links:
            applied = self.map.apply(links)
            if applied.seq is not None:
                log.debug(
                    "identities: %d ids linked, %d persons merged, %d conflicts",
                    applied.linked, applied.merged, applied.conflicts,
                )  # fmt: skip
        return batch

    def close(self) -> None:
        pass


def identity_stage(settings: Settings, engine: sa.Engine) -> IdentityStage | None:
    """The stage for the writer, or None when `identity_stitching` is off."""
    if not settings.identity_stitching:
        return None
    return IdentityStage(engine)
