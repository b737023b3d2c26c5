"""Identity stitching end to end: generated multi-device journeys written by the lake writer with the identity stage,
then SQL (`person_id`, `persons`, `person_merges`), funnels, retention, trends and the timeline checked against
ground truth computed in Python from the generated events, counting persons and counting ids."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.core.settings import Settings
from headwater.insights.engine import InsightEngine
from headwater.lake.coordination import open_engine
from headwater.lake.identity import IdentityStage
from headwater.lake.tables import close_catalog
from headwater.lake.writer import GROUP, LakeWriter
from headwater.log.sqlite import SqliteLog
from headwater.query.engine import QueryEngine
from tests.helpers import make_settings

START = datetime(2026, 3, 2)  # a Monday
RANGE = {"date_from": "2026-03-02T00:00:00", "date_to": "2026-03-23T00:00:00"}
D0, D1 = datetime(2026, 3, 2), datetime(2026, 3, 23)
FUNNEL = ["Viewed Pricing", "Purchased"]
WINDOW = timedelta(days=3)


@dataclass
class Row:
    kind: str  # Segment call type
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    at: datetime
    person: str  # who stitching must say this is (the generator knows)
    previous_id: str | None = None
    event_id: str = ""

    @property
    def raw(self) -> str:
        person = self.user_id or self.anonymous_id
        assert person is not None
        return person

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.kind, "messageId": self.event_id, "timestamp": self.at.isoformat() + "Z"}
        for key, value in (("userId", self.user_id), ("anonymousId", self.anonymous_id),
                           ("previousId", self.previous_id)):  # fmt: skip
            if value is not None:
                body[key] = value
        if self.kind == "track":
            body["event"] = self.event
        if self.kind == "page":
            body["name"] = self.event
        return body


def generate(seed: int = 5, people: int = 90) -> tuple[list[Row], list[Row]]:
    """(first batch, second batch). Each person browses anonymously on one or two devices, identifies on most of
    them, purchases identified; every tenth is renamed by an alias; every tenth other logs in on the previous
    person's first device (a shared device, in the second batch, after that device was identified)."""
    rng = random.Random(seed)
    first: list[Row] = []
    second: list[Row] = []
    for p in range(people):
        user = f"user{p}"
        current = user
        for k in range(rng.choice([1, 2])):
            device = f"anon-{p}-{k}"
            seen = START + timedelta(days=rng.randrange(0, 18), seconds=rng.randrange(0, 86400))
            identified = k == 0 or rng.random() < 0.7
            if k == 0 and (p + 1) % 10 == 7:
                identified = True  # the device the next person shares
            if not identified and rng.random() < 0.5:
                identified = False
            anon_person = user if identified else device
            first.append(Row("page", "Viewed Pricing", None, device, seen, anon_person))
            if rng.random() < 0.5:
                first.append(Row("page", "Viewed Pricing", None, device, seen + timedelta(hours=2), anon_person))
            if not identified:
                continue
            login = seen + timedelta(minutes=rng.randrange(5, 60 * 30))
            first.append(Row("identify", None, current, device, login, user))
            for n in range(rng.choice([0, 1, 1, 2, 3])):
                when = login + timedelta(days=n * rng.randrange(3, 9), minutes=rng.randrange(1, 60 * 50))
                first.append(Row("track", "Purchased", current, device if rng.random() < 0.7 else None, when, user))
        if p % 10 == 3 and any(r.kind == "identify" and r.person == user for r in first):
            renamed = START + timedelta(days=19)
            first.append(Row("alias", None, f"member{p}", None, renamed, user, previous_id=user))
            first.append(Row("track", "Purchased", f"member{p}", None, renamed + timedelta(hours=3), user))
        if p % 10 == 7:
            shared = f"anon-{p - 1}-0"
            when = START + timedelta(days=rng.randrange(0, 18), seconds=rng.randrange(0, 86400))
            second.append(Row("identify", None, user, shared, when, user))
            second.append(Row("track", "Purchased", user, shared, when + timedelta(minutes=30), user))
    for i, row in enumerate(first + second):
        row.event_id = f"m{i:05d}"
    return first, second


def envelope(row: Row) -> tuple[bytes, bytes]:
    meta = {"src": "web", "ep": row.kind, "ra": int((row.at - datetime(1970, 1, 1)).total_seconds() * 1000)}
    return row.raw.encode(), orjson.dumps({"m": meta, "e": row.body()})


@dataclass
class Lake:
    settings: Settings
    query: QueryEngine
    insights: InsightEngine
    rows: list[Row]


def write(settings: Settings, rows: list[Row]) -> None:
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    producer = log.producer()
    producer.append([envelope(r) for r in rows]).result()
    producer.close()
    engine = open_engine(settings.effective_catalog_uri)
    writer = LakeWriter(settings, log.consumer(GROUP), log, stages=[IdentityStage(engine)])
    try:
        while batch := writer.consumer.poll(100_000, 0):
            writer.add(batch)
        writer.flush()
    finally:
        engine.dispose()
        assert writer.maintenance.lease is not None
        writer.maintenance.lease.engine.dispose()  # the writer's own engine on the catalog's database
        close_catalog(writer.catalog)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def lake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    data_dir = tmp_path_factory.mktemp("identity")
    extra: dict[str, Any] = {}
    if request.param == "postgresql":
        extra["catalog_uri"] = request.getfixturevalue("postgres_server").create_database(
            f"identity_{uuid.uuid4().hex[:8]}"
        )
    settings = make_settings(data_dir, **extra)
    first, second = generate()
    write(settings, first)
    write(settings, second)  # the shared-device logins, after the devices' owners identified
    query = QueryEngine(settings)
    try:
        yield Lake(settings, query, InsightEngine(query), first + second)
    finally:
        query.close()


def funnel_truth(rows: list[Row], key: str) -> list[int]:
    """Ordered two-step funnel per `key` ("person" or "raw"): started in range, second step within the window."""
    by: dict[str, list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r.at, r.event_id)):
        if row.kind in ("page", "track") and D0 <= row.at < D1 + WINDOW:
            by[getattr(row, key)].append(row)
    depth: dict[str, int] = {}
    for who, events in by.items():
        for start in events:
            if start.event != FUNNEL[0] or start.at >= D1:
                continue
            done = any(e.event == FUNNEL[1] and start.at < e.at <= start.at + WINDOW for e in events)
            depth[who] = max(depth.get(who, 0), 2 if done else 1)
    return [sum(1 for d in depth.values() if d >= 1), sum(1 for d in depth.values() if d >= 2)]


def week(moment: datetime) -> datetime:
    day = datetime(moment.year, moment.month, moment.day)
    return day - timedelta(days=day.weekday())


def retention_truth(rows: list[Row], key: str) -> dict[str, list[int]]:
    """Weekly retention as the insight defines it: cohort = week of the first `Viewed Pricing`, returned in week
    n >= 1 when `Purchased` falls in that week."""
    firsts: dict[str, datetime] = {}
    for row in rows:
        if row.event == FUNNEL[0]:
            who = getattr(row, key)
            firsts[who] = min(firsts.get(who, row.at), row.at)
    cohorts = {who: week(at) for who, at in firsts.items() if D0 <= at < D1}
    returned: dict[tuple[datetime, int], set[str]] = defaultdict(set)
    for row in rows:
        who = getattr(row, key)
        if row.event == FUNNEL[1] and who in cohorts:
            n = (week(row.at) - cohorts[who]).days // 7
            if 1 <= n <= 4:
                returned[(cohorts[who], n)].add(who)
    out: dict[str, list[int]] = {}
    for cohort in sorted(set(cohorts.values())):
        size = sum(1 for c in cohorts.values() if c == cohort)
        out[cohort.isoformat()] = [size] + [len(returned[(cohort, n)]) for n in range(1, 5)]
    return out


def retention_values(answer: dict[str, Any]) -> dict[str, list[int]]:
    return {c["cohort"]: c["values"] for c in answer["result"]["cohorts"]}


def funnel_spec(**extra: Any) -> dict[str, Any]:
    steps = [{"event": e} for e in FUNNEL]
    return {"kind": "funnel", "steps": steps, "window_seconds": int(WINDOW.total_seconds()), **RANGE, **extra}


def retention_spec(**extra: Any) -> dict[str, Any]:
    return {"kind": "retention", "start_event": FUNNEL[0], "return_event": FUNNEL[1], "period": "week", "periods": 4,
            **RANGE, **extra}  # fmt: skip


def test_sql_person_id_matches_the_generated_persons(lake: Lake) -> None:
    rows = lake.query.execute("SELECT event_id, person_id FROM events", max_rows=100_000).rows
    got = dict((str(e), str(p)) for e, p in rows)
    truth = {r.event_id: r.person for r in lake.rows}
    assert len(got) == len(truth)
    labels: dict[str, str] = {}  # generated person -> person_id: one each, and never shared
    for event_id, person in truth.items():
        assert labels.setdefault(person, got[event_id]) == got[event_id], event_id
    assert len(set(labels.values())) == len(labels)
    persons = len({r.person for r in lake.rows})
    raw = len({r.raw for r in lake.rows})
    assert persons < raw
    assert lake.query.execute("SELECT count(DISTINCT person_id) FROM events").rows == [[persons]]
    ids = lake.query.execute("SELECT count(DISTINCT coalesce(user_id, anonymous_id)) FROM events")
    assert ids.rows == [[raw]] and ids.answered_by == "rollup"  # says ids, and rollups answer it


def test_persons_and_merges_views(lake: Lake) -> None:
    persons = dict(
        (str(i), str(p)) for i, p in lake.query.execute("SELECT id, person_id FROM persons", max_rows=10_000).rows
    )
    assert persons["anon-3-0"] == persons["user3"] == persons["member3"]  # an alias merged user3 into member3
    assert persons["member3"] == "member3"
    assert persons["anon-6-0"] == "user6" and persons["user7"] == "user7"  # user7 logged in on user6's device
    merges = lake.query.execute(
        "SELECT from_person, into_person, reason FROM person_merges ORDER BY reason, from_person"
    ).rows
    assert ["user3", "member3", "alias"] in merges
    assert ["user7", "anon-6-0", "conflict"] in merges
    assert {r[2] for r in merges} == {"alias", "conflict"}
    types = dict(lake.query.execute("SELECT column_name, column_type FROM (DESCRIBE persons)").rows)
    assert types == {"id": "VARCHAR", "person_id": "VARCHAR", "linked_at": "TIMESTAMP", "reason": "VARCHAR"}


def test_funnel_counts_persons_once(lake: Lake) -> None:
    persons = lake.insights.run(funnel_spec())
    assert "person_id" in persons["sql"]
    got = [s["count"] for s in persons["result"][0]["steps"]]
    assert got == funnel_truth(lake.rows, "person")
    ids = [s["count"] for s in lake.insights.run(funnel_spec(count_by="ids"))["result"][0]["steps"]]
    assert ids == funnel_truth(lake.rows, "raw")
    assert got[1] > ids[1]  # anonymous pricing views that end in identified purchases now convert
    assert got[0] < ids[0]  # one person's two devices start once


def test_retention_counts_persons(lake: Lake) -> None:
    truth_persons, truth_ids = retention_truth(lake.rows, "person"), retention_truth(lake.rows, "raw")
    assert truth_persons != truth_ids
    from_rollups = lake.insights.run(retention_spec())  # midnight bounds: rollups, keys mapped to persons
    assert from_rollups["answered_by"] == "rollup"
    assert retention_values(from_rollups) == truth_persons
    from_sql = lake.insights.run(retention_spec(date_to="2026-03-22T23:59:59"))  # not on a day: the SQL
    assert from_sql["answered_by"] == "raw" and "person_id" in from_sql["sql"]
    assert retention_values(from_sql) == retention_truth(
        [r for r in lake.rows if r.event != FUNNEL[0] or r.at < datetime(2026, 3, 22, 23, 59, 59)], "person"
    )
    assert retention_values(lake.insights.run(retention_spec(count_by="ids"))) == truth_ids


def test_trend_users_from_rollups_and_sql_agree(lake: Lake) -> None:
    spec = {"kind": "trend", "series": [{"event": "Purchased", "measure": "users"}], "interval": "week", **RANGE}
    rollup = lake.insights.run(spec)
    sql = lake.insights.run({**spec, "series": [{"event": "Purchased", "measure": "users", "filters": [
        {"property": "event", "op": "eq", "value": "Purchased"}]}]})  # fmt: skip
    assert rollup["answered_by"] == "rollup" and sql["answered_by"] == "raw"
    totals: dict[datetime, set[str]] = defaultdict(set)
    for row in lake.rows:
        if row.event == "Purchased" and D0 <= row.at < D1:
            totals[week(row.at)].add(row.person)
    want = [
        [w.isoformat(), float(len(totals.get(w, ())))]
        for w in sorted({week(D0 + timedelta(days=d)) for d in range(21)})
    ]
    assert rollup["result"][0]["points"] == want
    assert sql["result"][0]["points"] == want


def test_timeline_shows_every_device(lake: Lake) -> None:
    logins: dict[str, int] = defaultdict(int)
    for row in lake.rows:
        logins[row.person] += row.kind == "identify"
    user = next(p for p, n in sorted(logins.items()) if n == 2 and p.startswith("user") and p[-1] != "7")
    answer = lake.insights.run({"kind": "timeline", "person": user, "limit": 500})["result"]
    mine = sorted((r for r in lake.rows if r.person == user), key=lambda r: (r.at, r.event_id), reverse=True)
    assert [row[-1] for row in answer["rows"]] == [r.event_id for r in mine]
    assert len({row[4] for row in answer["rows"] if row[4]}) == 2  # both devices
    devices = {r.anonymous_id for r in lake.rows if r.kind == "identify" and r.person == user}
    assert answer["person"] == user
    assert {i["id"] for i in answer["identities"]} == {user, *devices}
    from_device = lake.insights.run({"kind": "timeline", "person": sorted(devices)[0], "limit": 500})["result"]
    assert from_device["rows"] == answer["rows"]  # any of the person's ids opens the same page
    only_id = lake.insights.run({"kind": "timeline", "person": user, "count_by": "ids", "limit": 500})["result"]
    assert [row[-1] for row in only_id["rows"]] == [r.event_id for r in mine if user in (r.user_id, r.anonymous_id)]
    assert "identities" not in only_id


def test_new_links_show_up_and_invalidate_cached_insights(lake: Lake) -> None:
    lake.query.catalog_views.refresh_s = 0.0
    before = lake.insights.run(funnel_spec())
    assert lake.insights.run(funnel_spec())["cached"] is True
    stranger = next(r for r in lake.rows if r.person.startswith("anon-") and r.event == FUNNEL[0])
    late = Row("identify", None, "late-user", stranger.anonymous_id, stranger.at + timedelta(minutes=1), "late-user")
    buy = Row("track", "Purchased", "late-user", None, stranger.at + timedelta(minutes=2), "late-user")
    late.event_id, buy.event_id = f"late-{uuid.uuid4().hex[:6]}", f"late-{uuid.uuid4().hex[:6]}"
    write(lake.settings, [late, buy])
    after = lake.insights.run(funnel_spec())
    assert after["cached"] is False
    steps = [[s["count"] for s in r["steps"]] for r in (before["result"][0], after["result"][0])]
    assert steps[1] == [steps[0][0], steps[0][1] + 1]  # the anonymous visitor converted as late-user
    lake.rows.extend([late, buy])
    for row in lake.rows:
        if row.anonymous_id == stranger.anonymous_id:
            row.person = "late-user"


def test_stitching_off_counts_ids(lake: Lake) -> None:
    settings = lake.settings.model_copy(update={"identity_stitching": False})
    query = QueryEngine(settings)
    try:
        answer = InsightEngine(query).run(funnel_spec())
        assert "person_id" not in answer["sql"]
        assert [s["count"] for s in answer["result"][0]["steps"]] == funnel_truth(lake.rows, "raw")
    finally:
        query.close()


def test_dataset_has_every_case(lake: Lake) -> None:
    """The generator made what the other tests rely on."""
    kinds = {r.kind for r in lake.rows}
    assert kinds == {"page", "identify", "track", "alias"}
    assert any(r.person.startswith("anon-") for r in lake.rows)  # never identified devices
    assert Path(lake.settings.data_dir).exists()
