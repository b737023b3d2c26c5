"""The alert evaluator's state machine, silences, delivery and restarts, with a real HTTP webhook receiver and a
real catalog database; conditions are real Condition implementations (the extension interface trend alerts use)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from headwater.alerts import AlertEvaluator, AlertStore, BaseCondition, Condition, Context, Finding
from headwater.alerts.builtins import stale_group
from headwater.alerts.conditions import MetricCondition
from headwater.alerts.scrape import MetricsWindow, parse
from headwater.core.alert_settings import AlertRule
from headwater.core.database import create_tables
from headwater.core.errors import AlertError
from headwater.lake.coordination import open_engine
from headwater.models.checks import METADATA as CHECKS_METADATA
from headwater.models.checks import RESULTS
from headwater.models.runs import RunStore
from tests.helpers import make_settings

T0 = 1_800_000_000.0


class Receiver:
    """A webhook receiver on a free local port: keeps every JSON body; answers `status` (settable)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = orjson.loads(self.rfile.read(length))
                if owner.status < 300:
                    owner.bodies.append(body)
                self.send_response(owner.status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def states(self, alert: str | None = None) -> list[str]:
        return [b["state"] for b in self.bodies if alert is None or b["alert"] == alert]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    """A Receiver, closed after with every evaluator a test opened (OPENED)."""
    r = Receiver()
    try:
        yield r
    finally:
        r.close()
        for ev in OPENED:
            ev.close()
        OPENED.clear()


@pytest.fixture(name="receiver")
def _receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


OPENED: list[AlertEvaluator] = []


@dataclass
class Switch(BaseCondition):
    """A condition true for the label sets in `on` (what a trend alert source would compute)."""

    on: list[dict[str, str]] = field(default_factory=list)
    unknown: bool = False
    calls: int = 0

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        self.calls += 1
        if self.unknown:
            return None
        return [Finding(labels, 1.0, f"switch on {labels}") for labels in self.on]


def evaluator(
    tmp_path: Path, receiver: Receiver, *extra: Condition, builtins: tuple[str, ...] = (), **settings: Any
) -> AlertEvaluator:
    """An evaluator with the `extra` conditions and only the named built-ins (no server runs here)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    s = make_settings(data_dir, **{"port": 0, "alert_webhooks": [receiver.url], "alert_for_s": 30, **settings})
    ev = AlertEvaluator(s, open_engine(s.effective_catalog_uri), extra)
    OPENED.append(ev)
    ev.builtins = [c for c in ev.builtins if c.name in builtins]
    return ev


def test_pending_firing_resolved_once_each(tmp_path: Path, receiver: Receiver) -> None:
    switch = Switch("trend.signups", summary="signups dropped", for_s=30)
    ev = evaluator(tmp_path, receiver, switch)
    switch.on = [{"event": "signup"}]
    assert ev.tick(T0)["pending"] == ["trend.signups{event=signup}"]
    assert receiver.bodies == []
    ev.tick(T0 + 15)
    assert receiver.bodies == []
    ev.tick(T0 + 31)
    ev.tick(T0 + 46)
    assert receiver.states("trend.signups") == ["firing"]
    body = receiver.bodies[0]
    assert body["labels"] == {"event": "signup"} and body["severity"] == "warning"
    assert body["since"] == "2027-01-15T08:00:00Z" and body["id"] > 0
    assert body["dashboard_url"].endswith("/#/alerts")
    switch.on = []
    ev.tick(T0 + 60)
    ev.tick(T0 + 75)
    assert receiver.states("trend.signups") == ["firing", "resolved"]
    history = ev.store.history()
    assert [h["state"] for h in history] == ["resolved", "firing"]
    assert all(h["delivery"] == "delivered" and h["deliveries"][receiver.url]["ok"] for h in history)


def test_pending_that_stops_holding_sends_nothing(tmp_path: Path, receiver: Receiver) -> None:
    switch = Switch("blip", for_s=30, on=[{}])
    ev = evaluator(tmp_path, receiver, switch)
    ev.tick(T0)
    switch.on = []
    ev.tick(T0 + 15)
    ev.tick(T0 + 60)
    assert receiver.bodies == [] and ev.store.history() == [] and ev.store.current() == []


def test_unknown_keeps_state_and_restart_does_not_resend(tmp_path: Path, receiver: Receiver) -> None:
    switch = Switch("x", on=[{}])
    ev = evaluator(tmp_path, receiver, switch)
    ev.tick(T0)
    assert receiver.states() == ["firing"]
    switch.unknown = True  # data unavailable: neither resolved nor re-fired
    ev.tick(T0 + 15)
    assert [a["state"] for a in ev.store.current()] == ["firing"]
    ev.close()
    switch.unknown = False
    again = evaluator(tmp_path, receiver, switch)  # the ops worker restarted: state comes from the catalog
    again.tick(T0 + 30)
    assert receiver.states() == ["firing"]
    switch.on = []
    again.tick(T0 + 45)
    assert receiver.states() == ["firing", "resolved"]


def test_failed_delivery_is_retried_next_tick_and_sent_once(tmp_path: Path, receiver: Receiver) -> None:
    switch = Switch("x", on=[{}])
    ev = evaluator(tmp_path, receiver, switch)
    receiver.status = 500
    summary = ev.tick(T0)
    assert summary["deliveries"] == {"delivered": 0, "retrying": 1, "failed": 0}
    assert ev.store.history()[0]["deliveries"][receiver.url]["status"] == 500
    receiver.status = 200
    assert ev.tick(T0 + 15)["deliveries"]["delivered"] == 1
    ev.tick(T0 + 30)
    assert receiver.states() == ["firing"]
    entry = ev.store.history()[0]
    assert entry["delivery"] == "delivered" and entry["attempts"] == 2


def test_unreachable_webhook_gives_up_after_a_day(tmp_path: Path, receiver: Receiver) -> None:
    switch = Switch("x", on=[{}])
    ev = evaluator(tmp_path, receiver, switch)
    receiver.close()
    ev.tick(T0)
    ev.tick(T0 + 86_401)
    entry = ev.store.history()[0]
    assert entry["delivery"] == "failed" and entry["deliveries"][receiver.url]["ok"] is False


def test_silence_records_but_does_not_send(tmp_path: Path, receiver: Receiver) -> None:
    a, b = Switch("a", on=[{"table": "t1"}, {"table": "t2"}]), Switch("b", on=[{}])
    ev = evaluator(tmp_path, receiver, a, b)
    ev.store.add_silence("a", {"table": "t1"}, T0 - 1, T0 + 100, "known", "test", T0)
    ev.tick(T0)
    assert sorted((x["alert"], x["labels"].get("table")) for x in receiver.bodies) == [("a", "t2"), ("b", None)]
    silenced = [h for h in ev.store.history() if h["silenced"]]
    assert len(silenced) == 1 and silenced[0]["delivery"] == "silenced" and silenced[0]["labels"] == {"table": "t1"}
    assert [s["comment"] for s in ev.store.silences(T0)] == ["known"]
    assert ev.store.silences(T0 + 200) == []


def test_removed_rule_resolves_and_rules_are_listed(tmp_path: Path, receiver: Receiver) -> None:
    switch = Switch("gone", on=[{}])
    ev = evaluator(tmp_path, receiver, switch, builtins=("lake_lag", "disk", "server_down"))
    ev.tick(T0)
    names = {r["name"]: r for r in ev.store.rules()}
    assert {"lake_lag", "disk", "server_down", "gone"} <= set(names)
    assert names["disk"]["definition"]["settings"]["alert_disk_free_percent"] == 10.0
    ev.extra = []
    ev.tick(T0 + 15)
    assert receiver.states("gone") == ["firing", "resolved"]
    assert "rule removed" in receiver.bodies[-1]["summary"]


def test_condition_source_listed_each_tick_and_failing_condition_keeps_state(
    tmp_path: Path, receiver: Receiver
) -> None:
    switch = Switch("trend.a", on=[{}])

    class Source:
        def __init__(self) -> None:
            self.listed: list[Condition] | None = [switch]

        def conditions(self) -> list[Condition] | None:
            return self.listed

    class Broken(BaseCondition):
        def evaluate(self, ctx: Context) -> list[Finding] | None:
            raise RuntimeError("database away")

    source = Source()
    ev = evaluator(tmp_path, receiver, source, Broken("broken"))  # type: ignore[arg-type]
    ev.tick(T0)
    assert receiver.states("trend.a") == ["firing"]
    source.listed = None  # the source cannot list its rules now: its alerts stay
    summary = ev.tick(T0 + 15)
    assert receiver.states("trend.a") == ["firing"]
    assert "RuntimeError: database away" in summary["errors"]["broken"]
    assert {r["name"]: r["error"] for r in ev.store.rules()}["broken"].endswith("database away")


def test_every_s_limits_evaluations(tmp_path: Path, receiver: Receiver) -> None:
    switch = Switch("slow", every_s=300)
    ev = evaluator(tmp_path, receiver, switch)
    for i in range(5):
        ev.tick(T0 + 15 * i)
    assert switch.calls == 1
    ev.tick(T0 + 301)
    assert switch.calls == 2


def test_metric_rules_on_scraped_samples(tmp_path: Path, receiver: Receiver) -> None:
    rule = AlertRule.model_validate(
        {
            "name": "rejects",
            "metric": "headwater_events_rejected_total",
            "function": "increase",
            "window_s": 60,
            "aggregate": "each",
            "threshold": 5,
        }
    )
    cond = MetricCondition(rule)
    ev = evaluator(tmp_path, receiver)
    window = MetricsWindow(ev.settings)
    window.client.close()
    text = 'headwater_events_rejected_total{endpoint="track"} %d\nheadwater_events_rejected_total{endpoint="v1"} 1\n'
    window.add(T0, parse(text % 10))
    ctx = Context(T0, ev.settings, ev.engine, window, lambda: None)  # type: ignore[arg-type,return-value]
    assert cond.evaluate(ctx) is None  # one scrape: increase unknown
    window.add(T0 + 30, parse(text % 30))
    found = cond.evaluate(ctx)
    assert found is not None and [(f.labels, f.value) for f in found] == [({"endpoint": "track"}, 20.0)]
    window.add(T0 + 45, parse(text % 3))  # the server restarted: a counter reset counts from 0
    assert window.increase("headwater_events_rejected_total", 60, {"endpoint": "track"}) == {
        (("endpoint", "track"),): 23.0
    }
    window.add(T0 + 200, parse(text % 3))
    window.add(T0 + 210, parse(text % 3))
    assert cond.evaluate(ctx) == []
    total = MetricCondition(
        AlertRule.model_validate({"name": "lag", "metric": "headwater_consumer_lag", "op": ">=", "threshold": 7})
    )
    window.add(T0 + 220, parse('headwater_consumer_lag{group="lake"} 4\nheadwater_consumer_lag{group="p"} 3\n'))
    found = total.evaluate(ctx)
    assert found is not None and found[0].value == 7.0


def test_model_and_check_failures_from_catalog_rows(tmp_path: Path, receiver: Receiver) -> None:
    """Rows written with the models and checks code's own tables (headwater_model_runs, headwater_check_results)."""
    ev = evaluator(tmp_path, receiver, builtins=("model_failed", "check_failed"), alert_for_s=0)
    ev.tick(T0)  # tables missing: nothing
    assert receiver.bodies == []
    runs = RunStore(ev.engine)
    create_tables(ev.engine, CHECKS_METADATA)
    day = datetime(2027, 1, 15, 8)

    def run(model: str, status: str, error: str | None = None) -> None:
        runs.record({"model": model, "trigger": "schedule", "started_at": day, "finished_at": day, "status": status,
                     "duration_s": 0.1, "error": error})  # fmt: skip

    def check(status: str, failing: int) -> None:
        with ev.engine.begin() as conn:
            conn.execute(sa.insert(RESULTS).values(
                run_id="r", check="ids_unique", table="daily", kind="unique", severity="error", status=status,
                failing=failing, detail="{}", started_at=day, duration_s=0.1,
            ))  # fmt: skip

    run("daily", "ok")
    run("daily", "failed", "Binder Error: column x")
    run("weekly", "failed", "boom")
    run("weekly", "ok")
    check("fail", 3)
    ev.tick(T0 + 15)
    fired = {b["alert"]: b for b in receiver.bodies if b["state"] == "firing"}
    assert fired["model_failed"]["labels"] == {"model": "daily"} and "Binder Error" in fired["model_failed"]["summary"]
    assert fired["check_failed"]["labels"] == {"check": "ids_unique", "table": "daily"}
    assert fired["check_failed"]["severity"] == "critical" and fired["check_failed"]["value"] == 3
    assert len(receiver.bodies) == 2
    run("daily", "ok")
    check("pass", 0)
    ev.tick(T0 + 30)
    assert receiver.states("model_failed") == ["firing", "resolved"]
    assert receiver.states("check_failed") == ["firing", "resolved"]


def test_store_reads_for_the_api(tmp_path: Path, receiver: Receiver) -> None:
    ev = evaluator(tmp_path, receiver, Switch("x", on=[{}], for_s=60))
    ev.tick(T0)
    store = AlertStore(ev.engine)
    assert [(a["rule"], a["state"]) for a in store.current()] == [("x", "pending")]
    made = store.add_silence("*", {}, T0, T0 + 60, "maintenance", "admin", T0)
    assert store.delete_silence(made["id"]) and not store.delete_silence(made["id"])


def test_history_pruned_and_stale_processor_groups(tmp_path: Path, receiver: Receiver) -> None:
    switch = Switch("x", on=[{}])
    ev = evaluator(tmp_path, receiver, switch)
    ev.tick(T0)
    switch.on = []
    ev.tick(T0 + 15)
    assert len(ev.store.history()) == 2
    ev.tick(T0 + 91 * 86400)  # 90 days later: forgotten
    assert ev.store.history() == []
    manifest = ev.settings.processors_dir / "shop" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"run_id": "2"}')
    assert stale_group(ev.settings, "processor.shop.1")
    assert not stale_group(ev.settings, "processor.shop.2") and not stale_group(ev.settings, "lake")
    assert not stale_group(ev.settings, "processor.other.1")  # no manifest: cannot tell, counted


def test_conditions_given_by_code_need_unique_valid_names(tmp_path: Path, receiver: Receiver) -> None:
    for extra in ([Switch("disk")], [Switch("Bad Name")], [Switch("a"), Switch("a")]):
        with pytest.raises(AlertError, match="must be unique"):
            evaluator(tmp_path, receiver, *extra)
    rule = {"name": "lake_lag", "metric": "headwater_consumer_lag", "threshold": 1}
    ev = evaluator(tmp_path, receiver, builtins=("lake_lag",), alert_rules=[rule])  # a user rule named as a built-in
    assert [c.name for c in ev.conditions()[0]] == ["lake_lag"] and ev.conditions()[0][0].kind == "builtin"
