"""Request-body (and main response) JSON schemas of the OpenAPI document, field by field.

Bodies validated by pydantic models (insights, cohorts, dashboards, trend alerts) take their schema from the model
itself, so the document cannot drift from the validation; hand-validated bodies are described here from their
handlers (api/*.py, collector/parsing.py, core/events.py).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import TypeAdapter

from headwater.alerts.trends import TrendAlertSpec
from headwater.auth.keys import ROLES
from headwater.auth.users import USER_ROLES
from headwater.boards.store import DashboardBody
from headwater.cohorts.spec import CohortDefinition
from headwater.core.events import SEGMENT_TYPES
from headwater.insights.spec import INSIGHT
from headwater.privacy.requests import MAX_SUPPRESS_DAYS

REF = "#/components/schemas/{model}"
STR = {"type": "string"}
NON_EMPTY = {"type": "string", "minLength": 1}
TIME = {"description": "ISO 8601 time or unix seconds.", "oneOf": [{"type": "string"}, {"type": "number"}]}


def _obj(props: dict[str, Any], required: tuple[str, ...] = (), extra: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        schema["required"] = list(required)
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def model_schemas() -> dict[str, Any]:
    """Component schemas of the pydantic-validated bodies (Insight, Cohort, Dashboard, TrendAlert, and their parts)."""
    adapters: list[tuple[str, TypeAdapter[Any]]] = [
        ("Insight", INSIGHT),
        ("Cohort", TypeAdapter(CohortDefinition)),
        ("Dashboard", TypeAdapter(DashboardBody)),
        ("TrendAlert", TypeAdapter(TrendAlertSpec)),
    ]
    tops, defs = TypeAdapter.json_schemas(
        [(name, "validation", adapter) for name, adapter in adapters], ref_template=REF
    )
    out: dict[str, Any] = dict(defs.get("$defs", {}))
    for (name, _mode), schema in tops.items():
        target = schema.get("$ref", "").rpartition("/")[2]
        out[name] = copy.deepcopy(out[target]) if target else schema
    board = out["Dashboard"]  # the body also carries the board's name (the handler pops it before validating)
    board["properties"] = {"name": {"type": "string", "minLength": 1, "maxLength": 200}, **board["properties"]}
    board["required"] = ["name", *board.get("required", [])]
    return out


SEGMENT_COMMON: dict[str, Any] = {
    "userId": {"type": ["string", "number", "null"]},
    "anonymousId": {"type": ["string", "number", "null"]},
    "messageId": STR,
    "timestamp": STR,
    "originalTimestamp": STR,
    "sentAt": STR,
    "context": {"type": "object"},
    "integrations": {"type": "object"},
    "writeKey": STR,
}
SEGMENT_PARTS: dict[str, dict[str, Any]] = {
    "track": {"event": NON_EMPTY, "properties": {"type": "object"}},
    "identify": {"traits": {"type": "object"}},
    "page": {"name": STR, "category": STR, "properties": {"type": "object"}},
    "screen": {"name": STR, "properties": {"type": "object"}},
    "group": {"groupId": {"type": ["string", "number"]}, "traits": {"type": "object"}},
    "alias": {"previousId": {"type": ["string", "number"]}},
}
SEGMENT_REQUIRED = {"track": ("event",), "group": ("groupId",), "alias": ("previousId", "userId")}


def segment_schemas() -> dict[str, Any]:
    """One component per Segment call type, a union for batches, and the lolscale /track event."""
    out: dict[str, Any] = {}
    for kind in SEGMENT_TYPES:
        props = {"type": {"const": kind}, **SEGMENT_COMMON, **SEGMENT_PARTS[kind]}
        schema = _obj(props, SEGMENT_REQUIRED.get(kind, ()), extra=True)
        schema["description"] = f"A Segment {kind} call: userId or anonymousId is required."
        out["Segment" + kind.title()] = schema
    out["SegmentBatch"] = _obj(
        {
            "batch": {"type": "array", "items": {"oneOf": [_ref("Segment" + k.title()) for k in SEGMENT_TYPES]}},
            "sentAt": STR,
            "context": {"type": "object"},
            "writeKey": STR,
        },
        ("batch",),
        extra=True,
    )
    raw = _obj(
        {"event": NON_EMPTY, "userId": STR, "anonymousId": STR, "timestamp": TIME, "messageId": STR},
        ("event",),
        extra=True,
    )
    raw["description"] = "A lolscale event: event and userId (or anonymousId) required; other fields kept."
    out["RawTrack"] = {"oneOf": [raw, {"type": "array", "items": raw}]}
    return out


def ingest_schema(kind: str) -> dict[str, Any]:
    """The body schema of an ingest path of `kind` (a Segment type, batch, or track-raw)."""
    if kind == "batch":
        return _ref("SegmentBatch")
    if kind in SEGMENT_TYPES:
        return _ref("Segment" + kind.title())
    return _ref("RawTrack")


FILTER = _ref("Filter")
PLAN_REF = {"type": "string", "description": "name@MODEL-REVISION-ADDITION, e.g. shop@1-0-0"}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/query"): _obj(
        {"sql": {"type": "string", "description": "One read-only SQL statement."}, "max_rows": {"type": "integer"}},
        ("sql",),
    ),
    ("post", "/api/insights"): _ref("Insight"),
    ("post", "/api/login"): _obj({"name": NON_EMPTY, "password": NON_EMPTY}, ("name", "password")),
    ("post", "/api/keys"): _obj({"name": NON_EMPTY, "role": {"enum": list(ROLES)}}, ("name", "role")),
    ("post", "/api/users"): _obj(
        {"name": NON_EMPTY, "role": {"enum": list(USER_ROLES)}, "password": NON_EMPTY}, ("name", "role", "password")
    ),
    ("patch", "/api/users/{name}"): _obj({"role": {"enum": list(USER_ROLES)}, "password": NON_EMPTY}),
    ("post", "/api/saved-insights"): _obj({"name": NON_EMPTY, "query": _ref("Insight")}, ("name", "query")),
    ("put", "/api/saved-insights/{id}"): _obj({"name": NON_EMPTY, "query": _ref("Insight")}, ("name", "query")),
    ("post", "/api/dashboards"): _ref("Dashboard"),
    ("put", "/api/dashboards/{id}"): _ref("Dashboard"),
    ("post", "/api/dashboards/{id}/shares"): _obj({}),
    ("post", "/api/cohorts"): _ref("Cohort"),
    ("put", "/api/cohorts/{id}"): _ref("Cohort"),
    ("post", "/api/cohorts/preview"): _ref("Cohort"),
    ("post", "/api/trend-alerts"): _ref("TrendAlert"),
    ("put", "/api/trend-alerts/{id}"): _ref("TrendAlert"),
    ("post", "/api/trend-alerts/{id}/evaluate"): _obj({}),
    ("post", "/api/privacy/deletions"): _obj(
        {
            "user_ids": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 255}},
            "anonymous_ids": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 255}},
            "suppress_days": {"type": "number", "minimum": 0, "maximum": MAX_SUPPRESS_DAYS},
        }
    ),
    ("post", "/api/plans"): _obj(
        {
            "files": {
                "type": "object",
                "additionalProperties": STR,
                "description": 'Plan files by path: {"plan.json": "<text>", "events/<name>.json": "<text>"}.',
            },
            "activate": {"type": "string", "minLength": 1, "description": "A source name, or * for every source."},
            "force": {"type": "boolean"},
        },
        ("files",),
    ),
    ("post", "/api/plans/activate"): _obj(
        {"plan": PLAN_REF, "name": STR, "version": STR, "source": {"type": "string", "minLength": 1}}
    ),
    ("post", "/api/plans/deactivate"): _obj({"source": {"type": "string", "minLength": 1}}, ("source",)),
    ("post", "/api/alerts/silences"): _obj(
        {
            "rule": {"type": "string", "description": "A rule name, or * for every rule."},
            "labels": {"type": "object", "additionalProperties": STR},
            "starts_at": TIME,
            "ends_at": TIME,
            "minutes": {"type": "number", "exclusiveMinimum": 0},
            "comment": {"type": "string", "maxLength": 1000},
        }
    ),
    ("post", "/api/alerts/test"): _obj({}, extra=True),
    ("post", "/api/checks/run"): _obj({"checks": {"type": "array", "items": STR}, "table": STR}),
    ("post", "/api/models/run"): _obj(
        {
            "models": {"type": "array", "items": STR},
            "full_refresh": {"type": "boolean"},
            "downstream": {"type": "boolean"},
            "wait": {"type": "boolean"},
        }
    ),
    ("post", "/api/quarantine/replay"): _obj(
        {
            "reason": NON_EMPTY,
            "since": {"oneOf": [STR, {"type": "integer"}], "description": "ISO 8601, epoch ms or an age (2h, 7d)."},
            "until": {"oneOf": [STR, {"type": "integer"}]},
            "source": STR,
            "dry_run": {"type": "boolean"},
        },
        ("reason", "since"),
    ),
}

ROWS = {"type": "array", "items": {"type": "object"}}
QUERY_RESULT = _obj(
    {
        "columns": {"type": "array", "items": STR},
        "types": {"type": "array", "items": STR},
        "rows": {"type": "array", "items": {"type": "array"}},
        "row_count": {"type": "integer"},
        "truncated": {"type": "boolean"},
        "elapsed_ms": {"type": "number"},
        "answered_by": STR,
    },
    ("columns", "rows", "row_count", "truncated"),
    extra=True,
)
RESPONSES: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("post", "/api/query"): ("200", QUERY_RESULT),
    ("post", "/api/keys"): ("201", _obj({"name": STR, "role": {"enum": list(ROLES)}, "key": STR}, ("key",))),
    ("get", "/api/saved-insights"): ("200", ROWS),
    ("get", "/api/dashboards"): ("200", ROWS),
    ("post", "/api/dashboards/{id}/shares"): ("201", _obj({"token": STR, "url": STR, "api": STR}, ("token",))),
}
