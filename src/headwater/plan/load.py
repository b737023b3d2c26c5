"""Reading a tracking plan directory (or its files, as pushed through the API) into a `Plan`.

`load_plan(directory)` reads `plan.json`, the optional `definitions.json` and every `events/**/*.json`, checks
each file against JSON Schema draft 2020-12 (`jsonschema`'s meta-schema), resolves every `$ref` inline, and
flattens each event's properties into `PropertySpec`s. It raises `PlanError` listing every problem at once
(file, event, JSON path, rule), so that `headwater plan check` shows them all in one run.

References: `#/$defs/x` (inside the same file) and `definitions.json#/$defs/x` (a file of the plan, named from
the plan directory as in the examples, or relative to the referring file: `../definitions.json#/...`). They are
resolved with the `referencing` library (the one `jsonschema` uses: JSON pointers, `$id`, `$anchor`) and then
inlined, because the validator compiles each event's schema to SQL and the browser, the diff and the ingest
transforms read whole schemas: a resolved copy is the one form every consumer can use. A reference to anything
outside the plan (a URL) or a recursive reference is an error. Keywords beside a `$ref` (a `description`, an
`x-personal`) override the referenced schema's.

Nested object properties are flattened with dotted paths (`address.city`); properties of objects inside arrays
with `[]` (`products[].sku`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.exceptions import PointerToNowhere, Unresolvable
from referencing.jsonschema import DRAFT202012

from headwater.core.errors import HeadwaterError
from headwater.plan.model import MODES, EventSpec, Plan, PropertySpec

if TYPE_CHECKING:
    from referencing._core import Resolver  # not re-exported by the package; for annotations only

PLAN_FILE = "plan.json"
DEFINITIONS_FILE = "definitions.json"
EVENTS_DIR = "events"
PLAN_KEYS = ("name", "version", "description", "enforcement", "unplanned", "naming", "property_naming", "$schema")
UNPLANNED = ("allow", "warn", "quarantine")
NAMING = ("Title Case", "snake_case", "camelCase", "Object Action")
PROPERTY_NAMING = ("snake_case", "camelCase")
PERSONAL = ("hash", "mask", "drop")
VERSION = re.compile(r"^(0|[1-9][0-9]{0,8})-(0|[1-9][0-9]{0,8})-(0|[1-9][0-9]{0,8})$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
MAX_FILE_BYTES = 1 << 20
_BASE = "https://plan.invalid/"  # the plan's files as URIs for `referencing` (never fetched)
_META = Draft202012Validator(Draft202012Validator.META_SCHEMA)


@dataclass(frozen=True)
class Problem:
    """One finding about a plan or a sample: `level` error (fails `plan check`) or warning."""

    level: str
    rule: str
    message: str
    file: str | None = None
    event: str | None = None
    path: str | None = None  # JSON path inside the file (or the sample event)

    def text(self) -> str:
        where = [self.file or "", f'event "{self.event}"' if self.event else "", self.path or ""]
        place = ": ".join(w for w in where if w)
        return f"{self.level}: {place + ': ' if place else ''}{self.rule}: {self.message}"

    def public(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "rule": self.rule,
            "message": self.message,
            "file": self.file,
            "event": self.event,
            "path": self.path,
        }


class PlanError(HeadwaterError):
    """A plan cannot be loaded or stored; `problems` lists every reason."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass
class Loaded:
    """What loading found: the plan (None when it could not be built), the parsed files, problems, and which
    definitions were referenced (for the linter's unused-definition check)."""

    plan: Plan | None
    files: dict[str, str]
    docs: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    used: set[int] = field(default_factory=set)  # id() of every $ref target inside `docs`

    def add(
        self,
        rule: str,
        message: str,
        file: str | None = None,
        event: str | None = None,
        path: str | None = None,
        level: str = "error",
    ) -> None:
        self.problems.append(Problem(level, rule, message, file, event, path))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]


def read_files(directory: Path) -> dict[str, str]:
    """The plan's files under `directory` as {path relative to it (posix): text}; PlanError when it is not a
    plan directory."""
    if not directory.is_dir():
        message = f"{directory}: not a directory (a plan is a directory with {PLAN_FILE})"
        raise PlanError(message, [Problem("error", "file", message)])
    wanted = [directory / PLAN_FILE, directory / DEFINITIONS_FILE]
    events = directory / EVENTS_DIR
    if events.is_dir():
        wanted += sorted(p for p in events.rglob("*.json") if p.is_file())
    files: dict[str, str] = {}
    problems: list[Problem] = []
    for path in wanted:
        if not path.is_file():
            continue
        name = path.relative_to(directory).as_posix()
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(Problem("error", "file", f"larger than {MAX_FILE_BYTES} bytes", name))
            continue
        try:
            files[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem("error", "file", f"not UTF-8 text: {exc}", name))
    if PLAN_FILE not in files:
        problems.append(Problem("error", "file", f"missing: a plan directory holds {PLAN_FILE}", PLAN_FILE))
    if problems:
        raise PlanError(f"{directory}: cannot read the plan", problems)
    return files


def load_plan(directory: Path | str) -> tuple[Plan, dict[str, str]]:
    """The plan in `directory` and its files; PlanError listing every error (warnings are the linter's)."""
    files = read_files(Path(directory))
    loaded = load_files(files)
    if loaded.errors or loaded.plan is None:
        raise PlanError(f"{directory}: the plan has {len(loaded.errors)} error(s)", loaded.errors)
    return loaded.plan, files


def plan_from_files(files: dict[str, str]) -> Plan:
    """The plan of already-read files (as stored or pushed); PlanError listing every error."""
    loaded = load_files(files)
    if loaded.errors or loaded.plan is None:
        raise PlanError(f"the plan has {len(loaded.errors)} error(s)", loaded.errors)
    return loaded.plan


def load_files(files: dict[str, str]) -> Loaded:
    """Parse, meta-validate and resolve the files; never raises for a problem in them (see `Loaded`)."""
    loaded = Loaded(None, dict(files))
    bad = [name for name in files if not _file_name_ok(name)]
    for name in bad:
        loaded.add("file", f"not a plan file: give {PLAN_FILE}, {DEFINITIONS_FILE} or {EVENTS_DIR}/<name>.json", name)
    for name, text in files.items():
        if name in bad:
            continue
        try:
            loaded.docs[name] = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            loaded.add("json", f"not valid JSON: {exc}", name)
    header = _plan_header(loaded)
    definitions = _definitions(loaded)
    registry = Registry().with_resources(
        (_BASE + name, DRAFT202012.create_resource(doc)) for name, doc in loaded.docs.items() if isinstance(doc, dict)
    )
    events: dict[str, EventSpec] = {}
    for name in sorted(n for n in loaded.docs if n.startswith(EVENTS_DIR + "/")):
        spec = _event(loaded, name, registry)
        if spec is None:
            continue
        if spec.name in events:
            first = events[spec.name].file
            loaded.add("duplicate-event", f"title also used by {first}: one schema per event", name, spec.name)
            continue
        events[spec.name] = spec
    if header is not None:
        loaded.plan = Plan(events=events, definitions=definitions, **header)
    return loaded


def _file_name_ok(name: str) -> bool:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        return False
    if name in (PLAN_FILE, DEFINITIONS_FILE):
        return True
    return len(path.parts) >= 2 and path.parts[0] == EVENTS_DIR and path.suffix == ".json"


def _plan_header(loaded: Loaded) -> dict[str, Any] | None:
    """plan.json's fields for `Plan(...)`, or None (problems recorded)."""
    doc = loaded.docs.get(PLAN_FILE)
    if PLAN_FILE not in loaded.files:
        loaded.add("file", f"missing: a plan holds {PLAN_FILE}", PLAN_FILE)
        return None
    if doc is None:
        return None  # not JSON: already said
    if not isinstance(doc, dict):
        loaded.add("plan", "must be a JSON object", PLAN_FILE, path="$")
        return None

    def problem(key: str, message: str) -> None:
        loaded.add("plan", message, PLAN_FILE, path=f"$.{key}")

    for key in doc:
        if key not in PLAN_KEYS:
            problem(key, f"unknown key {key!r} (known: {', '.join(PLAN_KEYS)})")
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not NAME.match(name):
        problem("name", "required: letters, digits, '.', '_' or '-' (at most 100), e.g. \"shop\"")
    if not isinstance(version, str) or not VERSION.match(version):
        problem("version", f'required: a SchemaVer MODEL-REVISION-ADDITION such as "1-0-0", got {version!r}')
    choices = {"enforcement": MODES, "unplanned": UNPLANNED, "naming": NAMING, "property_naming": PROPERTY_NAMING}
    for key, allowed in choices.items():
        if key in doc and doc[key] not in allowed:
            problem(key, f"one of {', '.join(allowed)}; got {doc[key]!r}")
    if "description" in doc and not isinstance(doc["description"], str):
        problem("description", "a string")
    if any(p.file == PLAN_FILE for p in loaded.problems):
        return None
    return {
        "name": name,
        "version": version,
        "description": doc.get("description"),
        "enforcement": doc.get("enforcement", "warn"),
        "unplanned": doc.get("unplanned", "warn"),
        "naming": doc.get("naming"),
    }


def _definitions(loaded: Loaded) -> dict[str, Any]:
    doc = loaded.docs.get(DEFINITIONS_FILE)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        loaded.add("schema", "must be a JSON object", DEFINITIONS_FILE, path="$")
        return {}
    for key in doc:
        if key not in ("$defs", "$schema", "$id", "$comment", "title", "description"):
            loaded.add(
                "schema", f"unknown key {key!r}: put shared schemas under $defs", DEFINITIONS_FILE, path=f"$.{key}"
            )
    _meta_validate(loaded, DEFINITIONS_FILE, doc, None)
    defs = doc.get("$defs")
    return defs if isinstance(defs, dict) else {}


def _meta_validate(loaded: Loaded, file: str, doc: dict[str, Any], event: str | None) -> bool:
    errors = sorted(_META.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    for error in errors:
        message = error.message
        if error.absolute_path and error.absolute_path[-1] == "type":
            message += f" (a type is one of {', '.join(JSON_TYPES)}, or a list of them)"
        loaded.add("schema", message, file, event, json_path(error.absolute_path))
    return not errors


def json_path(parts: Any) -> str:
    """`["properties", "a", 0]` → `$.properties.a[0]` (the form every problem and violation uses)."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _event(loaded: Loaded, file: str, registry: Registry[Any]) -> EventSpec | None:
    doc = loaded.docs.get(file)
    if doc is None:
        return None
    if not isinstance(doc, dict):
        loaded.add("schema", "an event is a JSON Schema object", file, path="$")
        return None
    title = doc.get("title")
    name = title if isinstance(title, str) and title.strip() else None
    if name is None:
        loaded.add("title", 'required: the event\'s name, e.g. "Order Completed"', file, path="$.title")
    if not _meta_validate(loaded, file, doc, name) or name is None:
        return None
    if doc.get("type", "object") != "object":
        loaded.add(
            "schema", 'an event\'s schema describes its `properties` object: "type": "object"', file, name, "$.type"
        )
        return None
    resolver = registry.resolver(base_uri=_BASE + file)
    before = len(loaded.problems)
    schema = _inline(loaded, doc, resolver, file, name, "$", ())
    if len(loaded.problems) > before:
        return None
    assert isinstance(schema, dict)
    schema.pop("$defs", None)
    schema.pop("definitions", None)
    mode = doc.get("x-enforcement")
    description = schema.get("description")
    return EventSpec(
        name=name,
        schema=schema,
        description=description if isinstance(description, str) else None,
        mode=mode if mode in MODES else None,
        file=file,
        properties=tuple(flatten(schema)),
    )


def _inline(
    loaded: Loaded, node: Any, resolver: Resolver[Any], file: str, event: str, path: str, stack: tuple[int, ...]
) -> Any:
    """`node` with every $ref replaced by a resolved copy of its target (siblings of a $ref override it)."""
    if isinstance(node, list):
        return [_inline(loaded, v, resolver, file, event, f"{path}[{i}]", stack) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = _target(ref)
        try:
            resolved = resolver.lookup(target)
        except PointerToNowhere as exc:
            loaded.add("$ref", f"{ref!r}: {exc.ref!r} is not in that file", file, event, f"{path}.$ref")
            return {}
        except Unresolvable:
            loaded.add(
                "$ref",
                f"{ref!r} is not in a file of this plan (refer to #/$defs/<name> or {DEFINITIONS_FILE}#/$defs/<name>)",
                file,
                event,
                f"{path}.$ref",
            )
            return {}
        key = id(resolved.contents)
        if key in stack or key == id(node):
            loaded.add(
                "$ref",
                f"{ref!r} refers to itself (recursive schemas cannot be enforced at ingest)",
                file,
                event,
                f"{path}.$ref",
            )
            return {}
        loaded.used.add(key)
        inner = _inline(loaded, resolved.contents, resolved.resolver, file, event, f"{path}.$ref", (*stack, key))
        if isinstance(inner, dict):
            out.update(inner)
        out.pop("$defs", None)
        out.pop("$id", None)
        out.pop("$schema", None)
    for k, v in node.items():
        if k in ("$ref", "$defs", "definitions"):
            continue
        if k in ("properties", "patternProperties", "dependentSchemas") and isinstance(v, dict):
            out[k] = {
                name: _inline(loaded, sub, resolver, file, event, f"{path}.{k}.{name}", stack)
                for name, sub in v.items()
            }
        elif k in ("const", "enum", "examples", "default", "required"):
            out[k] = v
        else:
            out[k] = _inline(loaded, v, resolver, file, event, f"{path}.{k}", stack)
    return out


def _target(ref: str) -> str:
    """A plan file named from the plan directory wins over the same name relative to the referring file
    (`definitions.json#...` in events/x.json means the plan's definitions.json); other references are
    resolved by `referencing` against the referring file."""
    doc, _, fragment = ref.partition("#")
    if doc and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", doc):
        root = str(PurePosixPath(doc))
        if root in (DEFINITIONS_FILE, PLAN_FILE) or root.startswith(EVENTS_DIR + "/"):
            return _BASE + root + "#" + fragment
    return ref


def types_of(schema: dict[str, Any]) -> tuple[str, ...]:
    """The JSON types a schema allows (from `type`, else its `const`/`enum` values, else its anyOf/oneOf
    branches); () when any type goes."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return (kind,)
    if isinstance(kind, list):
        return tuple(t for t in kind if isinstance(t, str))
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if isinstance(values, list) and values:
        return tuple(dict.fromkeys(_json_type(v) for v in values))
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            found: list[str] = []
            for branch in branches:
                inner = types_of(branch) if isinstance(branch, dict) else ()
                if not inner:
                    return ()
                found += inner
            return tuple(dict.fromkeys(found))
    return ()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def flatten(schema: dict[str, Any], prefix: str = "") -> list[PropertySpec]:
    """Every declared property of an object schema (and of its allOf branches), nested ones with dotted paths."""
    out: list[PropertySpec] = []
    parts = [schema] + [b for b in schema.get("allOf") or [] if isinstance(b, dict)]
    required = {r for part in parts for r in part.get("required") or [] if isinstance(r, str)}
    seen: set[str] = set()
    for part in parts:
        props = part.get("properties")
        if not isinstance(props, dict):
            continue
        for name, sub in props.items():
            if name in seen or not isinstance(sub, dict):
                continue
            seen.add(name)
            path = prefix + name
            personal = sub.get("x-personal")
            consent = sub.get("x-consent")
            description = sub.get("description")
            out.append(
                PropertySpec(
                    path=path,
                    types=types_of(sub),
                    required=name in required,
                    description=description if isinstance(description, str) else None,
                    personal=personal if personal in PERSONAL else None,
                    consent=consent if isinstance(consent, str) else None,
                )
            )
            if isinstance(sub.get("properties"), dict) or any(isinstance(b, dict) for b in sub.get("allOf") or []):
                out += flatten(sub, path + ".")
            items = sub.get("items")
            if isinstance(items, dict) and isinstance(items.get("properties"), dict):
                out += flatten(items, path + "[].")
    return out


def read_samples(text: str, name: str, source: str = "sample") -> tuple[Any, list[str], list[Problem]]:
    """Sample events (NDJSON as sent: /track objects, Segment calls, or Segment `{"batch": [...]}` lines) as the
    lake writer would see them: an `events` Arrow table built by `RowBuilder`, a label per row (`FILE:LINE`), and
    a problem per line the collector would refuse."""
    import time

    from headwater.core.events import RAW_TRACK, SEGMENT_TYPES, InvalidEvent, RowBuilder, check_raw_track, check_segment

    builder = RowBuilder()
    labels: list[str] = []
    problems: list[Problem] = []
    now_ms = int(time.time() * 1000)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        label = f"{name}:{number}"
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            problems.append(Problem("error", "sample", f"not valid JSON: {exc}", label))
            continue
        calls = doc["batch"] if isinstance(doc, dict) and isinstance(doc.get("batch"), list) else [doc]
        for index, call in enumerate(calls):
            where = label if len(calls) == 1 else f"{label}[{index}]"
            segment = isinstance(call, dict) and call.get("type") in SEGMENT_TYPES
            endpoint = call["type"] if segment else RAW_TRACK
            try:
                if segment:
                    check_segment(call, None)
                else:
                    check_raw_track(call)
            except InvalidEvent as exc:
                problems.append(Problem("error", "sample", f"the collector refuses it: {exc}", where))
                continue
            before = builder.event_count
            builder.add({"m": {"src": source, "ep": endpoint, "ra": now_ms}, "e": call}, "sample", 0, len(labels))
            if builder.event_count > before:
                labels.append(where)
            else:
                problems.append(Problem("error", "sample", "the writer cannot normalise it (see quarantine)", where))
    events, _ = builder.tables()
    return events, labels, problems


def rows_table(columns: list[str], rows: list[list[Any]], label: str = "sql") -> tuple[Any, list[str]]:
    """Rows of a query with an `event` column and a `properties` column (JSON text or an object) as an
    `events`-shaped Arrow table (columns `type`, `event`, `properties`), with a label per row."""
    import pyarrow as pa

    if "event" not in columns:
        raise PlanError(f"the query must return an `event` column (it returned {', '.join(columns) or 'none'})")
    at = {c: i for i, c in enumerate(columns)}

    def text(value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return orjson.dumps(value, default=str).decode()

    props = at.get("properties")
    kinds = at.get("type")
    table = pa.table({
        "type": pa.array([(r[kinds] if kinds is not None else None) or "track" for r in rows], pa.string()),
        "event": pa.array([r[at["event"]] for r in rows], pa.string()),
        "properties": pa.array([text(r[props]) if props is not None else None for r in rows], pa.string()),
    })  # fmt: skip
    return table, [f"{label} row {i + 1}" for i in range(len(rows))]
