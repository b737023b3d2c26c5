"""The PMU rewards example (examples/pmu): the pipeline against a plain-Python reference, and end to end.

The reference below restates the rules without the processing library: a request is late when
stream time (per log partition, counting the frame) reached its time + 2 s + grace + 1 ms, a
response when it reached its time + grace + 1 ms; a request and a response of a bet that are
not late meet when the response is at most 2 s after the request; a bet settles on its first
match, else times out once stream time passes its request + 2 s + grace; an accepted bet gets a
coupon for every campaign row of its bet type whose dates hold its time and whose minimum stake
it reaches; a cancellation revokes those coupons, or prevents them when it came first.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from headwater.core.events import RAW_MAPPED
from headwater.processing import ReferenceTable, TestDriver
from headwater.processing.joins import _read_file
from headwater.processing.worker import load_pipelines
from tests.helpers import ROOT, RunningHeadwater, child_env, make_keys

EXAMPLE = ROOT / "examples" / "pmu"
T0 = 1_772_323_200_000  # 2026-03-01T00:00:00Z


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"pmu_example_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rewards = _load("rewards")
generate = _load("generate")


def iso(ms: int) -> str:
    return str(generate.iso(ms))


def to_ms(text: str) -> int:
    """Event time as the runtime and the test driver compute it from an ISO timestamp."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def campaigns() -> list[dict[str, Any]]:
    return _read_file(EXAMPLE / "campaigns.csv")


def received(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the log holds: the collector stores a repeated messageId once."""
    seen: set[str] = set()
    out = []
    for line in lines:
        if line["messageId"] not in seen:
            seen.add(line["messageId"])
            out.append({k: v for k, v in line.items() if k != "_send_ms"})
    return out


def as_event(line: dict[str, Any]) -> dict[str, Any]:
    """A /track line as processors see it on the `events` stream."""
    return {
        "event_id": line["messageId"], "type": "track", "event": line["event"], "user_id": None,
        "anonymous_id": line["anonymousId"], "timestamp": line["timestamp"],
        "properties": {k: v for k, v in line.items() if k not in RAW_MAPPED},
    }  # fmt: skip


def feed(driver: TestDriver, lines: list[dict[str, Any]]) -> None:
    for line in lines:
        driver.send(as_event(line), key=line["anonymousId"], timestamp=line["timestamp"])


# -- the reference ----------------------------------------------------------------------------------
@dataclass
class Frame:
    index: int
    partition: int
    ts: int
    now: int  # stream time of its partition, counting this frame
    line: dict[str, Any]


@dataclass
class Expected:
    coupons: dict[str, dict[str, Any]] = field(default_factory=dict)  # coupon id -> coupon
    revocations: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeouts: dict[str, dict[str, Any]] = field(default_factory=dict)  # bet id -> timeout record
    bets: dict[str, dict[str, Any]] = field(default_factory=dict)  # bet id -> pmu_coupons_by_bet value
    accepted: set[str] = field(default_factory=set)
    late: int = 0
    cancelled_first: set[str] = field(default_factory=set)


def _qualifies(bet: dict[str, Any], row: dict[str, Any]) -> bool:
    placed = to_ms(bet["at"])
    return (
        row["bet_type"] == bet["bet_type"]
        and to_ms(row["starts"]) <= placed < to_ms(row["ends"])
        and float(bet["stake"]) >= float(row["min_stake"])
    )


def reference(
    lines: list[dict[str, Any]], rows: list[dict[str, Any]], partitions: int = 1, flushed: bool = True
) -> Expected:
    """Outputs for frames received in this order (`flushed`: event time then moved far ahead)."""
    within, grace = rewards.RESPONSE_WITHIN, rewards.GRACE
    stream_time: dict[int, int] = {}
    frames: dict[str, dict[str, list[Frame]]] = {}
    out = Expected()
    for index, line in enumerate(lines):
        partition = zlib.crc32(line["anonymousId"].encode()) % partitions
        ts = to_ms(line["timestamp"])
        stream_time[partition] = max(stream_time.get(partition, ts), ts)
        frame = Frame(index, partition, ts, stream_time[partition], line)
        kind = line["event"]
        closes = {"bet_request": ts + within + grace + 1, "bet_response": ts + grace + 1}.get(kind)
        if closes is not None and closes <= frame.now:
            out.late += 1  # its side of the join closed already
            continue
        if kind in rewards.FRAMES:
            frames.setdefault(line["bet_id"], {}).setdefault(kind, []).append(frame)
    for bet_id, kinds in frames.items():
        requests, responses = kinds.get("bet_request", []), kinds.get("bet_response", [])
        matches = []
        for r in requests:
            for s in responses:
                if r.ts <= s.ts <= r.ts + within:
                    matches.append((max(r.index, s.index), s.line["status"]))
        if not requests:
            continue
        request = requests[0].line
        bet = {
            "bet_id": bet_id, "terminal": request["terminal"], "bet_type": request["bet_type"],
            "stake": float(request["stake"]), "race": request["race"], "at": request["at"],
        }  # fmt: skip
        if not matches:
            if flushed or any(stream_time[r.partition] >= r.ts + within + grace + 1 for r in requests):
                out.timeouts[bet_id] = {**bet, "outcome": "timeout", "waited_ms": within}
            continue
        settled_at, status = min(matches)
        if status != "accepted":
            continue
        out.accepted.add(bet_id)
        cancels = kinds.get("bet_cancelled", [])
        cancel = cancels[0] if cancels else None
        if cancel is not None and cancel.index < settled_at:
            out.cancelled_first.add(bet_id)
            continue
        given = []
        for row in rows:
            if not _qualifies(bet, row):
                continue
            digest = hashlib.sha256(f"{bet_id}|{row['campaign_id']}".encode()).hexdigest()[:16].upper()
            coupon = {
                "coupon_id": f"CPN-{digest}", "bet_id": bet_id, "campaign_id": row["campaign_id"],
                "terminal": bet["terminal"], "bet_type": bet["bet_type"], "stake": bet["stake"], "race": bet["race"],
                "at": bet["at"], "value": float(row["coupon_value"]),
            }  # fmt: skip
            out.coupons[coupon["coupon_id"]] = coupon
            given.append(coupon)
            if cancel is not None:
                out.revocations[coupon["coupon_id"]] = {
                    "coupon_id": coupon["coupon_id"], "bet_id": bet_id, "campaign_id": row["campaign_id"],
                    "terminal": bet["terminal"], "value": coupon["value"], "reason": "bet cancelled",
                    "cancelled_at": datetime.fromtimestamp(cancel.ts / 1000, tz=UTC).isoformat(),
                }  # fmt: skip
        if given:
            out.bets[bet_id] = {
                "bet_id": bet_id, "terminal": bet["terminal"], "status": "revoked" if cancel else "active",
                "coupons": [{k: c[k] for k in ("coupon_id", "campaign_id", "value")} for c in given],
                "total_value": sum(c["value"] for c in given),
            }  # fmt: skip
    return out


def by_id(values: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    found = {v[name]: v for v in values}
    assert len(found) == len(values), f"repeated {name}"
    return found


# -- unit tests with the test driver ----------------------------------------------------------------
@pytest.mark.parametrize("partitions", [1, 4])
def test_generated_frames_give_exactly_the_reference(partitions: int) -> None:
    lines = received(generate.timeline(seed=42, start_ms=T0, seconds=120, rate=30))
    driver = TestDriver(rewards.build(), partitions=partitions)
    feed(driver, lines)
    flushed = partitions == 4  # 1 partition: what stream time reached; 4: every pending bet timed out
    if flushed:
        driver.advance_time(T0 + 10**9)
    expected = reference(lines, campaigns(), partitions, flushed)

    assert by_id(driver.values("pmu-coupons"), "coupon_id") == expected.coupons
    assert by_id(driver.table("pmu_coupons"), "coupon_id") == expected.coupons
    assert by_id(driver.values("pmu-coupon-revocations"), "coupon_id") == expected.revocations
    assert by_id(driver.table("pmu_coupon_revocations"), "coupon_id") == expected.revocations
    assert by_id(driver.values("pmu-timeouts"), "bet_id") == expected.timeouts
    assert set(by_id(driver.values("pmu-bets"), "bet_id")) == expected.accepted
    assert driver.state("pmu_coupons_by_bet") == expected.bets
    assert len(driver.late()) == expected.late
    assert driver.errors() == []
    # the data exercises every rule
    assert len(expected.revocations) >= 10 and len(expected.timeouts) >= 50 and expected.late >= 10
    assert any(len(bet["coupons"]) == 2 for bet in expected.bets.values())
    assert len(expected.accepted) > len(expected.bets) > 100


def _frame(driver: TestDriver, kind: str, bet_id: str, t: int, terminal: str = "PDV-1001-1", **props: Any) -> None:
    line = {"event": kind, "anonymousId": terminal, "timestamp": iso(t), "messageId": f"{kind}-{bet_id}-{t}"}
    driver.send(as_event({**line, "bet_id": bet_id, "terminal": terminal, **props}), key=terminal, timestamp=t)


def _request(driver: TestDriver, bet_id: str, t: int, bet_type: str = "quinte_plus", stake: float = 2.0) -> None:
    _frame(driver, "bet_request", bet_id, t, bet_type=bet_type, stake=stake, race="R1C1", at=iso(t))


def _response(driver: TestDriver, bet_id: str, t: int, status: str = "accepted") -> None:
    _frame(driver, "bet_response", bet_id, t, status=status)


def _coupons(driver: TestDriver) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for coupon in driver.values("pmu-coupons"):
        out.setdefault(coupon["bet_id"], []).append((coupon["campaign_id"], coupon["value"]))
    return out


def test_each_matching_campaign_row_gives_one_coupon() -> None:
    driver = TestDriver(rewards.build())
    bets = {
        "big-quinte": ("quinte_plus", 20.0, T0), "small-quinte": ("quinte_plus", 2.0, T0),
        "tiny-quinte": ("quinte_plus", 1.5, T0), "couple-5": ("couple", 5.0, T0), "couple-10": ("couple", 10.0, T0),
        "trio-2026": ("trio", 5.0, T0),  # its campaign ran in January 2025
        "arc": ("simple_gagnant", 5.0, to_ms("2026-10-03T15:00:00Z")),
        "arc-small": ("simple_gagnant", 4.5, to_ms("2026-10-03T15:00:00Z")),
        "arc-over": ("simple_gagnant", 5.0, to_ms("2026-10-06T00:00:00Z")),  # ends is exclusive
    }  # fmt: skip
    _request(driver, "refused", T0, stake=50.0)
    _response(driver, "refused", T0 + 100, status="refused")
    for offset, (bet_id, (bet_type, stake, at)) in enumerate(bets.items()):
        t = at + offset * 10
        _frame(driver, "bet_request", bet_id, t, bet_type=bet_type, stake=stake, race="R1C1", at=iso(at))
        _response(driver, bet_id, t + 300)

    assert _coupons(driver) == {
        "big-quinte": [("QUINTE-WELCOME", 3.0), ("QUINTE-HIGH-STAKE", 10.0)],
        "small-quinte": [("QUINTE-WELCOME", 3.0)],
        "couple-10": [("COUPLE-10", 2.0)],
        "arc": [("GAGNANT-ARC-2026", 2.0)],
    }
    ids = [
        f"CPN-{hashlib.sha256(f'big-quinte|{c}'.encode()).hexdigest()[:16].upper()}"
        for c in ("QUINTE-WELCOME", "QUINTE-HIGH-STAKE")
    ]
    assert driver.state("pmu_coupons_by_bet", "big-quinte") == {
        "bet_id": "big-quinte", "terminal": "PDV-1001-1", "status": "active", "total_value": 13.0,
        "coupons": [
            {"coupon_id": ids[0], "campaign_id": "QUINTE-WELCOME", "value": 3.0},
            {"coupon_id": ids[1], "campaign_id": "QUINTE-HIGH-STAKE", "value": 10.0},
        ],
    }  # fmt: skip
    assert driver.state("pmu_coupons_by_bet", "trio-2026") is None
    assert driver.values("pmu-timeouts") == []


def test_a_response_counts_within_two_seconds_and_silence_times_out() -> None:
    driver = TestDriver(rewards.build())
    _request(driver, "on-time", T0)
    _response(driver, "on-time", T0 + 2000)  # exactly 2 s: still in time
    _request(driver, "slow", T0 + 10)
    _response(driver, "slow", T0 + 2011)  # 2.001 s: too late
    _request(driver, "silent", T0 + 20)
    assert set(_coupons(driver)) == {"on-time"}
    wait = rewards.RESPONSE_WITHIN + rewards.GRACE
    driver.advance_time(T0 + 10 + wait)  # the join still waits for answers to "slow"
    assert driver.values("pmu-timeouts") == []
    driver.advance_time(T0 + 10 + wait + 1)
    assert [t["bet_id"] for t in driver.values("pmu-timeouts")] == ["slow"]
    driver.advance_time(T0 + 20 + wait + 1)
    assert [t["bet_id"] for t in driver.values("pmu-timeouts")] == ["slow", "silent"]
    assert driver.values("pmu-timeouts")[1] == {
        "bet_id": "silent", "terminal": "PDV-1001-1", "bet_type": "quinte_plus", "stake": 2.0, "race": "R1C1",
        "at": iso(T0 + 20), "outcome": "timeout", "waited_ms": 2000,
    }  # fmt: skip
    assert driver.table("pmu_timeouts") == driver.values("pmu-timeouts")
    driver.advance_time(T0 + 60_000)
    assert len(driver.values("pmu-timeouts")) == 2  # once each


def test_a_cancellation_revokes_exactly_the_coupons_of_its_bet() -> None:
    driver = TestDriver(rewards.build())
    for bet_id, stake in (("a", 20.0), ("b", 20.0), ("c", 1.0)):
        _request(driver, bet_id, T0, stake=stake)
        _response(driver, bet_id, T0 + 100)
    assert sorted(_coupons(driver)) == ["a", "b"]
    _frame(driver, "bet_cancelled", "a", T0 + 5000)
    _frame(driver, "bet_cancelled", "a", T0 + 5100)  # retransmitted
    _frame(driver, "bet_cancelled", "c", T0 + 5200)  # accepted, but no coupon to revoke
    _frame(driver, "bet_cancelled", "nobody", T0 + 5300)
    revoked = driver.values("pmu-coupon-revocations")
    a_coupons = [c for c in driver.values("pmu-coupons") if c["bet_id"] == "a"]
    assert sorted(r["coupon_id"] for r in revoked) == sorted(c["coupon_id"] for c in a_coupons)
    assert len(revoked) == 2 and {r["bet_id"] for r in revoked} == {"a"}
    assert revoked[0]["cancelled_at"] == datetime.fromtimestamp((T0 + 5000) / 1000, tz=UTC).isoformat()
    assert driver.state("pmu_coupons_by_bet", "a")["status"] == "revoked"
    assert driver.state("pmu_coupons_by_bet", "b")["status"] == "active"
    assert driver.table("pmu_coupon_revocations") == revoked


def test_a_bet_cancelled_before_its_acceptance_gets_nothing() -> None:
    driver = TestDriver(rewards.build())
    _request(driver, "x", T0, stake=20.0)
    _frame(driver, "bet_cancelled", "x", T0 + 100)
    _response(driver, "x", T0 + 400)
    assert driver.values("pmu-coupons") == [] and driver.values("pmu-coupon-revocations") == []
    assert [b["bet_id"] for b in driver.values("pmu-bets")] == ["x"]  # accepted, then nothing to give


def test_retransmitted_frames_settle_a_bet_once() -> None:
    driver = TestDriver(rewards.build())
    _request(driver, "r", T0, stake=20.0)
    _request(driver, "r", T0)
    _response(driver, "r", T0 + 200)
    _response(driver, "r", T0 + 200)
    _request(driver, "r", T0)
    driver.advance_time(T0 + 60_000)
    assert len(driver.values("pmu-bets")) == 1
    assert _coupons(driver) == {"r": [("QUINTE-WELCOME", 3.0), ("QUINTE-HIGH-STAKE", 10.0)]}
    assert driver.values("pmu-timeouts") == []


def test_frames_past_the_join_interval_are_counted_late() -> None:
    driver = TestDriver(rewards.build())
    _request(driver, "now", T0 + 10_000)
    _request(driver, "offline", T0)  # 10 s behind stream time: its interval closed long ago
    _response(driver, "offline", T0 + 100)
    late = driver.late()
    assert [(r["key"], r["value"]["kind"]) for r in late] == [("offline", "bet_request"), ("offline", "bet_response")]
    assert all("join" in r["reason"] for r in late)
    driver.advance_time(T0 + 60_000)
    assert [t["bet_id"] for t in driver.values("pmu-timeouts")] == ["now"]


def test_campaigns_are_rows_of_a_file_reloaded_while_running(tmp_path: Path) -> None:
    path = tmp_path / "campaigns.csv"
    header = "campaign_id,starts,ends,bet_type,min_stake,coupon_value\n"
    path.write_text(header + "TRIO-MARCH,2026-03-01T00:00:00Z,2026-04-01T00:00:00Z,trio,3,2.5\n")
    table = ReferenceTable.from_file("campaigns", path, key="bet_type", many=True, refresh_s=0)
    driver = TestDriver(rewards.build(table))
    _request(driver, "t1", T0, bet_type="trio", stake=3.0)
    _response(driver, "t1", T0 + 50)
    path.write_text(header + "TRIO-MARCH,2026-03-01T00:00:00Z,2026-04-01T00:00:00Z,trio,10,2.5\n")
    table.refresh()  # the runtime does this between records
    _request(driver, "t2", T0 + 100, bet_type="trio", stake=3.0)
    _response(driver, "t2", T0 + 150)
    assert _coupons(driver) == {"t1": [("TRIO-MARCH", 2.5)]}


def test_the_generator_is_deterministic_and_keeps_a_bet_on_its_terminal() -> None:
    one = generate.timeline(seed=3, start_ms=T0, seconds=20, rate=10)
    assert one == generate.timeline(seed=3, start_ms=T0, seconds=20, rate=10)
    assert [f["_send_ms"] for f in one] == sorted(f["_send_ms"] for f in one)
    terminals: dict[str, set[str]] = {}
    for line in one:
        terminals.setdefault(line["bet_id"], set()).add(line["anonymousId"])
        assert line["anonymousId"] == line["terminal"]
    assert all(len(found) == 1 for found in terminals.values())
    assert {line["event"] for line in one} == {"bet_request", "bet_response", "bet_cancelled", "bet_payment"}


def test_the_pipeline_loads_from_its_spec() -> None:
    [pipeline] = load_pipelines(f"{EXAMPLE / 'rewards.py'}:pipeline")
    assert pipeline.name == "pmu-rewards"
    assert pipeline.outputs() == {
        "streams": ["pmu-bets", "pmu-coupons", "pmu-coupon-revocations", "pmu-timeouts"],
        "tables": ["pmu_coupons", "pmu_coupon_revocations", "pmu_timeouts"],
        "state_tables": ["pmu_coupons_by_bet"],
        "sinks": [],
    }


# -- end to end -------------------------------------------------------------------------------------
def _get(hw: RunningHeadwater, path: str) -> httpx.Response:
    return httpx.get(hw.url + path, headers={"Authorization": f"Bearer {hw.keys['read']}"}, timeout=30)


def _served(hw: RunningHeadwater) -> dict[str, Any]:
    response = _get(hw, "/api/state/pmu_coupons_by_bet?limit=1000")
    if response.status_code == 404:  # the processor has not written its state file yet
        return {}
    assert response.status_code == 200, response.text
    return {row["key"]: row["value"] for row in response.json()["rows"]}


def _eventually(probe: Any, expected: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = probe()
        if got == expected:
            return
        time.sleep(0.25)
    assert got == expected


@pytest.mark.slow
def test_end_to_end_on_headwater_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    spec = json.dumps([f"{EXAMPLE / 'rewards.py'}:pipeline"])
    env = child_env(data_dir, flush_interval_ms=200, log_partitions=4, processors=spec)
    table = tmp_path / "campaigns.csv"  # the shipped rules, with the open-ended ones kept open after 2035
    table.write_text((EXAMPLE / "campaigns.csv").read_text().replace("2035-01-01", "2100-01-01"))
    env["PMU_CAMPAIGNS"] = str(table)
    hw = RunningHeadwater(data_dir, env, keys=keys).start()
    try:
        sent = tmp_path / "frames.jsonl"
        command = [sys.executable, str(EXAMPLE / "generate.py"), "--url", hw.url, "--key", keys["write"]]
        command += ["--seconds", "8", "--rate", "30", "--seed", "5", "--out", str(sent), "--quiet"]
        subprocess.run(command, check=True, timeout=180, cwd=tmp_path)
        lines = received([json.loads(line) for line in sent.read_text().splitlines()])
        expected = reference(lines, _read_file(table), partitions=4, flushed=False)
        assert expected.revocations and expected.timeouts and len(expected.bets) >= 20

        # the state table over HTTP, by key and by scan
        _eventually(lambda: _served(hw), expected.bets)
        bet_id, value = next(iter(expected.bets.items()))
        answer = _get(hw, f"/api/state/pmu_coupons_by_bet/{bet_id}")
        assert answer.status_code == 200 and answer.json()["value"] == value
        assert _get(hw, "/api/state/pmu_coupons_by_bet/no-such-bet").status_code == 404

        # the Iceberg tables in SQL, each output once
        coupons = [[c["coupon_id"], c["bet_id"], c["campaign_id"], c["value"]] for c in expected.coupons.values()]
        hw.wait_rows("SELECT coupon_id, bet_id, campaign_id, value FROM pmu_coupons ORDER BY 1", sorted(coupons), 90)
        revoked = sorted([r["coupon_id"], r["bet_id"]] for r in expected.revocations.values())
        hw.wait_rows("SELECT coupon_id, bet_id FROM pmu_coupon_revocations ORDER BY 1", revoked, 60)
        timeouts = sorted([bet] for bet in expected.timeouts)
        hw.wait_rows("SELECT bet_id FROM pmu_timeouts ORDER BY 1", timeouts, 60)
        hw.wait_rows("SELECT count(*) FROM processor_late WHERE processor = 'pmu-rewards'", [[expected.late]], 60)
    finally:
        hw.stop()
