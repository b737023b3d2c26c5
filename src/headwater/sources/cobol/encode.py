"""Records (dicts keyed by column) to EBCDIC bytes, with the layouts of a `CobolDecoder`.

For generators and benchmarks (tests use their own reference encoder). Missing or None values and
FILLER are spaces (a blank number decodes as null); a REDEFINES area is written from whichever
branch's fields are given. Numbers are written with the preferred signs (C / D, F when unsigned).
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from typing import Any

from headwater.sources.cobol.copybook import BINARY, FLOAT, PACKED, TEXT, ZONED, CobolError, Item
from headwater.sources.cobol.decode import CobolDecoder
from headwater.sources.cobol.plan import Compiled, Leaf


class EncodeError(CobolError):
    """A value does not fit its field."""


def _unscaled(item: Item, value: Any) -> int:
    if isinstance(value, float):
        value = Decimal(repr(value))
    number = Decimal(value).scaleb(item.scale)
    if number != number.to_integral_value():
        raise EncodeError(f"{value} has more than {item.scale} decimals")
    return int(number)


def encode_value(item: Item, value: Any, code_page: str, float_format: str = "ibm") -> bytes:
    """One elementary value to its bytes."""
    size = item.storage
    if item.kind == TEXT:
        raw = str(value).encode(code_page)
        if len(raw) > size:
            raise EncodeError(f"{value!r} is longer than {size} bytes")
        return raw + b"\x40" * (size - len(raw))
    if item.kind == FLOAT:
        return _encode_float(float(value), size, float_format)
    number = _unscaled(item, value)
    if number < 0 and not item.signed:
        raise EncodeError(f"{value} is negative for an unsigned field")
    if item.kind == BINARY:
        return number.to_bytes(size, "big", signed=item.signed)
    digits = str(abs(number))
    if len(digits) > item.digits:
        raise EncodeError(f"{value} has more than {item.digits} digits")
    if item.kind == PACKED:
        sign = "d" if number < 0 else "c" if item.signed else "f"
        return bytes.fromhex(digits.zfill(2 * size - 1) + sign)
    if item.kind == ZONED:
        body = bytearray(0xF0 | int(d) for d in digits.zfill(item.digits))
        if item.sign_separate:
            sign_byte = 0x60 if number < 0 else 0x4E
            return bytes([sign_byte, *body]) if item.sign_leading else bytes([*body, sign_byte])
        if item.signed:
            at = 0 if item.sign_leading else -1
            body[at] = (0xD0 if number < 0 else 0xC0) | (body[at] & 0xF)
        return bytes(body)
    raise EncodeError(f"cannot encode {item.kind}")


def _encode_float(value: float, size: int, float_format: str) -> bytes:
    if float_format == "ieee":
        return struct.pack(">f" if size == 4 else ">d", value)
    bits = 24 if size == 4 else 56
    if value == 0:
        return bytes(size)
    sign = 1 if value < 0 else 0
    mantissa, exponent = math.frexp(abs(value))  # value = m * 2**e, 0.5 <= m < 1
    hex_exp = -(-exponent // 4)  # ceil: m * 2**e = f * 16**hex_exp with 1/16 <= f < 1
    fraction = round(math.ldexp(mantissa, exponent - 4 * hex_exp + bits))
    if fraction >> bits:
        fraction >>= 4
        hex_exp += 1
    if not 0 <= hex_exp + 64 <= 127:
        raise EncodeError(f"{value} is outside the IBM floating point range")
    word = (sign << (8 * size - 1)) | ((hex_exp + 64) << bits) | fraction
    return word.to_bytes(size, "big")


class Encoder:
    """Write records of the types of a decoder (same layouts, code page and options)."""

    def __init__(self, decoder: CobolDecoder) -> None:
        self.decoder = decoder

    def _compiled(self, record_type: str | None) -> Compiled:
        types = self.decoder.types
        return (types[record_type] if record_type else next(iter(types.values()))).compiled

    def counts(self, values: dict[str, Any], record_type: str | None = None) -> tuple[int, ...]:
        c = self._compiled(record_type)
        out = []
        for odo in c.odos:
            counter = c.leaves[odo.counter].column
            if values.get(counter) is not None:
                out.append(int(values[counter]))
            else:
                inside = c.leaves[odo.first_leaf].column
                out.append(len(values.get(inside) or []))
        return tuple(out)

    def offset_of(self, column: str, values: dict[str, Any], record_type: str | None = None) -> tuple[int, int]:
        """(offset, size) of a column's first value in the record these values make."""
        c = self._compiled(record_type)
        leaf = next(lf for lf in c.leaves if lf.column == column)
        return c.offset(leaf, self.counts(values, record_type)), leaf.item.storage

    def length(self, values: dict[str, Any], record_type: str | None = None) -> int:
        """Bytes of the record these values make."""
        return self._compiled(record_type).length(self.counts(values, record_type))

    def encode(self, values: dict[str, Any], record_type: str | None = None) -> bytes:
        """A record (header included when the decoder has one) from column values."""
        c = self._compiled(record_type)
        counts = self.counts(values, record_type)
        out = bytearray(b"\x40" * c.length(counts))
        cp, ff = self.decoder.code_page, self.decoder.float_format
        for leaf in c.leaves:
            value = values.get(leaf.column)
            if value is None:
                continue
            at = c.offset(leaf, counts)
            dims = c.resolved_dims(leaf, counts)
            self._put(out, leaf, value, at, dims, cp, ff)
        return bytes(out)

    def _put(self, out: bytearray, leaf: Leaf, value: Any, at: int, dims: list, cp: str, ff: str) -> None:
        if not dims:
            raw = encode_value(leaf.item, value, cp, ff)
            out[at : at + len(raw)] = raw
            return
        count, stride = dims[0]
        if len(value) > count:
            raise EncodeError(f"{leaf.column}: {len(value)} values for {count} occurrences")
        for k, element in enumerate(value):
            if element is not None:
                self._put(out, leaf, element, at + k * stride, dims[1:], cp, ff)
