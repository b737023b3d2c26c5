"""SQL models built into the lake next to a real `headwater up`: dependency order, on-change and cron scheduling,
incremental day rebuilds equal to full rebuilds, failed builds that leave the table as it was (and are recorded
for the `model_failed` alert), checks run after a build, and a table name taken by something that is not a model.

The server answers SQL (every model is a view there like `events`); the scheduler runs in this process on the same
catalog, as the ops worker would (the server is given no models_dir, so nothing else builds)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import sqlalchemy as sa

from headwater.core.settings import Settings
from headwater.lake.tables import TABLE_PROPERTIES, open_catalog
from headwater.models.runs import RUNS
from headwater.models.scheduler import ModelScheduler
from tests.helpers import RunningHeadwater, child_env, make_keys, make_settings

TODAY = datetime.now(UTC).date()
DAILY = """\
-- materialized: incremental
-- partition_by: day
-- lookback_days: 1
-- description: events and users per day and event
SELECT CAST(timestamp AS DATE) AS day, event, count(*) AS n, count(DISTINCT user_id) AS users
FROM events GROUP BY ALL
"""


def write(directory: Path, name: str, sql: str) -> None:
    (directory / f"{name}.sql").write_text(textwrap.dedent(sql))


def at(days_ago: int, hour: int = 12) -> str:
    moment = datetime.combine(TODAY - timedelta(days=days_ago), datetime.min.time()) + timedelta(hours=hour)
    return moment.isoformat() + "Z"


class Lake:
    """A running Headwater, its settings for the scheduler, and how many events it holds."""

    def __init__(self, running: RunningHeadwater, settings: Settings, models: Path) -> None:
        self.running, self.settings, self.models, self.count = running, settings, models, 0

    def send(self, *events: tuple[str, str, str]) -> None:
        """(user, event, ISO time) each; returns once the lake holds them."""
        lines = [orjson.dumps({"userId": u, "event": e, "timestamp": t}).decode() for u, e, t in events]
        response = self.running.post("/track", "\n".join(lines), self.running.keys["write"])
        assert response.status_code == 200, response.text
        self.count += len(events)
        self.running.wait_rows("SELECT count(*) FROM events", [[self.count]], timeout=60)

    def sql(self, sql: str) -> list[list[Any]]:
        return self.running.sql(sql)

    def runs(self, model: str | None = None) -> list[dict[str, Any]]:
        scheduler = ModelScheduler(self.settings)
        try:
            return scheduler.runs.history(model)
        finally:
            scheduler.close()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    data_dir = tmp_path_factory.mktemp("models")
    models = tmp_path_factory.mktemp("project")
    keys = make_keys(data_dir)
    # no maintenance during the module: a compaction would be a new version of `events` (on_change)
    env = child_env(data_dir, flush_interval_ms=200, maintenance_interval_s=3600)
    running = RunningHeadwater(data_dir, env, keys=keys).start()
    try:
        settings = make_settings(data_dir, models_dir=models, models_poll_s=5)
        lake = Lake(running, settings, models)
        lake.send(("ana", "view", at(3)), ("bob", "view", at(3)), ("ana", "buy", at(2)), ("cy", "view", at(1)))
        yield lake
    finally:
        running.stop()


@pytest.fixture
def scheduler(lake: Lake) -> Iterator[ModelScheduler]:
    for path in lake.models.iterdir():
        path.unlink()
    found = ModelScheduler(lake.settings)
    try:
        yield found
    finally:
        found.close()


def test_models_build_in_dependency_order_and_are_queryable_like_events(lake: Lake, scheduler: ModelScheduler) -> None:
    # names sort against the dependency order: z_users <- m_buyers <- a_share (which also reads events)
    write(lake.models, "z_users", "SELECT user_id, count(*) AS events FROM events GROUP BY user_id")
    write(lake.models, "m_buyers", """\
        -- description: users who bought
        SELECT u.user_id, u.events FROM z_users u
        WHERE u.user_id IN (SELECT user_id FROM events WHERE event = 'buy')
    """)  # fmt: skip
    write(lake.models, "a_share", """\
        WITH buyers AS (SELECT count(*) AS n FROM m_buyers)
        SELECT (SELECT n FROM buyers) AS buyers, count(DISTINCT user_id) AS users FROM events
    """)  # fmt: skip
    runs = scheduler.run()
    assert [r["model"] for r in runs] == ["z_users", "m_buyers", "a_share"]
    assert {r["status"] for r in runs} == {"ok"} and [r["rows"] for r in runs] == [3, 1, 1]
    assert lake.sql("SELECT user_id, events FROM z_users ORDER BY user_id") == [["ana", 2], ["bob", 1], ["cy", 1]]
    assert lake.sql("SELECT * FROM m_buyers") == [["ana", 2]]
    assert lake.sql("SELECT buyers, users FROM a_share") == [[1, 3]]

    listed = {m["name"]: m for m in scheduler.status()["models"]}
    assert listed["a_share"]["deps"] == ["m_buyers"] and listed["a_share"]["refs"] == ["events", "m_buyers"]
    assert listed["m_buyers"]["description"] == "users who bought"
    assert listed["z_users"]["last_run"]["status"] == "ok" and listed["z_users"]["exists"]

    # --downstream from the middle builds the middle and what reads it, not its input
    again = scheduler.run(["m_buyers"], downstream=True)
    assert [r["model"] for r in again] == ["m_buyers", "a_share"]
    assert [r["trigger"] for r in lake.runs("a_share")] == ["manual", "manual"]


def test_on_change_models_follow_their_inputs_and_cron_models_their_schedule(
    lake: Lake, scheduler: ModelScheduler
) -> None:
    write(lake.models, "per_user", "SELECT user_id, count(*) AS n FROM events GROUP BY user_id")
    write(lake.models, "top_user", "SELECT user_id FROM per_user ORDER BY n DESC, user_id LIMIT 1")
    write(lake.models, "nightly", "-- schedule: 0 3 * * *\nSELECT count(*) AS n FROM events")
    now = datetime.now(UTC)
    first = scheduler.tick(now)
    assert sorted((r["model"], r["trigger"]) for r in first) == [
        ("nightly", "schedule"), ("per_user", "on_change"), ("top_user", "on_change")
    ]  # fmt: skip
    assert scheduler.tick(now) == []  # nothing changed: nothing due (and the tick is cheap)

    lake.send(("dan", "view", at(0)), ("dan", "view", at(0)), ("dan", "buy", at(0)))
    second = scheduler.tick(now)
    assert [(r["model"], r["trigger"]) for r in second] == [("per_user", "on_change"), ("top_user", "on_change")]
    assert lake.sql("SELECT user_id FROM top_user") == [["dan"]]
    assert lake.sql("SELECT n FROM nightly") == [[lake.count - 3]]  # the nightly model waits for 03:00

    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    tomorrow = midnight + timedelta(hours=3, minutes=1)
    assert [(r["model"], r["trigger"]) for r in scheduler.tick(tomorrow)] == [("nightly", "schedule")]
    assert lake.sql("SELECT n FROM nightly") == [[lake.count]]
    assert scheduler.tick(tomorrow) == []

    # a new scheduler (a restart of the ops worker) finds the same state in the catalog: nothing to repeat
    restarted = ModelScheduler(lake.settings)
    try:
        assert restarted.tick(tomorrow) == []
        write(lake.models, "top_user", "SELECT user_id, n FROM per_user ORDER BY n DESC, user_id LIMIT 1")
        assert [r["model"] for r in restarted.tick(tomorrow)] == ["top_user"]  # its definition changed
    finally:
        restarted.close()


def test_an_incremental_rebuild_of_recent_days_equals_a_full_rebuild(lake: Lake, scheduler: ModelScheduler) -> None:
    write(lake.models, "daily", DAILY)
    write(lake.models, "daily_full", DAILY.replace("incremental", "table"))
    first = {r["model"]: r for r in scheduler.run()}
    assert first["daily"]["mode"] == "full"  # the first build takes every day
    compare = "SELECT day, event, n, users FROM {} ORDER BY ALL"
    assert lake.sql(compare.format("daily")) == lake.sql(compare.format("daily_full"))
    days_before = lake.sql("SELECT count(DISTINCT day) FROM daily")[0][0]
    assert days_before >= 3

    # late events for yesterday (within lookback_days of the newest day), new ones today, and a new event name
    lake.send(("eve", "view", at(1, 9)), ("ana", "view", at(1, 10)), ("eve", "signup", at(0, 8)), ("fox", "buy", at(0)))
    runs = {r["model"]: r for r in scheduler.run()}
    assert runs["daily"]["mode"] == "incremental"
    recomputed = lake.sql(f"SELECT count(*) FROM daily WHERE day >= DATE '{TODAY - timedelta(days=1)}'")[0][0]
    assert runs["daily"]["rows"] == recomputed < lake.sql("SELECT count(*) FROM daily")[0][0]
    assert lake.sql(compare.format("daily")) == lake.sql(compare.format("daily_full"))
    yesterday = f"DATE '{TODAY - timedelta(days=1)}'"
    assert lake.sql(f"SELECT users FROM daily WHERE day = {yesterday} AND event = 'view'")[0][0] >= 2

    # the table is partitioned by day, and the incremental build replaced only the recomputed days' files
    table = open_catalog(lake.settings).load_table("headwater.daily")
    assert [str(f.transform) for f in table.spec().fields] == ["day"]
    partitions = {row["partition"]["day_day"] for row in table.inspect.partitions().to_pylist()}
    assert len(partitions) == lake.sql("SELECT count(DISTINCT day) FROM daily")[0][0]

    # --full-refresh gives the same table again
    assert scheduler.run(["daily"], full_refresh=True)[0]["mode"] == "full"
    assert lake.sql(compare.format("daily")) == lake.sql(compare.format("daily_full"))


def test_a_failed_build_keeps_the_previous_table_and_is_recorded(lake: Lake, scheduler: ModelScheduler) -> None:
    write(lake.models, "buyers", "SELECT DISTINCT user_id FROM events WHERE event = 'buy'")
    write(lake.models, "buyer_count", "SELECT count(*) AS n FROM buyers")
    assert {r["status"] for r in scheduler.run()} == {"ok"}
    before = lake.sql("SELECT user_id FROM buyers ORDER BY 1")

    write(lake.models, "buyers", "SELECT DISTINCT user_id, no_such_column FROM events WHERE event = 'buy'")
    now = datetime.now(UTC)
    runs = scheduler.tick(now)
    assert [(r["model"], r["status"]) for r in runs] == [("buyers", "failed")]  # its reader is not built
    assert "no_such_column" in runs[0]["error"] and "buyers.sql" in runs[0]["error"]
    assert lake.sql("SELECT user_id FROM buyers ORDER BY 1") == before
    assert scheduler.tick(now) == []  # retried after a back-off, not on every tick
    assert [r["model"] for r in scheduler.tick(now + timedelta(seconds=6))] == ["buyers"]
    assert lake.runs("buyers")[0]["failures"] == 2

    # what the model_failed alert reads: the latest run per model in the catalog's database
    engine = sa.create_engine(lake.settings.effective_catalog_uri)
    try:
        with engine.connect() as conn:
            latest = conn.execute(
                sa.select(RUNS.c.model, RUNS.c.status).where(
                    RUNS.c.run_id.in_(sa.select(sa.func.max(RUNS.c.run_id)).group_by(RUNS.c.model))
                )
            ).all()
    finally:
        engine.dispose()
    assert ("buyers", "failed") in latest

    write(lake.models, "buyers", "SELECT DISTINCT user_id FROM events WHERE event = 'buy'")
    fixed = scheduler.tick(now)
    assert [(r["model"], r["status"]) for r in fixed] == [("buyers", "ok"), ("buyer_count", "ok")]
    assert lake.runs("buyers")[0]["failures"] == 0


def test_a_broken_file_is_recorded_once_and_the_others_still_build(lake: Lake, scheduler: ModelScheduler) -> None:
    write(lake.models, "fine", "SELECT count(*) AS n FROM events")
    write(lake.models, "loop_a", "SELECT * FROM loop_b")
    write(lake.models, "loop_b", "SELECT * FROM loop_a")
    write(lake.models, "orphan", "SELECT * FROM no_such_table")
    write(lake.models, "spans", "SELECT INTERVAL 1 DAY AS span")  # a type no lake table stores
    now = datetime.now(UTC)
    runs = {r["model"]: r for r in scheduler.tick(now)}
    assert runs["fine"]["status"] == "ok"
    assert runs["spans"]["error"].startswith("spans.sql (model spans): column span is month_day_nano_interval")
    assert "dependency cycle loop_a -> loop_b -> loop_a" in runs["loop_a"]["error"]
    assert "orphan.sql (model orphan): reads no_such_table" in runs["orphan"]["error"]
    assert scheduler.tick(now) == []  # the same errors are not recorded again


def test_checks_run_after_the_build_of_their_model(lake: Lake, scheduler: ModelScheduler) -> None:
    write(lake.models, "users", "SELECT user_id, count(*) AS n FROM events GROUP BY user_id")
    (lake.models / "checks.toml").write_text(textwrap.dedent("""\
        [[checks]]
        name = "users_have_ids"
        table = "users"
        kind = "not_null"
        column = "user_id"

        [[checks]]
        name = "few_users"
        table = "users"
        kind = "row_count"
        max = 2
        severity = "warn"
    """))  # fmt: skip
    scheduler.tick(datetime.now(UTC))
    from headwater.models.checks import CheckRunner

    with CheckRunner(lake.settings) as runner:
        history = runner.history(["users_have_ids", "few_users"])
    assert history["users_have_ids"][0].status == "pass"
    assert history["few_users"][0].status == "fail"


def test_a_table_that_is_not_a_model_is_never_replaced(lake: Lake, scheduler: ModelScheduler) -> None:
    catalog = open_catalog(lake.settings)
    catalog.create_table(("headwater", "feed_rows"), schema=pa.schema([("x", pa.int64())]),
                         properties=TABLE_PROPERTIES)  # fmt: skip
    write(lake.models, "feed_rows", "SELECT 1 AS x")
    runs = scheduler.run()
    assert runs[0]["status"] == "failed"
    assert "exists and is not a model" in runs[0]["error"]
    assert catalog.load_table(("headwater", "feed_rows")).current_snapshot() is None
