"""SQL text as clients send it: bound parameters inlined, PostgreSQL-only spellings turned into DuckDB's, and the
session statements (SET, SHOW, BEGIN …) recognised.

Rewrites apply to code only, never inside string literals, quoted identifiers or comments: the text is split into
those segments first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headwater.core.errors import QueryError
from headwater.core.sql_literals import lit

_SEGMENT = re.compile(
    r"""(?P<str>[eE]?'(?:[^'\\]|''|\\.)*')"""  # quoting: '…' ('' escapes; backslashes only matter in E'…')
    r"""|(?P<ident>"(?:[^"]|"")*")"""
    r"""|(?P<line>--[^\n]*)"""
    r"""|(?P<block>/\*.*?\*/)"""
    r"""|(?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)"""
    r"""|(?P<param>\$\d+)""",
    re.S,
)
_CAST_TYPES = {"regclass", "regtype", "regproc", "regprocedure", "regnamespace", "regrole", "oid", "name"}
_REWRITES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\bOPERATOR\s*\(\s*pg_catalog\s*\.\s*([~!=<>*+\-/%^|&#@]+)\s*\)", re.I), r" \1 "),
    (re.compile(r"\bCOLLATE\s+(pg_catalog\s*\.\s*)?(default|\"default\"|\"C\"|C)(?!\w)", re.I), ""),
    (
        re.compile(
            r"::\s*(?:pg_catalog\s*\.\s*)?(regclass|regtype|regproc|regprocedure|regnamespace|regrole|oid|name)\b", re.I
        ),
        lambda m: "::TEXT" if m.group(1).lower() == "name" else "::BIGINT",
    ),
    (re.compile(r"::\s*pg_catalog\s*\.\s*", re.I), "::"),
    (re.compile(r"\b(?:pg_catalog\s*\.\s*)?jsonb?_build_object\s*\(", re.I), "json_object("),
    (re.compile(r"\bpublic\s*\.(?=\s*[\"\w])", re.I), "main."),
]


def split(sql: str) -> list[tuple[str, str]]:
    """(kind, text) segments: kind is `code`, `str`, `ident`, `comment`, `dollar` or `param`."""
    out: list[tuple[str, str]] = []
    pos = 0
    for match in _SEGMENT.finditer(sql):
        if match.start() > pos:
            out.append(("code", sql[pos : match.start()]))
        kind = match.lastgroup or "code"
        if kind == "tag":
            kind = "dollar"
        out.append(("comment" if kind in ("line", "block") else kind, match.group(0)))
        pos = match.end()
    if pos < len(sql):
        out.append(("code", sql[pos:]))
    return out


def literal(value: Any) -> str:
    """A parameter value as an SQL literal (numbers bare, lists as DuckDB lists, everything else quoted)."""
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return lit(value)


def _typed(value: Any, oid: int) -> str:
    if value is not None and oid in (20, 21, 23, 26) and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return value
    if value is not None and oid in (700, 701, 1700) and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            pass
        else:
            return value
    return literal(value)


def bind(sql: str, params: list[Any], oids: list[int]) -> str:
    """`sql` with `$1`, `$2` … replaced by the parameters as literals."""
    parts = []
    for kind, text in split(sql):
        if kind == "param":
            index = int(text[1:]) - 1
            if not 0 <= index < len(params):
                raise QueryError(f"sql: parameter {text} has no value ({len(params)} sent)")
            parts.append(_typed(params[index], oids[index] if index < len(oids) else 0))
        else:
            parts.append(text)
    return "".join(parts)


def count_params(sql: str) -> int:
    return max((int(t[1:]) for k, t in split(sql) if k == "param"), default=0)


_REGCLASS_CAST = re.compile(r"^\s*::\s*(?:pg_catalog\s*\.\s*)?regclass\b", re.I)


def rewrite(sql: str) -> str:
    """PostgreSQL spellings DuckDB does not know: OPERATOR(pg_catalog.~), COLLATE pg_catalog.default, ::regclass
    ('name'::regclass is `to_regclass('name')`, which the look-alike catalog defines), the schema `public` (DuckDB's
    is `main`)."""
    parts: list[str] = []
    segments = split(sql)
    for i, (kind, text) in enumerate(segments):
        following = segments[i + 1] if i + 1 < len(segments) else ("", "")
        if kind == "str" and following[0] == "code" and _REGCLASS_CAST.match(following[1]):
            text = f"to_regclass({text})"
            segments[i + 1] = ("code", _REGCLASS_CAST.sub("", following[1], count=1))
        if kind == "code":
            for pattern, replacement in _REWRITES:
                text = pattern.sub(replacement, text)
        parts.append(text)
    return "".join(parts)


def code_only(sql: str) -> str:
    """`sql` without comments (strings kept): to recognise statements."""
    return "".join(text for kind, text in split(sql) if kind != "comment").strip().rstrip(";").strip()


@dataclass(frozen=True)
class Local:
    """A statement the session answers itself: `tag` for CommandComplete; SHOW carries the setting's name."""

    kind: str  # begin | commit | rollback | savepoint | set | show | noop
    tag: str
    name: str = ""
    value: str = ""


_SET = re.compile(r"^SET\s+(?:SESSION\s+|LOCAL\s+)?(?P<name>[\w.]+)\s*(?:=|\bTO\b)\s*(?P<value>.+)$", re.I | re.S)
_SET_OTHER = re.compile(r"^SET\s+(?:SESSION\s+)?(?:CHARACTERISTICS|TRANSACTION|TIME\s+ZONE|NAMES)\b", re.I)
_SHOW = re.compile(r"^SHOW\s+(?P<name>[\w.]+(?:\s+[\w.]+)*)$", re.I)
_WORD = re.compile(r"^\s*(\w+)")


def local(sql: str) -> Local | None:
    """The session statement `sql` is, or None when it is a query for the engine."""
    text = code_only(sql)
    first = _WORD.match(text)
    word = first.group(1).upper() if first else ""
    if word in ("BEGIN", "START"):
        return Local("begin", "BEGIN")
    if word in ("COMMIT", "END"):
        return Local("commit", "COMMIT")
    if word in ("ROLLBACK", "ABORT"):
        if re.match(r"^ROLLBACK\s+TO\b", text, re.I):  # to a savepoint: the transaction goes on
            return Local("savepoint", "ROLLBACK")
        return Local("rollback", "ROLLBACK")
    if word in ("SAVEPOINT", "RELEASE"):
        return Local("savepoint", word)
    if word == "SET":
        found = _SET.match(text)
        if found:
            value = found.group("value").strip().strip("'\"")
            return Local("set", "SET", found.group("name").lower(), value)
        if _SET_OTHER.match(text):
            return Local("set", "SET")
    if word == "RESET":
        return Local("set", "RESET")
    if word in ("DEALLOCATE", "DISCARD", "UNLISTEN", "CLOSE"):
        return Local("noop", word)
    if word == "SHOW":
        found = _SHOW.match(text)
        if found:
            return Local("show", "SHOW", " ".join(found.group("name").lower().split()))
    return None
