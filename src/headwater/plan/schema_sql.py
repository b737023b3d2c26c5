"""JSON Schema compiled to DuckDB SQL (headwater.plan.validate runs it): for a schema node, a condition true
when a value breaks it (`fails`) and the list of its violations (`violations`), as SQL text.

Values are read through scopes: every value a schema names under one JSON root (an event's `properties`, or an
array element) is extracted at once per kind of read (`json_type`, `json_extract_string`, `json_extract`,
`json_keys` over a list of paths: one parse each), and referred to as columns (`hw_t3`) or lambda fields
(`o5.t[3]`). Nested objects read from their parent's scope; arrays get a scope per element, bound with a
one-element `list_transform` (SQL has no `let`).
"""

from __future__ import annotations

import re
import threading
from typing import Any

import duckdb
import orjson

FORMATS = frozenset({"date-time", "date", "email", "uri", "uuid", "ipv4"})
_V = "STRUCT(path VARCHAR, rule VARCHAR, expected VARCHAR, got VARCHAR)"
_NUMERIC = "('BIGINT','UBIGINT','DOUBLE')"

_RFC3339 = (
    r"^\d{4}-(0[1-9]|1[0-2])-\d{2}[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_FORMAT_SQL = {  # `@S`: the string
    "date-time": f"(regexp_full_match(@S, '{_RFC3339}') AND TRY_CAST(left(@S, 10) AS DATE) IS NOT NULL)",
    "date": r"(regexp_full_match(@S, '\d{4}-\d{2}-\d{2}') AND TRY_CAST(@S AS DATE) IS NOT NULL)",
    "email": r"regexp_full_match(@S, '[^@\s]+@[^@\s]+')",
    "uri": r"regexp_full_match(@S, '[A-Za-z][A-Za-z0-9+.\-]*:[^\s]*')",
    "uuid": r"regexp_full_match(@S, '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}')",
    "ipv4": rf"regexp_full_match(@S, '{_OCTET}(\.{_OCTET}){{3}}')",
}


def lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _json_path(key: str) -> str:
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def shown_key(key: str) -> str:
    """A property name as it appears in a violation's path (`.name`, or `["odd name"]`)."""
    return "." + key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else "[" + orjson.dumps(key).decode() + "]"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _number(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


class ViolationPath:
    """A node's path: SQL text of a constant (`$.properties.a`) or, inside arrays, an expression."""

    def __init__(self, literal: str | None, expr: str | None = None) -> None:
        self.literal, self.expr = literal, expr

    @property
    def sql(self) -> str:
        return lit(self.literal) if self.literal is not None else str(self.expr)

    def child(self, key: str) -> ViolationPath:
        if self.literal is not None:
            return ViolationPath(self.literal + shown_key(key))
        return ViolationPath(None, f"({self.expr} || {lit(shown_key(key))})")

    def item(self, index_var: str) -> ViolationPath:
        return ViolationPath(None, f"({self.sql} || '[' || ({index_var} - 1) || ']')")

    def dynamic(self, key_sql: str) -> str:
        """The path of a property whose name is the SQL `key_sql` (as shown_key shows it)."""
        shown = f"CASE WHEN regexp_full_match({key_sql}, '[A-Za-z_][A-Za-z0-9_]*') THEN '.' || {key_sql} "
        return f"({self.sql} || {shown}ELSE '[' || to_json({key_sql}) || ']' END)"


class Scope:
    """Where values are read from: a JSON root (`properties`, or one array element) whose descendants are all
    extracted at once (one parse per kind of read: types, unquoted text, JSON text, keys), into lists that
    `ref` names (columns `hw_t`... of the event's query, or fields of a lambda variable inside arrays)."""

    def __init__(self, root: str, ref: str, columns: bool = False) -> None:
        self.root, self.ref, self.columns = root, ref, columns
        self.paths: list[str] = []
        self.key_paths: list[str] = []

    def _item(self, kind: str, i: int) -> str:
        return f"{self.ref}{kind}{i}" if self.columns else f"{self.ref}{kind}[{i}]"

    def value(self, rel: str) -> Value:
        if rel not in self.paths:
            self.paths.append(rel)
        i = self.paths.index(rel) + 1
        return Value(self._item("j", i), self._item("t", i), self._item("s", i), self, rel)

    def keys(self, rel: str) -> str:
        if rel not in self.key_paths:
            self.key_paths.append(rel)
        return self._item("k", self.key_paths.index(rel) + 1)

    def select(self, table: str, used: str, columns: str = "hw_row, event, p") -> str:
        """A query of `table` (its `columns`, `p` among them) with the values `used` (SQL text) refers to as
        columns (`hw_t3`...): the lists are read once and split in queries of their own, which `OFFSET 0` keeps
        apart (otherwise DuckDB copies the read into every condition that refers to it)."""
        names = {name for name in re.findall(rf"\b{self.ref}([jtsk]\d+)\b", used)}
        lists = {kind: sql for kind, sql in self.reads().items() if any(n[0] == kind for n in names)}
        query = f"SELECT {columns} FROM {table}"
        if lists:
            read = ", ".join(f"{sql} AS {self.ref}{kind}" for kind, sql in lists.items())
            split = ", ".join(f"{self.ref}{n[0]}[{n[1:]}] AS {self.ref}{n}" for n in sorted(names))
            query = f"SELECT {columns}, {read} FROM {table} OFFSET 0"
            query = f"SELECT {columns}, {split} FROM ({query}) OFFSET 0"
        return query

    def reads(self) -> dict[str, str]:
        """The lists this scope reads: name -> SQL."""
        paths = "[" + ", ".join(lit(p) for p in self.paths) + "]"
        keys = "[" + ", ".join(lit(p) for p in self.key_paths) + "]"
        return {
            "j": f"json_extract({self.root}, {paths})", "t": f"json_type({self.root}, {paths})",
            "s": f"json_extract_string({self.root}, {paths})", "k": f"json_keys({self.root}, {keys})",
        }  # fmt: skip


class Value:
    """SQL of one JSON value: its text `j`, its `json_type` `t` (NULL when absent) and, for scalars, its text
    unquoted `s`; `scope` and `rel` (its JSON path there) when its children can be read from the scope."""

    def __init__(self, j: str, t: str, s: str, scope: Scope | None = None, rel: str = "$") -> None:
        self.j, self.t, self.s, self.scope, self.rel = j, t, s, scope, rel


def _v(path: str, rule: str, expected: str, got: str) -> str:
    return f"{{'path': {path}, 'rule': {lit(rule)}, 'expected': {expected}, 'got': {got}}}"


class Node:
    """A compiled schema node: single checks (a condition true on violation, and its violation) and nested
    parts (a condition true when any violation, and the LIST of them)."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, str]] = []
        self.nested: list[tuple[str, str]] = []

    def add(self, other: Node, guard: str | None = None) -> None:
        """`other`'s checks, each applying only where `guard` holds."""
        for cond, v in other.checks:
            self.checks.append((f"({guard} AND {cond})" if guard else cond, v))
        for cond, vs in other.nested:
            self.nested.append(
                (f"({guard} AND {cond})" if guard else cond, f"CASE WHEN {guard} THEN {vs} END" if guard else vs)
            )

    def fails(self) -> str:
        """SQL: true when the value violates the schema (NULL counts as no)."""
        parts = [c for c, _ in self.checks] + [f for f, _ in self.nested]
        return " OR ".join(parts) if parts else "false"

    def violations(self) -> str:
        """SQL: the LIST of violation structs (empty when none)."""
        parts = []
        if self.checks:
            cases = ", ".join(f"CASE WHEN {c} THEN {v} END" for c, v in self.checks)
            parts.append(f"list_filter([{cases}], lambda v: v IS NOT NULL)")
        parts += [f"coalesce({v}, []::{_V}[])" for _, v in self.nested]
        if not parts:
            return f"[]::{_V}[]"
        return parts[0] if len(parts) == 1 else f"flatten([{', '.join(parts)}])"


def _let(var: str, fields: dict[str, str], body: str) -> str:
    """SQL has no `let`: a one-element list_transform binds `var` to a struct of `fields` (those `body` uses)."""
    used = {k: v for k, v in fields.items() if f"{var}.{k}" in body}
    if not used:
        return body
    packed = ", ".join(f"'{k}': {v}" for k, v in used.items())
    return f"list_transform([{{{packed}}}], lambda {var}: {body})[1]"


class Compiler:
    """JSON Schema -> SQL (one compiler per query: lambda variables get unique names)."""

    def __init__(self) -> None:
        self.names = 0

    def var(self, stem: str) -> str:
        self.names += 1
        return f"{stem}{self.names}"

    def node(self, x: Value, path: ViolationPath, schema: Any) -> Node:
        """The checks of `schema` on the JSON value `x`."""
        out = Node()
        if not isinstance(schema, dict):
            return out
        self._type(x, path, schema, out)
        self._values(x, path, schema, out)
        self._string(x, path, schema, out)
        self._numeric(x, path, schema, out)
        self._object(x, path, schema, out)
        self._array(x, path, schema, out)
        for sub in schema.get("allOf") or ():
            out.add(self.node(x, path, sub))
        return out

    def _type(self, x: Value, path: ViolationPath, schema: dict[str, Any], out: Node) -> None:
        kinds = schema.get("type")
        if kinds is None:
            return
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        ok = " OR ".join(_type_test(x, kind) for kind in kinds) or "false"
        expected = lit(" or ".join(kinds))
        out.checks.append((f"({x.t} IS NOT NULL AND NOT ({ok}))", _v(path.sql, "type", expected, _type_name(x.t))))

    def _values(self, x: Value, path: ViolationPath, schema: dict[str, Any], out: Node) -> None:
        for rule in ("enum", "const"):
            if rule not in schema:
                continue
            allowed = schema[rule] if rule == "enum" else [schema[rule]]
            if not isinstance(allowed, list):
                continue
            expected = lit(("one of " + _dumps(allowed)) if rule == "enum" else _dumps(schema[rule]))
            cond = f"({x.t} IS NOT NULL AND NOT coalesce({_equals_any(x, allowed)}, false))"
            out.checks.append((cond, _v(path.sql, rule, expected, f"hw_got({x.j})")))

    def _string(self, x: Value, path: ViolationPath, schema: dict[str, Any], out: Node) -> None:
        s = x.s
        checks = []
        if isinstance(schema.get("minLength"), int):
            n = schema["minLength"]
            checks.append(("minLength", f"length({s}) < {n}", f"at least {n} characters", f"length({s})::VARCHAR"))
        if isinstance(schema.get("maxLength"), int):
            n = schema["maxLength"]
            checks.append(("maxLength", f"length({s}) > {n}", f"at most {n} characters", f"length({s})::VARCHAR"))
        if isinstance(schema.get("pattern"), str) and re2_ok(schema["pattern"]):  # else unsupported() says so
            pattern = schema["pattern"]
            checks.append(("pattern", f"NOT regexp_matches({s}, {lit(pattern)})", pattern, f"hw_got({x.j})"))
        kind = schema.get("format")
        if isinstance(kind, str) and kind in _FORMAT_SQL:
            checks.append(("format", f"NOT {_FORMAT_SQL[kind].replace('@S', s)}", kind, f"hw_got({x.j})"))
        for rule, failed, expected, got in checks:
            out.checks.append((f"({x.t} = 'VARCHAR' AND {failed})", _v(path.sql, rule, lit(expected), got)))

    def _numeric(self, x: Value, path: ViolationPath, schema: dict[str, Any], out: Node) -> None:
        d = f"TRY_CAST({x.s} AS DOUBLE)"
        checks = []
        for rule, op, words in (
            ("minimum", "<", ">="), ("maximum", ">", "<="), ("exclusiveMinimum", "<=", ">"),
            ("exclusiveMaximum", ">=", "<"),
        ):  # fmt: skip
            bound = schema.get(rule)
            if isinstance(bound, int | float) and not isinstance(bound, bool):
                checks.append((rule, f"{d} {op} {_number(bound)}", f"{words} {_number(bound)}"))
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            quotient = f"{d} / {_number(step)}"
            failed = f"{quotient} <> trunc({quotient})"
            if isinstance(step, int):  # integers exactly, as Python does
                failed = f"CASE WHEN {x.t} = 'DOUBLE' THEN {failed} ELSE TRY_CAST({x.s} AS HUGEINT) % {step} <> 0 END"
            checks.append(("multipleOf", f"({failed})", f"a multiple of {_number(step)}"))
        for rule, failed, expected in checks:
            v = _v(path.sql, rule, lit(expected), f"hw_got({x.j})")
            out.checks.append((f"({x.t} IN {_NUMERIC} AND {failed})", v))

    def extra_keys(self, x: str, keys: str, path: ViolationPath, declared: list[str]) -> tuple[str, str]:
        """(condition, violations `additionalProperties`) of the keys `keys` of the object `x` that are not
        `declared` (its schema closes it)."""
        k = self.var("k")
        names = "[" + ", ".join(lit(key) for key in declared) + "]::VARCHAR[]"
        quoted = f"'$.\"' || replace(replace({k}, '\\', '\\\\'), '\"', '\\\"') || '\"'"
        v = _v(
            path.dynamic(k), "additionalProperties", "'no undeclared property'", f"hw_got(json_extract({x}, {quoted}))"
        )
        extra = f"list_filter({keys}, lambda {k}: NOT list_contains({names}, {k}))"
        return f"NOT list_has_all({names}, {keys})", f"list_transform({extra}, lambda {k}: {v})"

    def _object(self, x: Value, path: ViolationPath, schema: dict[str, Any], out: Node) -> None:
        props: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        required = [r for r in schema.get("required") or () if isinstance(r, str)]
        closed = schema.get("additionalProperties") is False
        counted = any(isinstance(schema.get(k), int) for k in ("minProperties", "maxProperties"))
        if not (props or required or closed or counted):
            return
        scope, local = x.scope, None
        if scope is None:  # an array element: a scope of its own, bound to a lambda variable
            local = self.var("o")
            scope = Scope(x.j, local + ".")
        rel = x.rel if x.scope is not None else "$"
        inner = Node()
        children = {key: scope.value(rel + _json_path(key)[1:]) for key in dict.fromkeys([*props, *required])}
        for key in required:
            inner.checks.append(
                (f"{children[key].t} IS NULL", _v(path.child(key).sql, "required", "'present'", "'missing'"))
            )
        for key, sub in props.items():
            inner.add(self.node(children[key], path.child(key), sub))
        if closed or counted:
            keys = scope.keys(rel)
            if closed:
                inner.nested.append(self.extra_keys(x.j, keys, path, list(props)))
            for rule, op, words in (("minProperties", "<", "at least"), ("maxProperties", ">", "at most")):
                n = schema.get(rule)
                if isinstance(n, int) and not isinstance(n, bool):
                    v = _v(path.sql, rule, lit(f"{words} {n} properties"), f"len({keys})::VARCHAR")
                    inner.checks.append((f"len({keys}) {op} {n}", v))
        guard = None if x.t == "'OBJECT'" else f"{x.t} = 'OBJECT'"
        if local is None:
            out.add(inner, guard)
            return
        reads = scope.reads()
        bound = Node()
        bound.nested.append((_let(local, reads, inner.fails()), _let(local, reads, inner.violations())))
        out.add(bound, guard)

    def _array(self, x: Value, path: ViolationPath, schema: dict[str, Any], out: Node) -> None:
        a = self.var("a")
        inner = Node()
        for rule, op, words in (("minItems", "<", "at least"), ("maxItems", ">", "at most")):
            n = schema.get(rule)
            if isinstance(n, int) and not isinstance(n, bool):
                v = _v(path.sql, rule, lit(f"{words} {n} items"), f"len({a}.t)::VARCHAR")
                inner.checks.append((f"len({a}.t) {op} {n}", v))
        if schema.get("uniqueItems") is True:
            distinct = f"len(list_distinct(list_transform({a}.j, lambda u: json(u)::VARCHAR)))"
            v = _v(path.sql, "uniqueItems", lit("unique items"), f"hw_got({x.j})")
            inner.checks.append((f"{distinct} < len({a}.t)", v))
        items = schema.get("items")
        if isinstance(items, dict) and items:
            index = self.var("i")
            element = Value(f"{a}.j[{index}]", f"{a}.t[{index}]", f"{a}.s[{index}]")
            part = self.node(element, path.item(index), items)
            inner.nested.append(
                (
                    f"list_bool_or(list_transform({a}.t, lambda _, {index}: {part.fails()}))",
                    f"flatten(list_transform({a}.t, lambda _, {index}: {part.violations()}))",
                )
            )
        if not inner.checks and not inner.nested:
            return
        reads = {
            "j": f"json_extract({x.j}, '$[*]')", "t": f"json_type({x.j}, '$[*]')",
            "s": f"json_extract_string({x.j}, '$[*]')",
        }  # fmt: skip
        bound = Node()
        bound.nested.append((_let(a, reads, inner.fails()), _let(a, reads, inner.violations())))
        out.add(bound, f"{x.t} = 'ARRAY'")


def _type_name(t: str) -> str:
    """SQL: the JSON Schema name of a `json_type` result."""
    return (
        f"CASE {t} WHEN 'VARCHAR' THEN 'string' WHEN 'BIGINT' THEN 'integer' WHEN 'UBIGINT' THEN 'integer' "
        f"WHEN 'DOUBLE' THEN 'number' ELSE lower({t}) END"
    )


def _type_test(x: Value, kind: str) -> str:
    d = f"TRY_CAST({x.s} AS DOUBLE)"
    return {
        "string": f"{x.t} = 'VARCHAR'",
        "number": f"{x.t} IN {_NUMERIC}",
        "integer": f"({x.t} IN ('BIGINT','UBIGINT') OR ({x.t} = 'DOUBLE' AND {d} = floor({d}) AND NOT isinf({d})))",
        "boolean": f"{x.t} = 'BOOLEAN'",
        "object": f"{x.t} = 'OBJECT'",
        "array": f"{x.t} = 'ARRAY'",
        "null": f"{x.t} = 'NULL'",
    }.get(kind, "false")


def _equals_any(x: Value, allowed: list[Any]) -> str:
    strings = [v for v in allowed if isinstance(v, str)]
    numbers = [v for v in allowed if isinstance(v, int | float) and not isinstance(v, bool)]
    tests = []
    if strings:
        tests.append(f"({x.t} = 'VARCHAR' AND {x.s} IN ({', '.join(lit(s) for s in strings)}))")
    if numbers:
        tests.append(
            f"({x.t} IN {_NUMERIC} AND TRY_CAST({x.s} AS DOUBLE) IN ({', '.join(_number(n) for n in numbers)}))"
        )
    for value in allowed:
        if isinstance(value, bool):
            tests.append(f"({x.t} = 'BOOLEAN' AND {x.s} = {lit(_dumps(value))})")
        elif value is None:
            tests.append(f"{x.t} = 'NULL'")
        elif isinstance(value, dict | list):
            tests.append(f"(json({x.j})::VARCHAR = {lit(_dumps(value))})")
    return " OR ".join(tests) or "false"


_RE2_LOCK = threading.Lock()
_RE2: duckdb.DuckDBPyConnection | None = None


def re2_ok(pattern: str) -> bool:
    global _RE2
    with _RE2_LOCK:
        if _RE2 is None:
            _RE2 = duckdb.connect()
        try:
            _RE2.execute("SELECT regexp_matches('', ?)", [pattern]).fetchall()
        except duckdb.Error:
            return False
        return True
