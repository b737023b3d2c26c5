"""Interval joins and table joins against a plain-Python reference, on seeded out-of-order data.

The reference is written from the joins.py docstring and DESIGN.md, not from the operator: a left
record at t meets every right record of its key with time in [t - before, t + after]; a record
is late once its interval, closed at its half-open end (t + after + 1 for a left record,
t + before + 1 for a right one, as windows are), plus grace is at or before stream time (the
largest event time seen on the partition). `how="left"` emits merge(left, None) for a left record
that met nothing, once no right record that is not late could still meet it (t + before + after
+ 1 + grace <= stream time).
"""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from headwater.processing import Context, Pipeline, ReferenceTable, TestDriver

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
    side: str  # "L" or "R"
    ts: int

    @property
    def value(self) -> dict[str, Any]:
        return {"i": self.i, "side": self.side}


def generate(seed: int, before: int, after: int, grace: int, count: int = 400) -> list[Rec]:
    """Arrival order. Times on a 10 ms grid, often 1 ms off it (pairs land exactly on and just past
    the bounds). On-time records arrive within the grace; about one in eight is held back until
    its partition's stream time is >= its late time (t + after + 1 + grace for a left record,
    t + before + 1 + grace for a right one), i.e. it is late, often exactly at the edge."""
    rng = random.Random(seed)
    made = [
        Rec(i, rng.choice(KEYS), rng.choice("LR"), max(0, rng.randrange(0, 4000, 10) + rng.choice((0, 0, -1, 1))))
        for i in range(count)
    ]
    late_after = {"L": after + 1 + grace, "R": before + 1 + grace}
    held = [r for r in made if rng.random() < 0.12]
    held_ids = {r.i for r in held}
    arrival = {r.i: r.ts + rng.randint(0, grace) for r in made}
    out: list[Rec] = []
    stream = [NEVER] * PARTITIONS
    for rec in sorted((r for r in made if r.i not in held_ids), key=lambda r: (arrival[r.i], r.i)):
        out.append(rec)
        p = partition_of(rec.key)
        stream[p] = max(stream[p], rec.ts)
        for h in [h for h in held if partition_of(h.key) == p and h.ts + late_after[h.side] <= stream[p]]:
            out.append(h)
            held.remove(h)
    return out


@dataclass
class LeftRow:
    rec: Rec
    matched: bool = False
    expired: bool = False


Out = tuple[str, int, int | None]  # key, left i, right i (None: a left-join miss)


@dataclass
class JoinReference:
    before: int
    after: int
    grace: int
    how: str
    stream: list[int] = field(default_factory=lambda: [NEVER] * PARTITIONS)
    left: dict[str, list[LeftRow]] = field(default_factory=dict)
    right: dict[str, list[Rec]] = field(default_factory=dict)
    edges: Counter[str] = field(default_factory=Counter)

    def meets(self, lt: int, rt: int) -> bool:
        self.edges["at_before"] += rt == lt - self.before
        self.edges["at_after"] += rt == lt + self.after
        self.edges["past_bounds"] += rt in (lt - self.before - 1, lt + self.after + 1)
        return lt - self.before <= rt <= lt + self.after

    def send(self, rec: Rec) -> tuple[list[Out], bool]:
        p = partition_of(rec.key)
        now = self.stream[p] = max(self.stream[p], rec.ts)
        window = self.after if rec.side == "L" else self.before
        self.edges["late_at_edge"] += rec.ts + window + 1 + self.grace == now
        if rec.ts + window + 1 + self.grace <= now:
            return [], True
        out: list[Out] = []
        if rec.side == "L":
            row = LeftRow(rec)
            for r in self.right.get(rec.key, []):  # every right record ever accepted: none forgotten
                if self.meets(rec.ts, r.ts):
                    out.append((rec.key, rec.i, r.i))
                    row.matched = True
            self.left.setdefault(rec.key, []).append(row)
        else:
            for row in self.left.get(rec.key, []):
                if self.meets(row.rec.ts, rec.ts):
                    assert not row.expired, "out of scope: meets a left record whose miss was emitted"
                    out.append((rec.key, row.rec.i, rec.i))
                    row.matched = True
            self.right.setdefault(rec.key, []).append(rec)
        return out + self.expire(p), False

    def advance(self, t: int) -> list[Out]:
        out: list[Out] = []
        for p in range(PARTITIONS):
            self.stream[p] = max(self.stream[p], t)
            out += self.expire(p)
        return out

    def expire(self, p: int) -> list[Out]:
        out: list[Out] = []
        for key, rows in self.left.items():
            for row in rows:
                if (
                    partition_of(key) == p
                    and not row.expired
                    and row.rec.ts + self.before + self.after + 1 + self.grace <= self.stream[p]
                ):
                    row.expired = True
                    if self.how == "left" and not row.matched:
                        out.append((key, row.rec.i, None))
        return out


def join_pipeline(how: Literal["inner", "left"], merge: Any = None, **bounds: int) -> Pipeline:
    p = Pipeline("joins")
    sides = p.source("x").branch(left=lambda v: v["side"] == "L", right=None)
    sides["left"].join(sides["right"], merge=merge, how=how, **bounds).to_stream("out")
    return p


def decode(outputs: list[dict[str, Any]]) -> list[Out]:
    found = []
    for out in outputs:
        left, right = out["value"]["left"], out["value"]["right"]
        found.append((out["key"], left["i"], None if right is None else right["i"]))
    return sorted(found, key=repr)


BOUNDS = [
    (40, 40, 20),
    (30, 60, 20),
    (60, 30, 20),
    (0, 40, 10),
]


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize(("before", "after", "grace"), BOUNDS)
def test_interval_join_matches_reference(before: int, after: int, grace: int, how: Literal["inner", "left"]) -> None:
    driver = TestDriver(join_pipeline(how, before=before, after=after, grace=grace), partitions=PARTITIONS)
    ref = JoinReference(before, after, grace, how)
    seen_out = seen_late = 0
    records = generate(zlib.crc32(f"{before}/{after}/{how}".encode()), before, after, grace)
    for rec in records:
        driver.send(rec.value, key=rec.key, timestamp=rec.ts, partition=partition_of(rec.key))
        expected, late = ref.send(rec)
        outputs = driver.outputs("out")[seen_out:]
        seen_out += len(outputs)
        assert decode(outputs) == sorted(expected, key=repr), f"after {rec}"
        rows = driver.late()[seen_late:]
        seen_late += len(rows)
        assert [(r["key"], r["event_time"], r["value"]) for r in rows] == (
            [(rec.key, rec.ts, rec.value)] if late else []
        ), f"after {rec}"
        assert all(r["reason"] for r in rows)
    driver.advance_time(END_OF_TIME)
    assert decode(driver.outputs("out")[seen_out:]) == sorted(ref.advance(END_OF_TIME), key=repr)
    needed = ["at_after", "past_bounds", "late_at_edge"] + (["at_before"] if before else [])
    assert all(ref.edges[edge] > 0 for edge in needed), ref.edges
    assert 0 < len(driver.late()) < len(records) // 4
    if how == "left":  # every accepted left record either met something or was emitted alone
        lefts = {i for _, i, _ in decode(driver.outputs("out"))}
        late = {row["value"]["i"] for row in driver.late()}
        assert lefts | late >= {r.i for r in records if r.side == "L"}


def pairs(driver: TestDriver) -> list[tuple[int, int | None]]:
    return sorted(
        ((o["value"]["left"]["i"], o["value"]["right"] and o["value"]["right"]["i"]) for o in driver.outputs("out")),
        key=repr,
    )


@pytest.mark.parametrize("right_first", [False, True])
def test_interval_bounds_are_inclusive_and_asymmetric(right_first: bool) -> None:
    d = TestDriver(join_pipeline("inner", before=10, after=20, grace=1000))
    left = Rec(0, "k", "L", 100)
    rights = [Rec(i, "k", "R", ts) for i, ts in ((1, 89), (2, 90), (3, 120), (4, 121), (5, 80), (6, 110))]
    for rec in [*rights, left] if right_first else [left, *rights]:
        d.send(rec.value, key=rec.key, timestamp=rec.ts)
    assert pairs(d) == [(0, 2), (0, 3), (0, 6)]  # 90 = t - before, 120 = t + after; not 89, 121
    assert d.late() == []


def test_interval_join_keys_do_not_meet() -> None:
    d = TestDriver(join_pipeline("left", within=50), partitions=PARTITIONS)
    d.send(Rec(0, "a", "L", 100).value, key="a", timestamp=100)
    d.send(Rec(1, "b", "R", 100).value, key="b", timestamp=100)
    d.advance_time(10_000)
    assert pairs(d) == [(0, None)]


def test_late_arrivals_exactly_at_the_edge() -> None:
    d = TestDriver(join_pipeline("left", before=5, after=20, grace=10))
    d.send({"i": 0, "side": "R"}, key="z", timestamp=130)  # stream time 130
    d.send({"i": 1, "side": "R"}, key="k", timestamp=115)  # 115 + 5 + 1 + 10 = 131 > 130: in time
    d.send({"i": 2, "side": "R"}, key="k", timestamp=114)  # 114 + 5 + 1 + 10 = 130: late
    d.send({"i": 3, "side": "L"}, key="k", timestamp=100)  # 100 + 20 + 1 + 10 = 131 > 130: in time, meets 1
    d.send({"i": 4, "side": "L"}, key="y", timestamp=131)  # stream time 131
    d.send({"i": 5, "side": "L"}, key="k", timestamp=100)  # 100 + 20 + 1 + 10 = 131: late
    assert pairs(d) == [(3, 1)]
    assert [(r["value"]["i"], r["event_time"]) for r in d.late()] == [(2, 114), (5, 100)]
    assert all("join" in r["reason"] for r in d.late())


def test_left_join_miss_is_emitted_when_the_interval_has_passed() -> None:
    d = TestDriver(join_pipeline("left", within=20, grace=10))
    d.send({"i": 0, "side": "L"}, key="k", timestamp=100)
    d.send({"i": 1, "side": "L"}, key="k", timestamp=105)
    d.send({"i": 2, "side": "R"}, key="k", timestamp=125)  # meets 1 (105 + 20), not 0
    d.advance_time(150)  # 100 + 20 + 20 + 1 + 10 - 1: a right record at 120 could still come in time
    assert pairs(d) == [(1, 2)]
    d.advance_time(151)
    assert pairs(d) == [(0, None), (1, 2)]
    d.advance_time(10_000)  # 1 met a right record: no miss for it, and 0's only once
    assert pairs(d) == [(0, None), (1, 2)]


def test_custom_merge_and_within() -> None:
    p = Pipeline("merge")
    frames = p.source("frames").branch(req=lambda v: v["kind"] == "req", resp=lambda v: v["kind"] == "resp")
    frames["req"].join(frames["resp"], within=2000, merge=lambda q, r: {"bet": q["bet"], "ok": r["ok"]}).to_stream(
        "out"
    )
    d = TestDriver(p)
    d.send({"kind": "req", "bet": 7}, key="t1", timestamp=10_000)
    d.send({"kind": "resp", "ok": True}, key="t1", timestamp=8_000)  # exactly `within` before
    d.send({"kind": "resp", "ok": False}, key="t1", timestamp=12_001)  # 1 ms past `within` after
    d.send({"kind": "other"}, key="t1", timestamp=10_500)  # matches no branch: dropped
    assert d.values("out") == [{"bet": 7, "ok": True}]


def test_in_time_record_meets_every_partner_in_its_interval() -> None:
    d = TestDriver(join_pipeline("inner", before=0, after=10))
    d.send({"i": 0, "side": "R"}, key="k", timestamp=100)
    d.send({"i": 1, "side": "R"}, key="z", timestamp=105)  # stream time 105
    d.send({"i": 2, "side": "L"}, key="k", timestamp=100)  # 100 + 10 + 1 > 105: not late
    assert d.late() == []
    assert pairs(d) == [(2, 0)]  # right 100 is in [100 - 0, 100 + 10]


# -- table joins ---------------------------------------------------------------------------------
CAMPAIGNS = [
    {"campaign": "c1", "min_stake": 10, "coupon": 5},
    {"campaign": "c2", "min_stake": 20, "coupon": 8},
    {"campaign": "c1", "min_stake": 15, "coupon": 6},  # same key: the last row wins unless many=True
]


def table_join(table: ReferenceTable, how: Literal["inner", "left"] = "inner", key: Any = None) -> TestDriver:
    p = Pipeline("tables")
    merge = lambda v, row: {"bet": v["bet"], "coupon": None if row is None else row["coupon"]}  # noqa: E731
    p.source("x").join_table(table, key=key, merge=merge, how=how).to_stream("out")
    return TestDriver(p, partitions=PARTITIONS)


@pytest.mark.parametrize("how", ["inner", "left"])
def test_table_join_last_row_wins(how: Literal["inner", "left"]) -> None:
    d = table_join(ReferenceTable.from_rows("campaigns", CAMPAIGNS, key="campaign"), how, key=lambda v: v["c"])
    for bet, c in enumerate(("c1", "c2", "nope", "c1")):
        d.send({"bet": bet, "c": c}, key=f"u{bet}", timestamp=bet)
    expected = [{"bet": 0, "coupon": 6}, {"bet": 1, "coupon": 8}, {"bet": 3, "coupon": 6}]
    if how == "left":
        expected.insert(2, {"bet": 2, "coupon": None})
    assert sorted(d.values("out"), key=lambda v: v["bet"]) == expected


def test_table_join_many_rows_and_record_key() -> None:
    d = table_join(ReferenceTable.from_rows("campaigns", CAMPAIGNS, key="campaign", many=True))
    d.send({"bet": 1}, key="c1", timestamp=0)  # default lookup key: the record key
    d.send({"bet": 2}, key="c2", timestamp=0)
    d.send({"bet": 3}, key="c3", timestamp=0)
    d.send({"bet": 4}, key=None, timestamp=0)
    assert sorted(d.values("out"), key=lambda v: (v["bet"], v["coupon"])) == [
        {"bet": 1, "coupon": 5}, {"bet": 1, "coupon": 6}, {"bet": 2, "coupon": 8},
    ]  # fmt: skip


def test_table_keys_compare_as_strings_and_lookup_in_process() -> None:
    table = ReferenceTable.from_rows("rules", [{"id": 1, "v": "one"}, {"id": 1, "v": "uno"}], key="id", many=True)
    p = Pipeline("lookup")

    def on_record(ctx: Context, value: Any) -> None:
        ctx.emit([row["v"] for row in ctx.lookup("rules", value["id"]) or []])

    p.table(table)
    p.source("x").process(on_record).to_stream("out")
    d = TestDriver(p)
    d.send({"id": 1}, key="k", timestamp=0)
    d.send({"id": "1"}, key="k", timestamp=0)
    d.send({"id": 2}, key="k", timestamp=0)
    assert d.values("out") == [["one", "uno"], ["one", "uno"], []]


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    if path.suffix == ".csv":
        path.write_text("\n".join([",".join(rows[0]), *(",".join(str(v) for v in r.values()) for r in rows)]) + "\n")
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_changing_table_is_seen_between_sends(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"campaigns{suffix}"
    write(path, [{"campaign": "c1", "coupon": 5}])
    table = ReferenceTable.from_file("campaigns", path, key="campaign", refresh_s=0)  # reload before each record
    d = table_join(table, "left", key=lambda v: v["c"])
    d.send({"bet": 1, "c": "c1"}, key="u", timestamp=0)
    write(path, [{"campaign": "c1", "coupon": 7}, {"campaign": "c2", "coupon": 9}])
    d.send({"bet": 2, "c": "c1"}, key="u", timestamp=0)
    d.send({"bet": 3, "c": "c2"}, key="u", timestamp=0)
    path.unlink()  # a failed reload keeps the last good version
    d.send({"bet": 4, "c": "c2"}, key="u", timestamp=0)
    assert table.error is not None
    write(path, [{"campaign": "c2", "coupon": 1}])  # c1 is gone
    d.send({"bet": 5, "c": "c1"}, key="u", timestamp=0)
    d.send({"bet": 6, "c": "c2"}, key="u", timestamp=0)
    assert table.error is None
    assert d.values("out") == [
        {"bet": 1, "coupon": 5}, {"bet": 2, "coupon": 7}, {"bet": 3, "coupon": 9}, {"bet": 4, "coupon": 9},
        {"bet": 5, "coupon": None}, {"bet": 6, "coupon": 1},
    ]  # fmt: skip


def test_table_is_not_reloaded_before_refresh_s(tmp_path: Path) -> None:
    path = tmp_path / "campaigns.json"
    path.write_text(json.dumps([{"campaign": "c1", "coupon": 5}]))
    table = ReferenceTable.from_file("campaigns", path, key="campaign", refresh_s=3600)
    d = table_join(table, key=lambda v: v["c"])
    path.write_text(json.dumps([{"campaign": "c1", "coupon": 7}]))
    d.send({"bet": 1, "c": "c1"}, key="u", timestamp=0)
    table.refresh(force=True)
    d.send({"bet": 2, "c": "c1"}, key="u", timestamp=1)
    assert d.values("out") == [{"bet": 1, "coupon": 5}, {"bet": 2, "coupon": 7}]
