"""Trend alerts end to end: rules created through /api/trend-alerts on saved trends of a real `headwater up`,
events injected over HTTP, a real local webhook receiver.

Most tests start `up` with alerts_enabled=false and call `AlertEvaluator.tick(now)` themselves, with the source the
ops worker uses (runtime/ops.py `trend_alerts`), `now` running ahead of the wall clock to move past intervals; the
last one lets the running platform's ops loop evaluate the rule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater.alerts import AlertEvaluator
from headwater.lake.coordination import open_engine
from headwater.runtime.ops import trend_alerts
from tests.helpers import RunningHeadwater, child_env, make_keys, make_settings
from tests.unit.test_alerts import OPENED, Receiver, receiving

HOUR = 3600.0


@pytest.fixture(name="receiver")
def _receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


@contextlib.contextmanager
def up(data_dir: Path, **settings: Any) -> Iterator[RunningHeadwater]:
    data_dir.mkdir(exist_ok=True)
    keys = make_keys(data_dir)
    local = {"alerts_enabled": "false", "webhook_allowed_hosts": '["127.0.0.1"]'}  # the receiver is local
    env = child_env(data_dir, flush_interval_ms=200, **{**local, **settings})
    running = RunningHeadwater(data_dir, env, keys=keys)
    try:
        yield running.start()
    finally:
        if running.proc is not None:
            running.stop()


def api(running: RunningHeadwater, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {running.keys['admin']}"}
    return httpx.request(method, running.url + path, json=body, headers=headers, timeout=60)


def save_trend(running: RunningHeadwater, event: str, **extra: Any) -> int:
    query = {"kind": "trend", "series": [{"event": event}], "interval": "hour",
             "date_from": "2026-01-01T00:00:00Z", "date_to": "2026-01-08T00:00:00Z", **extra}  # fmt: skip
    answer = api(running, "POST", "/api/saved-insights", {"name": f"{event} per hour", "query": query})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def create(running: RunningHeadwater, **rule: Any) -> dict[str, Any]:
    answer = api(running, "POST", "/api/trend-alerts", rule)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def track(running: RunningHeadwater, rows: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(r) for r in rows)
    assert running.post("/track", body, running.keys["write"]).status_code == 200


def evaluator(data_dir: Path, allowed: tuple[str, ...] = ("127.0.0.1",)) -> AlertEvaluator:
    settings = make_settings(data_dir, port=0, webhook_allowed_hosts=list(allowed))
    OPENED.append(AlertEvaluator(settings, open_engine(settings.effective_catalog_uri), [trend_alerts(settings)]))
    return OPENED[-1]


def bodies(receiver: Receiver, rule: str) -> list[tuple[str, dict[str, str]]]:
    return [(b["state"], b["labels"]) for b in receiver.bodies if b["alert"] == rule]


def test_rules_are_validated_with_the_field_named(tmp_path: Path) -> None:
    with up(tmp_path / "d") as running:
        trend = save_trend(running, "Checkout")
        funnel = api(running, "POST", "/api/saved-insights", {"name": "f", "query": {
            "kind": "funnel", "steps": [{"event": "A"}, {"event": "B"}], "date_from": "2026-01-01T00:00:00Z",
            "date_to": "2026-01-02T00:00:00Z"}}).json()["id"]  # fmt: skip
        good = {"name": "many checkouts", "insight_id": trend, "threshold": 5}
        wrong = [
            ({"insight_id": trend, "threshold": 5}, "name: Field required"),
            ({**good, "threshold": None}, "threshold: required in threshold mode"),
            ({**good, "op": "above"}, "op: one of >, >=, <, <= in threshold mode"),
            ({**good, "mode": "anomaly", "op": ">"}, "op: one of outside, above, below in anomaly mode"),
            ({**good, "insight_id": 999}, "insight_id: no saved insight 999"),
            ({**good, "insight_id": funnel}, f"insight_id: saved insight {funnel} is a funnel, not a trend"),
            ({**good, "series": 2}, "series: the trend has 1 series (0 to 0)"),
            ({**good, "breakdown": "pro"}, "breakdown: the trend has no breakdown"),
            ({**good, "webhook": "ftp://example.com/x"}, "webhook: an http:// or https:// URL"),
            ({**good, "interval": "minute"}, "interval: Input should be"),
            ({**good, "severity": "loud"}, "severity: Input should be"),
            ({**good, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ]
        for body, message in wrong:
            answer = api(running, "POST", "/api/trend-alerts", body)
            assert answer.status_code == 400, (body, answer.text)
            assert message in answer.json()["error"], (message, answer.json()["error"])
        assert api(running, "POST", "/api/trend-alerts", [1]).status_code == 400
        made = create(running, **good)
        assert made["mode"] == "threshold" and made["op"] == ">" and made["interval"] is None
        rule = f"/api/trend-alerts/{made['id']}"
        assert api(running, "PUT", rule, {**good, "threshold": -1, "name": "x"}).status_code == 200
        assert api(running, "GET", rule).json()["name"] == "x"
        assert api(running, "PUT", "/api/trend-alerts/77", good).status_code == 404
        api(running, "PUT", rule, {**good, "webhook": "https://hooks.example.com/T0KEN"})
        analyst = {"Authorization": f"Bearer {running.keys['read']}"}  # a read key: an analyst, not an admin
        read = httpx.get(running.url + rule, headers=analyst, timeout=30)
        assert read.status_code == 200 and read.json()["state"] == "ok" and read.json()["webhook"] is True
        assert api(running, "GET", rule).json()["webhook"] == "https://hooks.example.com/T0KEN"
        kept = httpx.put(running.url + rule, json={**good, "name": "y"}, headers=analyst, timeout=30)  # no webhook
        assert kept.status_code == 200 and kept.json()["webhook"] is True  # the kept URL is not shown to them
        assert api(running, "GET", rule).json()["webhook"] == "https://hooks.example.com/T0KEN"
        refused = httpx.post(running.url + "/api/trend-alerts", json=good, timeout=30,
                             headers={"Authorization": f"Bearer {running.keys['write']}"})  # fmt: skip
        assert refused.status_code == 403
        assert api(running, "DELETE", rule).json() == {"deleted": made["id"]}
        assert api(running, "GET", rule).status_code == 404


def test_threshold_fires_once_then_resolves_with_history_and_a_log_line(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "d"
    with up(data_dir) as running:
        trend = save_trend(running, "Checkout")
        by_plan = save_trend(running, "Checkout", breakdown="plan")
        total = create(running, name="many checkouts", insight_id=trend, threshold=5, webhook=receiver.url)
        lines = create(running, name="plans", insight_id=by_plan, threshold=2, webhook=receiver.url)
        free = create(running, name="free plan", insight_id=by_plan, breakdown="free", threshold=2,
                      webhook=receiver.url, interval="day")  # fmt: skip
        rules = [f"trend.{r['id']}" for r in (total, lines, free)]
        ev = evaluator(data_dir)
        first = ev.tick(time.time())
        assert not [name for name in first["errors"] if name.startswith("trend.")] and first["rules"] >= 3
        assert [f for f in first["firing"] if f.startswith("trend.")] == [] and receiver.bodies == []
        dry = api(running, "POST", f"/api/trend-alerts/{total['id']}/evaluate").json()
        assert dry["would_fire"] is False and dry["lines"][0]["value"] == 0.0

        rows = [{"event": "Checkout", "userId": f"u{i}", "plan": "pro" if i < 5 else "free"} for i in range(7)]
        track(running, rows)
        running.wait_rows("SELECT count(*) FROM events WHERE event = 'Checkout'", [[7]])
        now = time.time()
        with caplog.at_level(logging.WARNING, logger="headwater.alerts"):
            fired = ev.tick(now)
        firing = sorted(f for f in fired["firing"] if f.startswith("trend."))
        assert firing == [rules[0], f"{rules[1]}{{breakdown=pro}}"]
        assert any(f"alert {rules[0]} firing: many checkouts: 7 in the hour from" in m for m in caplog.messages)
        assert bodies(receiver, rules[0]) == [("firing", {})]
        assert bodies(receiver, rules[1]) == [("firing", {"breakdown": "pro"})]
        assert bodies(receiver, rules[2]) == []  # free: 2 checkouts, not more than 2
        body = next(b for b in receiver.bodies if b["alert"] == rules[0])
        assert body["value"] == 7 and body["severity"] == "warning" and "(in progress), > 5" in body["summary"]
        assert body["dashboard_url"].endswith(f"/#/alerts?insight={trend}")
        found = api(running, "GET", f"/api/trend-alerts?insight={trend}").json()["trend_alerts"]
        listed = {r["rule"]: r for r in found}
        assert list(listed) == [rules[0]] and listed[rules[0]]["state"] == "firing"
        assert listed[rules[0]]["webhook"] == receiver.url  # an admin sees the URL
        dry = api(running, "POST", f"/api/trend-alerts/{total['id']}/evaluate").json()
        assert dry["would_fire"] is True and dry["lines"][0]["in_progress"] is True and "FROM events" in dry["sql"]

        for later in (now + 61, now + 125, now + 190):  # still true on later evaluations: nothing more is sent
            assert ev.tick(later)["transitions"] == []
        assert len(receiver.bodies) == 2

        # two hours on: the hour judged is empty, both resolve (the day rule of the free plan never fired)
        resolved = ev.tick(now + 2 * HOUR)
        assert sorted(t["rule"] for t in resolved["transitions"]) == rules[:2]
        assert bodies(receiver, rules[0]) == [("firing", {}), ("resolved", {})]
        assert bodies(receiver, rules[1]) == [("firing", {"breakdown": "pro"}), ("resolved", {"breakdown": "pro"})]
        assert ev.tick(now + 2 * HOUR + 61)["transitions"] == [] and len(receiver.bodies) == 4

        history = api(running, "GET", f"/api/alerts/history?rule={rules[0]}").json()["history"]
        assert [(h["state"], h["delivery"]) for h in history] == [("resolved", "delivered"), ("firing", "delivered")]
        assert api(running, "GET", f"/api/trend-alerts/{total['id']}").json()["state"] == "ok"
        # a disabled rule leaves the evaluator's rules
        api(running, "PUT", f"/api/trend-alerts/{free['id']}", {**free_spec(free), "enabled": False})
        assert rules[2] not in {c.name for c in ev.conditions()[0]}


def test_webhooks_to_internal_addresses_are_refused(tmp_path: Path, receiver: Receiver) -> None:
    """An analyst cannot aim the ops worker at internal services: refused when saved unless the operator allowed
    the host (by host:port or network), and again at delivery when the setting no longer allows it."""
    data_dir = tmp_path / "d"
    allowed = json.dumps([receiver.url.split("/")[2], "10.9.0.0/16"])
    with up(data_dir, webhook_allowed_hosts=allowed) as running:
        trend = save_trend(running, "Checkout")
        analyst = {"Authorization": f"Bearer {running.keys['read']}"}
        good = {"name": "n", "insight_id": trend, "threshold": 0}
        refused = [
            ("http://127.0.0.1:9/other-port", "127.0.0.1"), ("http://169.254.169.254/latest/", "169.254.169.254"),
            ("http://localhost:9/x", "localhost (127.0.0.1)"), ("https://10.1.2.3/hook", "10.1.2.3"),
            ("http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1 (10.0.0.1)"), ("http://[::1]/", "::1"),
            ("http://2130706433/", "2130706433 (127.0.0.1)"),  # 127.0.0.1 written as one number
        ]  # fmt: skip
        for url, shown in refused:
            answer = httpx.post(running.url + "/api/trend-alerts", json={**good, "webhook": url}, headers=analyst,
                                timeout=30)  # fmt: skip
            assert answer.status_code == 400, (url, answer.text)
            error = answer.json()["error"]
            assert error.startswith(f"webhook: {shown} is not a public address") and "webhook_allowed_hosts" in error
        rule = create(running, **{**good, "webhook": receiver.url})
        for url in ("http://10.9.8.7/allowed-net", "https://hooks.example.com/x"):  # allowed; not resolvable here
            made = create(running, **{**good, "webhook": url})
            assert api(running, "GET", f"/api/trend-alerts/{made['id']}").json()["webhook"] == url
            api(running, "DELETE", f"/api/trend-alerts/{made['id']}")
        moved = api(running, "PUT", f"/api/trend-alerts/{rule['id']}", {**good, "webhook": "http://127.0.0.1:9/"})
        assert moved.status_code == 400 and moved.json()["error"].startswith("webhook: 127.0.0.1 is not a public")

        # delivered by an evaluator whose setting no longer allows the receiver: refused, recorded, retried later
        track(running, [{"event": "Checkout", "userId": "u1"}])
        running.wait_rows("SELECT count(*) FROM events", [[1]])
        name = f"trend.{rule['id']}"
        assert name in evaluator(data_dir, allowed=()).tick(time.time())["firing"]
        assert bodies(receiver, name) == []
        (entry,) = api(running, "GET", f"/api/alerts/history?rule={name}").json()["history"]
        outcome = entry["deliveries"][receiver.url]
        assert entry["delivery"] == "pending" and outcome["ok"] is False
        assert outcome["error"].startswith("refused: webhook: 127.0.0.1 is not a public address"), outcome


def free_spec(rule: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "insight_id", "series", "breakdown", "mode", "op", "threshold", "interval", "webhook", "severity")
    return {k: rule[k] for k in keep}


def test_anomaly_fires_when_the_hour_leaves_its_band(tmp_path: Path, receiver: Receiver) -> None:
    """Three sign-ups in this hour of the week for four weeks, then thirty: above the band (3 ± 3·√3)."""
    data_dir = tmp_path / "d"
    with up(data_dir) as running:
        trend = save_trend(running, "Signed Up")
        rule = create(running, name="signup surge", insight_id=trend, mode="anomaly", webhook=receiver.url)
        now = datetime.now(UTC)
        past = [{"event": "Signed Up", "userId": f"w{k}-{i}", "timestamp": (now - timedelta(weeks=k)).isoformat()}
                for k in range(1, 5) for i in range(3)]  # fmt: skip
        track(running, past)
        running.wait_rows("SELECT count(*) FROM events", [[12]])
        ev = evaluator(data_dir)
        # nothing this hour yet: zero is what its band expects (an anomaly rule then waits a minute: `at` is later)
        assert ev.tick(now.timestamp() - 120)["transitions"] == []
        track(running, [{"event": "Signed Up", "userId": f"n{i}", "timestamp": now.isoformat()} for i in range(30)])
        running.wait_rows("SELECT count(*) FROM events", [[42]])
        dry = api(running, "POST", f"/api/trend-alerts/{rule['id']}/evaluate").json()
        (line,) = dry["lines"]
        assert dry["would_fire"] and line["value"] == 30
        assert (line["expected"], line["low"]) == (3, 0) and line["high"] == pytest.approx(3 + 3 * 3**0.5)
        at = time.time()
        assert [t["state"] for t in ev.tick(at)["transitions"]] == ["firing"]
        (body,) = receiver.bodies
        assert body["alert"] == f"trend.{rule['id']}" and "outside its expected band 0 to 8.196" in body["summary"]
        assert ev.tick(at + 2 * HOUR)["transitions"][0]["state"] == "resolved"
        assert [b["state"] for b in receiver.bodies] == ["firing", "resolved"]


def test_the_running_platform_evaluates_trend_alerts(tmp_path: Path, receiver: Receiver) -> None:
    """`up` with alerting on: its ops worker evaluates the rule and notifies once."""
    with up(tmp_path / "d", alerts_enabled="true", alert_interval_s=1) as running:
        trend = save_trend(running, "Refund")
        track(running, [{"event": "Refund", "userId": f"u{i}"} for i in range(4)])
        running.wait_rows("SELECT count(*) FROM events", [[4]])
        rule = create(running, name="refunds", insight_id=trend, op=">=", threshold=3, webhook=receiver.url)
        name = f"trend.{rule['id']}"
        deadline = time.monotonic() + 120
        while not bodies(receiver, name) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert bodies(receiver, name) == [("firing", {})], running.log_text()
        seen = api(running, "GET", "/api/alerts").json()
        evaluated = {r["name"]: r["evaluated_at"] for r in seen["rules"]}[name]
        while time.monotonic() < deadline:  # a few more evaluations of the ops loop: no second notification
            if api(running, "GET", "/api/alerts").json()["evaluator"]["evaluated_at"] > evaluated + 3:
                break
            time.sleep(0.2)
        assert bodies(receiver, name) == [("firing", {})]
        assert api(running, "GET", f"/api/trend-alerts/{rule['id']}").json()["state"] == "firing"
        assert f"alert {name} firing" in (tmp_path / "d" / "up.log").read_text()
