"""The Klarna decision store example (examples/klarna): unit tests on the TestDriver against a plain-Python
reference, and one end-to-end run on a real `headwater up` with the processor, a replay included (slow)."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest

from headwater.log import open_log
from headwater.processing import TestDriver, days, hours
from headwater.processing.runtime import Manifest
from tests.helpers import ROOT, RunningHeadwater, child_env, make_keys, make_settings, read_stream

EXAMPLE = ROOT / "examples" / "klarna"
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WINDOW_DAYS = 3


def load(name: str) -> ModuleType:
    """An example script as a module (examples are not a package)."""
    module_name = f"klarna_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


decisions = load("decisions")
generate = load("generate")
consumer = load("consumer")


# -- the reference, in plain Python --------------------------------------------------------------------


def rates() -> dict[str, float]:
    with (EXAMPLE / "fx_rates.csv").open() as f:
        return {row["currency"]: float(row["eur_per_unit"]) for row in csv.DictReader(f)}


RATES = rates()


def ms(value: str) -> int:
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def valid(call: dict[str, Any]) -> bool:
    props = call["properties"]
    texts = all(isinstance(props.get(k), str) and props[k] for k in ("decision_id", "customer_id", "model_version"))
    amount = props.get("amount")
    return (
        texts
        and type(amount) in (int, float)
        and amount > 0
        and props.get("currency") in RATES
        and props.get("outcome") in ("approve", "deny", "review")
        and call["userId"] == props["customer_id"]
    )


def expected_output(call: dict[str, Any]) -> dict[str, Any]:
    props = call["properties"]
    amount_eur = round(props["amount"] * RATES[props["currency"]], 2)
    band = "low" if amount_eur < 100 else "medium" if amount_eur < 1000 else "high"
    return {
        "decision_id": props["decision_id"], "customer_id": props["customer_id"], "amount": float(props["amount"]),
        "currency": props["currency"], "outcome": props["outcome"], "model_version": props["model_version"],
        "merchant_id": props.get("merchant_id"), "decided_at": call["timestamp"], "event_id": props["decision_id"],
        "fx_rate": RATES[props["currency"]], "amount_eur": amount_eur, "risk_band": band,
    }  # fmt: skip


def as_event(call: dict[str, Any]) -> dict[str, Any]:
    """A collector call as processors see it on the `events` stream (see processing.records)."""
    return {
        "event_id": call["messageId"], "type": "track", "event": call["event"], "user_id": call["userId"],
        "anonymous_id": None, "timestamp": call["timestamp"], "received_at": call["timestamp"], "source": "test",
        "properties": call["properties"], "context": None, "traits": None,
    }  # fmt: skip


def feed(driver: TestDriver, calls: list[dict[str, Any]]) -> None:
    for call in calls:
        driver.send(as_event(call), key=call["userId"], timestamp=call["timestamp"])


def call(decision_id: str = "d-1", customer: str = "cust-1", ts: int = BASE_MS, **props: Any) -> dict[str, Any]:
    base = {"decision_id": decision_id, "customer_id": customer, "amount": 120.0, "currency": "SEK",
            "outcome": "approve", "model_version": "credit-2025.1"}  # fmt: skip
    base.update(props)
    message_id = decision_id if decision_id is not ... else "m-1"
    return {"type": "track", "event": "risk_decision", "userId": customer, "messageId": message_id,
            "timestamp": decisions.iso(ts), "properties": {k: v for k, v in base.items() if v is not ...}}  # fmt: skip


def driver(window_days: float = WINDOW_DAYS) -> TestDriver:
    return TestDriver(decisions.build_pipeline(window_days=window_days))


# -- unit tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount": ...}, "invalid decision d-1: amount: required"),
        ({"amount": "120"}, "amount: expected a positive number, got '120'"),
        ({"amount": True}, "amount: expected a positive number, got True"),
        ({"amount": -5}, "amount: expected a positive number, got -5"),
        ({"outcome": "maybe"}, "outcome: expected one of approve, deny, review, got 'maybe'"),
        ({"currency": "sek"}, "currency: expected an ISO 4217 code such as 'SEK', got 'sek'"),
        ({"currency": "XTS"}, "invalid decision d-1: currency: no FX rate for 'XTS'"),
        ({"model_version": 7}, "model_version: expected a non-empty string, got 7"),
        ({"decision_id": ...}, "invalid decision (no decision_id): decision_id: required"),
        ({"customer_id": "cust-2"}, "customer_id: 'cust-2' differs from the event's userId 'cust-1'"),
        ({"amount": ..., "outcome": "no"}, "amount: required; outcome: expected one of approve, deny, review"),
    ],
)
def test_an_invalid_decision_is_dead_lettered_with_its_reason(change: dict[str, Any], reason: str) -> None:
    d = driver()
    bad = call(**change)
    bad["userId"] = "cust-1"
    feed(d, [bad, call("d-2")])
    errors = d.errors()
    assert len(errors) == 1
    assert errors[0]["reason"].startswith("ValueError: invalid decision")
    assert reason in errors[0]["reason"]
    assert errors[0]["value"] == as_event(bad)
    assert errors[0]["processor"] == "klarna-decisions"
    assert errors[0]["event_time"] == BASE_MS
    assert [o["decision_id"] for o in d.values("klarna-decisions")] == ["d-2"]  # the next one flows on
    assert [o["decision_id"] for o in d.table("klarna_decisions")] == ["d-2"]
    assert [x["decision_id"] for x in d.state("klarna_customer_decisions", "cust-1")["decisions"]] == ["d-2"]


@pytest.mark.parametrize(
    ("currency", "amount", "amount_eur", "band"),
    [
        ("SEK", 1000, 87.0, "low"),
        ("EUR", 99.99, 99.99, "low"),
        ("EUR", 100, 100.0, "medium"),
        ("USD", 250.5, 230.46, "medium"),
        ("GBP", 900, 1053.0, "high"),
    ],
)
def test_enrichment_adds_the_amount_in_eur_and_a_risk_band(
    currency: str, amount: float, amount_eur: float, band: str
) -> None:
    d = driver()
    feed(d, [call(currency=currency, amount=amount, merchant_id="m-7")])
    [out] = d.outputs("klarna-decisions")
    assert out["key"] == "cust-1"
    assert out["timestamp"] == BASE_MS
    value = out["value"]
    assert (value["fx_rate"], value["amount_eur"], value["risk_band"]) == (RATES[currency], amount_eur, band)
    assert value["merchant_id"] == "m-7"
    assert d.table("klarna_decisions") == [value]


def test_generated_decisions_match_the_reference() -> None:
    calls = generate.make_decisions(600, seed=3, invalid=0.15, customers=40, start_ms=BASE_MS, step_ms=997)
    d = driver()
    feed(d, calls)
    good = [c for c in calls if valid(c)]
    bad = [c for c in calls if not valid(c)]
    assert 40 < len(bad) < 150  # the generator's share of broken decisions
    assert d.values("klarna-decisions") == [expected_output(c) for c in good]
    assert d.table("klarna_decisions") == [expected_output(c) for c in good]
    assert [o["key"] for o in d.outputs("klarna-decisions")] == [c["userId"] for c in good]
    assert [e["value"]["properties"] for e in d.errors()] == [c["properties"] for c in bad]
    assert all(e["reason"].startswith("ValueError: invalid decision ") for e in d.errors())


def reference_store(calls: list[dict[str, Any]], window_ms: int) -> Callable[[int], dict[str, dict[str, int]]]:
    """Feeds decisions in order; returns a function: number of records seen -> {customer: {decision: t}}."""
    stream_time = -(1 << 62)
    remembered: dict[str, dict[str, int]] = {}
    snapshots: list[dict[str, dict[str, int]]] = []
    for c in calls:
        t = ms(c["timestamp"])
        stream_time = max(stream_time, t)
        if valid(c) and t > stream_time - window_ms:  # older than the window on arrival: not remembered
            remembered.setdefault(c["userId"], {})[c["properties"]["decision_id"]] = t
        cutoff = stream_time - window_ms  # trimmed on the next decision or by the timer: at stream time
        view = {cust: {i: x for i, x in kept.items() if x > cutoff} for cust, kept in remembered.items()}
        snapshots.append({cust: kept for cust, kept in view.items() if kept})
    return lambda n: snapshots[n - 1]


def test_the_customer_store_holds_the_decisions_of_the_last_n_days() -> None:
    rng = random.Random(11)
    window = days(WINDOW_DAYS)
    calls = generate.make_decisions(500, seed=5, invalid=0.05, customers=12, start_ms=BASE_MS, step_ms=hours(0.5))
    for c in calls:  # out of order: up to 4 days late, so some are beyond the window when they arrive
        c["timestamp"] = decisions.iso(ms(c["timestamp"]) - int(rng.random() ** 4 * days(4)))
    reference = reference_store(calls, window)
    by_id = {c["properties"]["decision_id"]: c for c in calls}
    d = driver()
    for n, c in enumerate(calls, start=1):
        feed(d, [c])
        if n % 20 and n != len(calls):
            continue
        expected = reference(n)
        state = d.state("klarna_customer_decisions")
        assert {cust: {x["decision_id"] for x in view["decisions"]} for cust, view in state.items()} == {
            cust: set(kept) for cust, kept in expected.items()
        }, f"after {n} decisions"
        for cust, view in state.items():
            outputs = [expected_output(by_id[x["decision_id"]]) for x in view["decisions"]]
            assert view["customer_id"] == cust
            assert view["window_days"] == WINDOW_DAYS
            assert view["count"] == len(outputs)
            assert [ms(x["decided_at"]) for x in view["decisions"]] == sorted(expected[cust].values(), reverse=True)
            assert view["total_eur"] == pytest.approx(sum(o["amount_eur"] for o in outputs), abs=0.02)
            for outcome in ("approve", "deny", "review"):
                assert view["outcomes"][outcome] == sum(o["outcome"] == outcome for o in outputs)
            assert view["decisions"][0]["amount_eur"] == outputs[0]["amount_eur"]
    assert len(d.state("klarna_customer_decisions")) >= 10
    last = max(ms(c["timestamp"]) for c in calls)
    d.advance_time(last + window - 1)  # no decision arrives: timers trim the store as time passes
    left = d.state("klarna_customer_decisions")
    assert [[ms(x["decided_at"]) for x in view["decisions"]] for view in left.values()] == [[last]]
    d.advance_time(last + window)
    assert d.state("klarna_customer_decisions") == {}


def test_the_generator_dry_run_prints_decisions() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE / "generate.py"), "--dry-run", "--seconds", "0.35", "--rate", "100",
         "--invalid", "0.5", "--history-days", "2"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    calls = [orjson.loads(line) for line in out.splitlines()]
    assert len(calls) >= 6000 + 30  # a minute of history at --rate, then the live part
    assert {c["event"] for c in calls} == {"risk_decision"}
    assert all(c["userId"] and c["messageId"] == c["properties"].get("decision_id", c["messageId"]) for c in calls)
    assert 0.3 < sum(not valid(c) for c in calls) / len(calls) < 0.7


# -- end to end: `headwater up` with the processor -------------------------------------------------------


def wait_for(check: Callable[[], tuple[bool, Any]], what: str, hw: RunningHeadwater, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        ok, seen = check()
        if ok:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s; last seen {seen!r:.600}\n{hw.log_text()}")
        time.sleep(0.25)


def wait_rows(hw: RunningHeadwater, sql: str, expected: list[list[Any]], timeout: float = 120) -> None:
    """Like hw.wait_rows, but a table the processor has not created yet is only "not yet"."""

    def check() -> tuple[bool, Any]:
        response = httpx.post(
            f"{hw.url}/api/query", json={"sql": sql}, headers={"Authorization": f"Bearer {hw.keys['read']}"}, timeout=60
        )
        if response.status_code != 200:
            return False, response.text
        return response.json()["rows"] == expected, response.json()["rows"]

    wait_for(check, sql, hw, timeout)


def state_get(hw: RunningHeadwater, table: str, key: str) -> Any:
    """A served state table's value over HTTP (None when the key is not there)."""
    response = httpx.get(
        f"{hw.url}/api/state/{table}/{key}", headers={"Authorization": f"Bearer {hw.keys['read']}"}, timeout=10
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["value"]


def stream_outputs(data_dir: Path, stream: str) -> list[dict[str, Any]]:
    """Every record of an output stream ({"k", "v", "t", "id"}), read straight from the log."""
    return read_stream(open_log(make_settings(data_dir)), stream)


def e2e_decisions(now: int) -> list[dict[str, Any]]:
    """Decisions of 25 customers over the last 60 days, out of order, about 10 % invalid; then one
    recent decision per customer, so that stream time on every partition ends near `now`."""
    rng = random.Random(21)
    customers = generate.customer_ids(25)
    calls = []
    for i in range(300):
        age = days(rng.uniform(45, 60)) if rng.random() < 0.25 else days(rng.uniform(1, 20))
        defect = rng.choice(generate.DEFECTS) if rng.random() < 0.1 else None
        calls.append(generate.decision_call(rng, f"e2e-{i:05d}", rng.choice(customers), now - age, defect))
    rng.shuffle(calls)
    for i, customer in enumerate(customers):
        calls.append(generate.decision_call(rng, f"e2e-last-{i:03d}", customer, now - 60_000, None))
    return calls


@pytest.mark.slow
def test_klarna_example_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    spec = f"{EXAMPLE / 'decisions.py'}:pipeline"
    env = child_env(data_dir, flush_interval_ms=200, processors=json.dumps([spec]), processor_checkpoint_ms=100)
    hw = RunningHeadwater(data_dir, env, keys=keys).start()
    try:
        now = int(time.time() * 1000)
        calls = e2e_decisions(now)
        with httpx.Client(timeout=30) as client:
            assert generate.send(client, hw.url, keys["write"], calls) == len(calls)  # acknowledged: durable
        good = [c for c in calls if valid(c)]
        bad = [c for c in calls if not valid(c)]
        assert len(bad) > 10

        # the variable store: per customer, the valid decisions of the last 30 days
        window = days(decisions.WINDOW_DAYS)

        def remembered(since: int) -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for c in good:
                if ms(c["timestamp"]) > now - 60_000 - window and ms(c["timestamp"]) >= since:
                    out.setdefault(c["userId"], set()).add(c["properties"]["decision_id"])
            return out

        def store_matches(expected: dict[str, set[str]]) -> tuple[bool, Any]:
            seen = {}
            for customer in generate.customer_ids(25):
                view = state_get(hw, "klarna_customer_decisions", customer)
                seen[customer] = {x["decision_id"] for x in view["decisions"]} if view else set()
            return seen == {c: expected.get(c, set()) for c in seen}, seen

        wait_for(lambda: store_matches(remembered(0)), "the customer store", hw)
        view = state_get(hw, "klarna_customer_decisions", "cust-00003")
        by_id = {c["properties"]["decision_id"]: expected_output(c) for c in good}
        assert view["count"] == len(view["decisions"])
        assert [x["amount_eur"] for x in view["decisions"]] == [
            by_id[x["decision_id"]]["amount_eur"] for x in view["decisions"]
        ]
        assert httpx.get(f"{hw.url}/api/state/klarna_customer_decisions/cust-00003", timeout=10).status_code == 401

        # the archive and the dead letters, in SQL
        wait_rows(
            hw,
            "SELECT count(*), count(DISTINCT decision_id) FROM klarna_decisions",
            [[len(good), len(good)]],
            timeout=60,
        )
        rows = hw.sql("SELECT decision_id, customer_id, amount_eur, risk_band, outcome FROM klarna_decisions")
        assert sorted(rows) == sorted(
            [o["decision_id"], o["customer_id"], o["amount_eur"], o["risk_band"], o["outcome"]] for o in by_id.values()
        )
        wait_rows(
            hw,
            "SELECT count(*) FROM processor_errors WHERE processor = 'klarna-decisions' "
            "AND reason LIKE 'ValueError: invalid decision %'",
            [[len(bad)]],
            timeout=60,
        )

        # a downstream consumer reads the output stream, then loses the last 10 days
        out = tmp_path / "downstream.jsonl"
        downstream = [sys.executable, str(EXAMPLE / "consumer.py"), "--data-dir", str(data_dir), "--out", str(out)]
        subprocess.run([*downstream, "--idle", "2"], env=child_env(data_dir), check=True, timeout=120)
        assert consumer.known_ids(out) == set(by_id)
        lost_from = now - days(10)
        kept = [line for line in out.read_bytes().splitlines() if ms(orjson.loads(line)["decided_at"]) < lost_from]
        out.write_bytes(b"".join(line + b"\n" for line in kept))
        lost = {i for i in by_id if ms(by_id[i]["decided_at"]) >= lost_from}
        assert lost and consumer.known_ids(out) == set(by_id) - lost

        # replay from that time: a new run re-emits those decisions into the output stream
        manifest = Manifest(make_settings(data_dir).processors_dir, "klarna-decisions")

        def current_run() -> str:
            return str((manifest.read() or {}).get("run"))

        first_run = current_run()
        replay = ["process", "--replay", "klarna-decisions", "--from", decisions.iso(lost_from)]
        subprocess.run(
            [sys.executable, "-m", "headwater.cli.main", *replay, "--data-dir", str(data_dir)],
            env=child_env(data_dir), check=True, timeout=60,
        )  # fmt: skip
        second_run = wait_for(lambda: ((run := current_run()) != first_run, run), "a new run", hw)

        def replayed() -> tuple[bool, Any]:
            ids = sorted(r["v"]["decision_id"] for r in stream_outputs(data_dir, "klarna-decisions")
                         if r["id"].split("/")[1] == second_run)  # fmt: skip
            return ids == sorted(lost), ids

        wait_for(replayed, "the replayed decisions in the output stream", hw)
        subprocess.run([*downstream, "--idle", "2"], env=child_env(data_dir), check=True, timeout=120)
        assert consumer.known_ids(out) == set(by_id)  # the consumer has every decision again, once
        assert len(out.read_bytes().splitlines()) == len(by_id)

        # the new run started from fresh state: its store holds what it replayed; the archive got it again
        wait_for(lambda: store_matches(remembered(lost_from)), "the customer store after the replay", hw)
        wait_rows(
            hw,
            "SELECT count(*), count(DISTINCT decision_id) FROM klarna_decisions",
            [[len(good) + len(lost), len(good)]],
            timeout=60,
        )
    finally:
        hw.stop()
