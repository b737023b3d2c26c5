"""Identity stitching: the links a batch carries, the rules that map ids to persons, replay, and the rollup remap."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa
from pyroaring import BitMap

from headwater.core.events import RowBuilder
from headwater.core.stages import StageBatch
from headwater.lake.identity import (
    IDENTITIES,
    PERSON_MERGES,
    IdentityMap,
    IdentityStage,
    identity_stage,
    links_of,
)
from headwater.query.fast_path import Bucket, remap_persons
from tests.helpers import make_settings

RECEIVED = 1_768_471_200_000  # 2026-01-15 10:00 UTC, in ms


def call(kind: str, second: int, user: str | None = None, anon: str | None = None, **extra: Any) -> dict[str, Any]:
    """A Segment call `second` seconds into the day."""
    body: dict[str, Any] = {"type": kind, "timestamp": f"2026-01-15T10:{second // 60:02d}:{second % 60:02d}Z"}
    if user:
        body["userId"] = user
    if anon:
        body["anonymousId"] = anon
    if kind == "track":
        body.setdefault("event", extra.pop("event", "Viewed"))
    body.update(extra)
    return body


def batch(*calls: dict[str, Any], offset: int = 0) -> pa.Table:
    """The writer's `events` table (with stage inputs) for these calls, as RowBuilder makes it."""
    builder = RowBuilder(inputs=True)
    for i, body in enumerate(calls):
        meta = {"src": "web", "ep": body["type"], "ra": RECEIVED}
        builder.add({"m": meta, "e": body}, "log", 0, offset + i)
    events, _ = builder.tables()
    return events


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        uri = request.getfixturevalue("postgres_server").create_database(f"identity_{uuid.uuid4().hex[:8]}")
    created = sa.create_engine(uri)
    try:
        yield created
    finally:
        created.dispose()


def persons(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {str(i): str(p) for i, p in conn.execute(sa.select(IDENTITIES.c.id, IDENTITIES.c.person_id))}


def merges(engine: sa.Engine) -> list[tuple[str, str, str, str]]:
    with engine.connect() as conn:
        query = sa.select(
            PERSON_MERGES.c.from_person, PERSON_MERGES.c.into_person, PERSON_MERGES.c.reason, PERSON_MERGES.c.event_id
        ).order_by(PERSON_MERGES.c.merged_at, PERSON_MERGES.c.reason)
        return [tuple(str(v) for v in row) for row in conn.execute(query)]  # type: ignore[misc]


def apply(engine: sa.Engine, events: pa.Table, stage: IdentityStage | None = None) -> IdentityStage:
    stage = stage or IdentityStage(engine)
    out = stage.apply(StageBatch(events))
    assert out.events is events  # the stage adds nothing to the rows
    return stage


def test_links_picked_once_in_event_time_order_without_quarantined_rows() -> None:
    events = batch(
        call("track", 30, "u1", "a1"),
        call("identify", 10, "u1", "a1"),  # earlier: this one is the link's event
        call("track", 20, None, "a2"),
        call("track", 25, "u2", None),
        call("alias", 40, "u3", previousId="u2"),
        call("track", 50, "u4", "u4"),  # the same id twice links nothing
        call("identify", 60, "u5", "a5"),
    )
    found = links_of(events, skip=[6])
    assert [(k.kind, k.user, k.other, k.reason, k.event_id) for k in found] == [
        ("pair", "u1", "a1", "identify", "hw-log-0-1"),
        ("alias", "u3", "u2", "alias", "hw-log-0-4"),
    ]
    assert links_of(batch(call("track", 1, "u1"), call("page", 2, None, "a"))) == []


def test_anonymous_to_identified_across_two_devices(engine: sa.Engine) -> None:
    apply(
        engine,
        batch(
            call("page", 1, None, "phone"),
            call("page", 2, None, "laptop"),
            call("identify", 3, "ana", "phone"),
            call("track", 4, "ana", "laptop", event="Purchased"),
        ),
    )
    assert persons(engine) == {"ana": "ana", "phone": "ana", "laptop": "ana"}
    assert merges(engine) == []
    identities = IdentityMap(engine)
    assert identities.person_of(["phone", "laptop", "ana", "stranger"]) == {
        "phone": "ana", "laptop": "ana", "ana": "ana", "stranger": "stranger",
    }  # fmt: skip
    assert identities.ids_of("ana") == ["ana", "laptop", "phone"]


def test_alias_chains_resolve(engine: sa.Engine) -> None:
    stage = apply(engine, batch(call("identify", 1, "a", "a-phone"), call("identify", 2, "b", "b-phone")))
    apply(engine, batch(call("alias", 3, "b", previousId="a")), stage)  # a's person into b's
    assert set(persons(engine).values()) == {"b"}
    apply(engine, batch(call("identify", 4, "c", "c-phone"), call("alias", 5, "c", previousId="b"), offset=10), stage)
    assert persons(engine) == {i: "c" for i in ("a", "a-phone", "b", "b-phone", "c", "c-phone")}
    assert [m[:3] for m in merges(engine)] == [("a", "b", "alias"), ("b", "c", "alias")]
    # a chain inside one batch: every id re-pointed once, to the end of the chain
    chain = [call("identify", 1, "x", "x-phone"), call("identify", 2, "y", "y-phone")]
    chain += [call("alias", 3, "y", previousId="x"), call("alias", 4, "z", previousId="y")]
    apply(engine, batch(*chain, offset=20))
    assert {i: p for i, p in persons(engine).items() if i[0] in "xyz"} == {
        "x": "z", "x-phone": "z", "y": "z", "y-phone": "z", "z": "z",
    }  # fmt: skip


def test_shared_device_is_not_merged(engine: sa.Engine) -> None:
    stage = apply(engine, batch(call("identify", 1, "ana", "tablet")))
    apply(engine, batch(call("identify", 2, "bob", "tablet"), call("track", 3, "bob", "tablet"), offset=5), stage)
    assert persons(engine) == {"ana": "ana", "tablet": "ana"}  # bob is his own person, the tablet stays ana's
    assert merges(engine) == [("bob", "tablet", "conflict", "hw-log-0-5")]
    # alias is the explicit merge
    apply(engine, batch(call("alias", 4, "ana", previousId="bob"), offset=9), stage)
    assert persons(engine) == {"ana": "ana", "tablet": "ana", "bob": "ana"}
    assert merges(engine)[-1][:3] == ("bob", "ana", "alias")


def test_replay_changes_nothing(engine: sa.Engine) -> None:
    events = batch(
        call("identify", 1, "u1", "d1"), call("identify", 2, "u2", "d1"), call("alias", 3, "u3", previousId="u1"),
        call("identify", 4, "u3", "d3"), call("track", 5, "u2", "d2"),
    )  # fmt: skip
    apply(engine, events)
    state = IdentityMap(engine).state()
    before = (persons(engine), merges(engine))
    assert before[0] == {"u1": "u3", "d1": "u3", "u3": "u3", "d3": "u3", "u2": "u2", "d2": "u2"}
    assert [m[:3] for m in before[1]] == [("u2", "d1", "conflict"), ("u1", "u3", "alias")]
    stage = apply(engine, events)  # a new process (cold cache) reads the batch again: reads only
    assert IdentityMap(engine).state() == state and (persons(engine), merges(engine)) == before
    apply(engine, events, stage)  # the same process again: not even a read
    assert IdentityMap(engine).state() == state and (persons(engine), merges(engine)) == before


def test_forget_deletes_a_person_and_resets_readers(engine: sa.Engine, tmp_path: Path) -> None:
    linked = [call("identify", 1, "ana-zq", "tablet-zq"), call("identify", 2, "bob", "tablet-zq")]
    linked += [call("identify", 3, "kim", "laptop"), call("identify", 4, "kim", "ana-phone-zq")]
    apply(engine, batch(*linked, call("alias", 5, "kim", previousId="old-ana-zq")))
    identities = IdentityMap(engine)
    seq, resets = identities.state()
    # ana, her person's ids, her phone that kim used, her old id kim's person took over by alias
    assert identities.forget(["ana-zq", "ana-phone-zq", "old-ana-zq"]) == 4
    assert persons(engine) == {"kim": "kim", "laptop": "kim"}  # kim's other ids stay
    assert merges(engine) == []  # the conflict (bob, tablet-zq) and the alias named them
    assert identities.state() == (seq + 1, resets + 1)
    if engine.dialect.name == "sqlite":  # no bytes left behind once the write-ahead log is folded in
        with engine.connect() as conn:
            conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("catalog.db*"))
        assert b"kim" in stored and b"-zq" not in stored


def test_stage_is_off_without_stitching(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    assert identity_stage(make_settings(tmp_path, identity_stitching=False), engine) is None
    assert isinstance(identity_stage(make_settings(tmp_path), engine), IdentityStage)
    engine.dispose()


def test_remap_counts_persons() -> None:
    day = (20_000, "Viewed")
    buckets = {day: Bucket(6, [BitMap([1, 2, 3, 4, 9])], [BitMap([1, 2]), BitMap([3, 4, 9])]),
               (20_001, "Viewed"): Bucket(1, [BitMap([7])], [BitMap([7])])}  # fmt: skip
    keys, reps = np.array([2, 4, 9], dtype=np.uint32), np.array([1, 3, 3], dtype=np.uint32)
    out = remap_persons(buckets, keys, reps)
    assert list(out[day].persons[0]) == [1, 3]  # 2 is 1's person, 4 and 9 are 3's
    assert out[day].users == buckets[day].users and out[day].count == 6
    assert list(out[(20_001, "Viewed")].persons[0]) == [7]
    assert remap_persons(buckets, np.array([], dtype=np.uint32), np.array([], dtype=np.uint32)) is buckets
