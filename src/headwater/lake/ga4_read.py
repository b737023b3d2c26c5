"""Reading GA4 export files (Parquet, Avro, NDJSON, gzip'd or not) as blocks of rows in the export schema.

The format is told by the file's first bytes (`PAR1`, Avro's `Obj\\x01`, gzip), else by its name. A file's
day and kind come from BigQuery's table name, which every export path keeps (`events_20250101-*.parquet`,
`events_intraday_20250101.json.gz`). A record that cannot be read at all (a broken JSON line) is a
`Rejected` with its number and raw text; a row that reads but has a value of the wrong type is in its
block's `bad` with the reason; a Parquet or Avro file that is not whole fails whole. NDJSON is parsed by
Arrow block by block (INT64 as strings, as BigQuery writes them, or as numbers); a block that does not
parse is split in halves until the lines that do not parse are alone.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import gzip
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import duckdb
import fastavro
import orjson
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from headwater.core.errors import ImportFileError
from headwater.lake.ga4_schema import EXPORT, conform_table, wire_schema

BLOCK_ROWS = 20_000
BLOCK_BYTES = 16 << 20
NAME = re.compile(r"events_(intraday_)?(\d{8})")
WIRE_TEXT = wire_schema(EXPORT, pa.string())  # BigQuery's JSON export: INT64 as strings
WIRE_NUMBER = wire_schema(EXPORT, pa.int64())  # other tools: INT64 as numbers


@dataclass
class ExportFile:
    """One export file: where it is, how to open it, and the day and table kind its name says."""

    name: str
    open: Callable[[], IO[bytes]]
    key: str = ""
    size: int = 0
    day: str | None = None
    intraday: bool = False
    path: str | None = None
    """Its local path, when it has one (Avro is read by DuckDB from a path)."""

    @classmethod
    def local(cls, path: Path) -> ExportFile:
        stat = path.stat()
        day, intraday = name_day(path.name)
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        return cls(path.name, lambda: path.open("rb"), key, stat.st_size, day, intraday, str(path.resolve()))


def name_day(name: str) -> tuple[str | None, bool]:
    """(YYYYMMDD, intraday) from a BigQuery export table name in a file name; (None, False) without one."""
    match = NAME.search(name)
    if match is None:
        return None, "intraday" in name
    try:
        dt.datetime.strptime(match.group(2), "%Y%m%d")
    except ValueError:
        return None, bool(match.group(1))
    return match.group(2), bool(match.group(1))


@dataclass
class Block:
    """Rows of a file in the export schema; `first` is the number (1-based) of the first one in the file."""

    rows: pa.Table
    extras: pa.Table
    bad: dict[int, str]
    first: int
    where: str
    source: Any = None
    """What `raw` reads a row's text from: the lines (NDJSON) or the table as read (Parquet, Avro)."""
    notes: dict[int, str] = field(default_factory=dict)

    def raw(self, index: int) -> str:
        """The row as it was in the file, for the quarantine table."""
        if isinstance(self.source, list):
            return bytes(self.source[index]).decode("utf-8", "backslashreplace")
        row = self.source.slice(index, 1).to_pylist()[0]
        return orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS).decode()

    def label(self, index: int) -> str:
        """Where row `index` is in the file: `line 12`, `row 12`."""
        return self.notes.get(index) or f"{self.where} {self.first + index}"


@dataclass
class Rejected:
    """A record of a file that could not be read at all."""

    number: int
    reason: str
    raw: str


def read_export(export: ExportFile) -> Iterator[Block | Rejected]:
    """The file's rows, block by block; ImportFileError when it is not a readable export file."""
    with export.open() as stream:
        head = stream.read(4)
        stream.seek(0)
        suffixes = export.name.lower()
        if head == b"PAR1" or (not head.startswith(b"\x1f\x8b") and suffixes.endswith((".parquet", ".pq"))):
            yield from _parquet(stream, export.name)
        elif head == b"Obj\x01" or suffixes.endswith(".avro"):
            yield from _avro(stream, export)
        elif head.startswith(b"\x1f\x8b"):
            with gzip.GzipFile(fileobj=stream) as unzipped:
                yield from _ndjson(cast(IO[bytes], unzipped), export.name)
        else:
            yield from _ndjson(stream, export.name)


def _parquet(stream: IO[bytes], name: str) -> Iterator[Block]:
    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as exc:
        raise ImportFileError(f"{name}: not a readable Parquet file: {exc}") from exc
    first = 1
    for batch in parquet.iter_batches(batch_size=BLOCK_ROWS):
        table = pa.Table.from_batches([batch])
        rows, extras, bad = conform_table(table)
        yield Block(rows, extras, bad, first, "row", table)
        first += table.num_rows


def _avro(stream: IO[bytes], export: ExportFile) -> Iterator[Block]:
    """Avro through DuckDB's avro extension (five times fastavro's speed on these nested records), from a
    local file (a remote one is copied down first). fastavro reads the block headers first: a truncated or
    corrupt file fails whole (DuckDB would stop quietly at the break)."""
    try:
        expected = sum(block.num_records for block in fastavro.block_reader(stream))
    except (ValueError, TypeError, EOFError, OSError) as exc:
        raise ImportFileError(f"{export.name}: not a complete Avro file: {exc}") from exc
    with contextlib.ExitStack() as stack:
        path = export.path
        if path is None:
            stream.seek(0)
            copy = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".avro"))
            shutil.copyfileobj(stream, copy, 1 << 22)
            copy.flush()
            path = copy.name
        db = stack.enter_context(contextlib.closing(_avro_db()))
        first = 1
        try:
            batches = db.execute("SELECT * FROM read_avro(?)", [path]).to_arrow_reader(BLOCK_ROWS)
            for batch in batches:
                table = pa.Table.from_batches([batch])
                rows, extras, bad = conform_table(table)
                yield Block(rows, extras, bad, first, "record", table)
                first += table.num_rows
        except duckdb.Error as exc:
            raise ImportFileError(f"{export.name}: not a readable Avro file: {exc}") from exc
        if first - 1 != expected:
            raise ImportFileError(f"{export.name}: read {first - 1} records of the {expected} the file holds")


def _avro_db() -> duckdb.DuckDBPyConnection:
    import duckdb_extension_avro  # the extension binary ships in this package

    db = duckdb.connect(config={"threads": 1})
    db.execute("SET enable_progress_bar = false")
    root = Path(duckdb_extension_avro.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    db.execute(f"LOAD '{root / 'avro.duckdb_extension'}'")
    return db


def _ndjson(stream: IO[bytes], name: str) -> Iterator[Block | Rejected]:
    size = 0
    lines: list[bytes] = []
    numbers: list[int] = []
    for number, line in _lines(stream):
        lines.append(line)
        numbers.append(number)
        size += len(line)
        if size >= BLOCK_BYTES or len(lines) >= BLOCK_ROWS:
            yield from _json_block(lines, numbers[0], numbers, name)
            lines, numbers, size = [], [], 0
    if lines:
        yield from _json_block(lines, numbers[0], numbers, name)


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the non-empty lines, a UTF-8 byte order mark dropped."""
    number, tail, first = 0, b"", True
    while True:
        chunk = stream.read(1 << 22)
        if not chunk:
            break
        if first and chunk.startswith(codecs.BOM_UTF8):
            chunk = chunk[len(codecs.BOM_UTF8) :]
        first = False
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            number += 1
            if line.strip():
                yield number, line.rstrip(b"\r")
    if tail.strip():
        yield number + 1, tail.rstrip(b"\r")


def _parse(data: bytes) -> pa.Table:
    """Lines of JSON as a table, INT64 as strings (BigQuery) or, failing that, as numbers."""
    options = pajson.ReadOptions(block_size=max(len(data) + 1, 1 << 16), use_threads=True)
    error: Exception | None = None
    for wire in (WIRE_TEXT, WIRE_NUMBER):
        parse = pajson.ParseOptions(explicit_schema=wire, unexpected_field_behavior="infer")
        try:
            return pajson.read_json(pa.BufferReader(data), read_options=options, parse_options=parse)
        except pa.ArrowInvalid as exc:
            error = error or exc
    assert error is not None
    raise error


def _json_block(lines: list[bytes], first: int, numbers: list[int], name: str) -> Iterator[Block | Rejected]:
    try:
        table = _parse(b"\n".join(lines))
        if table.num_rows != len(lines):
            raise pa.ArrowInvalid(f"{table.num_rows} rows from {len(lines)} lines")
    except pa.ArrowInvalid as exc:
        if len(lines) == 1:
            reason = str(exc).removeprefix("JSON parse error: ").split(" in row ")[0]
            text = lines[0].decode("utf-8", "backslashreplace")
            yield Rejected(numbers[0], f"{name} line {numbers[0]}: cannot be read: {reason}", text)
            return
        half = len(lines) // 2
        yield from _json_block(lines[:half], numbers[0], numbers[:half], name)
        yield from _json_block(lines[half:], numbers[half], numbers[half:], name)
        return
    rows, extras, bad = conform_table(table)
    block = Block(rows, extras, bad, first, "line", lines)
    if numbers[-1] - numbers[0] != len(numbers) - 1:  # empty lines in between: number rows by their line
        block.notes = {i: f"line {n}" for i, n in enumerate(numbers)}
    yield block
