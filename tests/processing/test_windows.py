"""Window semantics against a plain-Python reference, on seeded out-of-order data.

The reference is written from the definitions (windows.py module docstring, DESIGN.md "Stream
processing semantics"), not from the operators: stream time is the largest event time seen on a
partition; a window [start, end) closes, and its final result is emitted once, when
end + grace <= stream time; a record whose windows are closed is late and listed in
`driver.late()` with a reason. Outputs and late records are compared after every record sent.
"""

from __future__ import annotations

import functools
import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from headwater.processing import Pipeline, TestDriver
from headwater.processing.api import WindowedAggregate, WindowedStream

KEYS = ("a", "b", "c", "d", "e", "f")
PARTITIONS = 3
NEVER = -(10**18)
END_OF_TIME = 10**9


def partition_of(key: str) -> int:
    return KEYS.index(key) % PARTITIONS


@dataclass(frozen=True)
class Rec:
    i: int
    key: str
    ts: int
    n: int

    @property
    def value(self) -> dict[str, int]:
        return {"i": self.i, "n": self.n}


Times = Callable[[random.Random], list[tuple[str, int, bool]]]  # (key, event time, may be held back)


def uniform_times(rng: random.Random, count: int = 360, horizon: int = 3000) -> list[tuple[str, int, bool]]:
    """Event times on a 10 ms grid, often 1 ms off it: some land exactly on window edges."""
    return [
        (rng.choice(KEYS), max(0, rng.randrange(0, horizon, 10) + rng.choice((0, 0, -1, 1))), True)
        for _ in range(count)
    ]


def burst_times(rng: random.Random, gap: int = 60) -> list[tuple[str, int, bool]]:
    """Per key, bursts of records at most 12 ms apart; bursts exactly `gap`, `gap + 1` or much
    more apart. A record on a burst's edge next to a close burst is never held back: without it
    the two bursts would be two sessions that it bridges late (out of the reference's scope)."""
    out = []
    for key in KEYS:
        t = rng.randrange(0, 200, 10)
        while t < 2500:
            burst = [t]
            for _ in range(rng.randint(0, 8)):
                burst.append(burst[-1] + rng.choice((0, 5, 9, 10, 11, 12)))
            separation = rng.choice((gap, gap + 1, 3 * gap + rng.randrange(0, 200, 10)))
            near = [False] * len(burst)
            if separation <= gap + 1:
                near[-1] = True
            if out and out[-1][0] == key and burst[0] - out[-1][1] <= gap + 1:
                near[0] = True
            out += [(key, ts, not n) for ts, n in zip(burst, near, strict=True)]
            t = burst[-1] + separation
    return out


def generate(
    seed: int,
    *,
    max_delay: int,
    late_after: int | None = None,
    times: Times = uniform_times,
    probes: tuple[int, int, int] | None = None,
) -> list[Rec]:
    """Records in arrival order: each arrives up to `max_delay` ms of event time after its own
    time (out of order; without `late_after`, one in ten up to 300 ms). With `late_after`, one in eight is
    held back and arrives once its partition's stream time is >= ts + late_after (past the grace).
    With `probes` (size, step, grace of fixed windows), now and then a window's edge is probed:
    stream time is set to end + grace - 1 and a record of the window sent (just in time), then
    to end + grace and another sent (late, exactly at the edge)."""
    rng = random.Random(seed)
    made = [(Rec(i, key, ts, rng.randint(-50, 50)), may_hold) for i, (key, ts, may_hold) in enumerate(times(rng))]
    held = [r for r, may_hold in made if late_after is not None and may_hold and rng.random() < 0.12]
    held_ids = {r.i for r in held}
    if late_after is None:
        arrival = {r.i: r.ts + rng.randint(0, max_delay if rng.random() < 0.9 else 300) for r, _ in made}
    else:
        arrival = {r.i: r.ts + rng.randint(0, max_delay) for r, _ in made}
    timed = sorted((r for r, _ in made if r.i not in held_ids), key=lambda r: (arrival[r.i], r.i))
    out: list[Rec] = []
    stream = [NEVER] * PARTITIONS
    for rec in timed:
        extra = [rec]
        p = partition_of(rec.key)
        if probes is not None and rng.random() < 0.04:
            size, step, grace = probes
            now = max(stream[p], rec.ts)
            end = now - grace + 2 + (size - (now - grace + 2)) % step  # first end with end + grace - 1 > now
            a, b = rng.sample([k for k in KEYS if partition_of(k) == p], 2)
            i = len(made) + len(out)
            extra += [
                Rec(i, a, end + grace - 1, 1), Rec(i + 1, b, end - 1 - rng.randrange(0, 30), 2),
                Rec(i + 2, a, end + grace, 3), Rec(i + 3, b, end - 1 - rng.randrange(0, 30), 4),
            ]  # fmt: skip
        for r in extra:
            out.append(r)
            stream[p] = max(stream[p], r.ts)
        for h in [h for h in held if partition_of(h.key) == p and h.ts + (late_after or 0) <= stream[p]]:
            out.append(h)
            held.remove(h)
    return out


# -- aggregations: (operator, reference over the window's values in arrival order) -------------
def _mul(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {"n": a["n"] * b["n"] % 1009}


AGGS: dict[str, tuple[Callable[[WindowedStream], WindowedAggregate], Callable[[list[dict[str, int]]], Any]]] = {
    "count": (lambda w: w.count(), len),
    "sum": (lambda w: w.sum(lambda v: v["n"]), lambda vs: sum(v["n"] for v in vs)),
    "mean": (lambda w: w.mean(lambda v: v["n"]), lambda vs: sum(v["n"] for v in vs) / len(vs)),
    "min": (lambda w: w.min(lambda v: v["n"]), lambda vs: min(v["n"] for v in vs)),
    "max": (lambda w: w.max(lambda v: v["n"]), lambda vs: max(v["n"] for v in vs)),
    "distinct": (lambda w: w.distinct(lambda v: v["n"] % 7), lambda vs: len({v["n"] % 7 for v in vs})),
    "reduce": (lambda w: w.reduce(_mul), lambda vs: functools.reduce(_mul, vs)),
}

Out = tuple[str, int, int, Any]  # key, start, end, value


class Reference:
    """Per-partition stream time; `add` applies a record, `close` emits what end + grace passed."""

    def __init__(self, result: Callable[[list[dict[str, int]]], Any], current: bool, grace: int) -> None:
        self.result, self.current, self.grace = result, current, grace
        self.stream = [NEVER] * PARTITIONS
        self.edges: Counter[str] = Counter()

    def send(self, rec: Rec) -> tuple[list[Out], bool]:
        p = partition_of(rec.key)
        self.stream[p] = max(self.stream[p], rec.ts)
        out, late = self.add(rec, self.stream[p])
        return out + self.close(p, self.stream[p]), late

    def advance(self, t: int) -> list[Out]:
        out: list[Out] = []
        for p in range(PARTITIONS):
            self.stream[p] = max(self.stream[p], t)
            out += self.close(p, self.stream[p])
        return out

    def add(self, rec: Rec, now: int) -> tuple[list[Out], bool]:
        raise NotImplementedError

    def close(self, p: int, now: int) -> list[Out]:
        raise NotImplementedError


class FixedReference(Reference):
    """Tumbling (step == size) and hopping: every [k*step, k*step + size) holding the record."""

    def __init__(self, size: int, step: int, grace: int, result: Callable[..., Any], current: bool) -> None:
        super().__init__(result, current, grace)
        self.size, self.step = size, step
        self.windows: dict[tuple[str, int], tuple[int, list[dict[str, int]]]] = {}

    def assign(self, ts: int) -> list[tuple[int, int]]:
        ks = range((ts - self.size) // self.step, ts // self.step + 1)
        return [
            (k * self.step, k * self.step + self.size) for k in ks if k * self.step <= ts < k * self.step + self.size
        ]

    def add(self, rec: Rec, now: int) -> tuple[list[Out], bool]:
        out: list[Out] = []
        windows = self.assign(rec.ts)
        if any(start == rec.ts for start, _ in windows):
            self.edges["on_start"] += 1
        open_ = [(s, e) for s, e in windows if e + self.grace > now]
        self.edges["late_at_edge"] += any(e + self.grace == now for _, e in windows)
        self.edges["just_in_time"] += any(e + self.grace == now + 1 for _, e in windows)
        for start, end in open_:
            values = self.windows.setdefault((rec.key, start), (end, []))[1]
            values.append(rec.value)
            if self.current:
                out.append((rec.key, start, end, self.result(values)))
        return out, len(open_) < len(windows)

    def close(self, p: int, now: int) -> list[Out]:
        out: list[Out] = []
        for (key, start), (end, values) in list(self.windows.items()):
            if partition_of(key) == p and end + self.grace <= now:
                del self.windows[key, start]
                if not self.current:
                    out.append((key, start, end, self.result(values)))
        return out


class SlidingReference(Reference):
    """A window [t - size, t] (end t + 1) per distinct record time t of a key, over its records."""

    def __init__(self, size: int, grace: int, result: Callable[..., Any], current: bool) -> None:
        super().__init__(result, current, grace)
        self.size = size
        self.records: dict[str, list[Rec]] = {}
        self.open: set[tuple[str, int]] = set()

    def values(self, key: str, t: int) -> list[dict[str, int]]:
        inside = [r for r in self.records.get(key, []) if t - self.size <= r.ts <= t]
        self.edges["size_edge"] += any(r.ts == t - self.size for r in inside)
        return [r.value for r in inside]

    def add(self, rec: Rec, now: int) -> tuple[list[Out], bool]:
        if rec.ts + 1 + self.grace <= now:
            # Its own window is closed. The data keeps such records out of every open window (a
            # record in an open window of a later t is test_sliding_record_in_open_window_counts).
            assert not any(k == rec.key and t - self.size <= rec.ts <= t for k, t in self.open), "out of scope"
            self.edges["late_at_edge"] += rec.ts + self.size + 1 + self.grace == now
            return [], True
        self.records.setdefault(rec.key, []).append(rec)
        self.open.add((rec.key, rec.ts))
        if self.current:
            return [(rec.key, rec.ts - self.size, rec.ts + 1, self.result(self.values(rec.key, rec.ts)))], False
        return [], False

    def close(self, p: int, now: int) -> list[Out]:
        out: list[Out] = []
        for key, t in sorted(self.open):
            if partition_of(key) == p and t + 1 + self.grace <= now:
                self.open.discard((key, t))
                if not self.current:
                    out.append((key, t - self.size, t + 1, self.result(self.values(key, t))))
        return out


@dataclass
class SessionRef:
    start: int
    last: int
    values: list[dict[str, int]]
    closed: bool = False


class SessionReference(Reference):
    """Records of a key at most `gap` apart chain into one session [first, last + 1), which closes
    when stream time reaches last + gap + 1 + grace. Closed sessions are kept to see what a late
    record would have chained into."""

    def __init__(self, gap: int, grace: int, result: Callable[..., Any], current: bool) -> None:
        super().__init__(result, current, grace)
        self.gap = gap
        self.sessions: dict[str, list[SessionRef]] = {}

    def add(self, rec: Rec, now: int) -> tuple[list[Out], bool]:
        sessions = self.sessions.setdefault(rec.key, [])
        reach = [s for s in sessions if s.start - self.gap <= rec.ts <= s.last + self.gap]
        self.edges["late_at_edge"] += rec.ts + self.gap + 1 + self.grace == now
        self.edges["gap_exact"] += any(rec.ts in (s.start - self.gap, s.last + self.gap) for s in reach)
        if any(s.closed for s in reach):
            assert all(s.closed for s in reach), "out of scope: bridges a closed and an open session"
            return [], True  # it chains into a session that is closed
        if not reach and rec.ts + self.gap + 1 + self.grace <= now:
            return [], True
        merged = SessionRef(rec.ts, rec.ts, [])
        for s in reach:
            sessions.remove(s)
            merged.start, merged.last = min(merged.start, s.start), max(merged.last, s.last)
            merged.values += s.values
        merged.values.append(rec.value)
        sessions.append(merged)
        if self.current:
            return [(rec.key, merged.start, merged.last + 1, self.result(merged.values))], False
        return [], False

    def close(self, p: int, now: int) -> list[Out]:
        out: list[Out] = []
        for key, sessions in self.sessions.items():
            for s in sessions:
                if partition_of(key) == p and not s.closed and s.last + self.gap + 1 + self.grace <= now:
                    s.closed = True
                    self.edges["closed_at_edge"] += s.last + self.gap + 1 + self.grace == now
                    if not self.current:
                        out.append((key, s.start, s.last + 1, self.result(s.values)))
        return out


# -- the kinds under test: window on the stream, reference, data -------------------------------
TUMBLING = {"size": 100, "grace": 30}
HOPPING = {"size": 100, "step": 30, "grace": 20}
SLIDING = {"size": 100, "grace": 20}
SESSION = {"gap": 60, "grace": 20}


def open_window(kind: str, stream: Any) -> WindowedStream:
    if kind == "tumbling":
        return stream.tumbling_window(**TUMBLING)
    if kind == "hopping":
        return stream.hopping_window(**HOPPING)
    if kind == "sliding":
        return stream.sliding_window(**SLIDING)
    return stream.session_window(**SESSION)


def reference(kind: str, result: Callable[..., Any], current: bool) -> Reference:
    if kind == "tumbling":
        return FixedReference(TUMBLING["size"], TUMBLING["size"], TUMBLING["grace"], result, current)
    if kind == "hopping":
        return FixedReference(HOPPING["size"], HOPPING["step"], HOPPING["grace"], result, current)
    if kind == "sliding":
        return SlidingReference(SLIDING["size"], SLIDING["grace"], result, current)
    return SessionReference(SESSION["gap"], SESSION["grace"], result, current)


def data(kind: str, seed: int) -> list[Rec]:
    """Fixed windows: any disorder (up to 3x size). Sliding and session: on-time records arrive
    within the grace, held-back ones once every window they could join is closed (the band in
    between is covered by the explicit tests below)."""
    if kind in ("tumbling", "hopping"):
        window = TUMBLING if kind == "tumbling" else HOPPING
        size, grace = window["size"], window["grace"]
        return generate(seed, max_delay=50, probes=(size, window.get("step", size), grace))
    if kind == "sliding":
        return generate(seed, max_delay=SLIDING["grace"], late_after=SLIDING["size"] + 1 + SLIDING["grace"])
    late_after = SESSION["gap"] + 1 + SESSION["grace"]
    return generate(seed, max_delay=SESSION["grace"], late_after=late_after, times=burst_times)


def decode(outputs: list[dict[str, Any]]) -> list[Out]:
    found = []
    for out in outputs:
        value = out["value"]
        assert out["key"] == value["key"]
        assert out["timestamp"] == value["end"] - 1  # timestamped end - 1
        found.append((value["key"], value["start"], value["end"], value["value"]))
    return sorted(found, key=repr)


EDGES = {
    "tumbling": ("on_start", "late_at_edge", "just_in_time"),
    "hopping": ("on_start", "late_at_edge", "just_in_time"),
    "sliding": ("size_edge", "late_at_edge"),
    "session": ("gap_exact", "late_at_edge", "closed_at_edge"),
}


@pytest.mark.parametrize("mode", ["final", "current"])
@pytest.mark.parametrize("agg", list(AGGS))
@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding", "session"])
def test_window_matches_reference(kind: str, agg: str, mode: str) -> None:
    build, result = AGGS[agg]
    p = Pipeline("windows")
    aggregate = build(open_window(kind, p.source("x")))
    (aggregate.final() if mode == "final" else aggregate.current()).to_stream("out")
    driver = TestDriver(p, partitions=PARTITIONS)
    ref = reference(kind, result, mode == "current")
    seen_out = seen_late = 0
    records = data(kind, zlib.crc32(f"{kind}/{agg}".encode()))
    for rec in records:
        driver.send(rec.value, key=rec.key, timestamp=rec.ts, partition=partition_of(rec.key))
        expected, late = ref.send(rec)
        outputs = driver.outputs("out")[seen_out:]
        seen_out += len(outputs)
        assert decode(outputs) == sorted(expected, key=repr), f"after {rec}"
        rows = driver.late()[seen_late:]
        seen_late += len(rows)
        assert [(r["key"], r["event_time"], r["value"], r["partition"]) for r in rows] == (
            [(rec.key, rec.ts, rec.value, partition_of(rec.key))] if late else []
        ), f"after {rec}"
        assert all("closed" in r["reason"] for r in rows)
    driver.advance_time(END_OF_TIME)
    assert decode(driver.outputs("out")[seen_out:]) == sorted(ref.advance(END_OF_TIME), key=repr)
    # the seeded data reaches the edges this test is about
    assert all(ref.edges[edge] > 0 for edge in EDGES[kind]), ref.edges
    assert 0 < len(driver.late()) < len(records) // 3


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding", "session"])
def test_no_record_vanishes(kind: str) -> None:
    """Any disorder: every input is counted in some final result or listed late."""
    p = Pipeline("vanish")
    open_window(kind, p.source("x")).collect(lambda v: v["i"]).final().to_stream("out")
    driver = TestDriver(p, partitions=PARTITIONS)
    records = generate(zlib.crc32(kind.encode()), max_delay=150)
    for rec in records:
        driver.send(rec.value, key=rec.key, timestamp=rec.ts, partition=partition_of(rec.key))
    driver.advance_time(END_OF_TIME)
    counted = Counter(i for v in driver.values("out") for i in v["value"])
    late = Counter(row["value"]["i"] for row in driver.late())
    assert set(counted) | set(late) == {r.i for r in records}
    assert late and max(late.values()) == 1
    if kind in ("tumbling", "session"):  # one window per record: counted once, or late
        assert not set(counted) & set(late)
        assert max(counted.values()) == 1


# -- explicit edges ------------------------------------------------------------------------------
def single(window: Callable[[Any], WindowedAggregate], current: bool = False) -> tuple[Pipeline, TestDriver]:
    p = Pipeline("edges")
    agg = window(p.source("x"))
    (agg.current() if current else agg.final()).to_stream("out")
    return p, TestDriver(p)


def results(driver: TestDriver) -> list[tuple[int, int, Any]]:
    return [(v["start"], v["end"], v["value"]) for v in driver.values("out")]


def test_tumbling_edges_and_grace() -> None:
    _, d = single(lambda s: s.tumbling_window(100, grace=10).collect(lambda v: v))
    d.send(99, key="k", timestamp=99)
    d.send(100, key="k", timestamp=100)  # exactly on the end: opens [100, 200)
    d.send(0, key="k", timestamp=0)
    d.advance_time(109)  # end + grace - 1: still open
    assert results(d) == []
    d.send(1, key="k", timestamp=1)  # in time, at end + grace - 1
    d.advance_time(110)  # end + grace: closes, once
    assert results(d) == [(0, 100, [99, 0, 1])]
    d.send(2, key="k", timestamp=2)  # end + grace <= stream time: late
    assert [(r["value"], r["event_time"]) for r in d.late()] == [(2, 2)]
    d.advance_time(1000)
    assert results(d) == [(0, 100, [99, 0, 1]), (100, 200, [100])]
    assert [o["timestamp"] for o in d.outputs("out")] == [99, 199]


def test_current_updates_and_nothing_at_close() -> None:
    _, d = single(lambda s: s.tumbling_window(100).sum(), current=True)
    for ts, n in ((5, 1), (50, 2), (120, 4)):
        d.send(n, key="k", timestamp=ts)
    d.advance_time(10_000)
    assert results(d) == [(0, 100, 1), (0, 100, 3), (100, 200, 4)]


def test_reduce_folds_in_arrival_order_from_the_first_value() -> None:
    _, d = single(lambda s: s.tumbling_window(100).reduce(lambda acc, v: f"({acc}+{v})"))
    for ts, v in ((30, "a"), (10, "b"), (20, "c"), (150, "z")):
        d.send(v, key="k", timestamp=ts)
    d.advance_time(200)
    assert results(d) == [(0, 100, "((a+b)+c)"), (100, 200, "z")]


def test_hopping_record_on_step_edge() -> None:
    _, d = single(lambda s: s.hopping_window(100, 50).collect(lambda v: v))
    d.send("x", key="k", timestamp=100)  # in [50, 150) and [100, 200), not in [0, 100)
    d.advance_time(1000)
    assert results(d) == [(50, 150, ["x"]), (100, 200, ["x"])]


def test_sliding_size_edges() -> None:
    _, d = single(lambda s: s.sliding_window(100).collect(lambda v: v))
    for ts in (0, 1, 101):
        d.send(ts, key="k", timestamp=ts)
    d.advance_time(1000)  # window of 101 is [1, 101]: holds 1 (exactly t - size), not 0
    assert results(d) == [(-100, 1, [0]), (-99, 2, [0, 1]), (1, 102, [1, 101])]


def test_session_gap_edges_and_close_time() -> None:
    _, d = single(lambda s: s.session_window(10, grace=5).collect(lambda v: v))
    for ts in (100, 110, 121):  # 110 is exactly gap after 100: chains; 121 is gap + 1 after 110
        d.send(ts, key="k", timestamp=ts)
    d.send(0, key="other", timestamp=125)  # 110 + 10 + 1 + 5 - 1: the first session is still open
    assert results(d) == []
    d.send(0, key="other", timestamp=126)  # last + gap + 1 + grace: it closes
    assert results(d) == [(100, 111, [100, 110])]
    d.send(99, key="k", timestamp=99)  # would chain into the closed session: late
    assert [r["value"] for r in d.late()] == [99]
    d.advance_time(10_000)
    assert sorted(results(d)) == [(100, 111, [100, 110]), (121, 122, [121]), (125, 127, [0, 0])]


def test_session_record_bridging_two_sessions_merges_them() -> None:
    _, d = single(lambda s: s.session_window(10, grace=100).count())
    for ts in (100, 130, 120):  # 120 is exactly gap before 130, 20 after 100: joins 130 only
        d.send(0, key="k", timestamp=ts)
    d.advance_time(10_000)
    assert results(d) == [(100, 101, 1), (120, 131, 2)]
    _, d = single(lambda s: s.session_window(10, grace=100).count())
    for ts in (100, 120, 110):  # 110 is gap from both: one session
        d.send(0, key="k", timestamp=ts)
    d.advance_time(10_000)
    assert results(d) == [(100, 121, 3)]


def test_windows_are_per_key_and_per_partition_stream_time() -> None:
    p = Pipeline("parts")
    p.source("x").tumbling_window(100).count().final().to_stream("out")
    d = TestDriver(p, partitions=2)
    d.send(0, key="a", timestamp=10, partition=0)
    d.send(0, key="b", timestamp=10, partition=1)
    d.send(0, key="c", timestamp=500, partition=1)  # closes b's window on partition 1 only
    assert [(v["key"], v["value"]) for v in d.values("out")] == [("b", 1)]
    d.send(0, key="a", timestamp=20, partition=0)  # partition 0 is still at 10: in time
    assert d.late() == []
    d.send(0, key="b", timestamp=20, partition=1)  # partition 1 is at 500: late
    assert [r["key"] for r in d.late()] == ["b"]
    d.advance_time(10_000)
    assert sorted((v["key"], v["value"]) for v in d.values("out")) == [("a", 2), ("b", 1), ("c", 1)]


def test_sliding_record_in_open_window_counts() -> None:
    _, d = single(lambda s: s.sliding_window(10).collect(lambda v: v))
    d.send(100, key="k", timestamp=100)  # window [90, 100] of t=100 is open until stream time 101
    d.send(95, key="k", timestamp=95)  # its own window [85, 95] is closed, [90, 100] is open
    d.advance_time(1000)
    assert (90, 101, [95, 100]) in results(d)  # sliding windows fold their records in event-time order


def test_session_record_chaining_into_closed_session_is_late() -> None:
    _, d = single(lambda s: s.session_window(10).count())
    d.send(0, key="k", timestamp=100)
    d.send(0, key="z", timestamp=111)  # stream time 100 + 10 + 1: k's session [100, 101) closes
    d.send(0, key="k", timestamp=105)  # 5 ms after 100 (<= gap): chains into the closed session
    d.advance_time(1000)
    assert [(v["key"], v["start"], v["end"]) for v in d.values("out") if v["key"] == "k"] == [("k", 100, 101)]
    assert [r["event_time"] for r in d.late()] == [105]
