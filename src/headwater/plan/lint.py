"""The tracking plan's linter: conventions and mistakes that a valid JSON Schema can still hold.

Errors fail `headwater plan check` (and refuse a push); warnings are shown (and fail `--strict`):

| rule | level | what |
|---|---|---|
| `event-naming` | error | an event name not in plan.json `naming` (Title Case, snake_case, camelCase, Object Action) |
| `event-naming` | warning | Object Action whose action does not look like a past tense ("Product Viewed") |
| `property-naming` | error / warning | a name not in plan.json `property_naming`; without it: the minority style |
| `unused-definition` | warning | a `$defs` entry no event refers to |
| `description` | warning | an event or property without a description |
| `x-personal` | error | not one of hash, mask, drop (or set on a property the plan cannot reach) |
| `x-consent` | error | not a category name |
| `x-enforcement` | error | not one of allow, warn, quarantine, drop-properties |
| `unsupported` | error | what the ingest validator cannot enforce: a keyword, a format, a pattern RE2 cannot run |
|  |  | (`headwater.plan.validate.unsupported`) |
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from headwater.plan.load import DEFINITIONS_FILE, PERSONAL, PLAN_FILE, Loaded, Problem, json_path
from headwater.plan.model import MODES

# What the validator enforces, for when `headwater.plan.validate` cannot be imported (a subset of its list).
FALLBACK_KEYWORDS = frozenset({
    "type", "required", "enum", "const", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "format", "additionalProperties", "properties", "items", "minItems", "maxItems",
})  # fmt: skip
ANNOTATIONS = frozenset({
    "title", "description", "$comment", "examples", "default", "deprecated", "readOnly", "writeOnly", "$schema",
    "$id", "$anchor",
})  # fmt: skip
NAMING_RULES = {
    "Title Case": re.compile(r"^[A-Z0-9][A-Za-z0-9]*( [A-Z0-9][A-Za-z0-9]*)*$"),
    "snake_case": re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$"),
    "camelCase": re.compile(r"^[a-z][a-z0-9]*([A-Z][a-z0-9]*)*$"),
    "Object Action": re.compile(r"^[A-Z0-9][A-Za-z0-9]*( [A-Z0-9][A-Za-z0-9]*)+$"),
}
EXAMPLES = {
    "Title Case": "Order Completed",
    "snake_case": "order_completed",
    "camelCase": "orderCompleted",
    "Object Action": "Product Viewed",
}
IRREGULAR_PAST = frozenset({
    "begun", "bought", "brought", "built", "chosen", "cut", "done", "drawn", "found", "given", "got", "gotten",
    "held", "hidden", "kept", "left", "lost", "made", "paid", "put", "quit", "read", "run", "seen", "sent", "set",
    "shown", "sold", "spent", "taken", "won", "written",
})  # fmt: skip
PROPERTY_STYLES = {
    "snake_case": re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$"),  # with an underscore: unmistakably snake
    "camelCase": re.compile(r"^[a-z][a-z0-9]*([A-Z][a-z0-9]*)+$"),  # with a capital: unmistakably camel
}
ONE_WORD = re.compile(r"^[a-z][a-z0-9]*$")  # fits either style


Finding = tuple[str, str, str, str | None, str]  # (level, rule, message, event, path) in one event's file


def lint(loaded: Loaded) -> list[Problem]:
    """Every finding of the linter on a loaded plan (the loader's own problems are not repeated)."""
    plan = loaded.plan
    if plan is None:
        return []
    out: list[Problem] = []
    header = loaded.docs.get(PLAN_FILE)
    property_naming = header.get("property_naming") if isinstance(header, dict) else None
    names: list[tuple[str, str, str, str]] = []  # (name, file, event, path) of every property
    for event in plan.events.values():
        file = event.file or ""
        found: list[Finding] = list(_event_name(plan.naming, event.name))
        doc = loaded.docs.get(file)
        mode = doc.get("x-enforcement") if isinstance(doc, dict) else None
        if mode is not None and mode not in MODES:
            found.append(("error", "x-enforcement", f"{mode!r} is not one of {', '.join(MODES)}", event.name,
                          "$.x-enforcement"))  # fmt: skip
        if not event.description:
            found.append(("warning", "description", "the event has no description", event.name, "$"))
        found += _unsupported(event.schema, event.name)
        for path, node, name in _schemas(event.schema, "$"):
            found += _extensions(node, event.name, path)
            if name is not None:
                names.append((name, file, event.name, path))
                if not isinstance(node.get("description"), str) or not node["description"].strip():
                    found.append(("warning", "description", "the property has no description", event.name, path))
        out += [Problem(level, rule, message, file, name, path) for level, rule, message, name, path in found]
    out += _property_names(names, property_naming)
    out += _unused(loaded)
    return out


def _event_name(naming: str | None, name: str) -> list[Finding]:
    if naming is None or naming not in NAMING_RULES:
        return []
    if not NAMING_RULES[naming].match(name):
        words = " with at least two words" if naming == "Object Action" else ""
        message = f"{name!r} is not {naming}{words} (plan.json naming), e.g. {EXAMPLES[naming]!r}"
        return [("error", "event-naming", message, name, "$.title")]
    lowered = [w.lower() for w in name.split(" ")]
    if naming == "Object Action" and not any(w.endswith("ed") or w in IRREGULAR_PAST for w in lowered):
        message = f"{name!r}: the action is usually a past tense, e.g. 'Product Viewed', 'Order Completed'"
        return [("warning", "event-naming", message, name, "$.title")]
    return []


def _schemas(node: dict[str, Any], path: str, name: str | None = None) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """Every subschema of a resolved event schema with its JSON path in the schema (`$.properties.a.items`), and
    the property name when it is one."""
    yield path, node, name
    for key, value in node.items():
        if key in ("properties", "patternProperties", "dependentSchemas") and isinstance(value, dict):
            for prop, sub in value.items():
                if isinstance(sub, dict):
                    yield from _schemas(sub, f"{path}.{key}.{prop}", prop if key == "properties" else None)
        elif key in ("allOf", "anyOf", "oneOf", "prefixItems") and isinstance(value, list):
            for i, sub in enumerate(value):
                if isinstance(sub, dict):
                    yield from _schemas(sub, f"{path}.{key}[{i}]")
        elif key == "items" and isinstance(value, dict):
            yield from _schemas(value, f"{path}.items")
        elif key in SUBSCHEMA_KEYS and isinstance(value, dict):
            yield from _schemas(value, f"{path}.{key}")


SUBSCHEMA_KEYS = frozenset({
    "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else", "unevaluatedItems",
    "unevaluatedProperties",
})  # fmt: skip


def _extensions(node: dict[str, Any], event: str, path: str) -> list[Finding]:
    out: list[Finding] = []
    if "x-personal" in node and node["x-personal"] not in PERSONAL:
        message = f"{node['x-personal']!r} is not one of {', '.join(PERSONAL)}"
        out.append(("error", "x-personal", message, event, f"{path}.x-personal"))
    consent = node.get("x-consent")
    if "x-consent" in node and (not isinstance(consent, str) or not consent.strip()):
        out.append(("error", "x-consent", "a consent category name (a string)", event, f"{path}.x-consent"))
    return out


def _unsupported(schema: dict[str, Any], event: str) -> list[Finding]:
    """What the validator cannot enforce: its own `unsupported()` when it is there, else a keyword check."""
    try:
        from headwater.plan.validate import unsupported
    except ImportError:
        known = ", ".join(sorted(FALLBACK_KEYWORDS))
        return [
            ("error", "unsupported", f"keyword {key!r} is not supported (supported: {known})", event, f"{path}.{key}")
            for path, node, _ in _schemas(schema, "$")
            for key in node
            if not key.startswith("x-") and key not in FALLBACK_KEYWORDS and key not in ANNOTATIONS
        ]  # fmt: skip
    out: list[Finding] = []
    for text in unsupported(schema):
        pointer, _, message = text.partition(": ")
        out.append(("error", "unsupported", f"{message}: it cannot be enforced at ingest", event, _json_path(pointer)))
    return out


def _json_path(pointer: str) -> str:
    """`#/properties/a~1b/format` → `$.properties.a/b.format`."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("#").split("/") if p]
    return json_path(int(p) if p.isdigit() else p for p in parts)


def _property_names(names: list[tuple[str, str, str, str]], declared: str | None) -> list[Problem]:
    out: list[Problem] = []
    if declared in PROPERTY_STYLES:
        for name, file, event, path in names:
            if not (ONE_WORD.match(name) or PROPERTY_STYLES[declared].match(name)):
                message = f"{name!r} is not {declared} (plan.json property_naming)"
                out.append(Problem("error", "property-naming", message, file, event, path))
        return out
    styles = {style: sum(1 for n, *_ in names if rule.match(n)) for style, rule in PROPERTY_STYLES.items()}
    major = max(styles, key=lambda s: styles[s]) if any(styles.values()) else None
    for name, file, event, path in names:
        if ONE_WORD.match(name) or (major is not None and PROPERTY_STYLES[major].match(name)):
            continue
        expected = major or "snake_case or camelCase"
        message = f"{name!r} is not {expected} like most of the plan's properties (plan.json property_naming decides)"
        out.append(Problem("warning", "property-naming", message, file, event, path))
    return out


def _unused(loaded: Loaded) -> list[Problem]:
    """`$defs` entries of definitions.json and of event files that nothing refers to."""
    out: list[Problem] = []
    for file, doc in loaded.docs.items():
        if file == PLAN_FILE or not isinstance(doc, dict) or not isinstance(doc.get("$defs"), dict):
            continue
        for name, sub in doc["$defs"].items():
            if id(sub) not in loaded.used:
                where = "no event" if file == DEFINITIONS_FILE else "nothing in this file"
                message = f"$defs/{name}: {where} refers to it"
                out.append(Problem("warning", "unused-definition", message, file, None, f"$.$defs.{name}"))
    return out


def check_files(files: dict[str, str]) -> Loaded:
    """Load and lint: every problem of the loader and the linter in `Loaded.problems`."""
    from headwater.plan.load import load_files

    loaded = load_files(files)
    loaded.problems += lint(loaded)
    return loaded


def sample_problems(plan: Any, events: Any, labels: list[str]) -> list[Problem]:
    """The plan's validator on sample events: one problem per violation, `file` the sample's label. Violations of
    the schema are errors; `undeclared` properties and, when the plan allows them, `unplanned` events are
    warnings."""
    from headwater.plan.validate import INFORMATIONAL, Validator

    found = Validator(plan).check(events).to_pylist()
    out: list[Problem] = []
    for v in found:
        rule = v["rule"]
        warn = rule in INFORMATIONAL or (rule == "unplanned" and plan.unplanned == "allow")
        message = f"expected {v['expected']}, got {v['got']}"
        out.append(Problem("warning" if warn else "error", rule, message, labels[v["row"]], v["event"], v["path"]))
    return out
