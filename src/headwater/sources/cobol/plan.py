"""A layout (header + body copybooks) compiled for decoding: leaves with offsets, ODO arrays, REDEFINES areas.

Offsets are linear in the OCCURS DEPENDING ON counts: a leaf sits at `base + sum(element size x count)`
over the variable arrays wholly before it, so one pass over the copybook gives every offset for any
counts (`Compiled.offset`). An ODO array may not sit inside another OCCURS or a REDEFINES area, its
counter must be an integer field before it, and it makes the record variable-length unless
`variable_size_occurs` is false (then it always takes its maximum size, as Cobrix does by default).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from headwater.sources.cobol.copybook import BINARY, PACKED, TEXT, ZONED, CopybookError, Item, Layout, cobol_key, snake


@dataclass
class Leaf:
    """An elementary field, decoded into one column (a list column when inside OCCURS)."""

    item: Item
    index: int
    column: str
    path: tuple[str, ...]
    base: int
    odo_before: tuple[int, ...]
    dims: tuple[tuple[int, int, int | None], ...]
    """(count, stride, ODO index or None) from the outermost OCCURS inwards; count is the maximum."""
    branches: tuple[tuple[int, str], ...]
    """(area, branch name) of every REDEFINES area this leaf sits in: decoded only when all are selected."""


@dataclass
class Odo:
    index: int
    item: Item
    minimum: int
    maximum: int
    element: int
    variable: bool
    counter: int = -1
    first_leaf: int = -1


@dataclass
class Area:
    """A redefined item and its REDEFINES: branches share bytes; a selector picks one per record."""

    index: int
    name: str
    branches: list[str]
    selector: int | None = None
    """Leaf index of the discriminator, when configured."""
    cases: dict[str, str] = field(default_factory=dict)


def _size(item: Item) -> int:
    """Static bytes of one occurrence of an item (no ODO may be inside)."""
    if not item.children:
        return item.storage
    total = 0
    for child in item.children:
        if child.redefines:
            continue
        if child.depending_on:
            raise CopybookError(f"OCCURS DEPENDING ON {child.depending_on} inside an OCCURS or REDEFINES", child.line)
        size = _size(child) * (child.occurs or 1)
        for other in child.redefined_by:
            size = max(size, _size(other) * (other.occurs or 1))
        total += size
    return total


class Compiled:
    """The decoding plan of one record type: every leaf with its offset rule, ODO arrays, REDEFINES areas."""

    def __init__(self, parts: list[Layout], variable_size_occurs: bool = True, name: str = "") -> None:
        self.name = name
        self.variable = variable_size_occurs
        self.leaves: list[Leaf] = []
        self.odos: list[Odo] = []
        self.areas: list[Area] = []
        self._open: list[int] = []
        self._source = parts[-1].source if parts else "copybook"
        offset = 0
        self._parts: list[tuple[int, int]] = []
        for part in parts:
            self._source = part.source
            first = len(self.leaves)
            for item in part.items:
                offset += self._place(item, offset, (), (), ())
            self._parts.append((first, len(self.leaves)))
        self.base_length = offset
        self._name_columns()
        self._link_odos()
        self.columns = [leaf.column for leaf in self.leaves]

    # -- layout ------------------------------------------------------------------------------------------
    def _fail(self, message: str, item: Item) -> None:
        raise CopybookError(message, item.line, self._source)

    def _place(self, item: Item, offset: int, dims: tuple, branches: tuple, path: tuple) -> int:
        if item.redefines:
            return 0
        if not item.redefined_by:
            return self._place_one(item, offset, dims, branches, path)
        area = Area(len(self.areas), item.name, [item.name] + [r.name for r in item.redefined_by])
        self.areas.append(area)
        size = 0
        for member in [item, *item.redefined_by]:
            before = len(self.odos)
            used = self._place_one(member, offset, dims, (*branches, (area.index, member.name)), path)
            if len(self.odos) != before:
                self._fail("OCCURS DEPENDING ON inside a REDEFINES area is not supported", member)
            size = max(size, used)
        return size

    def _place_one(self, item: Item, offset: int, dims: tuple, branches: tuple, path: tuple) -> int:
        if item.occurs is None:
            return self._body(item, offset, dims, branches, path)
        try:
            element = _size(item)
        except CopybookError as exc:
            raise CopybookError(str(exc).split(": ", 1)[-1], exc.line, self._source) from None
        if item.depending_on is None:
            self._body(item, offset, (*dims, (item.occurs, element, None)), branches, path)
            return element * item.occurs
        if dims or branches:
            self._fail("OCCURS DEPENDING ON inside an OCCURS or a REDEFINES area is not supported", item)
        odo = Odo(len(self.odos), item, item.occurs_min or 0, item.occurs, element, self.variable)
        self.odos.append(odo)
        odo.first_leaf = len(self.leaves)
        self._body(item, offset, ((item.occurs, element, odo.index),), branches, path)
        if not self.variable:
            return element * item.occurs
        self._open.append(odo.index)
        return 0

    def _body(self, item: Item, offset: int, dims: tuple, branches: tuple, path: tuple) -> int:
        if not item.children:
            if not item.filler:
                leaf = Leaf(item, len(self.leaves), "", (*path, item.name), offset, tuple(self._open), dims, branches)
                self.leaves.append(leaf)
            return item.storage
        running = offset
        inner = (*path, item.name)
        for child in item.children:
            running += self._place(child, running, dims, branches, inner)
        return running - offset

    def _name_columns(self) -> None:
        """Leaf names in snake_case; a clash takes the parent group's name as prefix (earlier parts keep theirs)."""
        taken: set[str] = set()
        for part in self._parts:
            leaves = self.leaves[part[0] : part[1]]
            paths = [[p for p in leaf.path if p != "FILLER"] for leaf in leaves]
            depth = [0] * len(leaves)

            def name(i: int, paths: list = paths, depth: list = depth) -> str:
                return snake("-".join(paths[i][len(paths[i]) - 1 - depth[i] :]))

            for _ in range(64):
                counts = Counter(name(i) for i in range(len(leaves)))
                grown = False
                for i in range(len(leaves)):
                    if (counts[name(i)] > 1 or name(i) in taken) and depth[i] + 1 < len(paths[i]):
                        depth[i] += 1
                        grown = True
                if not grown:
                    break
            for i, leaf in enumerate(leaves):
                column, suffix = name(i), 1
                while column in taken:
                    suffix += 1
                    column = f"{name(i)}_{suffix}"
                leaf.column = column
                taken.add(column)

    def _link_odos(self) -> None:
        for odo in self.odos:
            wanted = odo.item.depending_on
            candidates = [leaf for leaf in self.leaves[: odo.first_leaf] if leaf.item.name == wanted and not leaf.dims]
            if not candidates:
                self._fail(f"OCCURS DEPENDING ON {wanted}: no field {wanted} before it (outside any OCCURS)", odo.item)
            counter = candidates[-1]
            if counter.item.kind not in (ZONED, PACKED, BINARY) or counter.item.scale:
                self._fail(f"OCCURS DEPENDING ON {wanted}: the counter must be an integer field", odo.item)
            if counter.branches:
                self._fail(f"OCCURS DEPENDING ON {wanted}: the counter may not be inside a REDEFINES area", odo.item)
            odo.counter = counter.index

    def select(self, redefines: dict[str, Any]) -> set[str]:
        """Attach discriminators ({redefined item: {field, cases}}); returns the configured names found here."""
        found: set[str] = set()
        for key, rule in redefines.items():
            area = next((a for a in self.areas if a.name == cobol_key(key)), None)
            if area is None:
                continue
            found.add(key)
            if not isinstance(rule, dict) or "field" not in rule or not isinstance(rule.get("cases"), dict):
                raise CopybookError(f"redefines {key!r}: give {{field = ..., cases = {{value = branch}}}}")
            wanted = cobol_key(str(rule["field"]))
            selector = next(
                (leaf for leaf in self.leaves if (leaf.item.name == wanted or leaf.column == rule["field"])),
                None,
            )
            if selector is None or selector.dims:
                raise CopybookError(f"redefines {key!r}: no field {rule['field']!r} (outside any OCCURS) to select by")
            if any(a == area.index for a, _ in selector.branches):
                raise CopybookError(f"redefines {key!r}: the selecting field {rule['field']!r} is inside the area")
            cases = {}
            for value, branch in rule["cases"].items():
                if cobol_key(str(branch)) not in area.branches:
                    raise CopybookError(f"redefines {key!r}: {branch!r} is not one of {', '.join(area.branches)}")
                cases[str(value)] = cobol_key(str(branch))
            area.selector, area.cases = selector.index, cases
        return found

    # -- offsets ------------------------------------------------------------------------------------------
    def length(self, counts: tuple[int, ...]) -> int:
        """Record length for these ODO counts (one per ODO array, in order)."""
        total = self.base_length
        for odo in self.odos:
            if odo.variable:
                total += odo.element * counts[odo.index]
        return total

    def offset(self, leaf: Leaf, counts: tuple[int, ...]) -> int:
        off = leaf.base
        for j in leaf.odo_before:
            off += self.odos[j].element * counts[j]
        return off

    def resolved_dims(self, leaf: Leaf, counts: tuple[int, ...]) -> list[tuple[int, int]]:
        """(count, stride) per OCCURS level for these ODO counts."""
        return [(count if j is None else counts[j], stride) for count, stride, j in leaf.dims]

    @property
    def max_length(self) -> int:
        return self.length(tuple(o.maximum for o in self.odos))

    def is_text(self, leaf: Leaf) -> bool:
        return leaf.item.kind == TEXT
