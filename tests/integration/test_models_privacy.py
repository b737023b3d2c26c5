"""A person deleted from `events` (a privacy deletion, through the API of a real `headwater up`) leaves incremental
models too: rows left an input table, so the next build recomputes every day, not only the recent ones."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from headwater.models.scheduler import ModelScheduler
from tests.helpers import RunningHeadwater, child_env, make_keys, make_settings

TODAY = datetime.now(UTC).date()
DAILY = """\
-- materialized: incremental
-- partition_by: day
-- lookback_days: 1
SELECT CAST(timestamp AS DATE) AS day, event, count(*) AS n, count(DISTINCT user_id) AS users
FROM events GROUP BY ALL
"""


def at(days_ago: int) -> str:
    return (datetime.combine(TODAY - timedelta(days=days_ago), datetime.min.time()) + timedelta(hours=12)).isoformat()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    hw = RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200), keys=keys).start()
    try:
        yield hw
    finally:
        hw.stop()


def test_a_deleted_person_leaves_incremental_models_too(running: RunningHeadwater, tmp_path: Path) -> None:
    sent = [("ana", "view", at(3)), ("bob", "view", at(3)), ("ana", "buy", at(1)), ("bob", "view", at(0))]
    lines = [orjson.dumps({"userId": u, "event": e, "timestamp": t + "Z"}).decode() for u, e, t in sent]
    assert running.post("/track", "\n".join(lines), running.keys["write"]).status_code == 200
    running.wait_rows("SELECT count(*) FROM events", [[4]], timeout=60)
    models = tmp_path / "models"
    models.mkdir()
    (models / "daily.sql").write_text(textwrap.dedent(DAILY))
    (models / "daily_full.sql").write_text(textwrap.dedent(DAILY.replace("incremental", "table")))
    scheduler = ModelScheduler(make_settings(running.data_dir, models_dir=models))
    try:
        scheduler.run()
        old_day = f"DATE '{TODAY - timedelta(days=3)}'"  # before lookback_days: an incremental build keeps it
        assert running.sql(f"SELECT users FROM daily WHERE day = {old_day} AND event = 'view'") == [[2]]

        admin = {"Authorization": f"Bearer {running.keys['admin']}"}
        asked = httpx.post(running.url + "/api/privacy/deletions", json={"user_ids": ["bob"]}, headers=admin,
                           timeout=30).json()  # fmt: skip
        assert asked["state"] == "pending", asked
        running.wait_rows("SELECT count(*) FROM events", [[2]], timeout=120)  # the rows are gone

        runs = {r["model"]: r for r in scheduler.tick(datetime.now(UTC))}
        assert runs["daily"]["mode"] == "full"  # rows left `events`: every day is recomputed
        assert running.sql(f"SELECT users FROM daily WHERE day = {old_day} AND event = 'view'") == [[1]]
        compare = "SELECT day, event, n, users FROM {} ORDER BY ALL"
        assert running.sql(compare.format("daily")) == running.sql(compare.format("daily_full"))
        assert running.sql("SELECT count(*) FROM daily WHERE day = CURRENT_DATE") == [[0]]
    finally:
        scheduler.close()
