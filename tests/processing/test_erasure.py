"""Erasing people from processor state (issue #11): a running processor applies a ready erasure between
batches and acknowledges it, a stopped one's state files are purged for it, and kill -9 around the
erasure's checkpoint neither loses nor skips it. State bytes are searched, not just served rows."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.core.erasure import Erasure, ErasureBoard, ErasureSet, open_board
from headwater.core.settings import Settings
from headwater.log.base import EventLog
from headwater.log.sqlite import SqliteLog
from headwater.processing.erasure import StateMatcher, consumer_name, erase_stopped_processors
from headwater.processing.runtime import ProcessorRunner
from headwater.processing.state import ServedReader
from headwater.processing.worker import load_pipelines
from tests.helpers import child_env, make_settings
from tests.services import KafkaBroker

BASE = 1_767_225_600_000
NAME = "per_user"
PIPELINE = f'''
from headwater.processing import Pipeline


def count(ctx, event):
    n = ctx.state.get("n", 0) + 1
    ctx.state.set("n", n)
    ctx.state.set("last", {{"user": event["user_id"], "anon": event["anonymous_id"]}})
    ctx.schedule("expire", ctx.timestamp + 10**12)  # a timer keyed by the user
    ctx.emit({{"user": ctx.key, "n": n}})


pipeline = Pipeline("{NAME}")
events = pipeline.source("events")
events.process(count).to_state("per_user_counts", key=lambda v: v["user"])
events.tumbling_window(86_400_000).count().current().to_state(
    "per_user_days", key=lambda v: f"{{v['key']}}@{{v['start']}}"
)
'''
USERS = ["u1", "u10", "u2"]
CHILD = """
import os, sys
from headwater.core.settings import load_settings
from headwater.log import open_log
from headwater.processing.runtime import ProcessorRunner
from headwater.processing.worker import load_pipelines

settings = load_settings()
(pipeline,) = load_pipelines(sys.argv[1])
crash, seq = sys.argv[2], int(sys.argv[3])
runner = ProcessorRunner(pipeline, open_log(settings), settings.processors_dir, settings=settings)
if crash == "before-commit":  # kill -9 inside the erasure's checkpoint, before the state commit
    apply = runner.state.apply

    def crashing(changes, *args, **kwargs):
        if any(key.startswith(b"k__erasure\\0") for records in changes.values() for key, _ in records):
            os._exit(9)
        return apply(changes, *args, **kwargs)

    runner.state.apply = crashing
elif crash == "before-ack":  # after the commit, before the acknowledgement
    runner.erasures.acknowledge = lambda *args, **kwargs: os._exit(9)
for _ in range(1200):
    runner.poll(0.05)
    if "processor:per_user" in runner.erasures.board().acks(seq):
        runner.close()
        sys.exit(0)
sys.exit(3)
"""


@dataclass
class Setup:
    data_dir: Path
    spec: str
    settings: Settings
    log: EventLog
    board: ErasureBoard

    def feed(self, users: list[str], start: int = 0, count: int = 60) -> None:
        producer = self.log.producer()
        try:
            records = []
            for i in range(start, start + count):
                user = users[i % len(users)]
                body = {"type": "track", "event": "view", "userId": user, "anonymousId": f"anon-{user}",
                        "messageId": f"m{i}", "timestamp": BASE + i}  # fmt: skip
                records.append((user.encode(), orjson.dumps({"m": {"ra": BASE, "src": "t", "ep": "track"}, "e": body})))
            producer.append(records).result(30)
        finally:
            producer.close()

    def runner(self, **options: Any) -> ProcessorRunner:
        (pipeline,) = load_pipelines(self.spec)
        return ProcessorRunner(pipeline, self.log, self.settings.processors_dir, settings=self.settings, **options)

    def run_to_end(self, runner: ProcessorRunner) -> None:
        for _ in range(200):
            if runner.poll(0.02) == 0 and runner.lag() == 0:
                break
        runner.checkpoint()

    def folder(self) -> Path:
        return self.settings.processors_dir / NAME

    def state_path(self) -> Path:
        run = orjson.loads((self.folder() / "manifest.json").read_bytes())["run"]
        return self.folder() / f"state-{run}.db"

    def state_bytes(self, path: Path | None = None) -> bytes:
        paths = [path] if path else sorted(self.folder().glob("state-*.db"))
        out = b""
        for p in paths:
            wal = p.with_name(p.name + "-wal")
            out += p.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
        return out

    def served(self, table: str, key: str) -> Any:
        reader = ServedReader(self.state_path())
        try:
            found = reader.get(table, key)
            return found[0] if found else None
        finally:
            reader.close()

    def has(self, user: str, n: int) -> bool:
        """Whether the served count of `user` is `n` (False while the processor has not written it)."""
        try:
            return bool(self.served("per_user_counts", user) == {"user": user, "n": n})
        except (FileNotFoundError, sqlite3.Error):
            return False

    def day_keys(self) -> set[str]:
        reader = ServedReader(self.state_path())
        try:
            return {row["key"].split("@")[0] for row in reader.scan("per_user_days", limit=1000)}
        finally:
            reader.close()

    def erase(self, request: str, ids: list[str]) -> Erasure:
        """What the privacy worker does first: publish, purge the log, mark ready."""
        seq = self.board.publish(request, ids)
        self.log.erase(ErasureSet.of(ids))
        self.board.mark_ready(seq)
        return Erasure(seq, request, ErasureSet.of(ids))

    def assert_erased(self, path: Path | None = None) -> None:
        raw = self.state_bytes(path)
        assert b"\x8c\x02u1" not in raw and b'"u1"' not in raw  # pickled or JSON: no u1 left in the files
        assert b"\x8c\x03u10" in raw and b'"u10"' in raw
        assert self.served("per_user_counts", "u1") is None and self.day_keys() == {"u10", "u2"}
        assert self.served("per_user_counts", "u10") == {"user": "u10", "n": 20}


@pytest.fixture
def setup(data_dir: Path) -> Setup:
    (data_dir / "per_user.py").write_text(PIPELINE)
    settings = make_settings(data_dir, log_partitions=2)
    return Setup(
        data_dir, f"{data_dir / 'per_user.py'}:pipeline", settings, SqliteLog.from_settings(settings),
        ErasureBoard(open_board(settings.effective_catalog_uri)),
    )  # fmt: skip


def _state_before(setup: Setup) -> None:
    setup.feed(USERS)
    runner = setup.runner()
    setup.run_to_end(runner)
    runner.close()
    assert setup.served("per_user_counts", "u1") == {"user": "u1", "n": 20}
    assert b"\x8c\x02u1" in setup.state_bytes()


def test_matching_is_exact_over_keys_values_and_objects() -> None:
    @dataclass
    class Acc:
        users: list[str]

    class Slotted:
        __slots__ = ("owner",)

        def __init__(self, owner: str) -> None:
            self.owner = owner

    matcher = StateMatcher(ErasureSet.of(["u1"]))
    for hit in [("u1", "n"), ("timer", "u1", "expire"), {"a": ["x", {"u1"}]}, Acc(["u2", "u1"]), Slotted("u1"),
                '{"user":"u1"}', b"u1"]:  # fmt: skip
        assert matcher.holds(hit), hit
    for miss in [("u10", "n"), "xu1", {"a": "u1 "}, Acc(["u10"]), Slotted("u2"), 'said "u1"', 7, None]:
        assert not matcher.holds(miss), miss
    import pickle

    assert matcher.raw(pickle.dumps(("u1", "n"))) and not matcher.raw(pickle.dumps(("u10", "n")))
    assert matcher.raw(pickle.dumps({"k": "x" * 300 + "u1"}, 5)) is False
    assert matcher.raw(pickle.dumps(["u1" * 200], 5)) is False and matcher.raw(pickle.dumps(["y", "u1"], 5))


def test_a_running_processor_drops_the_persons_state_and_acknowledges(setup: Setup) -> None:
    setup.feed(USERS)
    env = child_env(setup.data_dir, log_partitions=2)
    args = [sys.executable, "-m", "headwater.cli.main", "process", setup.spec, "--data-dir", str(setup.data_dir)]
    with open(setup.data_dir / "process.log", "ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not setup.has("u2", 20):
            assert proc.poll() is None and time.monotonic() < deadline, (setup.data_dir / "process.log").read_text()
            time.sleep(0.2)
        assert setup.served("per_user_counts", "u1") == {"user": "u1", "n": 20}
        assert erase_stopped_processors(setup.settings, setup.erase("r1", ["u1"]))[NAME]["running"] == ["1"]
        seq = setup.board.last_seq()
        while consumer_name(NAME) not in setup.board.acks(seq):
            assert proc.poll() is None and time.monotonic() < deadline, (setup.data_dir / "process.log").read_text()
            time.sleep(0.2)
        detail = json.loads(setup.board.acks(seq)[consumer_name(NAME)])
        # per partition: u1's process() state (n, last), its timer, its open day window; two served rows
        assert detail == {"state": 4, "served": 2, "partitions": [0, 1]}
        setup.assert_erased()
        setup.feed(["u2"], start=1000, count=5)  # and it goes on
        while not setup.has("u2", 25):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (setup.data_dir / "process.log").read_text()


def test_a_stopped_processors_state_is_purged_for_it(setup: Setup) -> None:
    _state_before(setup)
    erasure = setup.erase("r1", ["u1"])
    result = erase_stopped_processors(setup.settings, erasure)
    assert result == {NAME: {"state": 4, "served": 2, "files": 1, "running": [], "acked": True}}
    assert json.loads(setup.board.acks(erasure.seq)[consumer_name(NAME)])["stopped"] is True
    setup.assert_erased()
    assert erase_stopped_processors(setup.settings, erasure)[NAME]["files"] == 0  # applied once only
    runner = setup.runner()  # started again: it finds the erasure applied
    setup.run_to_end(runner)
    assert json.loads(setup.board.acks(erasure.seq)[consumer_name(NAME)])["stopped"] is True
    runner.close()
    setup.assert_erased()


def test_files_in_use_are_left_to_their_processor_and_old_runs_are_purged(setup: Setup) -> None:
    _state_before(setup)
    runner = setup.runner(new_run=True)  # a replay: run 2, while run 1's file keeps u1
    setup.run_to_end(runner)
    old = setup.folder() / "state-1.db"
    erasure = setup.erase("r1", ["u1"])
    result = erase_stopped_processors(setup.settings, erasure)[NAME]
    assert result["running"] == ["2"] and result["files"] == 1 and not result["acked"]
    assert consumer_name(NAME) not in setup.board.acks(erasure.seq)
    raw = setup.state_bytes(old)
    assert b"\x8c\x02u1" not in raw and b'"u1"' not in raw
    deadline = time.monotonic() + 30
    while consumer_name(NAME) not in setup.board.acks(erasure.seq):  # it asks the board every 2 s
        assert time.monotonic() < deadline
        runner.poll(0.05)  # and applies the erasure between two batches
    assert json.loads(setup.board.acks(erasure.seq)[consumer_name(NAME)])["state"] == 4
    runner.close()
    setup.assert_erased(setup.state_path())


def test_kill_9_around_the_erasure_checkpoint_neither_loses_nor_skips_it(setup: Setup) -> None:
    _state_before(setup)
    erasure = setup.erase("r1", ["u1"])
    env = child_env(setup.data_dir, log_partitions=2)

    def child(crash: str) -> int:
        args = [sys.executable, "-c", CHILD, setup.spec, crash, str(erasure.seq)]
        return subprocess.run(args, env=env, capture_output=True, timeout=120, check=False).returncode

    assert child("before-commit") == 9
    assert consumer_name(NAME) not in setup.board.acks(erasure.seq)
    assert setup.served("per_user_counts", "u1") == {"user": "u1", "n": 20}  # nothing of it was committed
    assert child("before-ack") == 9
    assert consumer_name(NAME) not in setup.board.acks(erasure.seq)
    setup.assert_erased()  # committed, not acknowledged
    assert child("none") == 0  # the restarted processor acknowledges what it finds applied
    assert json.loads(setup.board.acks(erasure.seq)[consumer_name(NAME)]) == {"reacknowledged": True}
    setup.assert_erased()


@pytest.mark.kafka
def test_on_kafka_the_changelog_gets_tombstones_and_a_restore_has_no_erased_state(
    kafka_broker: KafkaBroker, setup: Setup, tmp_path: Path
) -> None:
    from headwater.log.kafka import KafkaLog

    log = KafkaLog(kafka_broker.bootstrap, f"erase-{uuid.uuid4().hex[:8]}", partitions=2, replication_factor=1)
    setup.log = log
    setup.feed(USERS)
    (pipeline,) = load_pipelines(setup.spec)
    first = ProcessorRunner(pipeline, log, tmp_path / "a", settings=setup.settings, checkpoint_interval_ms=50)
    deadline = time.monotonic() + 90
    while not (len(first.tasks) == 2 and first.lag() == 0 and first.checkpoints > 1):
        assert time.monotonic() < deadline
        first.poll(0.1)
    first.checkpoint()
    erasure = setup.erase("r1", ["u1"])  # the Kafka log itself erases nothing
    while consumer_name(NAME) not in setup.board.acks(erasure.seq):
        assert time.monotonic() < deadline
        first.poll(0.1)
    first.close()
    # another machine restores the partitions from the changelog: the tombstones came with it
    (pipeline,) = load_pipelines(setup.spec)
    second = ProcessorRunner(pipeline, log, tmp_path / "b", settings=setup.settings, run_id=first.run_id)
    while not (len(second.tasks) == 2 and second.lag() == 0):
        assert time.monotonic() < deadline
        second.poll(0.1)
    second.checkpoint()
    state = second.manifest.state_path(second.run_id)
    second.close()
    raw = setup.state_bytes(state)
    assert b"\x8c\x02u1" not in raw and b'"u1"' not in raw
    assert b"\x8c\x03u10" in raw and b'"u10"' in raw
