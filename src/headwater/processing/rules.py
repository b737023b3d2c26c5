"""Rules as data: a reference table whose rows are rules, applied to every record.

A rule row (from a CSV/JSON file, an Iceberg table or rows in code) has:
- `rule_id` (the table's key);
- `event` (optional): the event name it applies to;
- `when` (optional): conditions as a JSON object (or its text, as CSV cells hold it), field path ->
  value (equality) or {op: value} with op in = != > >= < <= in not_in contains exists;
  paths are dotted (`properties.stake`);
- `valid_from` / `valid_to` (optional): ISO times or epoch ms, compared with the record's event time
  (valid_to is exclusive);
- anything else (a coupon value, a message) is carried to the output.

`stream.apply_rules(table)` emits merge(value, rule) for every rule that holds — by default
{"record": value, "rule": rule}. Editing the file (or table) changes the rules while running.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from headwater.core.errors import ProcessingError
from headwater.processing.nodes import Node, Push
from headwater.processing.records import to_millis

if TYPE_CHECKING:
    from headwater.processing.task import Task

_MISSING = object()
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a is not None and a > b,
    ">=": lambda a, b: a is not None and a >= b,
    "<": lambda a, b: a is not None and a < b,
    "<=": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
    "contains": lambda a, b: a is not None and b in a,
    "exists": lambda a, b: (a is not None) == bool(b),
}


def field(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _millis(value: Any) -> int | None:
    return None if value in (None, "") else to_millis(value)


def compile_rule(rule: dict[str, Any]) -> Callable[[Any, int], bool]:
    """A predicate (value, event time) for one rule row; a clear error for a malformed one."""
    name = rule.get("rule_id", "?")
    when = rule.get("when") or {}
    if isinstance(when, str):
        try:
            when = json.loads(when)
        except json.JSONDecodeError as exc:
            raise ProcessingError(f"rule {name}: 'when' is not JSON: {exc}") from None
    if not isinstance(when, dict):
        raise ProcessingError(f"rule {name}: 'when' must be an object of field -> condition")
    checks: list[tuple[str, Callable[[Any, Any], bool], Any]] = []
    for path, condition in when.items():
        pairs = condition.items() if isinstance(condition, dict) else [("=", condition)]
        for op, expected in pairs:
            if op not in OPERATORS:
                raise ProcessingError(f"rule {name}: unknown operator {op!r} on {path} (use {', '.join(OPERATORS)})")
            checks.append((path, OPERATORS[op], expected))
    event = rule.get("event") or None
    start, end = _millis(rule.get("valid_from")), _millis(rule.get("valid_to"))

    def holds(value: Any, ts: int) -> bool:
        if event is not None and field(value, "event") != event:
            return False
        if (start is not None and ts < start) or (end is not None and ts >= end):
            return False
        try:
            return all(op(field(value, path), expected) for path, op, expected in checks)
        except TypeError:
            return False  # a field of another type than the rule compares with

    return holds


class RulesNode(Node):
    def __init__(self, table: str, merge: Callable[[Any, Any], Any] | None) -> None:
        self.table, self.merge = table, merge

    def compile(self, task: Task, downstream: Push) -> Push:
        table = task.tables[self.table]
        merge = self.merge or (lambda value, rule: {"record": value, "rule": rule})
        compiled: dict[str, Any] = {"version": -1, "rules": []}

        def rules() -> list[tuple[dict[str, Any], Callable[[Any, int], bool]]]:
            if compiled["version"] != table.version:  # the table was reloaded: compile again
                rows = [row for found in table.rows.values() for row in (found if table.many else [found])]
                compiled["rules"] = [(row, compile_rule(row)) for row in rows]
                compiled["version"] = table.version
            return list(compiled["rules"])

        def push(key: str | None, value: Any, ts: int) -> None:
            for rule, holds in rules():
                if holds(value, ts):
                    downstream(key, merge(value, rule), ts)

        return push
