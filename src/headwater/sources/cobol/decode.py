"""`CobolDecoder`: EBCDIC frames laid out by COBOL copybooks to dicts, or to Arrow tables (vectorised).

One stream may carry several record types: with a `header` layout, every frame is the header followed
by the body of its type, and `type_field` (a header field) names the type; without one, each layout
describes the whole frame and `type_field` sits at the same place in all of them. The dict key of
`layouts` is the type's value in that field (e.g. "T031"); with a single layout and no `type_field`
every frame is of that type.

Outputs (both paths give the same values; tests check it):
- one column per elementary field (snake_case names, see `plan`), lists for OCCURS;
- `_record_type` when there are several types;
- `_corrupt_fields`: the columns whose bytes did not decode (their value is null; the record is kept,
  Cobrix's rule). A REDEFINES branch that its discriminator did not select is null and not corrupt.
A frame that cannot be laid out at all (unknown type, shorter than its layout, an OCCURS DEPENDING ON
counter out of range or corrupt) is reported per frame: `decode_batch` / `decode_arrow` return it in
`errors` ({frame index: reason}) so the caller quarantines that frame alone; `decode_one` and `decode`
raise `FrameError`. Bytes after the end of a layout are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from headwater.core.errors import RecordError
from headwater.sources.cobol.copybook import CobolError, CopybookError, Layout, cobol_key, load_copybook
from headwater.sources.cobol.fields import BAD, TextTable, arrow_type, scalar_codec
from headwater.sources.cobol.plan import Compiled, Leaf

CODE_PAGES = ("cp037", "cp1047", "cp273", "cp277", "cp278", "cp280", "cp284", "cp285", "cp297", "cp500",
              "cp1140", "cp1141", "cp1142", "cp1143", "cp1144", "cp1145", "cp1146", "cp1147", "cp1148")  # fmt: skip


class FrameError(RecordError, CobolError):
    """One frame cannot be decoded (quarantine it; the others are fine)."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason if index is None else f"frame {index}: {reason}")
        self.reason = reason
        self.index = index


@dataclass
class DecodedBatch:
    """`records[i]` is frame i's dict, or None when `errors[i]` says why it could not be decoded."""

    records: list[dict[str, Any] | None]
    errors: dict[int, str] = field(default_factory=dict)


@dataclass
class ArrowBatch:
    """One table per record type; `indices[type][row]` is the frame the row came from (input order)."""

    tables: dict[str, pa.Table]
    indices: dict[str, np.ndarray]
    errors: dict[int, str] = field(default_factory=dict)


_Op = tuple[Leaf, str, Callable[[bytes], Any], int, int, list[tuple[int, int]]]


class _Type:
    """One record type: its compiled layout, scalar codecs and per-ODO-counts plans."""

    def __init__(self, name: str, compiled: Compiled, decoder: CobolDecoder) -> None:
        self.name = name
        self.compiled = compiled
        self.codecs = [
            scalar_codec(leaf.item, decoder.code_page, decoder.trim, decoder.float_format) for leaf in compiled.leaves
        ]
        self.plans: dict[tuple[int, ...], list[_Op]] = {}
        self.schema_types = [self._arrow_type(leaf) for leaf in compiled.leaves]

    @staticmethod
    def _arrow_type(leaf: Leaf) -> pa.DataType:
        dtype = arrow_type(leaf.item)
        for _ in leaf.dims:
            dtype = pa.list_(dtype)
        return dtype

    def plan(self, counts: tuple[int, ...]) -> list[_Op]:
        ops = self.plans.get(counts)
        if ops is None:
            c = self.compiled
            ops = [
                (leaf, leaf.column, self.codecs[leaf.index], c.offset(leaf, counts), leaf.item.storage,
                 c.resolved_dims(leaf, counts))
                for leaf in c.leaves
            ]  # fmt: skip
            self.plans[counts] = ops
        return ops

    def counts(self, frame: bytes) -> tuple[int, ...]:
        """The OCCURS DEPENDING ON counts of a frame (FrameError when a counter is unusable)."""
        c = self.compiled
        counts: list[int] = [0] * len(c.odos)
        for odo in c.odos:
            leaf = c.leaves[odo.counter]
            at = c.offset(leaf, tuple(counts))
            raw = frame[at : at + leaf.item.storage]
            if len(raw) < leaf.item.storage:
                raise FrameError(f"{len(frame)} bytes: too short for {self.name} (ends inside {leaf.column})")
            value = self.codecs[leaf.index](raw)
            if value is BAD or value is None:
                raise FrameError(f"{leaf.column} (the OCCURS DEPENDING ON counter) does not decode")
            if not odo.minimum <= value <= odo.maximum:
                raise FrameError(f"{leaf.column}={value} is outside OCCURS {odo.minimum} TO {odo.maximum}")
            counts[odo.index] = value
        return tuple(counts)


class CobolDecoder:
    """Decode frames of one or several record types (see the module docstring)."""

    def __init__(
        self,
        layouts: dict[str, Layout],
        code_page: str = "cp037",
        type_field: str | None = None,
        header: Layout | None = None,
        redefines: dict[str, Any] | None = None,
        trim: bool = True,
        variable_size_occurs: bool = True,
        float_format: str = "ibm",
    ) -> None:
        if not layouts:
            raise CopybookError("no record layout given")
        try:
            import ebcdic  # noqa: F401  (registers cp1047, cp297, cp1147, ...)

            bytes(range(256)).decode(code_page)
        except (LookupError, UnicodeDecodeError) as exc:
            raise CopybookError(f"unknown code page {code_page!r} (try {', '.join(CODE_PAGES)})") from exc
        if float_format not in ("ibm", "ieee"):
            raise CopybookError(f"float_format must be ibm or ieee, not {float_format!r}")
        self.code_page, self.trim, self.float_format = code_page, trim, float_format
        self.table = TextTable(code_page)
        self.multi = len(layouts) > 1
        if self.multi and not type_field:
            raise CopybookError("several record layouts need a type_field to tell them apart")
        parts = [header] if header else []
        self.types = {
            str(name): _Type(str(name), Compiled([*parts, layout], variable_size_occurs, str(name)), self)
            for name, layout in layouts.items()
        }
        if redefines:
            found: set[str] = set()
            for t in self.types.values():
                found |= t.compiled.select(redefines)
            missing = set(redefines) - found
            if missing:
                raise CopybookError(f"redefines: no item {', '.join(sorted(missing))} is redefined in these layouts")
        self.header_type = _Type("header", Compiled([header], variable_size_occurs), self) if header else None
        self.type_slot: tuple[int, int, Callable[[bytes], Any], str] | None = None
        if type_field:
            self.type_slot = self._find_type_field(type_field, header)
        self._type_cache: dict[bytes, str | None] = {}
        self.record_format = "fixed"
        self.file_record_length: int | None = None

    def _find_type_field(self, name: str, header: Layout | None) -> tuple[int, int, Callable[[bytes], Any], str]:
        sources = [self.header_type] if self.header_type else list(self.types.values())
        slots = set()
        for t in sources:
            assert t is not None
            leaf = next((lf for lf in t.compiled.leaves if lf.item.name == cobol_key(name) or lf.column == name), None)
            if leaf is None:
                raise CopybookError(
                    f"type_field {name!r} is not a field of the {'header' if header else t.name} layout"
                )
            if leaf.dims or leaf.odo_before or leaf.branches:
                raise CopybookError(f"type_field {name!r} must have a fixed place (not in OCCURS or REDEFINES)")
            slots.add((leaf.base, leaf.item.storage, leaf.item.kind, leaf.column))
        if len(slots) > 1:
            raise CopybookError(f"type_field {name!r} is not at the same place in every layout")
        base, size, _, column = slots.pop()
        t0 = sources[0]
        assert t0 is not None
        leaf = next(lf for lf in t0.compiled.leaves if lf.base == base and lf.column == column)
        return base, size, t0.codecs[leaf.index], column

    @classmethod
    def from_options(cls, options: dict[str, Any], base_dir: Path | str = ".") -> CobolDecoder:
        """Build a decoder from a source's `cobol` options (relative paths are under `base_dir`).

        - `copybook`: path of the copybook of the only record type, or
        - `copybooks`: {type value: path}, one copybook per record type (needs `type_field`);
        - `header_copybook`: path of a header that precedes every record's body (optional);
        - `type_field`: the field (COBOL or column name) whose value names the record type;
        - `code_page`: EBCDIC code page, default cp037 (cp1047, cp297 and cp1147 for French with €, cp500, ...);
        - `redefines`: {redefined item: {field = discriminator, cases = {value = branch item}}};
          a REDEFINES area not listed decodes every branch;
        - `record_format`: fixed | rdw | bdw, for files (read by `records.iter_records`), default fixed;
        - `record_length`: bytes per record for fixed-length files (default: the layout's length);
        - `trim`: strip trailing spaces from text (default true);
        - `variable_size_occurs`: an OCCURS DEPENDING ON array takes only the bytes of its count (default
          true); false: always its maximum (fixed-length records, Cobrix's default);
        - `float_format`: ibm (default) or ieee, for COMP-1 / COMP-2;
        - `copybook_format`: auto (default) | fixed | free.
        """
        known = {"copybook", "copybooks", "header_copybook", "type_field", "code_page", "redefines", "record_format",
                 "record_length", "trim", "variable_size_occurs", "float_format", "copybook_format"}  # fmt: skip
        unknown = set(options) - known
        if unknown:
            raise CopybookError(f"unknown cobol option(s): {', '.join(sorted(unknown))}")
        base = Path(base_dir)
        fmt = str(options.get("copybook_format", "auto"))

        def load(path: Any) -> Layout:
            p = Path(str(path))
            return load_copybook(p if p.is_absolute() else base / p, fmt)

        if options.get("copybooks"):
            if not isinstance(options["copybooks"], dict):
                raise CopybookError("copybooks must be a table {type value = path}")
            layouts = {str(k): load(v) for k, v in options["copybooks"].items()}
        elif options.get("copybook"):
            layouts = {"record": load(options["copybook"])}
        else:
            raise CopybookError("give copybook or copybooks")
        if options.get("record_format", "fixed") not in ("fixed", "rdw", "bdw"):
            raise CopybookError(f"record_format must be fixed, rdw or bdw, not {options['record_format']!r}")
        header = load(options["header_copybook"]) if options.get("header_copybook") else None
        decoder = cls(
            layouts,
            code_page=str(options.get("code_page", "cp037")),
            type_field=options.get("type_field"),
            header=header,
            redefines=options.get("redefines"),
            trim=bool(options.get("trim", True)),
            variable_size_occurs=bool(options.get("variable_size_occurs", True)),
            float_format=str(options.get("float_format", "ibm")),
        )
        decoder.record_format = str(options.get("record_format", "fixed"))
        decoder.file_record_length = int(options.get("record_length") or 0) or None
        return decoder

    def split(self, stream: BinaryIO) -> Iterator[bytes]:
        """The records of a file (`record_format`; fixed length: `record_length`, else the longest layout)."""
        from headwater.sources.cobol.records import iter_records

        length = self.file_record_length or max(t.compiled.max_length for t in self.types.values())
        return iter_records(stream, self.record_format, length)

    # -- record types -------------------------------------------------------------------------------------
    def record_length(self, type_name: str | None = None) -> int:
        """Maximum bytes of a record of this type (the only one when None)."""
        t = self.types[type_name] if type_name else next(iter(self.types.values()))
        return t.compiled.max_length

    def columns(self, type_name: str) -> list[str]:
        """Output columns of a record type, in order."""
        t = self.types[type_name]
        return [*t.compiled.columns, *(["_record_type"] if self.multi else []), "_corrupt_fields"]

    def schema(self, type_name: str) -> pa.Schema:
        """Arrow schema of a record type's table."""
        t = self.types[type_name]
        fields = [pa.field(leaf.column, dt) for leaf, dt in zip(t.compiled.leaves, t.schema_types, strict=True)]
        if self.multi:
            fields.append(pa.field("_record_type", pa.string()))
        fields.append(pa.field("_corrupt_fields", pa.list_(pa.string())))
        return pa.schema(fields)

    def record_type(self, frame: bytes) -> str:
        """The type of a frame (FrameError when the type field is missing or unknown)."""
        if self.type_slot is None:
            return next(iter(self.types))
        at, size, codec, column = self.type_slot
        raw = frame[at : at + size]
        if raw in self._type_cache:
            found = self._type_cache[raw]
        else:
            if len(raw) < size:
                raise FrameError(f"{len(frame)} bytes: too short to hold {column}")
            value = codec(raw)
            found = None if value is BAD or value is None else str(value)
            found = found if found in self.types else None
            if len(self._type_cache) < 4096:
                self._type_cache[raw] = found
        if found is None:
            raise FrameError(f"unknown record type {raw!r} in {column}")
        return found

    # -- dicts ----------------------------------------------------------------------------------------------
    def header(self, frame: bytes) -> dict[str, Any]:
        """Only the header fields (or only the type field when there is no header), plus `_record_type`."""
        out: dict[str, Any] = {}
        if self.header_type is not None:
            out = self._decode_with(self.header_type, frame, with_corrupt=True)
        elif self.type_slot is not None:
            at, size, codec, column = self.type_slot
            value = codec(frame[at : at + size])
            out[column] = None if value is BAD else value
        try:
            out["_record_type"] = self.record_type(frame)
        except FrameError:
            out["_record_type"] = None
        return out

    def decode_one(self, frame: bytes) -> dict[str, Any]:
        """One frame to a dict (FrameError when it cannot be laid out)."""
        t = self.types[self.record_type(frame)]
        record = self._decode_with(t, frame, with_corrupt=False)
        corrupt = record.pop("_corrupt_fields")
        if self.multi:
            record["_record_type"] = t.name
        record["_corrupt_fields"] = corrupt
        return record

    def decode_batch(self, frames: Sequence[bytes], vectorised: bool | None = None) -> DecodedBatch:
        """Frames to dicts; frames that cannot be decoded are None in `records` with their reason in `errors`.

        `vectorised` (default: from 32 frames on) decodes through `decode_arrow` and converts the tables
        to dicts, about twice as fast as frame by frame; both give the same values (tests compare them).
        """
        if vectorised or (vectorised is None and len(frames) >= 32):
            arrow = self.decode_arrow(frames)
            rows: list[dict[str, Any] | None] = [None] * len(frames)
            for name, table in arrow.tables.items():
                for i, row in zip(arrow.indices[name].tolist(), table.to_pylist(), strict=True):
                    rows[i] = row
            return DecodedBatch(rows, arrow.errors)
        records: list[dict[str, Any] | None] = []
        errors: dict[int, str] = {}
        for i, frame in enumerate(frames):
            try:
                records.append(self.decode_one(frame))
            except FrameError as exc:
                records.append(None)
                errors[i] = exc.reason
        return DecodedBatch(records, errors)

    def decode(self, frames: Sequence[bytes]) -> list[dict[str, Any]]:
        """Frames to dicts; FrameError (with its index) at the first frame that cannot be decoded."""
        out = []
        for i, frame in enumerate(frames):
            try:
                out.append(self.decode_one(frame))
            except FrameError as exc:
                raise FrameError(exc.reason, i) from None
        return out

    def _decode_with(self, t: _Type, frame: bytes, with_corrupt: bool) -> dict[str, Any]:
        counts = t.counts(frame) if t.compiled.odos else ()
        need = t.compiled.length(counts)
        if len(frame) < need:
            raise FrameError(f"{len(frame)} bytes: too short for {t.name} ({need} bytes)")
        selected = self._selected(t, frame, counts) if t.compiled.areas else None
        out: dict[str, Any] = {}
        corrupt: list[str] = []
        for leaf, column, codec, at, size, dims in t.plan(counts):
            if selected is not None and leaf.branches and not _chosen(leaf, selected):
                out[column] = None
                continue
            if not dims:
                value = codec(frame[at : at + size])
                if value is BAD:
                    value = None
                    corrupt.append(column)
            else:
                value, bad = _gather(frame, codec, at, size, dims)
                if bad:
                    corrupt.append(column)
            out[column] = value
        out["_corrupt_fields"] = corrupt
        return out

    def _selected(self, t: _Type, frame: bytes, counts: tuple[int, ...]) -> list[str | bool | None]:
        """Per REDEFINES area: the chosen branch, None when none matched, True when all branches decode."""
        out: list[str | bool | None] = []
        c = t.compiled
        for area in c.areas:
            if area.selector is None:
                out.append(True)
                continue
            leaf = c.leaves[area.selector]
            at = c.offset(leaf, counts)
            value = t.codecs[leaf.index](frame[at : at + leaf.item.storage])
            out.append(None if value is BAD or value is None else area.cases.get(_case_key(value)))
        return out

    # -- Arrow ----------------------------------------------------------------------------------------------
    def decode_arrow(self, frames: Sequence[bytes]) -> ArrowBatch:
        """Frames to one Arrow table per record type (rows in input order), vectorised with numpy (`arrow`)."""
        from headwater.sources.cobol.arrow import decode_arrow

        tables, indices, errors = decode_arrow(self, frames)
        return ArrowBatch(tables, indices, errors)


def _case_key(value: Any) -> str:
    return str(value)


def _chosen(leaf: Leaf, selected: list[str | bool | None]) -> bool:
    for area, branch in leaf.branches:
        choice = selected[area]
        if choice is not True and choice != branch:
            return False
    return True


def _gather(frame: bytes, codec: Callable[[bytes], Any], at: int, size: int, dims: list[tuple[int, int]]) -> Any:
    count, stride = dims[0]
    out = []
    bad = False
    for k in range(count):
        start = at + k * stride
        if len(dims) > 1:
            value, inner_bad = _gather(frame, codec, start, size, dims[1:])
            bad = bad or inner_bad
        else:
            value = codec(frame[start : start + size])
            if value is BAD:
                value, bad = None, True
        out.append(value)
    return out, bad
