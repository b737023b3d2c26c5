"""Rules as data: a table of rules applied to the stream, changed while running."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from headwater.core.errors import ProcessingError
from headwater.processing import Pipeline, ReferenceTable, TestDriver
from headwater.processing.rules import compile_rule

CAMPAIGNS = (
    "rule_id,event,when,valid_from,valid_to,coupon_value\n"
    'win10,bet,"{""properties.bet_type"": ""win"", ""properties.stake"": {"">="": 10}}",'
    "2026-01-01T00:00:00Z,2026-02-01T00:00:00Z,5\n"
    'any50,bet,"{""properties.stake"": {"">="": 50}}",,,20\n'
)


def _pipeline(path: Path) -> Pipeline:
    pipeline = Pipeline("coupons")
    rules = ReferenceTable.from_file("campaigns", path, key="rule_id", refresh_s=0)
    (
        pipeline.source("events")
        .apply_rules(rules, merge=lambda bet, rule: {"bet": bet["properties"]["id"], "rule": rule["rule_id"]})
        .to_stream("coupons")
    )
    return pipeline


def _bet(bet_id: int, bet_type: str, stake: float) -> dict[str, object]:
    return {"event": "bet", "properties": {"id": bet_id, "bet_type": bet_type, "stake": stake}}


def test_rules_from_a_csv_apply_by_event_condition_and_validity(tmp_path: Path) -> None:
    path = tmp_path / "campaigns.csv"
    path.write_text(CAMPAIGNS)
    driver = TestDriver(_pipeline(path))
    driver.send(_bet(1, "win", 10), key="t1", timestamp="2026-01-05T00:00:00Z")  # win10
    driver.send(_bet(2, "win", 9.99), key="t1", timestamp="2026-01-05T00:00:00Z")  # stake too low
    driver.send(_bet(3, "place", 60), key="t1", timestamp="2026-01-05T00:00:00Z")  # any50
    driver.send(_bet(4, "win", 60), key="t1", timestamp="2026-02-01T00:00:00Z")  # win10 ended: any50 only
    driver.send({"event": "payment", "properties": {"id": 5, "stake": 100}}, key="t1", timestamp=0)
    assert driver.values("coupons") == [
        {"bet": 1, "rule": "win10"}, {"bet": 3, "rule": "any50"}, {"bet": 4, "rule": "any50"},
    ]  # fmt: skip
    # the rules are data: a new row applies to the next record
    path.write_text(CAMPAIGNS + 'place5,bet,"{""properties.bet_type"": {""in"": [""place""]}}",,,1\n')
    driver.send(_bet(6, "place", 5), key="t1", timestamp="2026-01-06T00:00:00Z")
    assert driver.values("coupons")[-1] == {"bet": 6, "rule": "place5"}


def test_rules_as_json_rows_and_operators() -> None:
    rule = {"rule_id": "r", "when": {"properties.tags": {"contains": "vip"}, "user_id": {"exists": True}}}
    holds = compile_rule(rule)
    assert holds({"user_id": "u", "properties": {"tags": ["vip"]}}, 0)
    assert not holds({"user_id": None, "properties": {"tags": ["vip"]}}, 0)
    assert not holds({"user_id": "u", "properties": {"tags": 3}}, 0)  # wrong type: no match, no error
    assert compile_rule({"rule_id": "r", "when": orjson.dumps({"n": {"<": 3}}).decode()})({"n": 2}, 0)


def test_a_malformed_rule_names_the_rule_and_the_problem() -> None:
    with pytest.raises(ProcessingError, match="rule bad: unknown operator '~'"):
        compile_rule({"rule_id": "bad", "when": {"n": {"~": 1}}})
    with pytest.raises(ProcessingError, match="rule worse: 'when' is not JSON"):
        compile_rule({"rule_id": "worse", "when": "{nope"})
