"""The tracking plan model (contract between the plan's loader, store, validator and enforcement).

A plan directory (in the user's repository):

    plan.json                 {"name": "shop", "version": "1-2-0", "description": "...",
                               "enforcement": "warn", "unplanned": "warn", "naming": "Title Case"}
    definitions.json          {"$defs": {"currency": {"type": "string", "enum": ["EUR", "USD"]}, ...}}   (optional)
    events/<anything>.json    one JSON Schema per event, e.g.
                              {"title": "Order Completed", "description": "...", "x-enforcement": "quarantine",
                               "type": "object", "properties": {"revenue": {"type": "number", "minimum": 0},
                               "currency": {"$ref": "definitions.json#/$defs/currency"},
                               "email": {"type": "string", "format": "email", "x-personal": "hash"}},
                               "required": ["revenue"], "additionalProperties": true}

The schema of an event describes its `properties` object. `x-personal` (hash | mask | drop) declares personal
data; `x-consent` (a category name) ties a property to a consent category. Versions are SchemaVer
MODEL-REVISION-ADDITION (Snowplow Iglu): a breaking change needs a new MODEL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["allow", "warn", "quarantine", "drop-properties"]
MODES: tuple[str, ...] = ("allow", "warn", "quarantine", "drop-properties")
Personal = Literal["hash", "mask", "drop"]


@dataclass(frozen=True)
class PropertySpec:
    """One declared property, flattened for browsing and ingest transforms (`path` is dotted from `properties`)."""

    path: str
    # JSON Schema type names ("string", "number", "integer", "boolean", "object", "array", "null"); () any type
    types: tuple[str, ...]
    required: bool
    description: str | None = None
    personal: Personal | None = None
    consent: str | None = None


@dataclass(frozen=True)
class EventSpec:
    """One planned event."""

    name: str
    schema: dict[str, Any]  # the event's JSON Schema of `properties`, every $ref resolved inline
    description: str | None = None
    mode: Mode | None = None  # `x-enforcement`; None: the plan's default
    file: str | None = None  # the file it came from, relative to the plan directory
    properties: tuple[PropertySpec, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A whole plan version."""

    name: str
    version: str  # SchemaVer "M-R-A"
    events: dict[str, EventSpec]
    description: str | None = None
    enforcement: Mode = "warn"  # default mode for planned events
    unplanned: Literal["allow", "warn", "quarantine"] = "warn"  # what happens to events the plan does not name
    naming: str | None = None  # event naming convention the linter checks ("Title Case", "snake_case", ...)
    definitions: dict[str, Any] = field(default_factory=dict)

    def mode_of(self, event: str | None) -> str:
        """The enforcement mode of an event name (its own, the plan's default, or `unplanned`)."""
        spec = self.events.get(event or "")
        if spec is None:
            return self.unplanned
        return spec.mode or self.enforcement
