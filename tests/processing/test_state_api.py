"""Keyed state and timers of `process()`, dead letters, and the stateless operators and outputs.

Event-time timers fire when the partition's stream time (largest event time seen, or
`advance_time`) reaches them; wall-clock timers when the clock does. One timer per key and name:
scheduling again moves it, `cancel` drops it. The reference below is plain Python.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from headwater.core.errors import ProcessingError
from headwater.processing import Context, Pipeline, TestDriver, Timer

KEYS = ("a", "b", "c", "d", "e", "f")
PARTITIONS = 3
NEVER = -(10**18)


def partition_of(key: str) -> int:
    return KEYS.index(key) % PARTITIONS


def test_state_is_per_key() -> None:
    def on_record(ctx: Context, value: dict[str, int]) -> None:
        count = ctx.state.get("count", 0) + 1
        ctx.state.set("count", count)
        ctx.state.set("total", ctx.state.get("total", 0) + value["n"])
        ctx.emit({"count": count, "total": ctx.state.get("total"), "partition": ctx.partition})

    p = Pipeline("counts")
    p.source("x").process(on_record).to_stream("out")
    d = TestDriver(p, partitions=PARTITIONS)
    rng = random.Random(8)
    expected: dict[str, list[dict[str, int]]] = {k: [] for k in KEYS}
    count: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for _ in range(300):
        key, n = rng.choice(KEYS), rng.randint(-9, 9)
        d.send({"n": n}, key=key, timestamp=rng.randint(0, 1000), partition=partition_of(key))
        count[key] += 1
        total[key] += n
        expected[key].append({"count": count[key], "total": total[key], "partition": partition_of(key)})
    got: dict[str, list[dict[str, int]]] = {k: [] for k in KEYS}
    for out in d.outputs("out"):
        got[out["key"]].append(out["value"])
    assert got == expected


def test_state_delete_and_exists() -> None:
    def on_record(ctx: Context, value: str) -> None:
        if value == "drop":
            ctx.state.delete("seen")
        ctx.emit(ctx.state.exists("seen"))
        ctx.state.set("seen", True)

    p = Pipeline("exists")
    p.source("x").process(on_record).to_stream("out")
    d = TestDriver(p)
    for key, value in (("u", "x"), ("u", "x"), ("v", "x"), ("u", "drop"), ("u", "x")):
        d.send(value, key=key, timestamp=0)
    assert d.values("out") == [False, True, False, False, True]


# -- event-time timers: a "no response within 100 ms" rule against a reference ------------------
TIMEOUT = 100


def timeout_rule() -> Pipeline:
    def on_record(ctx: Context, value: dict[str, Any]) -> None:
        if value["kind"] == "req":
            ctx.state.set("pending", value["i"])
            ctx.schedule("timeout", ctx.timestamp + TIMEOUT, payload=value["i"])  # moves an earlier one
        else:
            ctx.state.delete("pending")
            ctx.cancel("timeout")

    def on_timer(ctx: Context, timer: Timer) -> None:
        assert (timer.name, timer.kind, timer.key) == ("timeout", "event_time", ctx.key)
        ctx.emit({"req": timer.payload, "due": timer.due_ms, "pending": ctx.state.get("pending")})
        ctx.state.delete("pending")

    p = Pipeline("timeouts")
    p.source("x").process(on_record, on_timer).to_stream("alerts")
    return p


def test_event_time_timers_match_reference() -> None:
    d = TestDriver(timeout_rule(), partitions=PARTITIONS)
    rng = random.Random(11)
    stream = [NEVER] * PARTITIONS
    timers: dict[str, tuple[int, int]] = {}  # key -> (due, request)
    seen = fired = 0
    for i in range(500):
        key = rng.choice(KEYS)
        kind = "req" if rng.random() < 0.6 else "resp"
        ts = max(0, i * 12 + rng.randint(-40, 0) + rng.choice((0, 0, 1, -1)))  # out of order, < TIMEOUT
        d.send({"kind": kind, "i": i}, key=key, timestamp=ts, partition=partition_of(key))
        p = partition_of(key)
        if kind == "req":
            timers[key] = (ts + TIMEOUT, i)
        else:
            timers.pop(key, None)
        expected = []
        if ts > stream[p]:
            stream[p] = ts
            for k, (due, req) in list(timers.items()):
                if partition_of(k) == p and due <= ts:
                    expected.append((k, due, {"req": req, "due": due, "pending": req}))
                    del timers[k]
                    fired += 1
        new = d.outputs("alerts")[seen:]
        seen += len(new)
        assert sorted((o["key"], o["timestamp"], o["value"]) for o in new) == sorted(expected, key=repr), f"at {i}"
    assert 25 < fired < 250, fired


def single_timer(on_record: Any, wall_clock_ms: int = 0) -> tuple[TestDriver, list[Timer]]:
    fired: list[Timer] = []

    def on_timer(ctx: Context, timer: Timer) -> None:
        fired.append(timer)
        ctx.emit(timer.name)

    p = Pipeline("timers")
    p.source("x").process(on_record, on_timer).to_stream("out")
    return TestDriver(p, wall_clock_ms=wall_clock_ms), fired


def test_timer_fires_when_stream_time_reaches_it() -> None:
    d, fired = single_timer(lambda ctx, v: ctx.schedule("t", 500, payload={"v": v}))
    d.send("x", key="k", timestamp=100)
    d.advance_time(499)
    assert fired == []
    d.advance_time(500)
    assert fired == [Timer("t", "k", 500, "event_time", {"v": "x"})]
    assert d.outputs("out") == [{"key": "k", "value": "t", "timestamp": 500}]
    d.advance_time(10_000)
    assert len(fired) == 1


def test_records_advance_stream_time_too() -> None:
    d, fired = single_timer(lambda ctx, v: v == "arm" and ctx.schedule("t", 300))
    d.send("arm", key="k", timestamp=100)
    d.send("other", key="j", timestamp=299)
    assert fired == []
    d.send("other", key="j", timestamp=300)  # another key's record moves the partition's time
    assert [(t.key, t.due_ms) for t in fired] == [("k", 300)]


@pytest.mark.parametrize(("first", "second"), [(500, 300), (300, 500), (400, 400)])
def test_scheduling_again_moves_the_timer(first: int, second: int) -> None:
    def on_record(ctx: Context, value: int) -> None:
        ctx.schedule("t", value)

    d, fired = single_timer(on_record)
    d.send(first, key="k", timestamp=0)
    d.send(second, key="k", timestamp=0)
    d.advance_time(second - 1)
    assert fired == []
    d.advance_time(10_000)
    assert [t.due_ms for t in fired] == [second]


def test_cancelled_timer_never_fires_and_names_are_separate() -> None:
    def on_record(ctx: Context, value: str) -> None:
        if value == "arm":
            ctx.schedule("a", 200)
            ctx.schedule("b", 200)
        else:
            ctx.cancel("a")

    d, fired = single_timer(on_record)
    d.send("arm", key="k", timestamp=0)
    d.send("arm", key="j", timestamp=0)
    d.send("cancel", key="k", timestamp=0)
    d.advance_time(1000)
    assert sorted((t.key, t.name) for t in fired) == [("j", "a"), ("j", "b"), ("k", "b")]


def test_timer_can_schedule_the_next_one() -> None:
    def on_timer(ctx: Context, timer: Timer) -> None:
        ctx.emit(timer.due_ms)
        if timer.due_ms < 500:
            ctx.schedule("tick", timer.due_ms + 100)

    p = Pipeline("ticks")
    p.source("x").process(lambda ctx, v: ctx.schedule("tick", 100), on_timer).to_stream("out")
    d = TestDriver(p)
    d.send("go", key="k", timestamp=0)
    d.advance_time(350)
    assert d.values("out") == [100, 200, 300]
    d.advance_time(10_000)
    assert d.values("out") == [100, 200, 300, 400, 500]


def test_wall_clock_timers() -> None:
    def on_record(ctx: Context, value: str) -> None:
        if value == "arm":
            ctx.schedule("ping", 1_500, wall_clock=True, payload="w")
            ctx.schedule("ping", 1_200)  # same name, event time: another timer
        else:
            ctx.cancel("ping", wall_clock=True)

    d, fired = single_timer(on_record, wall_clock_ms=1_000)
    d.send("arm", key="k", timestamp=0)
    d.send("arm", key="j", timestamp=0)
    d.send("cancel", key="j", timestamp=0)
    d.advance_time(100_000)  # event time does not fire wall-clock timers
    assert sorted((t.key, t.kind) for t in fired) == [("j", "event_time"), ("k", "event_time")]
    fired.clear()
    d.advance_wall_clock(499)
    assert fired == []
    d.advance_wall_clock(1)
    assert fired == [Timer("ping", "k", 1_500, "wall_clock", "w")]
    d.advance_wall_clock(10_000)
    assert len(fired) == 1
    assert Counter(d.values("out")) == {"ping": 3}


# -- errors ----------------------------------------------------------------------------------------
def failing(on_error: Any) -> TestDriver:
    def on_record(ctx: Context, value: dict[str, Any]) -> None:
        if value.get("boom"):
            raise ValueError(f"bad record {value['n']}")
        ctx.state.set("sum", ctx.state.get("sum", 0) + value["n"])
        ctx.emit(ctx.state.get("sum"))

    p = Pipeline("failing", on_error=on_error)
    p.source("x").map(lambda v: {**v, "n": 10 // v["d"]}).process(on_record).to_stream("out")
    return TestDriver(p, partitions=PARTITIONS)


def test_dead_letter_keeps_going() -> None:
    d = failing("dead-letter")
    d.send({"d": 1}, key="a", timestamp=10)
    d.send({"d": 2, "boom": True}, key="a", timestamp=11)
    d.send({"d": 0}, key="b", timestamp=12)  # fails in map(): ZeroDivisionError
    d.send({"d": 5}, key="a", timestamp=13)
    d.send({"d": 1}, key="b", timestamp=14)
    assert [(o["key"], o["value"]) for o in d.outputs("out")] == [("a", 10), ("a", 12), ("b", 10)]
    errors = d.errors()
    assert [(e["key"], e["value"], e["event_time"]) for e in errors] == [
        ("a", {"d": 2, "boom": True}, 11), ("b", {"d": 0}, 12),
    ]  # fmt: skip
    assert "ValueError" in errors[0]["reason"] and "bad record 5" in errors[0]["reason"]
    assert "ZeroDivisionError" in errors[1]["reason"]
    assert d.late() == []


def test_stop_raises() -> None:
    d = failing("stop")
    d.send({"d": 1}, key="a", timestamp=10)
    with pytest.raises(ProcessingError, match="bad record 5"):
        d.send({"d": 2, "boom": True}, key="a", timestamp=11)
    assert d.errors() == []


# -- stateless operators and outputs ---------------------------------------------------------------
def test_branch_first_match_wins_and_merge() -> None:
    p = Pipeline("branches")
    source = p.source("x")
    parts = source.branch(big=lambda v: v >= 100, even=lambda v: v % 2 == 0, default=None)
    parts["big"].to_stream("big")
    parts["even"].to_stream("even")
    parts["default"].to_stream("odd")
    parts["big"].merge(parts["even"]).map(lambda v: -v).to_stream("merged")
    only = source.branch(neg=lambda v: v < 0)  # no default: the rest is dropped
    only["neg"].to_stream("neg")
    d = TestDriver(p)
    for v in (1, 2, 100, 101, -4, 7):
        d.send(v, key="k", timestamp=0)
    assert d.values("big") == [100, 101]
    assert d.values("even") == [2, -4]
    assert d.values("odd") == [1, 7]
    assert d.values("merged") == [-2, -100, -101, 4]
    assert d.values("neg") == [-4]


def test_flat_map_map_key_and_windows_on_the_new_key() -> None:
    p = Pipeline("rekey")
    (
        p.source("x")
        .flat_map(lambda v: [{"page": page} for page in v["pages"]])
        .map_key(lambda v: v["page"])
        .tumbling_window(100)
        .count()
        .final()
        .to_stream("out")
    )
    d = TestDriver(p)
    d.send({"pages": ["/a", "/b", "/a"]}, key="u1", timestamp=10)
    d.send({"pages": []}, key="u2", timestamp=20)
    d.send({"pages": ["/b"]}, key="u2", timestamp=30)
    d.advance_time(1000)
    assert sorted((o["key"], o["value"]["value"]) for o in d.outputs("out")) == [("/a", 2), ("/b", 2)]


def test_to_state_latest_value_and_none_deletes() -> None:
    p = Pipeline("latest")
    (
        p.source("x")
        .with_timestamp(lambda v: v["at"])
        .to_state("positions", value=lambda v: v.get("pos"))
        .to_state("by_car", key=lambda v: v["car"], value=lambda v: {"pos": v.get("pos"), "at": v["at"]})
    )
    d = TestDriver(p, partitions=PARTITIONS)
    d.send({"car": "c1", "pos": 1, "at": 5}, key="a", timestamp=0)
    d.send({"car": "c2", "pos": 2, "at": 6}, key="b", timestamp=0)
    d.send({"car": "c1", "pos": 3, "at": 7}, key="a", timestamp=0)
    assert d.state("positions") == {"a": 3, "b": 2}
    d.send({"car": "c2", "at": 8}, key="b", timestamp=0)  # value None: deletes b
    assert d.state("positions") == {"a": 3}
    assert d.state("positions", "b") is None
    assert d.state("by_car", "c2") == {"pos": None, "at": 8}
    assert d.state("by_car", "c1") == {"pos": 3, "at": 7}


def test_timestamps_from_the_value_and_iso() -> None:
    p = Pipeline("iso")
    p.source("x").tumbling_window(60_000).count().final().to_stream("out")
    d = TestDriver(p)
    d.send({"timestamp": "2024-05-01T10:00:59.999Z"}, key="k")
    d.send({"timestamp": "2024-05-01T10:01:00Z"}, key="k")  # exactly on the next window
    d.advance_time(10**15)
    starts = [(o["value"]["start"], o["value"]["value"]) for o in d.outputs("out")]
    assert starts == [(1714557600000, 1), (1714557660000, 1)]
