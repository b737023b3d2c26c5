"""COBOL: record splitting (fixed, RDW, BDW), property-based round trips through a reference encoder written
here, dict/Arrow agreement on arbitrary bytes, and the PMU frame generator."""

from __future__ import annotations

import importlib.util
import io
from collections import Counter
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.sources.cobol import CobolDecoder, parse_copybook
from headwater.sources.cobol.encode import Encoder
from headwater.sources.cobol.records import (
    RecordFormatError,
    TruncatedRecordError,
    bdw_records,
    fixed_records,
    iter_records,
    rdw_records,
)

ROOT = Path(__file__).resolve().parents[2]


# -- record splitting ------------------------------------------------------------------------------------
def rdw(record: bytes) -> bytes:
    return (len(record) + 4).to_bytes(2, "big") + b"\0\0" + record


def bdw(records: list[bytes], extended: bool = False) -> bytes:
    body = b"".join(rdw(r) for r in records)
    if extended:
        return (0x80000000 | (len(body) + 4)).to_bytes(4, "big") + body
    return (len(body) + 4).to_bytes(2, "big") + b"\0\0" + body


def test_fixed_records_across_chunks_and_a_truncated_tail() -> None:
    data = b"".join(bytes([i]) * 5 for i in range(7)) + b"xy"
    got = []
    with pytest.raises(TruncatedRecordError, match="2 of 5 bytes") as info:
        for record in fixed_records(io.BytesIO(data), 5, chunk_records=2):
            got.append(record)
    assert got == [bytes([i]) * 5 for i in range(7)]
    assert (info.value.offset, info.value.data) == (35, b"xy")
    assert list(iter_records(io.BytesIO(data[:35]), "fixed", 5)) == got


def test_rdw_records() -> None:
    records = [b"a", b"", b"hello" * 100, b"z"]
    assert list(rdw_records(io.BytesIO(b"".join(rdw(r) for r in records)))) == records
    stream = io.BytesIO(rdw(b"one") + rdw(b"two")[:-1])
    got = []
    with pytest.raises(TruncatedRecordError, match="2 of 3 bytes") as info:
        got.extend(rdw_records(stream))
    assert got == [b"one"]
    assert (info.value.offset, info.value.data) == (7, rdw(b"two")[:-1])
    with pytest.raises(TruncatedRecordError, match="inside an RDW"):
        list(rdw_records(io.BytesIO(b"\x00")))
    with pytest.raises(RecordFormatError, match="below 4"):
        list(rdw_records(io.BytesIO(b"\x00\x02\x00\x00")))
    with pytest.raises(RecordFormatError, match="spanned"):
        list(rdw_records(io.BytesIO(b"\x00\x05\x01\x00x")))


def test_bdw_records() -> None:
    blocks = bdw([b"r1", b"record2"]) + bdw([b"r3"], extended=True) + bdw([])
    assert list(iter_records(io.BytesIO(blocks), "bdw")) == [b"r1", b"record2", b"r3"]
    overrun = (4 + 4 + 2).to_bytes(2, "big") + b"\0\0" + (4 + 5).to_bytes(2, "big") + b"\0\0" + b"ab"
    with pytest.raises(RecordFormatError, match="overruns its block"):
        list(bdw_records(io.BytesIO(overrun)))
    got = []
    with pytest.raises(TruncatedRecordError, match="last block"):
        got.extend(bdw_records(io.BytesIO(bdw([b"ok"]) + bdw([b"cut"])[:-2])))
    assert got == [b"ok"]


# -- a reference encoder, independent of headwater's ------------------------------------------------------
def ref_text(value: str, size: int, cp: str) -> bytes:
    raw = value.encode(cp)
    return raw + b"\x40" * (size - len(raw))


def ref_zoned(value: int, digits: int, signed: bool, leading: bool = False, separate: bool = False) -> bytes:
    body = [0xF0 + int(c) for c in str(abs(value)).rjust(digits, "0")]
    if separate:
        sign = 0x60 if value < 0 else 0x4E
        return bytes([sign, *body] if leading else [*body, sign])
    if signed:
        at = 0 if leading else -1
        body[at] = (0xD0 if value < 0 else 0xC0) + (body[at] & 0x0F)
    return bytes(body)


def ref_packed(value: int, digits: int, signed: bool) -> bytes:
    nibbles = str(abs(value)).rjust(digits + (1 - digits % 2), "0")
    sign = "D" if value < 0 else "C" if signed else "F"
    return bytes.fromhex(nibbles + sign)


def ref_binary(value: int, size: int, signed: bool) -> bytes:
    return value.to_bytes(size, "big", signed=signed)


ALL = """
       01 R.
          05 T     PIC X(6).
          05 UZ    PIC 9(5).
          05 SZ    PIC S9(5)V99.
          05 SL    PIC S9(3) SIGN LEADING.
          05 SS    PIC S9(4)V9 SIGN TRAILING SEPARATE.
          05 UP    PIC 9(6) COMP-3.
          05 SP    PIC S9(7)V99 COMP-3.
          05 UB    PIC 9(4) COMP.
          05 SB    PIC S9(9) COMP.
          05 SBL   PIC S9(12)V99 COMP.
          05 N     PIC 9.
          05 ITEMS OCCURS 0 TO 3 DEPENDING ON N.
             10 IC PIC X(2).
             10 IQ PIC S9(3) COMP-3.
"""
CODE_PAGES = ("cp037", "cp1047", "cp297", "cp1147", "cp500")
LETTERS = "ABCXYZabcxyz0189 éèçàùâêîôûëïüÉÈÇ€"


def _text(size: int) -> st.SearchStrategy[str]:
    return st.text(LETTERS, max_size=size).map(lambda s: s.rstrip(" "))


def _scaled(digits: int, scale: int, signed: bool) -> st.SearchStrategy[Any]:
    top = 10**digits - 1
    ints = st.integers(-top if signed else 0, top)
    return ints.map(lambda v: Decimal(v).scaleb(-scale)) if scale else ints


@st.composite
def records(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    cp = draw(st.sampled_from(CODE_PAGES))
    alphabet = "".join(c for c in LETTERS if c != "€" or cp == "cp1147")
    n = draw(st.integers(0, 3))
    values = {
        "t": draw(st.text(alphabet, max_size=6).map(lambda s: s.rstrip(" "))),
        "uz": draw(_scaled(5, 0, False)),
        "sz": draw(_scaled(7, 2, True)),
        "sl": draw(_scaled(3, 0, True)),
        "ss": draw(_scaled(5, 1, True)),
        "up": draw(_scaled(6, 0, False)),
        "sp": draw(_scaled(9, 2, True)),
        "ub": draw(st.integers(0, 65535)),
        "sb": draw(st.integers(-(2**31), 2**31 - 1)),
        "sbl": Decimal(draw(st.integers(-(2**63), 2**63 - 1))).scaleb(-2),
        "n": n,
        "ic": [draw(st.text(alphabet, max_size=2).map(lambda s: s.rstrip(" "))) for _ in range(n)],
        "iq": [draw(_scaled(3, 0, True)) for _ in range(n)],
        "_corrupt_fields": [],
    }
    return cp, values


def ref_encode(cp: str, v: dict[str, Any]) -> bytes:
    def unscaled(x: Any, scale: int) -> int:
        return int(Decimal(x).scaleb(scale))

    out = [
        ref_text(v["t"], 6, cp),
        ref_zoned(v["uz"], 5, False),
        ref_zoned(unscaled(v["sz"], 2), 7, True),
        ref_zoned(v["sl"], 3, True, leading=True),
        ref_zoned(unscaled(v["ss"], 1), 5, True, separate=True),
        ref_packed(v["up"], 6, False),
        ref_packed(unscaled(v["sp"], 2), 9, True),
        ref_binary(v["ub"], 2, False),
        ref_binary(v["sb"], 4, True),
        ref_binary(unscaled(v["sbl"], 2), 8, True),
        ref_zoned(v["n"], 1, False),
    ]
    for code, qty in zip(v["ic"], v["iq"], strict=True):
        out += [ref_text(code, 2, cp), ref_packed(qty, 3, True)]
    return b"".join(out)


_DECODERS: dict[str, CobolDecoder] = {}


def _decoder(cp: str) -> CobolDecoder:
    if cp not in _DECODERS:
        _DECODERS[cp] = CobolDecoder({"r": parse_copybook(ALL)}, code_page=cp)
    return _DECODERS[cp]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=6))
def test_round_trip_reference_encoder(batch: list[tuple[str, dict[str, Any]]]) -> None:
    for cp, values in batch:
        d = _decoder(cp)
        frame = ref_encode(cp, values)
        assert d.decode_one(frame) == values
        assert Encoder(d).encode(values) == frame  # headwater's encoder writes the same bytes
    cp = batch[0][0]
    same = [values for c, values in batch if c == cp]
    arrow = _decoder(cp).decode_arrow([ref_encode(cp, v) for v in same])
    assert arrow.errors == {}
    assert arrow.tables["r"].to_pylist() == same


NOISY = """
       01 R.
          05 K     PIC X.
          05 BODY  PIC X(3).
          05 NUM REDEFINES BODY.
             10 NP PIC S9(5) COMP-3.
          05 Z     PIC S9(3)V9.
          05 ZL    PIC S9(2) SIGN LEADING.
          05 ZS    PIC 9(2) SIGN LEADING SEPARATE.
          05 P     PIC 9(2) COMP-3.
          05 B     PIC S9(4) COMP.
          05 F     COMP-1.
          05 D     COMP-2.
          05 N     PIC 9.
          05 A OCCURS 1 TO 3 DEPENDING ON N.
             10 AZ PIC S9 OCCURS 2.
             10 AT PIC X.
"""
LIKELY = [0x40, 0xF0, 0xF5, 0xF9, 0xC1, 0xD3, 0xC0, 0xD9, 0x4E, 0x60, 0x0C, 0x1D, 0x2F, 0x3A, 0x00, 0xFF, 0xF1, 0xF2]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(st.one_of(st.sampled_from(LIKELY), st.integers(0, 255)), min_size=0, max_size=40).map(bytes),
        min_size=1,
        max_size=12,
    )
)
def test_dicts_and_arrow_agree_on_any_bytes(frames: list[bytes]) -> None:
    """Corrupt fields, bad counters, short frames: both paths give the same values and the same errors."""
    d = _noisy()
    batch = d.decode_batch(frames, vectorised=False)
    arrow = d.decode_arrow(frames)
    assert arrow.errors == batch.errors
    table = arrow.tables.get("r")
    rows = table.to_pylist() if table is not None else []
    assert list(arrow.indices.get("r", [])) == [i for i in range(len(frames)) if i not in batch.errors]
    assert rows == [r for r in batch.records if r is not None]


_NOISY: list[CobolDecoder] = []


def _noisy() -> CobolDecoder:
    if not _NOISY:
        rules = {"BODY": {"field": "K", "cases": {"N": "NUM", "T": "BODY"}}}
        _NOISY.append(CobolDecoder({"r": parse_copybook(NOISY)}, code_page="cp1147", redefines=rules))
    return _NOISY[0]


# -- PMU frames ----------------------------------------------------------------------------------------------
def _frames_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pmu_frames", ROOT / "examples/pmu_frames/frames.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pmu_frames_decode() -> None:
    frames_mod = _frames_module()
    frames = frames_mod.generate(3000, seed=7, corrupt_share=0.02)
    d = frames_mod.decoder()
    batch = d.decode_batch(frames, vectorised=False)
    arrow = d.decode_arrow(frames)
    assert arrow.errors == batch.errors
    assert d.decode_batch(frames) == batch  # the default, through Arrow from 32 frames on
    for name, table in arrow.tables.items():
        assert table.to_pylist() == [batch.records[i] for i in arrow.indices[name]]
    reasons = Counter(reason.split(":")[0].split(" ")[0] for reason in batch.errors.values())
    assert set(reasons) <= {"unknown"} | {r for r in reasons if r.isdigit()}  # unknown types, too-short frames
    assert 20 <= len(batch.errors) <= 60
    good = [r for r in batch.records if r is not None]
    types = Counter((r["_record_type"], r["direction"]) for r in good)
    assert types[("T031", "Q")] > 1000 and types[("T031", "R")] > 1000
    assert all(types[(t, "Q")] > 0 for t in ("T001", "T033", "T034"))
    corrupt = [r for r in good if r["_corrupt_fields"]]
    assert corrupt and all(r["_corrupt_fields"] == ["stake"] and r["stake"] is None for r in corrupt)
    requests = {r["bet_id"]: r for r in good if r["_record_type"] == "T031" and r["direction"] == "Q"}
    for r in good:
        if r["_record_type"] == "T031" and r["direction"] == "R" and r["bet_id"] in requests:
            q = requests[r["bet_id"]]
            assert (r["status_code"] in ("OK", "KO"), r["payment_mode"]) == (True, None)
            assert (r["horse_no"], r["bettor_name"]) == (q["horse_no"], q["bettor_name"])
        if r["_record_type"] == "T033":
            assert (r["card_last4"] is None) == (r["payment_method"] != "C")
    assert any("é" in r["bettor_name"] for r in requests.values())
    assert any("€" in r["reason_text"] for r in good if r["_record_type"] == "T034")


def test_pmu_bet_frame_is_200_bytes() -> None:
    frames_mod = _frames_module()
    frames = frames_mod.bet_frames(50, seed=1)
    assert {len(f) for f in frames} == {200}
    records = frames_mod.decoder().decode(frames)
    assert all(r["horse_count"] == 8 and len(r["horse_odds"]) == 8 for r in records)
    assert records[0]["body_length"] == 160


def test_decoder_splits_files_by_its_options(tmp_path: Path) -> None:
    (tmp_path / "r.cpy").write_text("01 R.\n 05 A PIC X(2).\n 05 N PIC 9(3) COMP-3.\n")
    records = [b"\xc1\xc2" + bytes.fromhex("001f"), b"\xc3\xc4" + bytes.fromhex("999f")]
    fixed = CobolDecoder.from_options({"copybook": "r.cpy"}, tmp_path)
    assert [r["n"] for r in fixed.decode(list(fixed.split(io.BytesIO(b"".join(records)))))] == [1, 999]
    variable = CobolDecoder.from_options({"copybook": "r.cpy", "record_format": "rdw"}, tmp_path)
    assert list(variable.split(io.BytesIO(b"".join(rdw(r) for r in records)))) == records
