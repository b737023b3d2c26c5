"""Personal data and consent at the collector, before an event reaches the durable log.

The collector calls an `IngestTransform` on each parsed request (`Collector.transform`). For the track events of
a source whose active plan declares personal properties (`x-personal` in the event's schema), each such
property is, as declared:
- `hash`: replaced by the HMAC-SHA256 of its value (its JSON text when not a string) keyed with the
  deployment's salt (`privacy_salt`, else the one generated in the catalog's database: the same salt as the
  privacy deletions'), as 64 hex digits: equal values still join, the value itself is never stored;
- `mask`: replaced by a string of the same shape: `j***@e***.com` for an e-mail address, `***1234` (the last 4
  digits) for a number or a string of mostly digits (phone, card), else `***`;
- `drop`: removed.
Paths are the plan's (`address.email`, `items[].email` for every element of an array).

Consent (settings `consent_field`, a dotted path in the event to an object of category -> true/false, e.g.
`context.consent.categoryPreferences`): a property the plan ties to a category (`x-consent`) is removed when
the event sets that category to false; with `consent_required`, an event that sets that category to false is
dropped (counted, and answered as accepted: the sender must not retry it). Events without the consent object
are kept whole.

Only the events that change are re-serialised; a request whose source has no such rules costs one dictionary
lookup. Events quarantined at the collector (invalid ones) are stored as sent.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from headwater.core.erasure import deployment_salt
from headwater.core.events import RAW_TRACK
from headwater.core.settings import Settings
from headwater.plan.active import ActivePlans, plan_ref
from headwater.plan.model import Plan

if TYPE_CHECKING:
    from headwater.collector.parsing import ParsedBatch

_EMAIL = re.compile(r"^([^@\s])[^@\s]*@([^@.\s])[^@\s]*?(\.[^@.\s]+)?$")
_DIGITS = re.compile(r"\d")


def hash_value(value: Any, salt: str) -> str:
    """HMAC-SHA256 of a value (a string as it is, anything else as its JSON text), hex."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return hmac.new(salt.encode(), text.encode(), hashlib.sha256).hexdigest()


def mask_value(value: Any) -> str:
    """A masked copy that keeps the shape: `j***@e***.com`, `***1234`, else `***`."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    found = _EMAIL.match(text)
    if found is not None:
        return f"{found.group(1)}***@{found.group(2)}***{found.group(3) or ''}"
    digits = _DIGITS.findall(text)
    if len(digits) >= 4 and len(digits) * 2 >= len(text.replace(" ", "")):
        return "***" + "".join(digits[-4:])
    return "***"


@dataclass
class _Rules:
    """What to do to one event's properties: (path, action) pairs; action hash | mask | drop | consent:C."""

    actions: list[tuple[tuple[str, ...], str]] = field(default_factory=list)


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def compile_rules(plan: Plan) -> dict[str, _Rules]:
    """event name -> its rules (events without personal or consent-tagged properties are left out)."""
    out: dict[str, _Rules] = {}
    for name, spec in plan.events.items():
        rules = _Rules()
        for prop in spec.properties:
            if prop.personal is not None:
                rules.actions.append((_segments(prop.path), prop.personal))
            if prop.consent is not None:
                rules.actions.append((_segments(prop.path), f"consent:{prop.consent}"))
        if rules.actions:
            out[name] = rules
    return out


class IngestTransform:
    """`transform(parsed, source) -> events dropped`, for `Collector.transform` (see the module docstring)."""

    def __init__(self, plans: ActivePlans, settings: Settings, salt: str) -> None:
        self.plans = plans
        self.salt = salt
        self.consent_field = _segments(settings.consent_field) if settings.consent_field else None
        self.consent_required = settings.consent_required if self.consent_field else None
        self._consent_key = self.consent_field[-1].encode() if self.consent_field else None
        self._rules: dict[str, dict[str, _Rules]] = {}
        self.dropped: collections.Counter[str] = collections.Counter()  # source -> events dropped (no consent)
        self.changed = 0

    @classmethod
    def open(cls, engine: sa.Engine, settings: Settings) -> IngestTransform:
        """The transform of a deployment: its plans (catalog database `engine`) and its salt."""
        return cls(ActivePlans.from_engine(engine, settings.plan_refresh_s), settings,
                   deployment_salt(engine, settings.privacy_salt))  # fmt: skip

    def rules_for(self, source: str) -> dict[str, _Rules]:
        plan = self.plans.for_source(source)
        if plan is None:
            return {}
        ref = plan_ref(plan)
        rules = self._rules.get(ref)
        if rules is None:
            if len(self._rules) > 16:
                self._rules.clear()
            rules = self._rules[ref] = compile_rules(plan)
        return rules

    def __call__(self, parsed: ParsedBatch, source: str) -> int:
        rules = self.rules_for(source)
        if not rules and self.consent_required is None:
            return 0
        names = [orjson.dumps(name) for name in rules]
        keep: list[bool] = []
        for index, (key, value) in enumerate(parsed.records):
            if (
                not any(name in value for name in names)
                and (self._consent_key is None or self._consent_key not in value)
                and b"\\" not in value  # a name or key may be spelled with escapes (`\u00e9`, `\/`): parse to be sure
            ):
                keep.append(True)
                continue  # neither a planned event with rules nor a consent object: as sent
            envelope = orjson.loads(value)
            verdict = self._apply(envelope["e"], envelope["m"].get("ep"), rules)
            keep.append(verdict is not None)
            if verdict:
                parsed.records[index] = (key, orjson.dumps(envelope))
                self.changed += 1
        dropped = keep.count(False)
        if dropped:
            parsed.records = [r for r, k in zip(parsed.records, keep, strict=True) if k]
            parsed.idempotency = [i for i, k in zip(parsed.idempotency, keep, strict=True) if k]
            self.dropped[source] += dropped
        return dropped

    def _apply(self, event: Any, endpoint: Any, rules: dict[str, _Rules]) -> bool | None:
        """Apply the rules to one event in place: None to drop it, else whether it changed."""
        if not isinstance(event, dict):
            return False
        consent = self._consent(event)
        if self.consent_required is not None and consent.get(self.consent_required) is False:
            return None
        if endpoint == RAW_TRACK:
            props: Any = event
        elif event.get("type", endpoint) == "track":
            props = event.get("properties")
        else:
            return False
        name = event.get("event")
        spec = rules.get(name) if isinstance(name, str) else None
        if spec is None or not isinstance(props, dict):
            return False
        changed = False
        for path, action in spec.actions:
            if action.startswith("consent:"):
                if consent.get(action[8:]) is False:
                    changed |= _edit(props, path, "drop", self.salt)
            else:
                changed |= _edit(props, path, action, self.salt)
        return changed

    def _consent(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.consent_field is None:
            return {}
        node: Any = event
        for part in self.consent_field:
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}


def _edit(node: Any, path: Iterable[str], action: str, salt: str) -> bool:
    """Apply `action` at `path` under `node` (a `name[]` segment: every element of that array)."""
    parts = list(path)
    if not parts or not isinstance(node, dict):
        return False
    head, rest = parts[0], parts[1:]
    if head.endswith("[]"):
        items = node.get(head[:-2])
        if not isinstance(items, list):
            return False
        if not rest:
            return False
        return any([_edit(item, rest, action, salt) for item in items])
    if head not in node:
        return False
    if rest:
        return _edit(node[head], rest, action, salt)
    value = node[head]
    if action == "drop":
        del node[head]
        return True
    if value is None:
        return False
    node[head] = hash_value(value, salt) if action == "hash" else mask_value(value)
    return True


def personal_properties(plans: Iterable[Plan]) -> list[str]:
    """Top-level properties the plans declare personal (kept hashed or masked, or dropped): listed for privacy
    deletions beside `privacy_personal_properties` (a deletion removes the values its people had)."""
    return sorted({p.path for plan in plans for e in plan.events.values() for p in e.properties
                   if p.personal is not None and "." not in p.path and "[]" not in p.path})  # fmt: skip


def active_personal_properties(engine: sa.Engine) -> list[str]:
    """personal_properties() of the plans active now (for any source)."""
    from headwater.plan.store import PlanStore

    return personal_properties(PlanStore(engine).active_plans().values())
