"""Split a binary stream into records: fixed length, RDW (variable), or BDW blocks of RDW records.

Generators over a binary file object, reading at most one chunk / block at a time (bounded memory).
A truncated last record raises `TruncatedRecordError` after every complete record was yielded; it
carries the partial bytes and their offset so the caller quarantines just them. A descriptor word that
makes no sense (a length below 4, a spanned-record flag, records overrunning their block) raises
`RecordFormatError`: the stream cannot be resynchronised after it.

- RDW: 2-byte big-endian length including the 4 RDW bytes, then 2 zero bytes.
- BDW: 2-byte big-endian block length including the 4 BDW bytes (or, with the top bit set, a 31-bit
  length in all 4 bytes), then 2 zero bytes; the block holds RDW records that fill it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from headwater.core.errors import RecordError
from headwater.sources.cobol.copybook import CobolError


class RecordFormatError(CobolError):
    """The stream's record structure is broken at `offset`."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"byte {offset}: {message}")
        self.offset = offset


class TruncatedRecordError(RecordFormatError, RecordError):
    """The stream ends inside a record: `data` holds the bytes read of it."""

    def __init__(self, message: str, offset: int, data: bytes) -> None:
        super().__init__(message, offset)
        self.data = data


def _read(stream: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def fixed_records(stream: BinaryIO, length: int, chunk_records: int = 4096) -> Iterator[bytes]:
    """Records of `length` bytes."""
    if length < 1:
        raise ValueError("record length must be positive")
    offset = 0
    while True:
        chunk = _read(stream, length * chunk_records)
        whole = len(chunk) - len(chunk) % length
        for start in range(0, whole, length):
            yield chunk[start : start + length]
        if whole < len(chunk):
            raise TruncatedRecordError(
                f"last record has {len(chunk) - whole} of {length} bytes", offset + whole, chunk[whole:]
            )
        offset += len(chunk)
        if len(chunk) < length * chunk_records:
            return


def _rdw(word: bytes, offset: int) -> int:
    length = int.from_bytes(word[:2], "big")
    if word[2:4] != b"\x00\x00":
        raise RecordFormatError(f"RDW {word.hex()}: spanned records (segment flags) are not supported", offset)
    if length < 4:
        raise RecordFormatError(f"RDW {word.hex()}: length {length} is below 4", offset)
    return length - 4


def rdw_records(stream: BinaryIO) -> Iterator[bytes]:
    """Records each preceded by a record descriptor word."""
    offset = 0
    while True:
        word = _read(stream, 4)
        if not word:
            return
        if len(word) < 4:
            raise TruncatedRecordError(f"stream ends inside an RDW ({len(word)} bytes)", offset, word)
        size = _rdw(word, offset)
        data = _read(stream, size)
        if len(data) < size:
            raise TruncatedRecordError(f"last record has {len(data)} of {size} bytes", offset, word + data)
        offset += 4 + size
        yield data


def bdw_records(stream: BinaryIO) -> Iterator[bytes]:
    """Blocks (each preceded by a block descriptor word) of RDW records."""
    offset = 0
    while True:
        word = _read(stream, 4)
        if not word:
            return
        if len(word) < 4:
            raise TruncatedRecordError(f"stream ends inside a BDW ({len(word)} bytes)", offset, word)
        if word[0] & 0x80:
            size = (int.from_bytes(word, "big") & 0x7FFFFFFF) - 4
        else:
            if word[2:4] != b"\x00\x00":
                raise RecordFormatError(f"BDW {word.hex()}: the last two bytes must be zero", offset)
            size = int.from_bytes(word[:2], "big") - 4
        if size < 0:
            raise RecordFormatError(f"BDW {word.hex()}: length below 4", offset)
        block = _read(stream, size)
        if len(block) < size:
            raise TruncatedRecordError(f"last block has {len(block)} of {size} bytes", offset, word + block)
        at = 0
        while at < size:
            if at + 4 > size:
                raise RecordFormatError("an RDW overruns its block", offset + 4 + at)
            length = _rdw(block[at : at + 4], offset + 4 + at)
            if at + 4 + length > size:
                raise RecordFormatError(f"a {length}-byte record overruns its block", offset + 4 + at)
            yield block[at + 4 : at + 4 + length]
            at += 4 + length
        offset += 4 + size


def iter_records(stream: BinaryIO, record_format: str = "fixed", record_length: int | None = None) -> Iterator[bytes]:
    """Records of a stream in one of the formats above (`record_length` for fixed)."""
    if record_format == "fixed":
        if not record_length:
            raise ValueError("fixed-length records need record_length")
        return fixed_records(stream, record_length)
    if record_format == "rdw":
        return rdw_records(stream)
    if record_format == "bdw":
        return bdw_records(stream)
    raise ValueError(f"record_format must be fixed, rdw or bdw, not {record_format!r}")


def rdw_frame(record: bytes) -> bytes:
    """A record with its RDW (for writers and tests)."""
    return (len(record) + 4).to_bytes(2, "big") + b"\x00\x00" + record
