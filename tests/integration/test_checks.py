"""Data checks on a real lake: events written by the lake writer from the embedded log, and a model-like Iceberg
table of the `headwater` namespace; each kind passes and fails, results land in the catalog database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import sqlalchemy as sa

from headwater.core.settings import Settings
from headwater.lake.tables import open_catalog
from headwater.lake.writer import GROUP, LakeWriter
from headwater.log.sqlite import SqliteLog
from headwater.models.checks import RESULTS, CheckRunner, checks_on, parse_checks
from headwater.models.engine import build_engine
from tests.helpers import make_settings

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()
PER_DAY = {1: 10, 2: 10, 3: 3, 4: 10, 5: 10}  # days ago -> events of that day (day 3 is short)
REPORTED = {1: 10, 2: 11, 3: 3, 4: 10, 5: 10}  # what `daily_counts` says (day 2 is off by one)


MIDNIGHT = datetime.combine(TODAY, datetime.min.time(), UTC)
LATEST = max(NOW - timedelta(minutes=10), MIDNIGHT)  # the newest event: today, 10 minutes ago (or at midnight)


def envelope(i: int, day_ago: int, user: str | None, event: str) -> bytes:
    moment = LATEST if day_ago == 0 else datetime.combine(
        TODAY - timedelta(days=day_ago), datetime.min.time(), UTC
    ) + timedelta(hours=1 + i % 20)  # fmt: skip
    fields: dict[str, object] = {"event": event, "messageId": f"m{day_ago}-{i}", "time": moment.isoformat()}
    if user is None:
        fields["anonymousId"] = f"anon{i}"
    else:
        fields["userId"] = user
    return orjson.dumps({"m": {"src": "t", "ep": "track-raw", "ra": int(NOW.timestamp() * 1000)}, "e": fields})


def write_events(settings: Settings) -> int:
    """Events on the last five days (per PER_DAY) and 4 today, through the log and the lake writer."""
    log = SqliteLog(settings.log_path, settings.offsets_path, 2)
    producer = log.producer()
    records = []
    for day_ago, count in [*PER_DAY.items(), (0, 4)]:
        for i in range(count):
            user = None if (day_ago, i) == (4, 0) else f"u{i % 4}"  # one anonymous event
            event = "Refund" if (day_ago, i) == (2, 5) else ("Signup" if i % 3 == 0 else "Purchase")
            records.append((b"k", envelope(i, day_ago, user, event)))
    producer.append(records).result()
    writer = LakeWriter(settings, log.consumer(GROUP), log)
    while batch := writer.consumer.poll(100_000, 0):
        writer.add(batch)
    writer.flush()
    producer.close()
    return len(records)


def write_tables(settings: Settings) -> None:
    """Two tables beside `events`, as models make them: `orders` and `daily_counts` (and an empty `nothing`)."""
    catalog = open_catalog(settings)
    orders = pa.table(
        {
            "order_id": pa.array([1, 2, 3, 4, 5, 6, 6], pa.int64()),
            "status": pa.array(["paid", "paid", "refunded", "paid", None, "lost", "paid"]),
            "amount": pa.array([10.0, 20.0, 5.0, 7.5, 3.0, 1.0, 1.0]),
        }
    )
    catalog.create_table("headwater.orders", schema=orders.schema).append(orders)
    days = sorted(REPORTED)
    counts = pa.table(
        {
            "day": pa.array([TODAY - timedelta(days=d) for d in days], pa.date32()),
            "n": pa.array([REPORTED[d] for d in days], pa.int64()),
        }
    )
    catalog.create_table("headwater.daily_counts", schema=counts.schema).append(counts)
    empty = pa.schema([pa.field("at", pa.timestamp("us"))])
    catalog.create_table("headwater.nothing", schema=empty)


@dataclass
class Lake:
    settings: Settings
    runner: CheckRunner
    events: int


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    data_dir: Path = tmp_path_factory.mktemp("checks")
    settings = make_settings(data_dir, models_dir=data_dir / "models")
    events = write_events(settings)
    write_tables(settings)
    runner = CheckRunner(settings, query=build_engine(settings))
    try:
        yield Lake(settings, runner, events)
    finally:
        runner.query.close()
        runner.close()


def one(lake: Lake, kind: str, body: str) -> dict[str, Any]:
    """Run the single check of `kind` declared by `body` (TOML lines); the result as JSON."""
    [check] = parse_checks(f'[[checks]]\nkind = "{kind}"\n{body}\n')
    [result] = lake.runner.run([check], now=NOW)
    return result.public()


CASES = {
    # kind: (a declaration that passes, one that fails, failing rows, failing items)
    "not_null": (
        'table = "events"\ncolumn = "event"',
        'table = "events"\ncolumn = "user_id"',
        1, 1,
    ),
    "not_null_columns_where": (
        'table = "orders"\ncolumns = ["order_id", "status"]\nwhere = "order_id <> 5"',
        'table = "orders"\ncolumns = ["order_id", "status"]',
        1, 1,
    ),
    "unique": (
        'table = "events"\ncolumn = "event_id"',
        'table = "orders"\ncolumn = "order_id"',
        2, 1,
    ),
    "unique_columns": (
        'table = "orders"\ncolumns = ["order_id", "status"]',
        'table = "events"\ncolumns = ["user_id", "event"]\nwhere = "type = \'track\'"',
        None, None,
    ),
    "accepted_values": (
        'table = "events"\ncolumn = "event"\nvalues = ["Signup", "Purchase", "Refund"]',
        'table = "orders"\ncolumn = "status"\nvalues = ["paid", "refunded"]',
        1, 1,
    ),
    "accepted_values_numbers": (
        'table = "orders"\ncolumn = "order_id"\nvalues = [1, 2, 3, 4, 5, 6]',
        'table = "orders"\ncolumn = "order_id"\nvalues = [1, 2, 3, 4, 5]',
        2, 1,
    ),
    "row_count": (
        'table = "orders"\nmin = 1\nmax = 7',
        'table = "orders"\nmin = 8',
        1, 1,
    ),
    "row_count_per_day": (
        'table = "events"\nper = "day"\ntime_column = "timestamp"\nmin = 5\nmax = 10\ndays = 2',
        'table = "events"\nper = "day"\ntime_column = "timestamp"\nmin = 5\nmax = 10\ndays = 7',
        3, 3,  # day 3 is short; days 6 and 7 have no event
    ),
    "row_count_match": (
        'table = "events"\ntime_column = "timestamp"\ncompare_table = "daily_counts"\ncompare_time_column = "day"\n'
        'compare_count_column = "n"\ndays = 5\ntolerance = 0.1',
        'table = "events"\ntime_column = "timestamp"\ncompare_table = "daily_counts"\ncompare_time_column = "day"\n'
        'compare_count_column = "n"\ndays = 5',
        1, 1,
    ),
    "freshness": (
        'table = "events"\ntime_column = "timestamp"\nmax_age_minutes = 60',
        'table = "events"\ntime_column = "timestamp"\nmax_age_minutes = 5',
        1, 1,
    ),
    "freshness_empty": (
        'table = "events"\ntime_column = "received_at"\nmax_age_minutes = 1440',
        'table = "nothing"\ntime_column = "at"\nmax_age_minutes = 60',
        1, 1,
    ),
}  # fmt: skip


def kind_of(case: str) -> str:
    return next(k for k in ("not_null", "unique", "accepted_values", "row_count_match", "row_count", "freshness")
                if case.startswith(k))  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_kind_passes_and_fails_on_generated_data(lake: Lake, case: str) -> None:
    good, bad, rows, items = CASES[case]
    kind = kind_of(case)
    passed = one(lake, kind, good)
    assert passed["status"] == "pass", passed
    assert passed["failing"] == 0 and passed["detail"]["sample"] == []
    failed = one(lake, kind, bad)
    assert failed["status"] == "fail", failed
    detail = failed["detail"]
    assert isinstance(failed["failing"], int) and failed["failing"] > 0
    if rows is not None:
        assert (failed["failing"], detail["items"]) == (rows, items), detail
    assert 0 < len(detail["sample"]) <= 5
    assert detail["query"] and detail["message"] != "pass"
    json.dumps(failed)  # the sample is plain JSON


def test_samples_show_what_failed(lake: Lake) -> None:
    dup = one(lake, "unique", 'table = "orders"\ncolumn = "order_id"')
    assert dup["detail"]["sample"] == [{"order_id": 6, "rows": 2}]
    values = one(lake, "accepted_values", 'table = "orders"\ncolumn = "status"\nvalues = ["paid"]')
    assert sorted((s["value"], s["rows"]) for s in values["detail"]["sample"]) == [("lost", 1), ("refunded", 1)]
    assert values["failing"] == 2
    days = one(lake, "row_count", 'table = "events"\nper = "day"\ntime_column = "timestamp"\nmin = 5\ndays = 5')
    assert days["detail"]["sample"] == [{"day": (TODAY - timedelta(days=3)).isoformat(), "rows": 3}]
    match = one(lake, "row_count_match", 'table = "events"\ntime_column = "timestamp"\ncompare_table = "daily_counts"\n'
                'compare_time_column = "day"\ncompare_count_column = "n"')  # fmt: skip
    day2 = (TODAY - timedelta(days=2)).isoformat()
    assert match["detail"]["sample"] == [{"day": day2, "rows": 10, "compare_rows": 11, "difference": -1}]
    assert match["failing"] == 1  # days 6 and 7 before today: neither table has rows, so they match
    stale = one(lake, "freshness", 'table = "events"\ntime_column = "timestamp"\nmax_age_minutes = 5')
    [row] = stale["detail"]["sample"]
    assert row == {"latest": LATEST.replace(tzinfo=None).isoformat(), "age_minutes": (NOW - LATEST).seconds / 60}


def test_a_check_that_cannot_run_is_an_error_result(lake: Lake) -> None:
    missing = one(lake, "not_null", 'table = "no_such_table"\ncolumn = "x"')
    assert missing["status"] == "error" and missing["failing"] is None
    assert "no_such_table" in missing["detail"]["error"]
    column = one(lake, "not_null", 'table = "orders"\ncolumn = "nope"')
    assert column["status"] == "error" and "nope" in column["detail"]["error"]


def test_results_are_recorded_and_read_back(lake: Lake) -> None:
    checks = parse_checks(
        '[[checks]]\nname = "orders_ids"\nkind = "unique"\ntable = "orders"\ncolumn = "order_id"\nseverity = "warn"\n'
        '[[checks]]\nname = "events_named"\nkind = "not_null"\ntable = "events"\ncolumn = "event"\n'
    )
    first = lake.runner.run(checks, now=NOW)
    second = lake.runner.run(checks_on(checks, {"orders"}), now=NOW)
    assert [r.check for r in second] == ["orders_ids"]
    assert first[0].run_id == first[1].run_id != second[0].run_id
    assert [r.blocking for r in first] == [False, False]  # a failing warn is not blocking
    with lake.runner.catalog.connect() as conn:
        rows = conn.execute(
            sa.select(RESULTS.c.run_id, RESULTS.c.status, RESULTS.c.failing, RESULTS.c.severity, RESULTS.c.detail)
            .where(RESULTS.c.check == "orders_ids")
            .order_by(RESULTS.c.id)
        ).all()
    assert [(r.status, r.failing, r.severity) for r in rows] == [("fail", 2, "warn")] * 2
    assert json.loads(rows[0].detail)["sample"] == [{"order_id": 6, "rows": 2}]
    history = lake.runner.history(["orders_ids", "events_named"], per_check=1)
    assert [r.run_id for r in history["orders_ids"]] == [second[0].run_id]  # newest first, one per check
    assert history["events_named"][0].status == "pass"
    assert set(lake.runner.last_started()) >= {"orders_ids", "events_named"}


def test_the_scheduler_runs_what_is_due_and_a_broken_file_is_a_failing_check(lake: Lake) -> None:
    """What the model scheduler calls: run_due on its tick, run_for after a build; checks.toml's state is kept
    as the result of a check named `checks.toml`."""
    models = lake.settings.models_dir
    assert models is not None
    models.mkdir(exist_ok=True)
    (models / "checks.toml").write_text(
        '[[checks]]\nname = "sched_events"\nkind = "not_null"\ntable = "events"\ncolumn = "event"\n'
        '[[checks]]\nname = "sched_orders"\nkind = "unique"\ntable = "orders"\ncolumn = "order_id"\n'
    )
    runner = lake.runner
    at = NOW.replace(year=NOW.year + 1)  # a later hour than any result of the other tests
    assert [r.check for r in runner.run_due(at, models={"orders"})] == ["sched_events"]  # orders: a model
    assert runner.run_due(at, models={"orders"}) == []  # ran this hour
    assert [(r.check, r.status) for r in runner.run_for({"orders"})] == [("sched_orders", "fail")]

    def file_results() -> list[tuple[str, str]]:
        with runner.catalog.connect() as conn:
            rows = conn.execute(
                sa.select(RESULTS.c.status, RESULTS.c.detail)
                .where(RESULTS.c.check == "checks.toml")
                .order_by(RESULTS.c.id)
            ).all()
        return [(r.status, json.loads(r.detail)["message"]) for r in rows]

    assert file_results() == []
    (models / "checks.toml").write_text('[[checks]]\nkind = "unique"\ntable = "orders"\n')
    assert runner.run_due(at + timedelta(hours=1)) == [] and runner.run_for({"orders"}) == []
    [(status, message)] = file_results()  # recorded once, not on every tick
    assert status == "error" and "check #1: field 'column'" in message
    (models / "checks.toml").write_text(
        '[[checks]]\nname = "again"\nkind = "unique"\ntable = "orders"\ncolumn = "order_id"\n'
    )
    assert [r.check for r in runner.run_due(at + timedelta(hours=1))] == ["again"]
    assert [s for s, _ in file_results()] == ["error", "pass"]
    assert runner.history(["checks.toml"], 1)["checks.toml"][0].status == "pass"
