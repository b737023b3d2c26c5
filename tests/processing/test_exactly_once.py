"""Exactly-once of a stream processor on the embedded log when it is killed with SIGKILL.

A pipeline with a tumbling-window count (final), an interval join of "req"/"resp" events, a
running total per key (process() state), a served state table, Iceberg tables and output streams
reads `events` fed straight into the log, partly while it runs. It is killed and restarted, then
run to the end: every output stream, Iceberg table, the late and dead-letter streams and the
served state table must equal a reference computed in plain Python, each output exactly once.
The second test crashes the processor exactly between checkpoint steps 1 (outputs durable) and
2 (state commit), the case the fences exist for (see `headwater.processing.runtime`).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.core.settings import Settings
from headwater.lake.tables import NAMESPACE, open_catalog
from headwater.log.sqlite import SqliteLog
from headwater.processing.state import ServedReader
from headwater.processing.worker import load_pipelines, table_streams
from tests.helpers import child_env, make_settings, read_stream

BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z, on a window edge
WINDOW, GRACE = 10_000, 2_000
WITHIN, JOIN_GRACE = 3_000, 1_000
FLUSH_AT = BASE + 86_400_000  # one event per partition this late closes every window and interval
NAME = "xo"
PIPELINE = f'''
from headwater.processing import Pipeline


def running_total(ctx, event):
    total = ctx.state.get("total", 0) + event["properties"]["amount"]  # "x" raises: a dead letter
    n = ctx.state.get("n", 0) + 1
    ctx.state.set("total", total)
    ctx.state.set("n", n)
    ctx.emit({{"user": ctx.key, "total": total, "n": n}})


def pair(req, resp):
    return {{"rid": req["properties"]["rid"], "user": req["user_id"], "req": req["event_id"], "resp": resp["event_id"]}}


pipeline = Pipeline("{NAME}", description="exactly-once under kill -9")
events = pipeline.source("events")
views = events.filter(lambda e: e["event"] == "view")
reqs = events.filter(lambda e: e["event"] == "req")
resps = events.filter(lambda e: e["event"] == "resp")
views.tumbling_window({WINDOW}, grace={GRACE}).count().final().to_stream("xo-counts").to_table("xo_counts")
views.process(running_total).to_stream("xo-totals").to_state("xo_totals", key=lambda v: v["user"])
reqs.join(resps, within={WITHIN}, grace={JOIN_GRACE}, merge=pair).to_stream("xo-joined").to_table("xo_joined")
'''

# Runs the processor alone (no table writers) and exits with 9 inside the Nth checkpoint that writes
# outputs not in their streams yet: after step 1 (outputs durable), before step 2 (the state commit).
CRASH_CHILD = """
import json, os, sys
from headwater.core.settings import load_settings
from headwater.log import open_log
from headwater.processing.runtime import ProcessorRunner
from headwater.processing.worker import load_pipelines

settings = load_settings()
(pipeline,) = load_pipelines(sys.argv[1])
crash_at = int(sys.argv[2])
event_log = open_log(settings)
runner = ProcessorRunner(pipeline, event_log, settings.processors_dir, checkpoint_interval_ms=10, max_batch=20)
written = {}  # (stream, input partition) -> highest position in the stream
for stream in json.loads(sys.argv[3]):
    reader = event_log.stream(stream).reader()
    for partition, end in reader.end_offsets().items():
        position = 0
        while position < end:
            records = reader.read(partition, position, 1000)
            for record in records:
                _, _, p, at = json.loads(record.value)["id"].split("/")
                written[(stream, int(p))] = max(written.get((stream, int(p)), -1), int(at))
            position = records[-1].offset + 1
    reader.close()
step2 = "apply" if hasattr(runner.state, "apply") else "commit"
state_commit = getattr(runner.state, step2)
checkpoint = runner.checkpoint
fresh_checkpoints = 0


def crashing(*args, **kwargs):
    committed = {p: runner.state.checkpoint_of(p) for p in runner.tasks}
    print(json.dumps({"committed": {p: c[0] for p, c in committed.items() if c}}), flush=True)
    os._exit(9)


def checkpoint_then_crash():
    global fresh_checkpoints
    fresh = False
    for p, task in runner.tasks.items():
        for stream, items in task.outputs.items():
            for item in items:
                fresh = fresh or item.position > written.get((stream, p), -1)
                written[(stream, p)] = max(written.get((stream, p), -1), item.position)
    fresh_checkpoints += fresh
    setattr(runner.state, step2, crashing if fresh and fresh_checkpoints == crash_at else state_commit)
    checkpoint()


runner.checkpoint = checkpoint_then_crash
while True:
    if runner.poll(0.05) == 0 and runner.lag() == 0:
        sys.exit(3)  # caught up without reaching the crash point
"""


@dataclass(frozen=True)
class Ev:
    mid: str
    user: str
    name: str
    ts: int
    props: dict[str, Any]


def generate(seed: int, count: int) -> list[Ev]:
    """Views (some on window edges, some late, a few that make process() raise) and req/resp pairs
    (responses before and after their request, on the interval's edges, missing, or late)."""
    rng = random.Random(seed)
    users = [f"user-{i:02d}" for i in range(16)]
    slots: list[tuple[float, int, Ev]] = []

    def add(slot: float, user: str, name: str, ts: int, props: dict[str, Any]) -> None:
        slots.append((slot, len(slots), Ev(f"ev-{seed}-{len(slots)}", user, name, ts, props)))

    for i in range(count):
        clock = BASE + 5_000 + i * 20
        user = rng.choice(users)
        roll = rng.random()
        if roll < 0.5:
            ts = clock + rng.randint(-1_500, 1_500)
            if rng.random() < 0.1:
                ts -= ts % WINDOW + rng.choice([0, 1])  # exactly on a window's start, or its last ms
            add(i, user, "view", ts, {"amount": "x" if rng.random() < 0.02 else rng.randint(1, 100)})
        elif roll < 0.56:
            add(i, user, "view", clock - rng.randint(12_000, 40_000), {"amount": rng.randint(1, 100)})
        else:
            rid = f"r{seed}-{i}"
            ts = clock + rng.randint(-1_000, 1_000)
            add(i, user, "req", ts, {"rid": rid})
            kind = rng.random()
            if kind < 0.1:
                continue  # never answered
            delay = (
                rng.choice([0, 500, 2_999, 3_000, 3_001, -3_000, -3_001]) if kind < 0.5 else rng.randint(-2_500, 2_500)
            )
            later = rng.randint(-15, 40) if kind < 0.95 else rng.randint(300, 600)  # the last ones: late
            add(i + later + 0.5, user, "resp", ts + delay, {"rid": rid})
    slots.sort(key=lambda s: (s[0], s[1]))
    return [ev for *_, ev in slots]


def flush_events(partitions: int, partition_for: Callable[[bytes], int]) -> list[Ev]:
    users: dict[int, str] = {}
    i = 0
    while len(users) < partitions:
        users.setdefault(partition_for(f"flush-{i}".encode()), f"flush-{i}")
        i += 1
    return [Ev(f"flush-{p}", users[p], "flush", FLUSH_AT, {}) for p in range(partitions)]


def envelope(ev: Ev) -> tuple[bytes, bytes]:
    body = {"type": "track", "event": ev.name, "userId": ev.user, "messageId": ev.mid, "timestamp": ev.ts}
    return ev.user.encode(), orjson.dumps(
        {"m": {"ra": BASE, "src": "t", "ep": "track"}, "e": {**body, "properties": ev.props}}
    )


def canon(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@dataclass
class Expected:
    streams: dict[str, Counter[str]] = field(default_factory=dict)  # stream -> canonical values
    totals: dict[str, Any] = field(default_factory=dict)  # the served state table
    late: Counter[str] = field(default_factory=Counter)  # event ids
    errors: Counter[str] = field(default_factory=Counter)


def reference(events: list[Ev], partition_for: Callable[[bytes], int]) -> Expected:
    """The pipeline's results, by the semantics of windows.py / joins.py / task.py, in plain Python:
    stream time per input partition (max event time, this record included), late = window end +
    grace <= stream time (join: t + within + grace + 1 <= stream time), join rows are kept until
    t + 2 * within + grace + 1 <= stream time, expiring when stream time advances on a record that
    did not fail."""
    stream_time: dict[int, int] = {}
    windows: Counter[tuple[str, int]] = Counter()
    sides: dict[tuple[int, str], dict[str, list[Ev]]] = {}
    totals: dict[str, dict[str, Any]] = {}
    out = Expected(streams={name: Counter() for name in ("xo-counts", "xo-totals", "xo-joined")})
    late_after = WITHIN + JOIN_GRACE  # a record's interval closed
    keep = 2 * WITHIN + JOIN_GRACE  # until no record that is not late could meet it
    for ev in events:
        p = partition_for(ev.user.encode())
        before = stream_time.get(p, -(1 << 62))
        st = stream_time[p] = max(before, ev.ts)
        failed = False
        if ev.name == "view":
            start = ev.ts - ev.ts % WINDOW
            if start + WINDOW + GRACE <= st:
                out.late[ev.mid] += 1
            else:
                windows[(ev.user, start)] += 1
            amount = ev.props["amount"]
            if isinstance(amount, int):
                old = totals.get(ev.user, {"total": 0, "n": 0})
                totals[ev.user] = {"user": ev.user, "total": old["total"] + amount, "n": old["n"] + 1}
                out.streams["xo-totals"][canon(totals[ev.user])] += 1
            else:
                out.errors[ev.mid] += 1
                failed = True
        elif ev.name in ("req", "resp"):
            mine = sides.setdefault((p, ev.name), {})
            other = sides.setdefault((p, "resp" if ev.name == "req" else "req"), {})
            if ev.ts + late_after + 1 <= st:
                out.late[ev.mid] += 1
            else:
                for match in other.get(ev.user, []):
                    if abs(match.ts - ev.ts) <= WITHIN:
                        req, resp = (ev, match) if ev.name == "req" else (match, ev)
                        joined = {"rid": req.props["rid"], "user": req.user, "req": req.mid, "resp": resp.mid}
                        out.streams["xo-joined"][canon(joined)] += 1
                mine.setdefault(ev.user, []).append(ev)
        if st > before and not failed:
            for side in ("req", "resp"):
                rows = sides.get((p, side), {})
                for user in list(rows):
                    rows[user] = [row for row in rows[user] if row.ts + keep + 1 > st]
    assert all(start + WINDOW + GRACE <= FLUSH_AT for _, start in windows)
    for (user, start), n in windows.items():
        out.streams["xo-counts"][canon({"key": user, "start": start, "end": start + WINDOW, "value": n})] += 1
    out.streams["xo.table.xo_counts"] = out.streams["xo-counts"]
    out.streams["xo.table.xo_joined"] = out.streams["xo-joined"]
    out.totals = totals
    return out


# -- the processor as a real process -------------------------------------------------------------
@dataclass
class Setup:
    data_dir: Path
    spec: str
    settings: Settings
    log: SqliteLog
    env: dict[str, str]
    tables: dict[str, str]  # output stream -> the Iceberg table a writer lands it in

    def append(self, events: list[Ev]) -> None:
        producer = self.log.producer()
        try:
            for i in range(0, len(events), 200):
                producer.append([envelope(ev) for ev in events[i : i + 200]]).result(30)
        finally:
            producer.close()

    def start(self, label: str) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "headwater.cli.main", "process", self.spec, "--data-dir", str(self.data_dir)]
        with open(self.data_dir / f"process-{label}.log", "ab") as out:
            return subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-1500:] for p in sorted(self.data_dir.glob("process-*.log")))

    def state_path(self) -> Path:
        run = orjson.loads((self.settings.processors_dir / NAME / "manifest.json").read_bytes())["run"]
        return self.settings.processors_dir / NAME / f"state-{run}.db"

    def caught_up(self) -> bool:
        """The processor's state covers every input record, and every table writer has committed
        its stream's end into Iceberg."""
        try:
            conn = sqlite3.connect(f"file:{self.state_path()}?mode=ro", uri=True)
        except (FileNotFoundError, sqlite3.Error):
            return False
        try:
            applied = dict(conn.execute("SELECT partition, next_offset FROM checkpoints").fetchall())
        except sqlite3.Error:
            return False
        finally:
            conn.close()
        if any(applied.get(p, 0) < end for p, end in _ends(self.log).items()):
            return False
        for stream, table in self.tables.items():
            admin = self.log.stream(stream).admin()
            try:
                done = admin.group_offsets().get(f"table.{table}.{stream}", {})
                if any(done.get(p, 0) < end for p, end in admin.end_offsets().items()):
                    return False
            finally:
                admin.close()
        return True

    def run_to_completion(self, timeout: float = 90) -> None:
        proc = self.start("final")
        try:
            deadline = time.monotonic() + timeout
            while not self.caught_up():
                assert proc.poll() is None, f"headwater process exited: {self.logs()}"
                assert time.monotonic() < deadline, f"not caught up in {timeout} s: {self.logs()}"
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, self.logs()


def _ends(log: SqliteLog) -> dict[int, int]:
    admin = log.admin()
    try:
        return admin.end_offsets()
    finally:
        admin.close()


def setup(tmp_path: Path) -> Setup:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    spec_file = tmp_path / "xo_pipeline.py"
    spec_file.write_text(PIPELINE)
    settings = make_settings(data_dir)
    env = child_env(data_dir, processor_checkpoint_ms=30, processor_max_batch=50)
    spec = f"{spec_file}:pipeline"
    (pipeline,) = load_pipelines(spec)
    return Setup(data_dir, spec, settings, SqliteLog.from_settings(settings), env, table_streams(pipeline))


def _diff(got: Counter[str], want: Counter[str]) -> str:
    missing, extra = want - got, got - want
    return (
        f"{sum(missing.values())} missing (e.g. {list(missing)[:3]}), "
        f"{sum(extra.values())} extra (e.g. {list(extra)[:3]})"
    )


def check_exactly_once(s: Setup, expected: Expected) -> None:
    ids_by_stream: dict[str, Counter[str]] = {}
    for name in [*expected.streams, f"{NAME}.late", f"{NAME}.errors"]:
        records = read_stream(s.log, name)
        ids = ids_by_stream[name] = Counter(r["id"] for r in records)
        repeated = [i for i, n in ids.items() if n > 1]
        assert not repeated, f"{name}: {len(repeated)} output ids written more than once, e.g. {repeated[:3]}"
        if name == f"{NAME}.late":
            late = Counter(r["v"]["value"]["event_id"] for r in records)
            assert late == expected.late, f"late: {_diff(late, expected.late)}"
        elif name == f"{NAME}.errors":
            errors = Counter(r["v"]["value"]["event_id"] for r in records)
            assert errors == expected.errors, f"errors: {_diff(errors, expected.errors)}"
            assert all("TypeError" in r["v"]["reason"] for r in records)
        else:
            got = Counter(canon(r["v"]) for r in records)
            assert got == expected.streams[name], f"{name}: {_diff(got, expected.streams[name])}"

    reader = ServedReader(s.state_path())
    try:
        served = {row["key"]: row["value"] for row in reader.scan("xo_totals", limit=10_000)}
        assert reader.count("xo_totals") == len(served)
    finally:
        reader.close()
    assert served == expected.totals

    catalog = open_catalog(s.settings)
    for stream, table in s.tables.items():
        rows = catalog.load_table((NAMESPACE, table)).scan().to_arrow().to_pylist()
        ids = Counter(row["output_id"] for row in rows)
        assert ids == ids_by_stream[stream], f"Iceberg {table}: {_diff(ids, ids_by_stream[stream])}"
        if table == "xo_counts":
            got = Counter(canon({k: row[k] for k in ("key", "start", "end", "value")}) for row in rows)
            assert got == expected.streams["xo-counts"], f"Iceberg {table}: {_diff(got, expected.streams['xo-counts'])}"
        elif table == "xo_joined":
            got = Counter(canon({k: row[k] for k in ("rid", "user", "req", "resp")}) for row in rows)
            assert got == expected.streams["xo-joined"], f"Iceberg {table}: {_diff(got, expected.streams['xo-joined'])}"


def make_events(s: Setup, seed: int, count: int) -> tuple[list[Ev], list[Ev], Expected]:
    producer = s.log.producer()
    try:
        partition_for = producer.partition_for
        events = generate(seed, count)
        flush = flush_events(s.log.partitions, partition_for)
        expected = reference(events + flush, partition_for)
    finally:
        producer.close()
    streams = expected.streams
    assert len(expected.late) > 20 and len(expected.errors) > 3, "the data must exercise late and failed records"
    assert sum(streams["xo-counts"].values()) > 50 and sum(streams["xo-joined"].values()) > 100
    return events, flush, expected


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_rounds_under_load_leave_every_output_exactly_once(tmp_path: Path) -> None:
    s = setup(tmp_path)
    events, flush, expected = make_events(s, seed=8, count=3_000)
    preload = len(events) * 35 // 100
    s.append(events[:preload])
    failures: list[BaseException] = []

    def feed() -> None:  # the rest arrives while the processor runs, dies and restarts
        try:
            for i in range(preload, len(events), 15):
                s.append(events[i : i + 15])
                time.sleep(0.08)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    rng = random.Random()
    status = s.settings.processors_dir / NAME / "status.json"
    kills: list[float] = []
    while len(kills) < 5 or feeder.is_alive():  # every round under load
        before = status.stat().st_mtime_ns if status.exists() else 0
        proc = s.start(f"{len(kills)}")
        try:
            deadline = time.monotonic() + 30
            while (status.stat().st_mtime_ns if status.exists() else 0) == before:  # it checkpointed once
                assert proc.poll() is None, f"headwater process exited: {s.logs()}"
                assert time.monotonic() < deadline, f"no checkpoint in 30 s: {s.logs()}"
                time.sleep(0.02)
            kills.append(round(rng.uniform(0.3, 2.0), 2))
            time.sleep(kills[-1])
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, s.logs()
    feeder.join(60)
    assert not feeder.is_alive() and not failures, failures
    s.append(flush)
    s.run_to_completion()
    try:
        check_exactly_once(s, expected)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n(killed after {kills} s of processing)") from None


def test_crash_between_outputs_and_state_commit_leaves_every_output_exactly_once(tmp_path: Path) -> None:
    s = setup(tmp_path)
    events, flush, expected = make_events(s, seed=9, count=1_500)
    thirds = [
        events[: len(events) // 3],
        events[len(events) // 3 : 2 * len(events) // 3],
        events[2 * len(events) // 3 :],
    ]
    output_streams = [*expected.streams, f"{NAME}.late", f"{NAME}.errors"]
    for part, crash_at in zip(thirds, (2, 1, 3), strict=True):
        s.append(part)
        before = {name: _ends(s.log.stream(name)) for name in output_streams}
        child = subprocess.run(
            [sys.executable, "-c", CRASH_CHILD, s.spec, str(crash_at), orjson.dumps(output_streams).decode()],
            env=s.env, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert child.returncode == 9, child.stderr.decode()[-3000:]
        crash = orjson.loads(child.stdout.splitlines()[-1])
        committed = {int(p): o for p, o in crash["committed"].items()}
        # outputs of records the state store has not taken in are durable: the crash hit between 1 and 2
        ahead = [
            record["id"]
            for name in output_streams
            for record in read_stream(s.log, name, since=before[name])
            if int(record["id"].split("/")[3]) >> 20 >= committed.get(int(record["id"].split("/")[2]), 0)
        ]
        assert ahead, f"no output beyond the committed state {committed}: the crash missed the window"
    s.append(flush)
    s.run_to_completion()
    check_exactly_once(s, expected)


def test_a_processor_reading_a_stream_writes_its_outputs_where_readers_look(tmp_path: Path) -> None:
    from headwater.processing import Pipeline
    from headwater.processing.records import encode_output
    from headwater.processing.runtime import ProcessorRunner

    log = SqliteLog.from_settings(make_settings(tmp_path))
    producer = log.stream("xo-chain-in").producer()
    producer.append([encode_output(f"k{i}", {"x": i}, BASE + i, f"in/{i}") for i in range(20)]).result(10)
    producer.close()
    pipeline = Pipeline("xo-chain")
    pipeline.source("xo-chain-in").map(lambda v: {"y": v["x"] * 2}).to_stream("xo-chain-out")
    runner = ProcessorRunner(pipeline, log, tmp_path / "processors")
    try:
        while runner.poll(0.05):
            pass
        runner.checkpoint()
    finally:
        runner.close()
    assert sorted(r["v"]["y"] for r in read_stream(log, "xo-chain-out")) == [2 * i for i in range(20)]
