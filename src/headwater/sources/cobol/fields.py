"""Field codecs: one value from bytes (dict path), and a column from a 2-D uint8 block (Arrow path).

Rules shared by both paths (tests check they agree):
- text: the code page's characters; trailing spaces stripped when `trim`.
- zoned decimal: every digit byte F0-F9; the sign in the zone nibble of the last byte (or first with
  SIGN LEADING): C or F positive, D negative (D on an unsigned field is corrupt); SIGN SEPARATE uses a
  `+` / `-` character. All spaces -> null (not corrupt).
- packed decimal: digit nibbles 0-9, sign nibble C/F positive, D negative (unsigned: C/F only), other
  nibbles corrupt; an even digit count needs a zero first nibble. All spaces -> null (not corrupt).
- binary: big-endian two's complement (signed) or unsigned.
- COMP-1/COMP-2: IBM hexadecimal floating point (`float_format="ibm"`, the mainframe default) or IEEE.
Scaled numbers are Decimals (Arrow decimal128); integers are int (int64, or decimal128(p, 0) beyond 18
digits or for unsigned 8-byte binary).
"""

from __future__ import annotations

import math
import struct
from codecs import charmap_decode
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.sources.cobol.copybook import BINARY, FLOAT, PACKED, TEXT, ZONED, Item

BAD: Any = object()
"""Returned by a scalar codec when the bytes do not decode (the field goes to _corrupt_fields)."""

_F_DIGITS = bytes(range(0xF0, 0xFA))
_TO_ASCII = bytes.maketrans(_F_DIGITS, b"0123456789")
_PLUS, _MINUS = 0x4E, 0x60  # EBCDIC '+' and '-' (the same in every supported code page)
SPACE = 0x40


def _overpunch(byte: int, signed: bool) -> tuple[int, int] | None:
    zone, digit = byte >> 4, byte & 0xF
    if digit > 9:
        return None
    if zone in (0xC, 0xF):
        return 1, digit
    if zone == 0xD and signed:
        return -1, digit
    return None


_PUNCH = {signed: [_overpunch(b, signed) for b in range(256)] for signed in (True, False)}


def arrow_type(item: Item) -> pa.DataType:
    """The Arrow type of one value of an elementary item."""
    if item.kind == TEXT:
        return pa.string()
    if item.kind == FLOAT:
        return pa.float64()
    if item.scale == 0:
        if item.kind == BINARY:
            return pa.decimal128(20, 0) if not item.signed and item.storage == 8 else pa.int64()
        return pa.int64() if item.digits <= 18 else pa.decimal128(item.digits, 0)
    return pa.decimal128(_precision(item), item.scale)


def _precision(item: Item) -> int:
    if item.kind == BINARY:
        return {2: 5, 4: 10, 8: 19}[item.storage] + (1 if not item.signed and item.storage == 8 else 0)
    return max(item.digits, 1)


# -- scalar codecs ------------------------------------------------------------------------------------
def scalar_codec(item: Item, codec: str, trim: bool, float_format: str = "ibm") -> Callable[[bytes], Any]:
    """A function bytes -> value (None for blank numbers, BAD when corrupt)."""
    scale = item.scale

    def scaled(v: int) -> Any:
        return Decimal(v).scaleb(-scale)

    if not scale:
        scaled = int  # type: ignore[assignment]
    if item.kind == TEXT:
        table = bytes(range(256)).decode(codec)
        if trim:
            return lambda raw: charmap_decode(raw, "strict", table)[0].rstrip(" ")
        return lambda raw: charmap_decode(raw, "strict", table)[0]
    if item.kind == ZONED:
        return _zoned_codec(item, scaled)
    if item.kind == PACKED:
        return _packed_codec(item, scaled)
    if item.kind == BINARY:
        signed = item.signed
        if not scale:
            return lambda raw: int.from_bytes(raw, "big", signed=signed)
        return lambda raw: scaled(int.from_bytes(raw, "big", signed=signed))
    if item.kind == FLOAT:
        if float_format == "ieee":
            fmt = ">f" if item.storage == 4 else ">d"
            return lambda raw: float(struct.unpack(fmt, raw)[0])
        bits = 24 if item.storage == 4 else 56

        def ibm(raw: bytes) -> Any:
            u = int.from_bytes(raw, "big")
            top = 8 * len(raw) - 1
            sign, exponent, fraction = u >> top, (u >> (top - 7)) & 0x7F, u & ((1 << bits) - 1)
            value = math.ldexp(fraction, 4 * (exponent - 64) - bits)
            return -value if sign else value

        return ibm
    raise ValueError(f"no codec for {item.kind}")


def _zoned_codec(item: Item, scaled: Callable[[int], Any]) -> Callable[[bytes], Any]:
    signed, length = item.signed, item.storage
    blank = bytes([SPACE]) * length
    punch = _PUNCH[signed]
    if item.sign_separate:
        leading = item.sign_leading

        def separate(raw: bytes) -> Any:
            if raw == blank:
                return None
            sign, digits = (raw[0], raw[1:]) if leading else (raw[-1], raw[:-1])
            if digits.translate(None, _F_DIGITS) or sign not in (_PLUS, _MINUS):
                return BAD
            value = int(digits.translate(_TO_ASCII))
            return scaled(-value if sign == _MINUS else value)

        return separate
    if item.sign_leading:

        def leading_punch(raw: bytes) -> Any:
            if raw == blank:
                return None
            first = punch[raw[0]]
            rest = raw[1:]
            if first is None or rest.translate(None, _F_DIGITS):
                return BAD
            value = int(str(first[1]) + rest.translate(_TO_ASCII).decode())
            return scaled(-value if first[0] < 0 else value)

        return leading_punch

    def trailing(raw: bytes) -> Any:
        if raw == blank:
            return None
        last = punch[raw[-1]]
        head = raw[:-1]
        if last is None or head.translate(None, _F_DIGITS):
            return BAD
        value = int(head.translate(_TO_ASCII) or b"0") * 10 + last[1]
        return scaled(-value if last[0] < 0 else value)

    return trailing


def _packed_codec(item: Item, scaled: Callable[[int], Any]) -> Callable[[bytes], Any]:
    signed, even = item.signed, item.digits % 2 == 0
    blank = bytes([SPACE]) * item.storage
    positive = ("c", "f")

    def packed(raw: bytes) -> Any:
        text = raw.hex()
        digits, sign = text[:-1], text[-1]
        if not digits.isdigit() or (even and digits[0] != "0"):
            return None if raw == blank else BAD
        if sign in positive:
            return scaled(int(digits))
        if sign == "d" and signed:
            return scaled(-int(digits))
        return None if raw == blank else BAD

    return packed


# -- vector codecs ------------------------------------------------------------------------------------
class TextTable:
    """A code page's UTF-8 widths (for string offsets) and its space byte."""

    def __init__(self, codec: str) -> None:
        chars = bytes(range(256)).decode(codec)
        self.codec = codec
        self.extra = np.array([len(c.encode("utf-8")) - 1 for c in chars], dtype=np.uint8)
        self.space = chars.index(" ")


_ARROW_TYPES = {np.dtype(np.int32): pa.int32(), np.dtype(np.int64): pa.int64(), np.dtype(np.float64): pa.float64()}


def np_array(values: np.ndarray) -> pa.Array:
    """A numpy array (int32, int64, float64 or bool) as an Arrow array, without pyarrow's pandas shim."""
    if values.dtype == np.bool_:
        bits = np.packbits(values.astype(np.uint8), bitorder="little").tobytes()
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    data = np.ascontiguousarray(values)
    return pa.Array.from_buffers(_ARROW_TYPES[data.dtype], len(data), [None, pa.py_buffer(data)])


def _bitmap(valid: np.ndarray) -> pa.Buffer | None:
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid.astype(np.uint8), bitorder="little").tobytes())


def text_column(block: np.ndarray, table: TextTable, trim: bool) -> pa.Array:
    """The code page's codec over the whole column at once, then Arrow's rtrim."""
    n, width = block.shape
    data = np.ascontiguousarray(block).tobytes().decode(table.codec).encode("utf-8")
    if len(data) == n * width:
        offsets = np.arange(n + 1, dtype=np.int32) * width
    else:
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(table.extra[block].sum(axis=1, dtype=np.int32) + width, out=offsets[1:])
    array = pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))
    return pc.utf8_rtrim(array, characters=" ") if trim else array


def _decimal_array(values: np.ndarray, valid: np.ndarray, dtype: pa.DataType, unsigned64: bool = False) -> pa.Array:
    n = len(values)
    pairs = np.empty((n, 2), dtype=np.int64)
    pairs[:, 0] = values.view(np.int64) if values.dtype != np.int64 else values
    pairs[:, 1] = 0 if unsigned64 else (values.astype(np.int64) >> 63)
    return pa.Array.from_buffers(dtype, n, [_bitmap(valid), pa.py_buffer(pairs.tobytes())])


def _number_array(values: np.ndarray, valid: np.ndarray, item: Item) -> pa.Array:
    dtype = arrow_type(item)
    if pa.types.is_decimal(dtype):
        return _decimal_array(values, valid, dtype, values.dtype == np.uint64)
    data = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [_bitmap(valid), pa.py_buffer(data)])


def _slow_column(block: np.ndarray, item: Item, codec: str, trim: bool, float_format: str) -> tuple[pa.Array, Any]:
    """Row by row (numbers of more than 18 digits): the scalar codec."""
    decode = scalar_codec(item, codec, trim, float_format)
    values, bad = [], np.zeros(len(block), dtype=bool)
    for i, row in enumerate(block):
        value = decode(row.tobytes())
        if value is BAD:
            bad[i], value = True, None
        values.append(value)
    return pa.array(values, type=arrow_type(item)), bad


def vector_column(
    block: np.ndarray, item: Item, table: TextTable, codec: str, trim: bool, float_format: str
) -> tuple[pa.Array, np.ndarray]:
    """Decode a (rows, bytes) block of one field: (Arrow values, corrupt mask)."""
    n = len(block)
    if item.kind == TEXT:
        return text_column(block, table, trim), np.zeros(n, dtype=bool)
    if item.kind in (ZONED, PACKED) and item.digits > 18:
        return _slow_column(block, item, codec, trim, float_format)
    if item.kind in (ZONED, PACKED, BINARY):
        values, valid, bad = integer_values(block, item)
        return _number_array(values, valid, item), bad
    if item.kind == FLOAT:
        return _float_column(block, item, float_format), np.zeros(n, dtype=bool)
    raise ValueError(f"no codec for {item.kind}")


_ZONE_DIGIT = np.full(256, -1, dtype=np.int64)
_ZONE_DIGIT[0xF0:0xFA] = np.arange(10)
_PUNCH_DIGIT = {True: np.full(256, -1, dtype=np.int64), False: np.full(256, -1, dtype=np.int64)}
for _zone in (0xC0, 0xD0, 0xF0):
    _PUNCH_DIGIT[True][_zone : _zone + 10] = np.arange(10)
    if _zone != 0xD0:
        _PUNCH_DIGIT[False][_zone : _zone + 10] = np.arange(10)
_PAIR = np.full(256, -1, dtype=np.int64)
for _b in range(256):
    if _b >> 4 <= 9 and _b & 0xF <= 9:
        _PAIR[_b] = 10 * (_b >> 4) + (_b & 0xF)
_HIGH = np.where(np.arange(256) >> 4 <= 9, np.arange(256) >> 4, -1).astype(np.int64)


def _zoned_values(block: np.ndarray, item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column by column over the field's bytes (a few long vector operations beat many short rows)."""
    n, width = block.shape
    values = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    blank = np.ones(n, dtype=bool)
    negative = np.zeros(n, dtype=bool)
    sign_at = 0 if item.sign_leading else width - 1
    for j in range(width):
        col = block[:, j]
        blank &= col == SPACE
        if j == sign_at and item.sign_separate:
            negative = col == _MINUS
            bad |= ~negative & (col != _PLUS)
            continue
        if j == sign_at:
            digit = _PUNCH_DIGIT[item.signed][col]
            negative = (col >> 4) == 0xD
        else:
            digit = _ZONE_DIGIT[col]
        bad |= digit < 0
        values *= 10
        values += digit
    values = np.where(negative, -values, values)
    return values, ~bad & ~blank, bad & ~blank


def _packed_values(block: np.ndarray, item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, width = block.shape
    values = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    blank = np.ones(n, dtype=bool)
    for j in range(width - 1):
        col = block[:, j]
        blank &= col == SPACE
        pair = _PAIR[col]
        bad |= pair < 0
        values *= 100
        values += pair
    last = block[:, width - 1]
    blank &= last == SPACE
    high = _HIGH[last]
    bad |= high < 0
    values *= 10
    values += high
    sign = last & 0xF
    if item.signed:
        bad |= (sign != 0xC) & (sign != 0xD) & (sign != 0xF)
    else:
        bad |= (sign != 0xC) & (sign != 0xF)
    if item.digits % 2 == 0:
        bad |= (block[:, 0] >> 4) != 0
    values = np.where(sign == 0xD, -values, values)
    return values, ~bad & ~blank, bad & ~blank


def integer_values(block: np.ndarray, item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, valid, corrupt) of an integer field of at most 18 digits, as numpy arrays."""
    if item.kind == ZONED:
        return _zoned_values(block, item)
    if item.kind == PACKED:
        return _packed_values(block, item)
    n = len(block)
    kind = "i" if item.signed else "u"
    values = np.ascontiguousarray(block).view(f">{kind}{item.storage}").reshape(n).astype(f"{kind}8")
    return values, np.ones(n, dtype=bool), np.zeros(n, dtype=bool)


def _float_column(block: np.ndarray, item: Item, float_format: str) -> pa.Array:
    n, size = block.shape
    raw = np.ascontiguousarray(block)
    if float_format == "ieee":
        values = raw.view(">f4" if size == 4 else ">f8").reshape(n).astype(np.float64)
        return np_array(values)
    u = raw.view(">u4" if size == 4 else ">u8").reshape(n).astype(np.uint64)
    top = np.uint64(8 * size - 1)
    bits = 24 if size == 4 else 56
    sign = (u >> top).astype(bool)
    exponent = ((u >> (top - np.uint64(7))) & np.uint64(0x7F)).astype(np.int64)
    fraction = (u & np.uint64((1 << bits) - 1)).astype(np.float64)
    values = np.ldexp(fraction, (4 * (exponent - 64) - bits).astype(np.int32))
    return np_array(np.where(sign, -values, values))
