"""COBOL copybooks and EBCDIC decoding: offsets, every PIC/USAGE against hand-computed bytes, code pages,
REDEFINES, OCCURS (DEPENDING ON), _corrupt_fields, frame errors, and dict/Arrow agreement."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from headwater.sources.cobol import CobolDecoder, CopybookError, FrameError, parse_copybook
from headwater.sources.cobol.plan import Compiled

H = bytes.fromhex


def decoder(copybook: str, **kw: Any) -> CobolDecoder:
    return CobolDecoder({"rec": parse_copybook(copybook)}, **kw)


def one(copybook: str, frame: bytes, **kw: Any) -> dict[str, Any]:
    """Decode one frame both ways, check they agree, return the dict."""
    d = decoder(copybook, **kw)
    record = d.decode_one(frame)
    batch = d.decode_arrow([frame])
    assert batch.errors == {}
    assert batch.tables["rec"].to_pylist() == [record]
    return record


def layout(copybook: str, **kw: Any) -> dict[str, tuple[int, int]]:
    """{column: (offset, size)} with ODO counts at zero."""
    c = Compiled([parse_copybook(copybook)], **kw)
    return {leaf.column: (leaf.base, leaf.item.storage) for leaf in c.leaves}


# -- parsing --------------------------------------------------------------------------------------------
_FIXED_CODE = [
    "*----------------------------------------------------------------",
    "* A FIXED-FORMAT COPYBOOK: SEQUENCE NUMBERS, COMMENTS, COLUMNS 73+",
    " 01  CUSTOMER-RECORD.",
    "     05  CUST-ID                 PIC 9(6).",
    "     05  CUST-NAME               PIC X(20).",
    "         88  NO-NAME             VALUE SPACES.",
    "     05  BALANCE                 PIC S9(7)V99 COMP-3.",
    "     05  FLAGS                   PIC X(2) VALUE 'AB'.",
    "     05  COUNTERS COMP.",
    "         10  SMALL               PIC S9(4).",
    "         10  MEDIUM              PIC S9(9).",
    "         10  LARGE               PIC 9(18).",
    "     05  FILLER                  PIC X(3).",
    "     05  RATE                    COMP-1.",
    "     05  PRECISE                 USAGE IS COMPUTATIONAL-2.",
    "     05  TEMP    PIC S9(3)V9",
    "                 SIGN LEADING SEPARATE.",
    "     05  TEMP2                   PIC S9(3) SIGN TRAILING.",
    "     05  BIN5                    PIC S9(5) COMP-5.",
    "     05  PKD                     PIC S9(4) PACKED-DECIMAL.",
    " 77  STANDALONE                  PIC X.",
]
# Columns 1-6 sequence numbers, 7 indicator, 8-72 code, 73-80 an identification area that must be ignored.
FIXED = "".join(f"{(i + 1) * 100:06d}{code.ljust(66)}X.Y. {i:03d}\n" for i, code in enumerate(_FIXED_CODE))


def test_fixed_format_offsets_and_sizes() -> None:
    assert layout(FIXED) == {
        "cust_id": (0, 6),
        "cust_name": (6, 20),
        "balance": (26, 5),
        "flags": (31, 2),
        "small": (33, 2),
        "medium": (35, 4),
        "large": (39, 8),
        "rate": (50, 4),  # FILLER 47-49 skipped
        "precise": (54, 8),
        "temp": (62, 5),
        "temp2": (67, 3),
        "bin5": (70, 4),
        "pkd": (74, 3),
    }


def test_free_format_with_inline_comments() -> None:
    text = """
* free format: code from column 1
01 REC.
   05 A PIC X(3).  *> a comment
   05 B PIC 9(3)V9(2) COMP-3.
   05 C OCCURS 3 TIMES.
      10 C1 PIC X.
      10 C2 PIC 99.
   05 D PIC X.
"""
    c = Compiled([parse_copybook(text)])
    got = {leaf.column: (leaf.base, leaf.item.storage, leaf.dims) for leaf in c.leaves}
    assert got == {
        "a": (0, 3, ()),
        "b": (3, 3, ()),
        "c1": (6, 1, ((3, 3, None),)),
        "c2": (7, 2, ((3, 3, None),)),
        "d": (15, 1, ()),
    }


def test_redefines_area_takes_the_largest_branch() -> None:
    text = """
       01 REC.
          05 KIND PIC X.
          05 BODY PIC X(4).
          05 AS-NUM REDEFINES BODY PIC 9(4).
          05 AS-GROUP REDEFINES BODY.
             10 G1 PIC X(2).
             10 G2 PIC S9(9) COMP.
          05 TAIL PIC X.
"""
    assert layout(text) == {
        "kind": (0, 1),
        "body": (1, 4),
        "as_num": (1, 4),
        "g1": (1, 2),
        "g2": (3, 4),
        "tail": (7, 1),
    }


def test_odo_shifts_what_follows_and_names_are_disambiguated() -> None:
    text = """
       01 REC.
          05 HDR.
             10 ID PIC 9(3).
          05 N PIC 9.
          05 ITEMS OCCURS 0 TO 5 DEPENDING ON N.
             10 ID PIC X(2).
          05 M PIC 9.
          05 MORE OCCURS 1 TO 2 DEPENDING ON M.
             10 ID PIC X.
"""
    c = Compiled([parse_copybook(text)])
    assert [leaf.column for leaf in c.leaves] == ["hdr_id", "n", "items_id", "m", "more_id"]
    m = c.leaves[3]
    assert (m.base, m.odo_before) == (4, (0,))
    assert c.offset(m, (3, 0)) == 10
    assert c.length((3, 2)) == 4 + 6 + 1 + 2
    fixed = Compiled([parse_copybook(text)], variable_size_occurs=False)
    assert fixed.length((0, 0)) == 4 + 10 + 1 + 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("01 R.\n 05 A PIC Z(4)9.\n", "edited pictures"),
        ("01 R.\n 05 A.\n", "no PIC"),
        ("01 R.\n 05 A PIC X.\n 05 B REDEFINES NOPE PIC X.\n", "REDEFINES NOPE"),
        ("01 R.\n 05 A PIC X.\n01 S.\n 05 B PIC X.\n", "second level-01"),
        ("01 R.\n 05 A PIC X.\n 5X B PIC X.\n", "level number"),
        ("01 R.\n 05 A PIC X(3) COMP-3.\n", "cannot be USAGE"),
        ("01 R.\n 05 A PIC X FOO.\n", "unexpected 'FOO'"),
        ("01 R.\n 05 A PIC 9(19) COMP.\n", "at most 18 digits"),
        ("01 R.\n 05 A PIC 9P9.\n", "P is not supported"),
        ("01 R.\n 05 N PIC 9.\n 05 A OCCURS 1 TO 3.\n  10 B PIC X.\n", "DEPENDING ON"),
        ("01 R.\n 05 A PIC X.\n 05 B PIC X.\n  10 C PIC X.\n", "subordinate"),
    ],
)
def test_bad_copybooks_name_the_line(text: str, message: str) -> None:
    with pytest.raises(CopybookError, match=message) as info:
        parse_copybook(text, "bad.cpy")
    assert "bad.cpy, line" in str(info.value)


def test_layout_errors() -> None:
    with pytest.raises(CopybookError, match="no field NOPE before it"):
        decoder("01 R.\n 05 A OCCURS 1 TO 3 DEPENDING ON NOPE.\n  10 B PIC X.\n")
    with pytest.raises(CopybookError, match="inside an OCCURS"):
        decoder("01 R.\n 05 N PIC 9.\n 05 O OCCURS 2.\n  10 A OCCURS 1 TO 3 DEPENDING ON N.\n   15 B PIC X.\n")
    with pytest.raises(CopybookError, match="unknown code page"):
        decoder("01 R.\n 05 A PIC X.\n", code_page="cp9999")
    with pytest.raises(CopybookError, match="need a type_field"):
        CobolDecoder({"a": parse_copybook("01 R.\n 05 A PIC X.\n"), "b": parse_copybook("01 S.\n 05 B PIC X.\n")})


# -- every PIC / USAGE against hand-computed bytes ------------------------------------------------------
NUMBERS = """
       01 REC.
          05 U-ZONED      PIC 9(4).
          05 S-ZONED      PIC S9(3)V99.
          05 LEAD-PUNCH   PIC S9(3) SIGN LEADING.
          05 LEAD-SEP     PIC S9(3) SIGN IS LEADING SEPARATE CHARACTER.
          05 TRAIL-SEP    PIC S9(2)V9 SIGN TRAILING SEPARATE.
          05 U-PACKED     PIC 9(5) COMP-3.
          05 S-PACKED     PIC S9(5)V99 COMP-3.
          05 EVEN-PACKED  PIC S9(4) COMP-3.
          05 S-HALF       PIC S9(4) COMP.
          05 U-HALF       PIC 9(4) BINARY.
          05 S-WORD       PIC S9(7)V99 COMP-4.
          05 S-LONG       PIC S9(18) COMP-5.
          05 U-LONG       PIC 9(18) COMP.
          05 BIG-ZONED    PIC S9(20).
"""


def _numbers_frame(**over: bytes) -> bytes:
    parts = {
        "u_zoned": H("f0f1f2f3"),  # 123
        "s_zoned": H("f1f2f3f4d5"),  # -123.45
        "lead_punch": H("d1f2f3"),  # -123
        "lead_sep": H("60f0f4f2"),  # -042
        "trail_sep": H("f9f9f94e"),  # +99.9
        "u_packed": H("12345f"),  # 12345
        "s_packed": H("1234567d"),  # -12345.67: 7 digit nibbles + the sign nibble
        "even_packed": H("01234c"),  # 1234
        "s_half": H("fffe"),  # -2
        "u_half": H("fffe"),  # 65534
        "s_word": H("ffffff9c"),  # -100 -> -1.00
        "s_long": H("7fffffffffffffff"),
        "u_long": H("ffffffffffffffff"),
        "big_zoned": H("f1" + "f0" * 18 + "c1"),  # 10**19 + 1
    }
    parts.update(over)
    return b"".join(parts.values())


def test_numbers_hand_computed() -> None:
    r = one(NUMBERS, _numbers_frame())
    assert r == {
        "u_zoned": 123,
        "s_zoned": Decimal("-123.45"),
        "lead_punch": -123,
        "lead_sep": -42,
        "trail_sep": Decimal("99.9"),
        "u_packed": 12345,
        "s_packed": Decimal("-12345.67"),
        "even_packed": 1234,
        "s_half": -2,
        "u_half": 65534,
        "s_word": Decimal("-1.00"),
        "s_long": 2**63 - 1,
        "u_long": 2**64 - 1,
        "big_zoned": 10**19 + 1,
        "_corrupt_fields": [],
    }
    schema = decoder(NUMBERS).schema("rec")
    assert schema.field("s_packed").type == pa.decimal128(7, 2)
    assert schema.field("u_long").type == pa.decimal128(20, 0)
    assert schema.field("big_zoned").type == pa.decimal128(20, 0)
    assert schema.field("u_zoned").type == pa.int64()


def test_zoned_signs() -> None:
    cb = "01 R.\n 05 S PIC S9(2).\n 05 U PIC 9(2).\n"
    assert one(cb, H("f1c2f1c2"))["s"] == 12  # C positive; unsigned accepts C too
    assert one(cb, H("f1f2f1f2"))["s"] == 12  # F: unsigned, positive
    r = one(cb, H("f1d2f1d2"))
    assert (r["s"], r["u"], r["_corrupt_fields"]) == (-12, None, ["u"])  # D on an unsigned field is corrupt
    r = one(cb, H("c1f2f1a2"))
    assert r == {"s": None, "u": None, "_corrupt_fields": ["s", "u"]}  # zone C inside, zone A at the end
    assert one(cb, H("40404040")) == {"s": None, "u": None, "_corrupt_fields": []}  # blank is null, not corrupt


@pytest.mark.parametrize(
    ("raw", "value"),
    [("12345c", 12345), ("12345d", -12345), ("12345f", 12345), ("00000c", 0), ("99999d", -99999)],
)
def test_packed_signs(raw: str, value: int) -> None:
    assert one("01 R.\n 05 P PIC S9(5) COMP-3.\n", H(raw))["p"] == value


@pytest.mark.parametrize("raw", ["12345a", "12345b", "12345e", "1234", "1a345c", "12f45c", "4040f0"])
def test_packed_corrupt(raw: str) -> None:
    raw_bytes = H(raw.ljust(6, "c")) if len(raw) < 6 else H(raw)
    r = one("01 R.\n 05 P PIC S9(5) COMP-3.\n 05 T PIC X.\n", raw_bytes + H("c1"))
    assert r == {"p": None, "t": "A", "_corrupt_fields": ["p"]}


def test_packed_unsigned_and_even_digits() -> None:
    cb = "01 R.\n 05 U PIC 9(3) COMP-3.\n 05 E PIC S9(2) COMP-3.\n"
    assert one(cb, H("123f012c")) == {"u": 123, "e": 12, "_corrupt_fields": []}
    assert one(cb, H("123d112c")) == {"u": None, "e": None, "_corrupt_fields": ["u", "e"]}  # D unsigned; 1st nibble


def test_floats_ibm_and_ieee() -> None:
    cb = "01 R.\n 05 F1 COMP-1.\n 05 F2 COMP-2.\n"
    ibm = H("41100000") + H("c264000000000000")  # 1.0, -100.0
    assert one(cb, ibm) == {"f1": 1.0, "f2": -100.0, "_corrupt_fields": []}
    assert one(cb, H("3e200000") + bytes(8)) == {
        "f1": 0.125 / 256,
        "f2": 0.0,
        "_corrupt_fields": [],
    }  # 0x200000/2**24 * 16**(0x3e-64)
    ieee = H("3f800000") + H("c059000000000000")
    assert one(cb, ieee, float_format="ieee") == {"f1": 1.0, "f2": -100.0, "_corrupt_fields": []}


def test_text_trim_and_no_trim() -> None:
    cb = "01 R.\n 05 A PIC X(6).\n 05 B PIC A(3).\n"
    frame = "  ab  ".encode("cp037") + "xyz".encode("cp037")
    assert one(cb, frame) == {"a": "  ab", "b": "xyz", "_corrupt_fields": []}
    assert one(cb, frame, trim=False) == {"a": "  ab  ", "b": "xyz", "_corrupt_fields": []}


# -- code pages ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code_page", "raw", "text"),
    [
        ("cp037", "51544844", "éèçà"),
        ("cp1047", "51544844", "éèçà"),
        ("cp500", "51544844", "éèçà"),
        ("cp297", "c0d0e07c", "éèçà"),
        ("cp1147", "c0d0e07c", "éèçà"),
        ("cp1147", "9f", "€"),
        ("cp1140", "9f", "€"),
        ("cp037", "9f", "¤"),  # no euro in cp037 / cp1047 / cp297: the currency sign instead
        ("cp1047", "9f", "¤"),
        ("cp297", "9f", "¤"),
        ("cp037", "5b", "$"),
        ("cp297", "7b", "£"),
    ],
)
def test_code_pages(code_page: str, raw: str, text: str) -> None:
    size = len(raw) // 2
    r = one(f"01 R.\n 05 T PIC X({size}).\n", H(raw), code_page=code_page)
    assert r["t"] == text


def test_a_name_with_accents_in_cp1147() -> None:
    raw = H("c8c093d0958540c4a49799c0")  # Hélène Dupré in cp1147, hand-read from the code page chart
    assert raw == "Hélène Dupré".encode("cp1147")
    assert one("01 R.\n 05 T PIC X(14).\n", raw + H("4040"), code_page="cp1147")["t"] == "Hélène Dupré"


# -- REDEFINES, OCCURS -----------------------------------------------------------------------------------
REDEF = """
       01 REC.
          05 KIND      PIC X.
          05 BODY      PIC X(4).
          05 NUMS REDEFINES BODY.
             10 N1     PIC 9(2).
             10 N2     PIC S9(3) COMP-3.
"""
SELECT = {"BODY": {"field": "KIND", "cases": {"T": "BODY", "N": "NUMS"}}}


def test_redefines_selected_by_discriminator() -> None:
    numeric = "N".encode("cp037") + H("f4f2") + H("123d")
    text = "T".encode("cp037") + "ABCD".encode("cp037")
    assert one(REDEF, numeric, redefines=SELECT) == {
        "kind": "N", "body": None, "n1": 42, "n2": -123, "_corrupt_fields": []
    }  # fmt: skip
    assert one(REDEF, text, redefines=SELECT) == {
        "kind": "T", "body": "ABCD", "n1": None, "n2": None, "_corrupt_fields": []
    }  # fmt: skip
    other = "X".encode("cp037") + "ABCD".encode("cp037")
    assert one(REDEF, other, redefines=SELECT) == {
        "kind": "X",
        "body": None,
        "n1": None,
        "n2": None,
        "_corrupt_fields": [],
    }
    # Without a rule every branch decodes (the text branch's bytes are not a number: corrupt).
    assert one(REDEF, text) == {"kind": "T", "body": "ABCD", "n1": None, "n2": None, "_corrupt_fields": ["n1", "n2"]}


def test_redefines_rule_errors() -> None:
    with pytest.raises(CopybookError, match="not one of BODY, NUMS"):
        decoder(REDEF, redefines={"BODY": {"field": "KIND", "cases": {"T": "OTHER"}}})
    with pytest.raises(CopybookError, match="no item NOPE"):
        decoder(REDEF, redefines={"NOPE": {"field": "KIND", "cases": {}}})


def test_occurs_and_nested_occurs() -> None:
    cb = """
       01 R.
          05 ROWS OCCURS 2 TIMES.
             10 LABEL  PIC X.
             10 CELLS  PIC 9 OCCURS 3.
"""
    frame = "A".encode("cp037") + H("f1f2f3") + "B".encode("cp037") + H("f4f5c6")
    assert one(cb, frame) == {"label": ["A", "B"], "cells": [[1, 2, 3], [4, 5, 6]], "_corrupt_fields": []}
    bad = "A".encode("cp037") + H("f1faf3") + "B".encode("cp037") + H("f4f5f6")
    assert one(cb, bad) == {"label": ["A", "B"], "cells": [[1, None, 3], [4, 5, 6]], "_corrupt_fields": ["cells"]}


ODO = """
       01 R.
          05 N      PIC 9(2).
          05 ITEM   OCCURS 1 TO 4 TIMES DEPENDING ON N.
             10 CODE  PIC X(2).
             10 QTY   PIC S9(3) COMP-3.
          05 TAIL   PIC X.
"""


def test_occurs_depending_on() -> None:
    def frame(n: int) -> bytes:
        items = b"".join(f"C{i}".encode("cp037") + H(f"{i:03d}c") for i in range(n))
        return f"{n:02d}".encode("cp037") + items + "Z".encode("cp037")

    assert one(ODO, frame(2)) == {"n": 2, "code": ["C0", "C1"], "qty": [0, 1], "tail": "Z", "_corrupt_fields": []}
    assert len(frame(4)) == 2 + 4 * 4 + 1
    assert one(ODO, frame(4))["qty"] == [0, 1, 2, 3]
    d = decoder(ODO)
    frames = [frame(1), frame(3), b"05" + frame(4)[2:], frame(2)[:-1], frame(4), H("f0f0"), H("4040")]
    frames[2] = "05".encode("cp037") + frame(4)[2:]
    batch = d.decode_batch(frames, vectorised=False)
    arrow = d.decode_arrow(frames)
    assert (
        batch.errors
        == arrow.errors
        == {
            2: "n=5 is outside OCCURS 1 TO 4",
            3: "10 bytes: too short for rec (11 bytes)",
            5: "n=0 is outside OCCURS 1 TO 4",
            6: "n (the OCCURS DEPENDING ON counter) does not decode",
        }
    )
    assert list(arrow.indices["rec"]) == [0, 1, 4]
    assert arrow.tables["rec"].to_pylist() == [batch.records[i] for i in (0, 1, 4)]
    with pytest.raises(FrameError, match="frame 2: n=5"):
        d.decode(frames)


def test_occurs_depending_on_fixed_size() -> None:
    d = decoder(ODO, variable_size_occurs=False)
    frame = "01".encode("cp037") + "C0".encode("cp037") + H("001c") + b"\x40" * 12 + "Z".encode("cp037")
    assert d.decode_one(frame) == {"n": 1, "code": ["C0"], "qty": [1], "tail": "Z", "_corrupt_fields": []}
    assert d.decode_arrow([frame]).tables["rec"].to_pylist() == [d.decode_one(frame)]


# -- several record types, headers, frame errors -----------------------------------------------------------
HEADER = "01 HDR.\n 05 TYPE PIC X(2).\n 05 SEQ PIC 9(4) COMP.\n"
BODY_A = "01 A.\n 05 AMOUNT PIC S9(3)V99 COMP-3.\n"
BODY_B = "01 B.\n 05 NAME PIC X(3).\n 05 SEQ PIC 9.\n"


def test_several_types_with_a_header() -> None:
    d = CobolDecoder(
        {"AA": parse_copybook(BODY_A), "BB": parse_copybook(BODY_B)},
        header=parse_copybook(HEADER),
        type_field="TYPE",
    )
    a = "AA".encode("cp037") + H("0007") + H("12345d")
    b = "BB".encode("cp037") + H("0008") + "xyz".encode("cp037") + H("f9")
    unknown = "CC".encode("cp037") + H("0009")
    short = a[:5]
    frames = [a, b, unknown, short, b, a[:1]]
    batch = d.decode_batch(frames, vectorised=False)
    assert batch.records[0] == {
        "type": "AA", "seq": 7, "amount": Decimal("-123.45"), "_record_type": "AA", "_corrupt_fields": []
    }  # fmt: skip
    # The body's SEQ clashes with the header's: it takes its group's name.
    assert batch.records[1] == {
        "type": "BB", "seq": 8, "name": "xyz", "b_seq": 9, "_record_type": "BB", "_corrupt_fields": []
    }  # fmt: skip
    assert batch.errors == {
        2: "unknown record type b'\\xc3\\xc3' in type",
        3: "5 bytes: too short for AA (7 bytes)",
        5: "1 bytes: too short to hold type",
    }
    arrow = d.decode_arrow(frames)
    assert arrow.errors == batch.errors
    assert {k: list(v) for k, v in arrow.indices.items()} == {"AA": [0], "BB": [1, 4]}
    assert arrow.tables["BB"].to_pylist() == [batch.records[1], batch.records[4]]
    assert arrow.tables["AA"].schema == d.schema("AA")
    assert d.header(b) == {"type": "BB", "seq": 8, "_corrupt_fields": [], "_record_type": "BB"}
    assert d.header(unknown)["_record_type"] is None


def test_type_field_in_each_layout() -> None:
    a = parse_copybook("01 A.\n 05 KIND PIC X.\n 05 X PIC 9.\n")
    b = parse_copybook("01 B.\n 05 KIND PIC X.\n 05 Y PIC X(2).\n")
    d = CobolDecoder({"A": a, "B": b}, type_field="KIND")
    assert d.decode_one("A5".encode("cp037")) == {"kind": "A", "x": 5, "_record_type": "A", "_corrupt_fields": []}
    assert d.header("Bzz".encode("cp037")) == {"kind": "B", "_record_type": "B"}
    c = parse_copybook("01 C.\n 05 X PIC X.\n 05 KIND PIC X.\n")
    with pytest.raises(CopybookError, match="not at the same place"):
        CobolDecoder({"A": a, "C": c}, type_field="KIND")


def test_corrupt_fields_keep_the_record() -> None:
    cb = "01 R.\n 05 ID PIC 9(3).\n 05 AMT PIC S9(3) COMP-3.\n 05 NAME PIC X(2).\n"
    frames = [H("f0f0f1") + H("123c") + "ok".encode("cp037"), H("f0f0f2") + H("12ac") + "ko".encode("cp037")]
    d = decoder(cb)
    assert d.decode(frames)[1] == {"id": 2, "amt": None, "name": "ko", "_corrupt_fields": ["amt"]}
    assert d.decode_arrow(frames).tables["rec"].to_pylist() == d.decode(frames)


def test_from_options(tmp_path: Any) -> None:
    (tmp_path / "h.cpy").write_text(HEADER)
    (tmp_path / "a.cpy").write_text(BODY_A)
    options = {"header_copybook": "h.cpy", "copybooks": {"AA": "a.cpy"}, "type_field": "type", "code_page": "cp1147"}
    d = CobolDecoder.from_options(options, tmp_path)
    assert d.decode_one("AA".encode("cp1147") + H("0001") + H("00100c"))["amount"] == Decimal("1.00")
    assert d.record_length("AA") == 7
    with pytest.raises(CopybookError, match="unknown cobol option"):
        CobolDecoder.from_options({**options, "colour": 1}, tmp_path)
    with pytest.raises(CopybookError, match="cannot read"):
        CobolDecoder.from_options({"copybook": "missing.cpy"}, tmp_path)
