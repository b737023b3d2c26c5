"""Sessions by inactivity across batches: state in the catalog database, replays, late events."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from headwater.enrich import sessions as sessions_module
from headwater.enrich.sessions import SESSIONS, SessionStage, _running_end, key_hash
from headwater.lake.coordination import open_engine
from tests.unit.test_enrich_common import T0, events_table, run

MIN = timedelta(minutes=1)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield engine
    engine.dispose()


def batch(*events: tuple[str | None, str | None, float]) -> pa.Table:
    """Rows (anonymous_id, user_id, minutes after T0)."""
    return events_table([{"anonymous_id": a, "user_id": u, "timestamp": T0 + m * MIN} for a, u, m in events])


def ids(stage: SessionStage, table: pa.Table) -> list[str | None]:
    return run([stage], table).column("session_id").to_pylist()


def start_ms(minutes: float) -> int:
    return int((T0 + minutes * MIN - datetime(1970, 1, 1)).total_seconds() * 1000)


def sid(key: str, minutes: float) -> str:
    return f"{key_hash(key)[:12]}-{start_ms(minutes)}"


def test_within_a_batch(engine: sa.Engine) -> None:
    stage = SessionStage(engine, 30)
    got = ids(
        stage,
        batch(
            ("a", None, 10),
            ("b", None, 0),
            ("a", None, 0),
            ("a", "u1", 40),  # identify: anonymous_id first, the device's session goes on (gap 30 = timeout)
            ("a", None, 71),  # gap 31: a new session
            (None, "u1", 5),  # server-side event of the user: its own key
            (None, None, 5),  # no id: no session
        ),
    )
    assert got == [sid("a", 0), sid("b", 0), sid("a", 0), sid("a", 0), sid("a", 71), sid("u1", 5), None]
    assert re.fullmatch(r"[0-9a-f]{12}-\d{13}", str(got[0]))
    (private,) = ids(stage, batch(("someone@example.com", None, 0)))
    assert private == sid("someone@example.com", 0) and "someone" not in str(private)


def test_across_batches_and_state(engine: sa.Engine) -> None:
    stage = SessionStage(engine, 30)
    assert ids(stage, batch(("a", None, 0), ("a", None, 10))) == [sid("a", 0)] * 2
    assert ids(stage, batch(("a", None, 35), ("a", None, 60), ("a", None, 95))) == [sid("a", 0)] * 2 + [sid("a", 95)]
    assert ids(stage, batch(("a", None, 100))) == [sid("a", 95)]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(SESSIONS).order_by(SESSIONS.c.session_start)).all()
    assert [(r.key_hash, r.session_start, r.first_seen, r.last_seen) for r in rows] == [
        (key_hash("a"), start_ms(0), start_ms(0), start_ms(60)),
        (key_hash("a"), start_ms(95), start_ms(95), start_ms(100)),
    ]


def test_a_batch_processed_twice_gets_the_same_ids(engine: sa.Engine) -> None:
    first = SessionStage(engine, 30)
    ids(first, batch(("a", None, 0), ("b", None, 0)))
    # chains onto a stored session, starts new ones, and a late event of its own
    table = batch(
        ("a", None, 20), ("a", None, 45), ("a", None, 120), ("b", None, 200), ("b", None, 210), ("c", None, 1)
    )
    once = ids(first, table)
    assert once == [sid("a", 0), sid("a", 0), sid("a", 120), sid("b", 200), sid("b", 200), sid("c", 1)]
    again = ids(first, table)  # the same stage after a failed commit
    restarted = ids(SessionStage(engine, 30), table)  # a new writer after a crash
    assert again == once and restarted == once
    # and the batch after it goes on as if the replay never happened
    assert ids(first, batch(("a", None, 140), ("b", None, 230))) == [sid("a", 120), sid("b", 200)]


def test_late_and_out_of_order_events(engine: sa.Engine) -> None:
    stage = SessionStage(engine, 30)
    ids(stage, batch(("a", None, 100), ("a", None, 110)))
    got = ids(
        stage,
        batch(
            ("a", None, 75),  # before the stored session but within the timeout: joins it
            ("a", None, 20),  # long before: a session of its own (from this batch)
            ("a", None, 30),
            ("a", None, 175),  # after, 45 minutes after the last one: new
            ("a", None, 130),  # out of order within the batch: joins the stored one (gap 20 from 110)
        ),
    )
    assert got == [sid("a", 100), sid("a", 20), sid("a", 20), sid("a", 175), sid("a", 100)]
    # the late session is stored too: a later late event joins it, and the stored one kept its start
    assert ids(stage, batch(("a", None, 40), ("a", None, 100))) == [sid("a", 20), sid("a", 100)]


def test_an_event_bridging_two_sessions_joins_the_earlier(engine: sa.Engine) -> None:
    stage = SessionStage(engine, 30)
    ids(stage, batch(("a", None, 0), ("a", None, 50)))
    assert ids(stage, batch(("a", None, 25))) == [sid("a", 0)]
    assert ids(stage, batch(("a", None, 25))) == [sid("a", 0)]


def reference(events: list[tuple[str, int]], timeout_ms: int) -> list[str]:
    """Sessions over the whole history at once, in plain Python: the ground truth."""
    out = [""] * len(events)
    by_key: dict[str, list[int]] = {}
    for index, (key, _) in enumerate(events):
        by_key.setdefault(key, []).append(index)
    for key, indexes in by_key.items():
        indexes.sort(key=lambda i: events[i][1])
        start = last = None
        for i in indexes:
            t = events[i][1]
            if last is None or t - last > timeout_ms:
                start = t
            last = t
            out[i] = f"{key_hash(key)[:12]}-{start}"
    return out


def test_streamed_batches_match_the_whole_history(engine: sa.Engine) -> None:
    rng = random.Random(7)
    epoch_ms = start_ms(0)
    events: list[tuple[str, int]] = []
    for person in range(60):
        t = epoch_ms + rng.randrange(0, 3_600_000)
        for _ in range(rng.randrange(1, 40)):
            t += rng.choice([1, 5, 60, 600, 1_700, 1_800, 1_801, 3_000, 20_000]) * 1000
            events.append((f"anon-{person}", t))
    events.sort(key=lambda e: e[1])
    stage = SessionStage(engine, 30)
    got: list[Any] = []
    position = 0
    while position < len(events):  # batches in time order, shuffled inside
        size = rng.randrange(1, 200)
        chunk = events[position : position + size]
        order = list(range(len(chunk)))
        rng.shuffle(order)
        table = events_table(
            [
                {"anonymous_id": chunk[i][0], "timestamp": datetime(1970, 1, 1) + timedelta(milliseconds=chunk[i][1])}
                for i in order
            ]
        )
        out = ids(stage, table)
        unshuffled = [None] * len(chunk)
        for j, i in enumerate(order):
            unshuffled[i] = out[j]
        got.extend(unshuffled)
        if rng.random() < 0.2:  # a replay of the batch changes nothing
            assert ids(stage, table) == out
        position += size
    assert got == reference(events, 30 * 60_000)


def test_old_state_is_pruned(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    stage = SessionStage(engine, 30)
    ids(stage, batch(("a", None, 0)))
    monkeypatch.setattr(sessions_module, "PRUNE_EVERY_S", 0.0)
    ids(stage, batch(("b", None, 5 * 24 * 60)))
    with engine.connect() as conn:
        assert conn.execute(sa.select(SESSIONS.c.key_hash)).scalars().all() == [key_hash("b")]


@pytest.mark.services
def test_sessions_on_postgresql(postgres_server: Any) -> None:
    engine = open_engine(postgres_server.create_database("hw_enrich_sessions"))
    try:
        stage = SessionStage(engine, 30)
        assert ids(stage, batch(("a", None, 0), ("a", None, 10), ("b", None, 3))) == [sid("a", 0)] * 2 + [sid("b", 3)]
        table = batch(("a", None, 35), ("a", None, 80), ("b", None, 4))
        once = ids(stage, table)
        assert once == [sid("a", 0), sid("a", 80), sid("b", 3)]
        assert ids(SessionStage(engine, 30), table) == once
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(SESSIONS)).scalar() == 3
    finally:
        engine.dispose()


@pytest.mark.parametrize("span", [10_000, 2**62])  # the fast path, and ranks when key * span would overflow
def test_running_end_of_the_earlier_elements_of_each_key(span: int) -> None:
    rng = random.Random(span)
    elements = sorted((rng.randrange(5), rng.randrange(1000)) for _ in range(300))
    key = np.array([k for k, _ in elements], dtype=np.int64)
    begin = np.array([b for _, b in elements], dtype=np.int64)
    end = begin + np.array([rng.choice([0, 0, 0, 50]) for _ in elements], dtype=np.int64)
    got = _running_end(key, end, 0, span)
    for i in range(1, len(elements)):
        if key[i] == key[i - 1]:
            assert got[i - 1] == max(end[j] for j in range(i) if key[j] == key[i])
