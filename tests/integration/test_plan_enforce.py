"""Tracking plan enforcement end to end over HTTP on a real `headwater up`: each mode (allow, warn, quarantine,
drop-properties, unplanned events), personal data hashed / masked / dropped and consent at the collector,
violations in the live view, and replay from quarantine after a plan fix landing exactly once."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from headwater.core.erasure import deployment_salt, open_board
from tests.helpers import RunningHeadwater, child_env, make_keys, serving

PROPS: dict[str, dict[str, Any]] = {
    "revenue": {"type": "number", "minimum": 0},
    "currency": {"type": "string", "enum": ["EUR", "USD"]},
}
EVENTS: dict[str, dict[str, Any]] = {
    "Thing Allowed": {"x-enforcement": "allow"},
    "Thing Warned": {"x-enforcement": "warn"},
    "Thing Quarantined": {"x-enforcement": "quarantine"},
    "Thing Trimmed": {"x-enforcement": "drop-properties"},
}
SIGNED_UP = {
    "title": "Signed Up",
    "type": "object",
    "properties": {
        "email": {"type": "string", "format": "email", "x-personal": "hash"},
        "phone": {"type": "string", "x-personal": "mask"},
        "name": {"type": "string", "x-personal": "drop"},
        "utm": {"type": "string", "x-consent": "marketing"},
        "method": {"type": "string"},
    },
}


def plan_files(version: str, revenue_type: Any = "number") -> dict[str, str]:
    files = {"plan.json": json.dumps({"name": "shop", "version": version, "enforcement": "warn", "unplanned": "warn"}),
             "events/signed_up.json": json.dumps(SIGNED_UP)}  # fmt: skip
    for name, extra in EVENTS.items():
        props = {**PROPS, "revenue": {**PROPS["revenue"], "type": revenue_type}}
        schema = {"title": name, "type": "object", "properties": props, "required": ["revenue"], **extra}
        files[f"events/{name.lower().replace(' ', '_')}.json"] = json.dumps(schema)
    return files


@pytest.fixture(scope="module")
def hw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("plan-enforce")
    keys = make_keys(data_dir)
    env = child_env(data_dir, flush_interval_ms=200, plan_refresh_s=0.2, consent_field="context.consent",
                    consent_required="analytics")  # fmt: skip
    with serving(RunningHeadwater(data_dir, env, keys=keys)) as running:
        answer = call(running, "POST", "/api/plans", {"files": plan_files("1-0-0"), "activate": "*"})
        assert answer.status_code == 201, answer.text
        time.sleep(0.5)  # the collector and the writer re-read the active plans every 0.2 s
        yield running


def call(hw: RunningHeadwater, method: str, path: str, body: Any = None, role: str = "admin") -> httpx.Response:
    headers = {"Authorization": f"Bearer {hw.keys[role]}"}
    return httpx.request(method, hw.url + path, json=body, headers=headers, timeout=60)


def track(hw: RunningHeadwater, *events: dict[str, Any]) -> dict[str, Any]:
    answer = hw.post("/track", b"\n".join(orjson.dumps(e) for e in events), hw.keys["write"])
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def wait_for(
    hw: RunningHeadwater, sql: str, check: Callable[[list[list[Any]]], bool], timeout: float = 30
) -> list[list[Any]]:
    deadline = time.monotonic() + timeout
    rows: Any = None
    while time.monotonic() < deadline:
        try:
            rows = hw.sql(sql)
        except AssertionError as exc:  # e.g. the plan's columns are not in the lake before its first batch
            rows = str(exc)
        else:
            if check(rows):
                return list(rows)
        time.sleep(0.2)
    raise AssertionError(f"{sql!r} gave {rows!r}")


def test_each_mode(hw: RunningHeadwater) -> None:
    track(
        hw,
        {"event": "Thing Allowed", "userId": "m1", "revenue": "5", "currency": "EUR"},
        {"event": "Thing Warned", "userId": "m2", "revenue": -1},
        {"event": "Thing Warned", "userId": "m3", "revenue": 1, "currency": "EUR"},
        {"event": "Thing Quarantined", "userId": "m4", "revenue": "x", "currency": "GBP"},
        {"event": "Thing Quarantined", "userId": "m5", "revenue": 2},
        {"event": "Thing Trimmed", "userId": "m6", "revenue": 3, "coupon": "SUMMER", "debug": {"a": 1}},
        {"event": "Thing Trimmed", "userId": "m7", "currency": "USD", "extra": 1},
        {"event": "Thing Unknown", "userId": "m8", "a": 1},
    )
    sql = ("SELECT user_id, event, plan_version, plan_violations, properties FROM events "
           "WHERE user_id LIKE 'm%' ORDER BY user_id")  # fmt: skip
    rows = {r[0]: r[1:] for r in wait_for(hw, sql, lambda rows: len(rows) == 7)}
    assert set(rows) == {"m1", "m2", "m3", "m5", "m6", "m7", "m8"}  # m4 went to quarantine
    assert {r[1] for r in rows.values()} == {"shop@1-0-0"}
    flags = {user: [(v["path"], v["rule"]) for v in json.loads(r[2])] if r[2] else None for user, r in rows.items()}
    assert flags == {
        "m1": [("$.properties.revenue", "type")],
        "m2": [("$.properties.revenue", "minimum")],
        "m3": None,
        "m5": None,
        "m6": None,
        "m7": [("$.properties.revenue", "required")],
        "m8": [("$.event", "unplanned")],
    }
    assert json.loads(rows["m6"][3]) == {"revenue": 3}  # drop-properties removed what the plan does not declare
    assert json.loads(rows["m7"][3]) == {"currency": "USD"}

    quarantined = wait_for(hw, "SELECT reason, raw FROM quarantine WHERE raw LIKE '%\"m4\"%'", lambda r: len(r) == 1)
    assert quarantined[0][0] == (
        "plan shop@1-0-0: $.properties.revenue: type: expected number, got string; "
        '$.properties.currency: enum: expected one of ["EUR","USD"], got "GBP"'
    )
    assert json.loads(quarantined[0][1])["userId"] == "m4"

    counted = "SELECT event, path, rule, count, expected, got FROM plan_violations ORDER BY event, path, rule"
    counts = wait_for(hw, counted, lambda r: len(r) >= 6)
    by_key = {(r[0], r[1], r[2]): r[3:] for r in counts}
    assert ("Thing Allowed", "$.properties.revenue", "type") not in by_key  # allow: flagged, not counted
    assert by_key[("Thing Warned", "$.properties.revenue", "minimum")] == [1, ">= 0", "-1"]
    assert by_key[("Thing Quarantined", "$.properties.revenue", "type")][0] == 1
    assert by_key[("Thing Trimmed", "$.properties.coupon", "undeclared")][0] == 1
    assert by_key[("Thing Trimmed", "$.properties.revenue", "required")][0] == 1
    assert by_key[("Thing Unknown", "$.event", "unplanned")][0] == 1


def test_personal_data_and_consent(hw: RunningHeadwater) -> None:
    def signed_up(user: str, consent: dict[str, bool], **props: str) -> dict[str, Any]:
        return {"type": "track", "event": "Signed Up", "userId": user, "context": {"consent": consent},
                "properties": props}  # fmt: skip

    calls = [
        signed_up(
            "p1",
            {"analytics": True, "marketing": False},
            email="ann@example.com",
            phone="+33 6 12 34 56 78",
            name="Ann",
            utm="x",
            method="email",
        ),
        signed_up("p2", {"analytics": True, "marketing": True}, email="bob@example.org", utm="y"),
        signed_up("p3", {"analytics": False}, email="eve@example.net"),
    ]
    answer = httpx.post(hw.url + "/v1/batch", json={"batch": calls}, auth=(hw.keys["write"], ""), timeout=30)
    assert answer.status_code == 200 and answer.json()["accepted"] == 3, answer.text
    rows = wait_for(hw, "SELECT user_id, properties FROM events WHERE user_id LIKE 'p%' ORDER BY user_id",
                    lambda r: len(r) == 2)  # fmt: skip
    salt = deployment_salt(open_board(f"sqlite:///{hw.data_dir / 'catalog.db'}"))
    digest = hmac.new(salt.encode(), b"ann@example.com", hashlib.sha256).hexdigest()
    assert json.loads(rows[0][1]) == {"email": digest, "phone": "***5678", "method": "email"}
    assert json.loads(rows[1][1])["utm"] == "y"
    assert "bob@example.org" not in rows[1][1]
    time.sleep(1)  # p3 opted out of analytics: never stored, anywhere
    assert hw.sql("SELECT count(*) FROM events WHERE user_id = 'p3'") == [[0]]
    assert hw.sql("SELECT count(*) FROM quarantine WHERE raw LIKE '%eve@%'") == [[0]]


def test_live_view_shows_violations(hw: RunningHeadwater) -> None:
    track(hw, {"event": "Thing Warned", "userId": "live1", "revenue": "much", "utm": "z"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        page = call(hw, "GET", "/api/live?limit=50", role="read").json()
        found = [r for r in page["events"] if r.get("user_id") == "live1"]
        if found:
            break
        time.sleep(0.2)
    (row,) = found
    assert row["plan_version"] == "shop@1-0-0" and row["plan_mode"] == "warn"
    assert [(v["path"], v["rule"], v["got"]) for v in row["violations"]] == [
        ("$.properties.revenue", "type", "string"),
        ("$.properties.utm", "undeclared", None),
    ]


def replay_cli(hw: RunningHeadwater, *args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "headwater.cli.main", "quarantine", "replay", "--json", *args]
    done = subprocess.run([*command, "--data-dir", str(hw.data_dir)], capture_output=True, text=True, timeout=300,
                          env=hw.env, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_replay_after_the_plan_is_fixed(hw: RunningHeadwater) -> None:
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()  # not the rows of the tests before
    sent = [{"event": "Thing Quarantined", "userId": f"r{i}", "revenue": f"{i}.5"} for i in range(5)]
    sent.append({"event": "Thing Quarantined", "userId": "r-id", "revenue": "7", "messageId": "replay-me"})
    track(hw, *sent)
    wait_for(hw, 'SELECT count(*) FROM quarantine WHERE raw LIKE \'%"userId":"r%\'', lambda r: r == [[6]])
    assert hw.sql("SELECT count(*) FROM events WHERE user_id LIKE 'r%'") == [[0]]
    reason = "plan shop@1-0-0: $.properties.revenue: type"

    dry = replay_cli(hw, "--reason", reason, "--since", since, "--dry-run")
    assert (dry["matched"], dry["replayed"], dry["dry_run"]) == (6, 6, True)
    fixed = plan_files("2-0-0", revenue_type=["number", "string"])
    answer = call(hw, "POST", "/api/plans", {"files": fixed, "activate": "*"})
    assert answer.status_code == 201, answer.text
    time.sleep(0.6)  # re-read by the writer
    first = replay_cli(hw, "--reason", reason, "--since", since, "--yes")
    assert (first["matched"], first["replayed"], first["already"], first["invalid"]) == (6, 6, 0, 0)
    rows = wait_for(hw, "SELECT user_id, event_id, plan_version, plan_violations FROM events WHERE user_id LIKE 'r%' "
                        "ORDER BY user_id", lambda r: len(r) == 6)  # fmt: skip
    assert {r[2] for r in rows} == {"shop@2-0-0"} and {r[3] for r in rows} == {None}
    assert dict((r[0], r[1]) for r in rows)["r-id"] == "replay-me"

    again = call(hw, "POST", "/api/quarantine/replay", {"reason": reason, "since": since})
    assert again.status_code == 200, again.text
    assert (again.json()["replayed"], again.json()["already"]) == (0, 6)
    time.sleep(1.5)
    assert hw.sql("SELECT count(*), count(DISTINCT event_id) FROM events WHERE user_id LIKE 'r%'") == [[6, 6]]
    assert (
        call(hw, "POST", "/api/quarantine/replay", {"reason": reason, "since": since}, role="read").status_code == 403
    )
    other = call(hw, "POST", "/api/quarantine/replay", {"reason": reason, "since": since, "source": "elsewhere"})
    assert other.json()["matched"] == 0

    refused = hw.post("/track", b'{"event": "Thing Quarantined", "revenue": 1}\n', hw.keys["write"])
    assert refused.status_code == 400  # no userId: quarantined by the collector
    wait_for(hw, "SELECT count(*) FROM quarantine WHERE reason LIKE 'userId: required%'", lambda r: r == [[1]])
    invalid = call(hw, "POST", "/api/quarantine/replay", {"reason": "userId: required", "since": "1h"}).json()
    assert (invalid["matched"], invalid["replayed"], invalid["invalid"]) == (1, 0, 1)
    assert invalid["problems"] == {"userId: required (or anonymousId)": 1}
    bad_time = call(hw, "POST", "/api/quarantine/replay", {"reason": "x", "since": "yesterday"})
    assert bad_time.status_code == 400 and "not a time" in bad_time.json()["error"]
    audit = call(hw, "GET", "/api/audit?action=quarantine.replayed").json()
    assert len(audit["rows"]) == 3  # the CLI's and the API's replays of some rows (not the dry run)
