from __future__ import annotations

import gzip
import zlib

import orjson
import pytest

from headwater.collector.parsing import BatchParser, Limits, decompress, peek_write_key
from headwater.core.errors import CollectorError


def parser(**limits: int) -> BatchParser:
    return BatchParser(Limits(**limits), "src", 1_000)


def values(parsed_records: list[tuple[bytes | None, bytes]]) -> list[dict[str, object]]:
    return [orjson.loads(v) for _, v in parsed_records]


def test_ndjson_valid_and_invalid_lines() -> None:
    body = (
        b'{"event":"A","userId":"u1"}\n\nnot json\n{"event":"B"}\r\n{"event":"C","anonymousId":"a","messageId":"m"}\n'
    )
    out = parser().parse_track(body)
    assert out.valid == 2
    assert [r[0] for r in out.records] == [b"u1", b"a"]
    assert out.idempotency == [None, ("src", "m")]
    assert [(r.get("line"), r["error"][:12]) for r in out.rejected] == [(3, "invalid JSON"), (4, "userId: requ")]
    assert len(out.quarantine) == 2
    quarantined = values(out.quarantine)
    assert quarantined[0]["raw"] == "not json" and quarantined[0]["m"]["src"] == "src"
    envelope = values(out.records)[0]
    assert envelope["e"] == {"event": "A", "userId": "u1"} and envelope["m"]["ep"] == "track-raw"


def test_array_and_single_object_and_pretty_printed() -> None:
    assert parser().parse_track(b'[{"event":"A","userId":"u"},{"event":"B","userId":"v"}]').valid == 2
    assert parser().parse_track(b'{"event":"A","userId":"u"}').valid == 1
    assert parser().parse_track(b'{\n  "event": "A",\n  "userId": "u"\n}\n').valid == 1


def test_bad_utf8_line_is_quarantined_and_neighbours_kept() -> None:
    body = b'{"event":"A","userId":"u"}\n{"event":"\xff\xfe","userId":"u"}\n{"event":"C","userId":"u"}'
    out = parser().parse_track(body)
    assert out.valid == 2
    assert out.rejected[0]["line"] == 2
    assert "\\xff" in values(out.quarantine)[0]["raw"]


def test_deep_nesting_is_rejected_not_crashing() -> None:
    deep = b'{"event":"A","userId":"u","p":' + b"[" * 5000 + b"]" * 5000 + b"}"
    out = parser().parse_track(deep + b'\n{"event":"B","userId":"u"}')
    assert out.valid == 1 and out.rejected[0]["line"] == 1


def test_event_size_limit_quarantines() -> None:
    big = orjson.dumps({"event": "A", "userId": "u", "blob": "x" * 70_000})
    out = parser().parse_track(big + b'\n{"event":"B","userId":"u"}')
    assert out.valid == 1 and "limit is 65536" in out.rejected[0]["error"]


def test_batch_count_limit_is_413() -> None:
    body = b"\n".join([b'{"event":"A","userId":"u"}'] * 11)
    with pytest.raises(CollectorError) as info:
        parser(max_batch_events=10).parse_track(body)
    assert info.value.status == 413


def test_segment_batch_items_and_context() -> None:
    body = orjson.dumps(
        {
            "batch": [
                {"type": "track", "event": "E", "userId": "u", "messageId": "m1"},
                {"type": "identify", "anonymousId": "a", "traits": {"x": 1}},
                {"type": "track", "userId": "u"},
                "nope",
            ],
            "sentAt": "2026-01-01T00:00:00Z",
            "context": {"library": {"name": "x"}},
            "writeKey": "k",
        }
    )
    out = parser().parse_segment(body, "batch")
    assert out.valid == 2
    assert [r["index"] for r in out.rejected] == [2, 3]
    meta = values(out.records)[0]["m"]
    assert meta["sa"] == "2026-01-01T00:00:00Z" and meta["ctx"] == {"library": {"name": "x"}}


def test_segment_single_call_gets_type_from_endpoint() -> None:
    out = parser().parse_segment(b'{"userId":"u","name":"Home"}', "page")
    assert values(out.records)[0]["e"]["type"] == "page"
    with pytest.raises(CollectorError, match="not valid JSON"):
        parser().parse_segment(b"{", "track")


def test_peek_write_key() -> None:
    assert peek_write_key(b'{"writeKey":"abc"}') == "abc"
    assert peek_write_key(b"[1]") is None
    assert peek_write_key(b"{") is None


def test_gzip_roundtrip_and_bomb_refused() -> None:
    data = b'{"event":"A","userId":"u"}\n' * 100
    assert decompress(gzip.compress(data), "gzip", 10_000) == data
    assert decompress(zlib.compress(data), "deflate", 10_000) == data
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 MB of zeros in ~50 KB
    with pytest.raises(CollectorError) as info:
        decompress(bomb, "gzip", 5_000_000)
    assert info.value.status == 413
    with pytest.raises(CollectorError) as info:
        decompress(b"not gzip", "gzip", 100)
    assert info.value.status == 400
    with pytest.raises(CollectorError) as info:
        decompress(data, "br", 100)
    assert info.value.status == 415


def test_ndjson_rejections_are_quarantined_in_line_order() -> None:
    body = b"\n".join(
        [
            b'{"event":"A","userId":"u","timestamp":"0001-01-01T00:00:00+01:00"}',
            b"{" + b" " * 300 + b"}",
            b'{"event":"B","userId":"u","dateTime":"2026-01-15 10:00:00"}',
            b"[1]",
        ]
    )
    out = parser(max_event_bytes=256).parse_track(body)
    assert out.valid == 1
    assert [(r["line"], r["error"][:20]) for r in out.rejected] == [
        (1, "timestamp: '0001-01-"), (2, "event is 302 bytes; "), (4, "expected a JSON obje"),
    ]  # fmt: skip
    assert [q["q"][:9] for q in values(out.quarantine)] == ["timestamp", "event is ", "expected "]
    assert values(out.records)[0]["e"]["event"] == "B"
