"""Each built-in alert rule fires and resolves once against a real webhook receiver, driven by real conditions in
a real `headwater up`: the writer paused (lake_lag, freshness, log_retention_risk), the server stopped
(server_down), the data directory past its budget (disk), invalid events and a failing processor (error_rate,
dead_letters), a source process hung (source_stalled).

The test calls `AlertEvaluator.tick(now)` itself, as the ops worker does; `now` runs ahead of the wall clock to
cover `for` durations and windows without waiting for them (samples are stamped with the evaluator's clock).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from headwater.alerts import AlertEvaluator
from headwater.alerts.builtins import directory_bytes
from headwater.core.settings import Settings
from headwater.lake.coordination import open_engine
from headwater.models.scheduler import ModelScheduler
from headwater.sources.status import read_status
from tests.helpers import RunningHeadwater, child_env, make_keys, make_settings
from tests.unit.test_alerts import OPENED, Receiver, receiving


@pytest.fixture(name="receiver")
def _receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


FOR_S = 30.0
CHECKS = """
[[checks]]
name = "few_users"
table = "users"
kind = "row_count"
max = %d
severity = "warn"
"""
PIPELINE = """
import time
from pathlib import Path

from headwater.processing.api import Pipeline


def on_record(ctx, value):
    item = value["properties"].get("item")
    if item == "boom":
        raise ValueError("boom items are refused")
    while item == "wait" and not Path(__file__).with_name("go").exists():  # stuck until the test says go
        time.sleep(0.05)
    ctx.emit({"item": item})


p = Pipeline("shop", description="refuses boom items")
p.source("events").filter(lambda e: e["event"] == "Purchased").process(on_record).to_stream("shop-out")
pipeline = p
"""


@contextlib.contextmanager
def up(data_dir: Path, **settings: Any) -> Iterator[RunningHeadwater]:
    keys = make_keys(data_dir)
    # the test evaluates alerts itself: the ops worker of `up` does not (both would move the same alerts)
    env = child_env(data_dir, flush_interval_ms=200, alerts_enabled="false", **settings)
    running = RunningHeadwater(data_dir, env, keys=keys)
    try:
        yield running.start()
    finally:
        if running.proc is not None:
            for pid in children(running):  # nothing left paused: `up` must be able to stop them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            running.stop()


def children(running: RunningHeadwater, command: str = "") -> list[int]:
    """Pids of the `up` process's children whose command line holds `command`."""
    assert running.proc is not None
    out = subprocess.run(["pgrep", "-P", str(running.proc.pid)], capture_output=True, text=True, check=False)
    pids = []
    for pid in map(int, out.stdout.split()):
        with contextlib.suppress(OSError):
            if command in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                pids.append(pid)
    return pids


def evaluator(data_dir: Path, receiver: Receiver, **overrides: Any) -> AlertEvaluator:
    settings = make_settings(data_dir, **{"port": 0, "alert_webhooks": [receiver.url], "alert_for_s": FOR_S,
                                          **overrides})  # fmt: skip
    OPENED.append(AlertEvaluator(settings, open_engine(settings.effective_catalog_uri)))
    return OPENED[-1]


def events(n: int, event: str = "E", **props: Any) -> str:
    return "\n".join(json.dumps({"event": event, "userId": f"u{i}", **props}) for i in range(n))


def wait_metric(running: RunningHeadwater, name: str, done: Any, timeout: float = 30) -> float:
    """Poll /metrics until the sum of `name`'s series satisfies `done`."""
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        text = httpx.get(running.url + "/metrics", timeout=10).text
        value = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
        if done(value):
            return value
        time.sleep(0.2)
    raise AssertionError(f"{name} stayed at {value}")


def firing(receiver: Receiver, rule: str) -> list[dict[str, Any]]:
    return [b for b in receiver.bodies if b["alert"] == rule and b["state"] == "firing"]


def test_writer_paused_lake_lag_freshness_and_retention_risk(tmp_path: Path, receiver: Receiver) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    rules = ("lake_lag", "freshness", "log_retention_risk")
    with up(data_dir, log_retention_hours=0.01) as running:
        ev = evaluator(data_dir, receiver, alert_lake_lag_events=100, freshness_slo_s=5, log_retention_hours=0.01)
        assert running.post("/track", events(10), running.keys["write"]).status_code == 200
        running.wait_rows("SELECT count(*) FROM events", [[10]])
        start = time.time()
        first = ev.tick(start)
        assert first["metrics"] == "ok" and not [a for a in first["pending"] + first["firing"] if a.startswith(rules)]
        [writer] = children(running, "cli.main writer")
        os.kill(writer, signal.SIGSTOP)  # the writer hangs: nothing reaches the lake any more
        try:
            assert running.post("/track", events(500), running.keys["write"]).status_code == 200
            wait_metric(running, 'headwater_consumer_lag{group="lake"}', lambda v: v >= 500)
            ev.tick(start + 1)
            ev.tick(start + 1 + FOR_S)  # lake_lag held for FOR_S; the oldest unread event is now > 18 s old
            ev.tick(start + 2 + 2 * FOR_S)
            for rule in rules:
                assert len(firing(receiver, rule)) == 1, (rule, receiver.bodies, ev.last)
            lag = firing(receiver, "lake_lag")[0]
            assert lag["value"] >= 500 and lag["severity"] == "warning" and "not catching up" in lag["summary"]
            assert firing(receiver, "log_retention_risk")[0]["labels"] == {"group": "lake"}
            assert firing(receiver, "freshness")[0]["value"] > 5
        finally:
            os.kill(writer, signal.SIGCONT)
        running.wait_rows("SELECT count(*) FROM events", [[510]])
        wait_metric(running, 'headwater_consumer_lag{group="lake"}', lambda v: v == 0)
        ev.tick(start + 3 + 3 * FOR_S)
        ev.tick(start + 4 + 4 * FOR_S)
    for rule in rules:
        assert receiver.states(rule) == ["firing", "resolved"], (rule, receiver.bodies, ev.last)
    assert {h["delivery"] for h in ev.store.history()} == {"delivered"}


def test_server_down_and_disk_budget(tmp_path: Path, receiver: Receiver) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    with up(data_dir) as running:
        budget_mb = directory_bytes(str(data_dir)) // 2**20 + 2
        ev = evaluator(data_dir, receiver, alert_disk_budget_mb=budget_mb)
        start = time.time()
        ev.tick(start)
        assert receiver.bodies == [] and not ev.last["pending"]
        pad = "x" * 4000
        for _ in range(4):  # 4 MB of events into the log (and then the lake): past the budget
            assert running.post("/track", events(250, pad=pad), running.keys["write"]).status_code == 200
        ev.tick(start + 1 + FOR_S)
        assert ev.last["pending"] == ["disk{check=budget}"]
        ev.tick(start + 2 + 2 * FOR_S)
        [disk] = firing(receiver, "disk")
        assert disk["labels"] == {"check": "budget"} and disk["value"] > budget_mb and disk["severity"] == "critical"
        running.stop()  # the server is gone: /metrics unreachable
        ev.tick(start + 3 + 3 * FOR_S)
        ev.tick(start + 4 + 4 * FOR_S)
        [down] = firing(receiver, "server_down")
        assert "unreachable" in down["summary"]
        ev.close()
        raised = evaluator(data_dir, receiver, alert_disk_budget_mb=budget_mb + 1000)  # a restarted ops worker
        running.start()  # another port: read again from run/server.port
        raised.tick(start + 5 + 5 * FOR_S)
        raised.tick(start + 6 + 6 * FOR_S)
    assert receiver.states("disk") == ["firing", "resolved"]
    assert receiver.states("server_down") == ["firing", "resolved"]


def test_error_rate_dead_letters_and_processor_lag(tmp_path: Path, receiver: Receiver) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    pipeline = data_dir / "shop.py"
    pipeline.write_text(PIPELINE)
    with up(data_dir, processors=json.dumps([f"{pipeline}:pipeline"])) as running:
        ev = evaluator(data_dir, receiver, alert_lake_lag_events=100)
        start = time.time()
        ev.tick(start)
        invalid = "\n".join(json.dumps({"userId": f"u{i}", "event": 12}) for i in range(60))  # event not a string
        response = running.post("/track", invalid + "\n" + events(40), running.keys["write"])
        assert response.json()["quarantined"] == 60, response.text
        boom = events(3, "Purchased", item="boom") + "\n" + events(3, "Purchased", item="ok")
        assert running.post("/track", boom, running.keys["write"]).status_code == 200
        wait_metric(running, "headwater_events_rejected_total", lambda v: v >= 60)
        wait_metric(running, "headwater_processor_errors_total", lambda v: v >= 3)
        try:  # the processor gets stuck on one record while 150 more arrive
            stuck = events(1, "Purchased", item="wait") + "\n" + events(150, "Purchased", item="ok")
            assert running.post("/track", stuck, running.keys["write"]).status_code == 200
            wait_metric(running, 'headwater_consumer_lag{group="processor.shop', lambda v: v >= 150)
            ev.tick(start + 1)
            ev.tick(start + 2 + FOR_S)
        finally:
            (data_dir / "go").touch()
        [rate] = firing(receiver, "error_rate")
        assert rate["value"] == pytest.approx(60 / (60 + 40 + 6 + 151)) and "(60 of 257)" in rate["summary"]
        [dead] = firing(receiver, "dead_letters")
        assert dead["labels"] == {"processor": "shop"} and dead["value"] == 3
        [lag] = firing(receiver, "processor_lag")
        assert lag["labels"] == {"processor": "shop"} and lag["value"] >= 150
        good = events(200)  # a healthy stream for longer than the 5-minute window
        assert running.post("/track", good, running.keys["write"]).status_code == 200
        wait_metric(running, "headwater_events_accepted_total", lambda v: v >= 397)
        wait_metric(running, 'headwater_consumer_lag{group="processor.shop', lambda v: v == 0)
        ev.tick(start + 400)
        ev.tick(start + 401)
    for rule in ("error_rate", "dead_letters", "processor_lag"):
        assert receiver.states(rule) == ["firing", "resolved"], (rule, receiver.bodies, ev.last)


def test_source_hung_is_stalled_then_recovers(tmp_path: Path, receiver: Receiver) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    drops = data_dir / "drops"
    drops.mkdir()
    source = {"name": "drops", "kind": "files", "path": str(drops), "format": "ndjson", "poll_seconds": 0.2}
    with up(data_dir, sources=json.dumps([source])) as running:
        ev = evaluator(data_dir, receiver, alert_source_stalled_s=120, sources=[source])
        settings: Settings = ev.settings
        [configured] = settings.sources
        deadline = time.monotonic() + 60
        while read_status(settings, configured)["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        start = time.time()
        ev.tick(start)
        [pid] = children(running, "cli.main source drops")
        os.kill(pid, signal.SIGSTOP)  # hung: its status goes stale, nothing is read
        try:
            while read_status(settings, configured)["state"] != "not running":
                assert time.monotonic() < deadline + 60
                time.sleep(0.5)
            ev.tick(start + 60)  # behind, but idle for less than alert_source_stalled_s
            assert not ev.last["pending"]
            ev.tick(start + 121)
            ev.tick(start + 122 + FOR_S)
            [stalled] = firing(receiver, "source_stalled")
            assert stalled["labels"] == {"source": "drops"} and "read nothing" in stalled["summary"]
        finally:
            os.kill(pid, signal.SIGCONT)
        while read_status(settings, configured)["state"] != "running":
            assert time.monotonic() < deadline + 120
            time.sleep(0.2)
        ev.tick(start + 200)
    assert receiver.states("source_stalled") == ["firing", "resolved"]
    assert orjson.loads(orjson.dumps(ev.store.history()))[0]["delivery"] == "delivered"


def test_model_and_check_failures_from_the_real_scheduler(tmp_path: Path, receiver: Receiver) -> None:
    data_dir, models = tmp_path / "d", tmp_path / "project"
    data_dir.mkdir()
    models.mkdir()
    with up(data_dir) as running:
        ev = evaluator(data_dir, receiver, models_dir=models)
        scheduler = ModelScheduler(ev.settings, ev.engine)
        try:
            assert running.post("/track", events(3), running.keys["write"]).status_code == 200
            running.wait_rows("SELECT count(*) FROM events", [[3]])
            (models / "users.sql").write_text("SELECT user_id, no_such_column FROM events")
            (models / "checks.toml").write_text(CHECKS % 2)
            start = time.time()
            assert [r["status"] for r in scheduler.tick(datetime.now(UTC))] == ["failed"]
            ev.tick(start)
            ev.tick(start + 1 + FOR_S)
            [model] = firing(receiver, "model_failed")
            assert model["labels"] == {"model": "users"} and "no_such_column" in model["summary"]
            (models / "users.sql").write_text("SELECT user_id, count(*) AS n FROM events GROUP BY user_id")
            assert [r["status"] for r in scheduler.tick(datetime.now(UTC))] == ["ok"]  # then its check fails
            ev.tick(start + 2 + 2 * FOR_S)
            ev.tick(start + 3 + 3 * FOR_S)
            [check] = firing(receiver, "check_failed")
            assert check["labels"] == {"check": "few_users", "table": "users"} and check["severity"] == "warning"
            (models / "checks.toml").write_text(CHECKS % 10)
            (models / "users.sql").write_text("SELECT user_id, count(*) AS n, 1 AS v FROM events GROUP BY user_id")
            assert [r["status"] for r in scheduler.tick(datetime.now(UTC))] == ["ok"]
            ev.tick(start + 4 + 4 * FOR_S)
        finally:
            scheduler.close()
    assert receiver.states("model_failed") == ["firing", "resolved"]
    assert receiver.states("check_failed") == ["firing", "resolved"]
