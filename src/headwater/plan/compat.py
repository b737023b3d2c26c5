"""Differences between two plan versions and SchemaVer compatibility (as Snowplow's Iglu).

A version is MODEL-REVISION-ADDITION. Each change between two versions has a class:

- ADDITION: compatible with every event the old version accepted and with data stored under it: a new event, a
  new optional property, a changed description or personal-data rule (`x-personal`, `x-consent`).
- REVISION: the new version accepts everything the old one did, but the rules loosened: a type widened
  (integer → number, a type added), an enum widened or removed, a property no longer required, a bound or
  pattern relaxed or removed, `additionalProperties: false` lifted; and a change of enforcement mode.
- MODEL (breaking): events valid before may now be invalid, or stored data no longer fits: an event or
  property removed, a property retyped, a new required property, an enum narrowed, a bound tightened, a
  pattern or format added or changed, `additionalProperties: false` added, any other keyword changed.

`check_version(old, new, changes)` says which version the new plan needs: a MODEL change needs the next MODEL
(`2-0-0` after `1-4-2`), a REVISION the next REVISION, an ADDITION the next ADDITION (or any later version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headwater.plan.load import PLAN_FILE, VERSION, Problem, types_of
from headwater.plan.model import Plan

ADDITION, REVISION, MODEL = "ADDITION", "REVISION", "MODEL"
LEVELS = {ADDITION: 1, REVISION: 2, MODEL: 3}
ANNOTATIONS = ("title", "description", "$comment", "examples", "default", "deprecated", "x-personal", "x-consent")
LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
HANDLED = frozenset({
    "type", "enum", "const", "properties", "required", "items", "additionalProperties", "pattern", "format",
    "x-enforcement", *ANNOTATIONS, *LOWER_BOUNDS, *UPPER_BOUNDS,
})  # fmt: skip


@dataclass(frozen=True)
class Change:
    """One difference: its SchemaVer class, the event (None: the plan itself), the JSON path in the event's
    schema (as violations name them: `$.properties.revenue`), and what changed."""

    level: str
    event: str | None
    path: str
    change: str

    def public(self) -> dict[str, Any]:
        return {"level": self.level, "event": self.event, "path": self.path, "change": self.change}

    def where(self) -> str:
        if self.event is None:
            return "plan"
        return f'event "{self.event}"' + (f" {self.path}" if self.path != "$" else "")

    def text(self) -> str:
        return f"{self.level:<8} {self.where()}: {self.change}"


def parse_version(text: str) -> tuple[int, int, int]:
    """`"1-2-0"` → (1, 2, 0); ValueError otherwise."""
    if not VERSION.match(text or ""):
        raise ValueError(f"{text!r} is not a SchemaVer version MODEL-REVISION-ADDITION such as 1-0-0")
    model, revision, addition = (int(x) for x in text.split("-"))
    return model, revision, addition


def format_version(parts: tuple[int, int, int]) -> str:
    return "-".join(str(p) for p in parts)


def bump(version: str, level: str) -> str:
    """The smallest version after `version` that a change of class `level` allows."""
    model, revision, addition = parse_version(version)
    if level == MODEL:
        return format_version((model + 1, 0, 0))
    if level == REVISION:
        return format_version((model, revision + 1, 0))
    return format_version((model, revision, addition + 1))


def top_level(changes: list[Change]) -> str | None:
    """The highest class among `changes` (None when there are none)."""
    return max((c.level for c in changes), key=LEVELS.__getitem__, default=None)


def check_version(old: Plan, new: Plan, changes: list[Change]) -> str | None:
    """Why `new`'s version does not fit its changes from `old` (None when it does)."""
    level = top_level(changes)
    if level is None:
        return None
    needed = bump(old.version, level)
    if parse_version(new.version) >= parse_version(needed):
        return None
    first = next(c for c in changes if c.level == level)
    kind = {MODEL: "a breaking (MODEL) change", REVISION: "a REVISION", ADDITION: "an ADDITION"}[level]
    same = " and the content differs" if new.version == old.version else ""
    return (
        f"{new.name} {new.version} has {kind} from {old.version}{same}: {first.where()}: {first.change}; "
        f"use version {needed} or later"
    )


def diff(old: Plan, new: Plan) -> list[Change]:
    """Every change from `old` to `new`, plan settings first, then events by name."""
    out: list[Change] = []
    for name, level in (("enforcement", REVISION), ("unplanned", REVISION), ("naming", ADDITION),
                        ("description", ADDITION), ("name", MODEL)):  # fmt: skip
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out.append(Change(level, None, "$", f"{name}: {before!r} → {after!r}"))
    for event in sorted(old.events.keys() | new.events.keys()):
        if event not in new.events:
            out.append(Change(MODEL, event, "$", "event removed"))
        elif event not in old.events:
            out.append(Change(ADDITION, event, "$", "event added"))
        else:
            a, b = old.events[event], new.events[event]
            if a.mode != b.mode:
                out.append(Change(REVISION, event, "$", f"enforcement: {a.mode or 'plan default'} → "
                                  f"{b.mode or 'plan default'}"))  # fmt: skip
            out += _schema(event, "$", a.schema, b.schema)
    return out


def _schema(event: str, path: str, a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    """Changes between two resolved schemas at `path`."""
    out: list[Change] = []

    def add(level: str, text: str, where: str = path) -> None:
        out.append(Change(level, event, where, text))

    old_types, new_types = set(types_of(a)), set(types_of(b))
    if ("type" in a or "type" in b) and old_types != new_types:
        widened = not new_types or (bool(old_types) and _widens(old_types, new_types))
        level = REVISION if widened else MODEL
        add(level, f"type: {_types(old_types)} → {_types(new_types)}" + (" (widened)" if widened else ""))
    _values(add, "enum", a.get("enum"), b.get("enum"))
    if a.get("const", _MISSING) != b.get("const", _MISSING):
        if "const" not in b:
            add(REVISION, "const removed")
        else:
            add(MODEL, f"const: {a.get('const', '(none)')!r} → {b['const']!r}")
    for key in LOWER_BOUNDS + UPPER_BOUNDS:
        before, after = a.get(key), b.get(key)
        if before == after:
            continue
        if after is None:
            add(REVISION, f"{key} {before!r} removed")
        elif before is None:
            add(MODEL, f"{key} {after!r} added")
        else:
            tighter = after > before if key in LOWER_BOUNDS else after < before
            add(MODEL if tighter else REVISION, f"{key}: {before!r} → {after!r}")
    for key in ("pattern", "format"):
        before, after = a.get(key), b.get(key)
        if before != after:
            if after is None:
                add(REVISION, f"{key} {before!r} removed")
            else:
                add(MODEL, f"{key}: {before!r} → {after!r}" if before is not None else f"{key} {after!r} added")
    for key in ANNOTATIONS:
        if a.get(key) != b.get(key) and key != "title":
            add(ADDITION, f"{key}: {_short(a.get(key))} → {_short(b.get(key))}")
    out += _properties(event, path, a, b)
    out += _additional(event, path, a.get("additionalProperties", True), b.get("additionalProperties", True))
    items_a, items_b = a.get("items"), b.get("items")
    if isinstance(items_a, dict) and isinstance(items_b, dict):
        out += _schema(event, f"{path}[*]", items_a, items_b)
    elif items_a != items_b:
        add(REVISION if items_b is None else MODEL, f"items: {_short(items_a)} → {_short(items_b)}", f"{path}[*]")
    for key in sorted((a.keys() | b.keys()) - HANDLED):
        if a.get(key) != b.get(key):
            add(MODEL, f"{key} changed (cannot tell whether it is compatible): {_short(a.get(key))} → "
                f"{_short(b.get(key))}")  # fmt: skip
    return out


_MISSING = object()


def _properties(event: str, path: str, a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    out: list[Change] = []
    props_a, props_b = a.get("properties") or {}, b.get("properties") or {}
    req_a, req_b = set(a.get("required") or []), set(b.get("required") or [])
    for name in sorted(props_a.keys() | props_b.keys() | req_a | req_b):
        where = f"{path}.properties.{name}" if path == "$" else f"{path}.{name}"
        if name in props_a and name not in props_b:
            out.append(Change(MODEL, event, where, "property removed"))
            continue
        if name in props_b and name not in props_a:
            if name in req_b:
                out.append(Change(MODEL, event, where, "required property added"))
            else:
                out.append(Change(ADDITION, event, where, "optional property added"))
            continue
        if name in req_b and name not in req_a:
            out.append(Change(MODEL, event, where, "now required"))
        elif name in req_a and name not in req_b:
            out.append(Change(REVISION, event, where, "no longer required"))
        sub_a, sub_b = props_a.get(name), props_b.get(name)
        if isinstance(sub_a, dict) and isinstance(sub_b, dict):
            out += _schema(event, where, sub_a, sub_b)
    return out


def _additional(event: str, path: str, a: Any, b: Any) -> list[Change]:
    if a == b:
        return []
    if b is True or b == {}:
        return [Change(REVISION, event, path, "additionalProperties: false lifted")]
    if b is False:
        return [Change(MODEL, event, path, "additionalProperties: false (undeclared properties now invalid)")]
    return [Change(MODEL, event, path, f"additionalProperties: {_short(a)} → {_short(b)}")]


def _values(add: Any, key: str, before: Any, after: Any) -> None:
    if before == after:
        return
    if after is None:
        add(REVISION, f"{key} removed")
    elif before is None:
        add(MODEL, f"{key} added: {_short(after)}")
    else:
        old, new = _keys(before), _keys(after)
        removed = [v for v in before if _key(v) not in new]
        added = [v for v in after if _key(v) not in old]
        if removed:
            add(MODEL, f"{key} narrowed: {_short(removed)} removed" + (f", {_short(added)} added" if added else ""))
        elif added:
            add(REVISION, f"{key} widened: {_short(added)} added")


def _key(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _keys(values: Any) -> set[str]:
    return {_key(v) for v in values} if isinstance(values, list) else set()


def _widens(old: set[str], new: set[str]) -> bool:
    """True when every value of the old types is valid under the new ones (integer fits number)."""
    return all(t in new or (t == "integer" and "number" in new) for t in old)


def _types(types: set[str]) -> str:
    return "/".join(sorted(types)) if types else "any"


def _short(value: Any, limit: int = 80) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else _key(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def version_problems(old: Plan, new: Plan) -> tuple[list[Change], list[Problem]]:
    """The changes from `old` and, when `new`'s version does not fit them, an error naming the version to use."""
    changes = diff(old, new)
    reason = check_version(old, new, changes)
    problems = [Problem("error", "version", reason, PLAN_FILE, path="$.version")] if reason else []
    return changes, problems
