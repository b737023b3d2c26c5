"""Hostile input never gets a 5xx and never costs the valid events beside it."""

from __future__ import annotations

import uuid

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import RunningHeadwater

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what JSON encoders emit
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
hostile_lines = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    st.dictionaries(st.sampled_from(["event", "userId", "anonymousId", "dateTime", "messageId", "x"]), json_values).map(
        orjson.dumps
    ),
    st.just(b"[" * 3000),
    st.just(b'{"event":"\xc3\x28","userId":"u"}'),
    st.just(b'{"event":"E","userId":"u","dateTime":"9999-99-99"}'),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.lists(hostile_lines, min_size=1, max_size=6), endpoint=st.sampled_from(["/track", "/v1/batch"]))
def test_junk_beside_valid_events(headwater: RunningHeadwater, junk: list[bytes], endpoint: str) -> None:
    marker = uuid.uuid4().hex
    valid = orjson.dumps({"event": "VALID", "userId": marker, "messageId": marker})
    if endpoint == "/track":
        body = b"\n".join([*junk[:3], valid, *junk[3:]])
    else:
        items = []
        for line in junk:
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                items.append(line.decode("utf-8", "replace"))
        items.insert(1, {"type": "track", "event": "VALID", "userId": marker, "messageId": marker})
        body = orjson.dumps({"batch": items})
    response = headwater.post(endpoint, body, headwater.keys["write"])
    assert response.status_code < 500, response.text
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] >= 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), endpoint=st.sampled_from(["/track", "/v1/track", "/v1/batch", "/v1/identify"]))
def test_arbitrary_bodies_never_5xx(headwater: RunningHeadwater, body: bytes, endpoint: str) -> None:
    response = headwater.post(endpoint, body, headwater.keys["write"])
    assert response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert "error" in response.json() or response.json()["success"] is True


def test_hostile_requests_at_the_edges(headwater: RunningHeadwater) -> None:
    key = headwater.keys["write"]
    cases = [
        headwater.post("/track", b"", key),
        headwater.post("/track", b"\n\n\n", key),
        headwater.post("/track", b"x" * 20_000_000, key),
        headwater.post("/track", b"[1,2", key),
        headwater.post("/track", b'{"a":' * 10_000, key),
        headwater.post("/track", b"\x1f\x8b" + b"junk", key, headers={"content-encoding": "gzip"}),
        headwater.post("/v1/batch", b'{"batch": 5}', key),
        headwater.post("/v1/track", b"[]", key),
        headwater.post("/track", b"{}", key, headers={"content-encoding": "zstd-unknown"}),
    ]
    assert [c.status_code for c in cases] == [400, 400, 413, 400, 400, 400, 400, 400, 415]
    for response in cases:
        assert response.json()["error"]
    wrong_method = httpx.get(headwater.url + "/track")
    assert wrong_method.status_code == 405
