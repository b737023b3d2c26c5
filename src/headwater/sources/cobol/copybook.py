"""COBOL copybooks to layouts: the items of a record with their PICTURE, USAGE, OCCURS and REDEFINES.

`parse_copybook(text)` reads fixed-format (sequence area in columns 1-6, indicator in column 7, code
in columns 8-72) or free-format text and returns a `Layout`: a tree of `Item`s. Byte offsets are
computed when a layout is compiled for decoding (`headwater.sources.cobol.plan`), because a header
copybook may come first and an OCCURS DEPENDING ON shifts everything after it.

Supported: levels 01-49 (66 RENAMES, 77 and 88 condition names are skipped), PIC X / A / 9 / S / V
with repeat counts, USAGE DISPLAY (zoned decimal, overpunched sign, SIGN LEADING|TRAILING
[SEPARATE]), COMP / COMP-4 / BINARY / COMP-5 (big-endian, 2/4/8 bytes for 1-4/5-9/10-18 digits),
COMP-3 / PACKED-DECIMAL, COMP-1 / COMP-2 (IBM hexadecimal or IEEE floating point), USAGE on a group
(inherited), REDEFINES, OCCURS n [TIMES], OCCURS m TO n [TIMES] DEPENDING ON x, FILLER, VALUE,
JUSTIFIED, SYNCHRONIZED (no slack bytes), BLANK WHEN ZERO. Edited pictures (Z, ., +, CR, ...) and P
are refused with a CopybookError naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headwater.core.errors import SourceError


class CobolError(SourceError):
    """Root of the COBOL format's errors."""


class CopybookError(CobolError):
    """A copybook cannot be parsed or laid out; the message names the line and the problem."""

    def __init__(self, message: str, line: int | None = None, source: str | None = None) -> None:
        where = f"{source or 'copybook'}" + (f", line {line}" if line else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.source = source


TEXT, ZONED, PACKED, BINARY, FLOAT, GROUP = "text", "zoned", "packed", "binary", "float", "group"

_USAGES = {
    "DISPLAY": "display",
    "COMP": "binary",
    "COMPUTATIONAL": "binary",
    "COMP-4": "binary",
    "COMPUTATIONAL-4": "binary",
    "BINARY": "binary",
    "COMP-5": "comp5",
    "COMPUTATIONAL-5": "comp5",
    "COMP-3": "packed",
    "COMPUTATIONAL-3": "packed",
    "PACKED-DECIMAL": "packed",
    "COMP-1": "float",
    "COMPUTATIONAL-1": "float",
    "COMP-2": "double",
    "COMPUTATIONAL-2": "double",
}
_IGNORED_WORDS = {"GLOBAL", "EXTERNAL", "IS", "ARE"}


@dataclass
class Item:
    """One entry of a copybook: a group (with children) or an elementary field."""

    level: int
    name: str
    line: int
    kind: str = GROUP
    usage: str = "display"
    digits: int = 0
    """For numbers: count of 9s; for text: characters."""
    scale: int = 0
    signed: bool = False
    sign_separate: bool = False
    sign_leading: bool = False
    occurs: int | None = None
    occurs_min: int | None = None
    depending_on: str | None = None
    redefines: str | None = None
    pic: str | None = None
    children: list[Item] = field(default_factory=list)
    redefined_by: list[Item] = field(default_factory=list)
    """Items that REDEFINE this one (set on the redefined item)."""

    @property
    def filler(self) -> bool:
        return self.name == "FILLER"

    @property
    def storage(self) -> int:
        """Bytes of one occurrence of an elementary item."""
        if self.kind == TEXT:
            return self.digits
        if self.kind == ZONED:
            return self.digits + (1 if self.sign_separate else 0)
        if self.kind == PACKED:
            return self.digits // 2 + 1
        if self.kind == BINARY:
            return 2 if self.digits <= 4 else 4 if self.digits <= 9 else 8
        if self.kind == FLOAT:
            return 4 if self.usage == "float" else 8
        raise ValueError("a group has no storage of its own")


@dataclass
class Layout:
    """The items of one copybook (usually one level-01 record)."""

    items: list[Item]
    source: str = "copybook"

    def walk(self) -> list[Item]:
        """Every item, depth first, in copybook order."""
        out: list[Item] = []

        def visit(item: Item) -> None:
            out.append(item)
            for child in item.children:
                visit(child)

        for item in self.items:
            visit(item)
        return out

    def find(self, name: str) -> Item | None:
        """The first item called `name` (COBOL name, any case, or its snake_case column name)."""
        wanted = cobol_key(name)
        for item in self.walk():
            if item.name == wanted:
                return item
        return None


def cobol_key(name: str) -> str:
    """`bet_amount` or `Bet-Amount` -> `BET-AMOUNT`."""
    return name.strip().upper().replace("_", "-")


def snake(name: str) -> str:
    """`BET-AMOUNT` -> `bet_amount`."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


# -- source text to statements ------------------------------------------------------------------------
def _is_fixed(lines: list[str]) -> bool:
    """Fixed format when every line with code has an indicator-area character in column 7."""
    seen = False
    for line in lines:
        if not line.strip() or line.lstrip().startswith("*"):
            continue
        if len(line) < 7 or line[6] not in " *-/Dd$":
            return False
        seen = True
    return seen


def _code_lines(text: str, fmt: str) -> list[tuple[int, str]]:
    """(line number, code) for every line that carries code, comments removed."""
    lines = text.expandtabs(8).splitlines()
    fixed = _is_fixed(lines) if fmt == "auto" else fmt == "fixed"
    out: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if fixed:
            if len(line) < 7 or line[6] in "*/":
                continue
            if line[6] in "Dd$":
                continue
            code = line[7:72]
            if line[6] == "-" and out:
                # Continuation of a literal: the text goes on after the opening quote.
                stripped = code.lstrip()
                if stripped[:1] in "'\"":
                    stripped = stripped[1:]
                prev_number, prev = out[-1]
                out[-1] = (prev_number, prev.rstrip() + stripped)
                continue
        else:
            if line.lstrip().startswith("*"):
                continue
            code = line
        if "*>" in code:
            code = code[: code.index("*>")]
        if code.strip():
            out.append((number, code))
    return out


_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|[^\s]+""")


def _statements(text: str, fmt: str) -> list[tuple[int, list[str]]]:
    """Statements (ended by a period) as (first line, tokens)."""
    out: list[tuple[int, list[str]]] = []
    tokens: list[str] = []
    start = 0
    for number, code in _code_lines(text, fmt):
        for match in _TOKEN.finditer(code):
            token = match.group(0)
            if not tokens:
                start = number
            ends = token.endswith(".") and token[0] not in "'\""
            if ends:
                token = token[:-1]
            if token:
                tokens.append(token)
            if ends:
                out.append((start, tokens))
                tokens = []
    if tokens:
        out.append((start, tokens))
    return out


# -- PICTURE ------------------------------------------------------------------------------------------
_REPEAT = re.compile(r"(.)\((\d+)\)")


def _expand_picture(pic: str) -> str:
    return _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), pic.upper())


def _apply_picture(item: Item, pic: str, fail: Any) -> None:
    expanded = _expand_picture(pic)
    if "(" in expanded or ")" in expanded:
        fail(f"cannot read PIC {pic}")
    if set(expanded) <= set("XA9") and ("X" in expanded or "A" in expanded):
        item.kind, item.digits = TEXT, len(expanded)
        return
    if "P" in expanded:
        fail(f"PIC {pic}: the scaling position P is not supported")
    if not set(expanded) <= set("S9V"):
        fail(f"PIC {pic}: edited pictures are not supported (only X, A, 9, S, V)")
    body = expanded
    if body.startswith("S"):
        item.signed, body = True, body[1:]
    if "S" in body or body.count("V") > 1:
        fail(f"PIC {pic}: S must come first and V at most once")
    integer, _, fraction = body.partition("V")
    item.digits, item.scale = len(integer) + len(fraction), len(fraction)
    if item.digits == 0:
        fail(f"PIC {pic} has no digits")
    item.kind = ZONED


def _finish_usage(item: Item, fail: Any) -> None:
    """Turn the picture and usage of an elementary item into its kind, checking they fit."""
    usage = item.usage
    if usage in ("float", "double"):
        if item.kind not in (GROUP, ZONED):
            fail("COMP-1/COMP-2 items take no alphanumeric PIC")
        item.kind, item.digits, item.scale, item.signed = FLOAT, 0, 0, True
        return
    if item.kind == GROUP:
        fail(f"{item.name} has no PIC clause")
    if item.kind == TEXT:
        if usage != "display":
            fail(f"PIC X/A items cannot be USAGE {usage.upper()}")
        return
    if usage == "packed":
        item.kind = PACKED
    elif usage in ("binary", "comp5"):
        if item.digits > 18:
            fail(f"binary items have at most 18 digits (got {item.digits})")
        item.kind = BINARY
    elif item.digits > 38:
        fail(f"at most 38 digits (got {item.digits})")
    if item.sign_separate and item.kind != ZONED:
        fail("SIGN SEPARATE applies to USAGE DISPLAY numbers only")


# -- statements to items ------------------------------------------------------------------------------
def _parse_statement(line: int, tokens: list[str], source: str, inherited: str | None) -> Item | None:
    def fail(message: str) -> None:
        raise CopybookError(message, line, source)

    if not tokens[0].isdigit():
        fail(f"expected a level number, got {tokens[0]!r}")
    level = int(tokens[0])
    if level in (66, 77, 88):
        return None
    if not 1 <= level <= 49:
        fail(f"level {level} is not 01-49, 66, 77 or 88")
    rest = tokens[1:]
    name = "FILLER"
    if rest and rest[0].upper() not in _CLAUSE_WORDS:
        name = rest.pop(0).upper()
    if not re.fullmatch(r"[A-Z0-9][A-Z0-9_-]*", name):
        fail(f"{name!r} is not a COBOL data name")
    item = Item(level=level, name=name, line=line)
    if inherited:
        item.usage = inherited
    pic: str | None = None
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(rest):
            fail(f"{name}: clause ends too early")
        word = rest[i]
        i += 1
        return word

    def peek() -> str:
        return rest[i].upper() if i < len(rest) else ""

    while i < len(rest):
        word = take().upper()
        if word in _IGNORED_WORDS:
            continue
        if word in ("PIC", "PICTURE"):
            if peek() == "IS":
                take()
            pic = take()
        elif word == "USAGE":
            if peek() == "IS":
                take()
            usage = take().upper()
            if usage not in _USAGES:
                fail(f"unknown USAGE {usage}")
            item.usage = _USAGES[usage]
        elif word in _USAGES:
            item.usage = _USAGES[word]
        elif word == "REDEFINES":
            item.redefines = take().upper()
        elif word == "OCCURS":
            first = take()
            if not first.isdigit():
                fail(f"OCCURS needs a number, got {first!r}")
            item.occurs = int(first)
            if peek() == "TO":
                take()
                last = take()
                if not last.isdigit():
                    fail(f"OCCURS {first} TO needs a number, got {last!r}")
                item.occurs_min, item.occurs = int(first), int(last)
            if peek() == "TIMES":
                take()
            if peek() == "DEPENDING":
                take()
                if peek() == "ON":
                    take()
                item.depending_on = take().upper()
            elif item.occurs_min is not None:
                fail("OCCURS m TO n needs DEPENDING ON")
            while peek() in ("ASCENDING", "DESCENDING", "INDEXED"):
                take()
                while i < len(rest) and peek() not in _CLAUSE_WORDS:
                    take()
            if item.occurs < 1 or (item.occurs_min is not None and item.occurs_min > item.occurs):
                fail(f"bad OCCURS range for {name}")
        elif word == "SIGN":
            continue
        elif word in ("LEADING", "TRAILING"):
            item.sign_leading = word == "LEADING"
            if peek() == "SEPARATE":
                take()
                item.sign_separate = True
                if peek() == "CHARACTER":
                    take()
        elif word in {"VALUE", "VALUES"}:
            if peek() in ("IS", "ARE"):
                take()
            take()
            while peek() in ("THRU", "THROUGH"):
                take()
                take()
        elif word in ("JUST", "JUSTIFIED", "SYNC", "SYNCHRONIZED"):
            if peek() in ("RIGHT", "LEFT"):
                take()
        elif word == "BLANK":
            if peek() == "WHEN":
                take()
            take()
        else:
            fail(f"unexpected {rest[i - 1]!r}")
    if pic is not None:
        _apply_picture(item, pic, fail)
    item.pic = pic
    return item


_CLAUSE_WORDS = {
    "PIC", "PICTURE", "USAGE", "REDEFINES", "OCCURS", "SIGN", "LEADING", "TRAILING", "VALUE", "VALUES",
    "JUST", "JUSTIFIED", "SYNC", "SYNCHRONIZED", "BLANK", "GLOBAL", "EXTERNAL", "IS", *_USAGES,
}  # fmt: skip


def parse_copybook(text: str, source: str = "copybook", fmt: str = "auto") -> Layout:
    """Parse copybook text (`fmt`: auto, fixed or free) into a Layout."""
    if fmt not in ("auto", "fixed", "free"):
        raise CopybookError(f"format must be auto, fixed or free, not {fmt!r}", None, source)
    top: list[Item] = []
    stack: list[Item] = []
    last_line = 0
    for line, tokens in _statements(text, fmt):
        last_line = line
        inherited = None
        if tokens and tokens[0].isdigit():
            level = int(tokens[0])
            while stack and stack[-1].level >= level:
                stack.pop()
            inherited = stack[-1].usage if stack and stack[-1].usage != "display" else None
        item = _parse_statement(line, tokens, source, inherited)
        if item is None:
            continue
        if stack:
            parent = stack[-1]
            if parent.pic is not None or parent.kind != GROUP:
                raise CopybookError(f"{parent.name} has a PIC but also subordinate items", item.line, source)
            siblings = parent.children
        else:
            if top and item.level == 1 and top[0].level == 1:
                raise CopybookError(
                    "a second level-01 record: give each record type its own copybook", item.line, source
                )
            if top and item.level != top[0].level and top[0].level != 1:
                raise CopybookError(f"level {item.level} does not fit under level {top[0].level}", item.line, source)
            siblings = top
        if item.redefines:
            target = next((s for s in reversed(siblings) if s.name == item.redefines and s.redefines is None), None)
            if target is None:
                raise CopybookError(
                    f"{item.name} REDEFINES {item.redefines}, which is not an earlier item of the same level",
                    item.line,
                    source,
                )
            if item.level == 1:
                raise CopybookError("REDEFINES at level 01 is not supported", item.line, source)
            target.redefined_by.append(item)
        if item.occurs is not None and item.level == 1:
            raise CopybookError("OCCURS is not allowed at level 01", item.line, source)
        siblings.append(item)
        stack.append(item)
    if not top:
        raise CopybookError("no data items found", last_line or None, source)
    layout = Layout(top, source)
    for item in layout.walk():
        if not item.children:

            def fail(message: str, at: int = item.line) -> None:
                raise CopybookError(message, at, source)

            _finish_usage(item, fail)
    return layout


def load_copybook(path: str | Path, fmt: str = "auto", encoding: str = "utf-8") -> Layout:
    """Read and parse a copybook file."""
    p = Path(path)
    try:
        text = p.read_text(encoding=encoding)
    except OSError as exc:
        raise CopybookError(f"cannot read: {exc.strerror or exc}", None, str(p)) from exc
    except UnicodeDecodeError as exc:
        raise CopybookError(f"not {encoding} text: {exc}", None, str(p)) from exc
    return parse_copybook(text, str(p), fmt)
