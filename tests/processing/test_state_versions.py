"""State versions and savepoints, with `headwater process` as a real process.

A pipeline keeps a running total per user. Its code changes between runs: with the same `state_version`
the state is kept; with a new one and no `migrate_state` the processor refuses to start (and starts with
`--reset-state`); with `migrate_state` the state is migrated once, even when the process is killed with
SIGKILL in the middle of the migration. A savepoint taken while it runs (or while it is stopped, with a
repartition stage) is started from with `--from-savepoint`: a new run with the saved state that re-reads
its input from the saved positions, every output of the new run once.
"""

from __future__ import annotations

import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from headwater.log.sqlite import SqliteLog
from headwater.processing.state import ServedReader
from tests.helpers import child_env, make_settings, read_stream

BASE = 1_767_225_600_000
PIPELINE = """
import os, signal
from headwater.processing import Pipeline

VERSION = {version}
calls = 0


def add(ctx, event):
    n = event["properties"]["n"]
    if VERSION == 1:
        total = ctx.state.get("total", 0) + n
        ctx.state.set("total", total)
    else:  # version 2 keeps {{"sum": total}}
        total = ctx.state.get("total", {{"sum": 0}})["sum"] + n
        ctx.state.set("total", {{"sum": total}})
    ctx.emit({{"user": ctx.key, "total": total{extra}}})


def migrate(from_version, key, value):
    global calls
    calls += 1
    if calls == int(os.environ.get("CRASH_AT_CALL", "0")):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the migration
    assert from_version == 1 and key.store == "process1" and key.name == "total", (from_version, key)
    assert isinstance(value, int), f"migrated twice: {{value!r}}"
    return {{"sum": value}}


pipeline = Pipeline("totals", state_version=VERSION, migrate_state=migrate if {migrate} else None)
pipeline.source("events").process(add).to_stream("totals-out").to_state("totals", key=lambda v: v["user"])
"""
STAGED = """
from headwater.processing import Pipeline


def count(ctx, event):
    n = ctx.state.get("n", 0) + 1
    ctx.state.set("n", n)
    ctx.emit({"group": ctx.key, "n": n})


pipeline = Pipeline("groups")
(pipeline.source("events")
    .repartition(lambda e: e["properties"]["group"])
    .process(count)
    .to_stream("groups-out")
    .to_state("groups", key=lambda v: v["group"]))
"""


@dataclass
class Env:
    tmp: Path
    data_dir: Path
    log: SqliteLog
    env: dict[str, str]
    sent: int = 0

    @property
    def processors(self) -> Path:
        return self.data_dir / "processors"

    def write(self, code: str, name: str = "pipe") -> str:
        path = self.tmp / f"{name}_{abs(hash(code)) % 10**8}.py"
        path.write_text(code)
        return f"{path}:pipeline"

    def send(self, count: int, users: int = 7, groups: int = 5) -> list[tuple[str, int, str]]:
        """`count` events (user, n, group) appended straight to the log."""
        events = [(f"u{(self.sent + i) % users}", self.sent + i, f"g{(self.sent + i) % groups}") for i in range(count)]
        producer = self.log.producer()
        try:
            for i in range(0, count, 500):
                producer.append([_envelope(u, n, g) for u, n, g in events[i : i + 500]]).result(30)
        finally:
            producer.close()
        self.sent += count
        return events

    def args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "headwater.cli.main", "process", *args, "--data-dir", str(self.data_dir)]

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / "process.log", "ab") as out:
            return subprocess.Popen(self.args(*args), env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*args), env={**self.env, **env}, capture_output=True, text=True, timeout=180, check=False
        )

    def logs(self) -> str:
        path = self.tmp / "process.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def manifest(self, name: str) -> dict[str, Any]:
        return dict(orjson.loads((self.processors / name / "manifest.json").read_bytes()))

    def state_path(self, name: str) -> Path:
        return self.processors / name / f"state-{self.manifest(name)['run']}.db"

    def caught_up(self, name: str, stream: str | None = None) -> bool:
        try:
            conn = sqlite3.connect(f"file:{self.state_path(name)}?mode=ro", uri=True)
            try:
                applied = dict(conn.execute("SELECT partition, next_offset FROM checkpoints").fetchall())
            finally:
                conn.close()
        except (FileNotFoundError, sqlite3.Error):
            return False
        admin = (self.log.stream(stream) if stream else self.log).admin()
        try:
            return all(applied.get(p, 0) >= end for p, end in admin.end_offsets().items())
        finally:
            admin.close()

    def started(self, name: str, since_ms: int) -> bool:
        try:
            return int(self.manifest(name)["started_at"]) >= since_ms
        except (FileNotFoundError, ValueError):
            return False

    def wait(
        self, proc: subprocess.Popen[bytes], *names: tuple[str, str | None], since_ms: int = 0, timeout: float = 90
    ) -> None:
        """Until each (processor, input stream) was started after `since_ms` and has applied its whole input."""
        deadline = time.monotonic() + timeout
        for name, stream in names:
            while not (self.started(name, since_ms) and self.caught_up(name, stream)):
                assert proc.poll() is None, f"headwater process exited {proc.returncode}: {self.logs()}"
                assert time.monotonic() < deadline, f"{name} not caught up in {timeout} s: {self.logs()}"
                time.sleep(0.1)

    def run(self, *args: str, wait: tuple[tuple[str, str | None], ...] = (("totals", None),)) -> None:
        """Start `headwater process`, wait until caught up, stop it with SIGTERM."""
        since = int(time.time() * 1000)
        proc = self.start(*args)
        try:
            self.wait(proc, *wait, since_ms=since)
        finally:
            stop(proc)
        assert proc.returncode == 0, self.logs()

    def served(self, table: str, name: str) -> dict[str, Any]:
        reader = ServedReader(self.state_path(name))
        try:
            return {row["key"]: row["value"] for row in reader.scan(table, limit=100_000)}
        finally:
            reader.close()

    def version(self, name: str) -> int | None:
        conn = sqlite3.connect(f"file:{self.state_path(name)}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'state_version'").fetchone()
            return int(row[0]) if row else None
        finally:
            conn.close()

    def kv(self, name: str) -> dict[Any, Any]:
        conn = sqlite3.connect(f"file:{self.state_path(name)}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT key, value FROM kv WHERE store = 'process1'").fetchall()
            return {pickle.loads(k): pickle.loads(v) for k, v in rows}
        finally:
            conn.close()


def _envelope(user: str, n: int, group: str) -> tuple[bytes, bytes]:
    event = {"type": "track", "event": "e", "userId": user, "messageId": f"m{n}", "timestamp": BASE + n}
    body = {"m": {"ra": BASE, "src": "t", "ep": "track"}, "e": {**event, "properties": {"n": n, "group": group}}}
    return user.encode(), orjson.dumps(body)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def totals(events: list[tuple[str, int, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for user, n, _ in events:
        out[user] = out.get(user, 0) + n
    return out


def setup(tmp_path: Path) -> Env:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log = SqliteLog.from_settings(make_settings(data_dir))
    return Env(tmp_path, data_dir, log, child_env(data_dir, processor_checkpoint_ms=30, processor_max_batch=500))


def code(version: int, migrate: bool = False, extra: str = "") -> str:
    return PIPELINE.format(version=version, migrate=migrate, extra=extra)


def test_the_same_version_keeps_state_when_the_code_changes(tmp_path: Path) -> None:
    s = setup(tmp_path)
    first = s.send(200)
    s.run(s.write(code(1)))
    second = s.send(100)
    s.run(s.write(code(1, extra=', "v": "changed"')))  # other code, same state_version
    assert s.manifest("totals")["run"] == "1" and s.version("totals") == 1
    assert {k: v["total"] for k, v in s.served("totals", "totals").items()} == totals(first + second)
    assert s.served("totals", "totals")["u0"]["v"] == "changed"


def test_a_new_version_without_migration_is_refused_and_reset_state_starts_over(tmp_path: Path) -> None:
    s = setup(tmp_path)
    events = s.send(150)
    s.run(s.write(code(1)))
    v2 = s.write(code(2))
    refused = s.cli(v2)
    assert refused.returncode != 0
    message = " ".join(refused.stderr.split())
    for words in ("state_version 1", "state_version 2", "no migrate_state", "--from-savepoint", "--reset-state"):
        assert words in message, refused.stderr
    assert s.manifest("totals")["run"] == "1" and s.version("totals") == 1  # untouched
    s.run(v2, "--reset-state", "--from", "earliest")
    assert s.manifest("totals")["run"] == "2" and s.version("totals") == 2
    assert {k: v["total"] for k, v in s.served("totals", "totals").items()} == totals(events)
    assert {k: v for (k, _), v in s.kv("totals").items()} == {k: {"sum": v} for k, v in totals(events).items()}


def test_kill_9_during_the_migration_then_a_restart_migrates_every_entry_once(tmp_path: Path) -> None:
    s = setup(tmp_path)
    users = 4_500  # three batches of the migration's transaction
    before = s.send(2 * users, users=users)
    s.run(s.write(code(1)))
    v2 = s.write(code(2, migrate=True))
    proc = s.start(v2, CRASH_AT_CALL="3000")  # in the second batch, after the first was written
    proc.wait(120)
    assert proc.returncode == -signal.SIGKILL, s.logs()
    assert s.version("totals") == 1  # the migration's transaction rolled back
    assert {k: v for (k, _), v in s.kv("totals").items()} == totals(before)
    after = s.send(300, users=users)
    s.run(v2)  # no crash this time
    assert s.manifest("totals")["run"] == "1" and s.version("totals") == 2
    assert s.manifest("totals")["state_version"] == 2
    want = totals(before + after)
    assert {k: v for (k, _), v in s.kv("totals").items()} == {k: {"sum": v} for k, v in want.items()}
    assert {k: v["total"] for k, v in s.served("totals", "totals").items()} == want
    s.run(v2)  # started again: nothing left to migrate
    assert {k: v for (k, _), v in s.kv("totals").items()} == {k: {"sum": v} for k, v in want.items()}


def test_a_savepoint_of_a_running_processor_then_a_new_run_from_it(tmp_path: Path) -> None:
    s = setup(tmp_path)
    spec = s.write(code(1))
    first = s.send(300)
    proc = s.start(spec)
    try:
        s.wait(proc, ("totals", None))
        taken = s.cli("savepoint", "totals", "--id", "before-b")
        assert taken.returncode == 0, taken.stderr + s.logs()
        assert proc.poll() is None  # still running: it paused for the savepoint
        second = s.send(200)
        s.wait(proc, ("totals", None))
    finally:
        stop(proc)
    assert proc.returncode == 0, s.logs()
    meta = orjson.loads((s.processors / "totals" / "savepoints" / "before-b" / "savepoint.json").read_bytes())
    saved = meta["processors"]["totals"]
    ends_a = {str(p): o for p, o in Counter(s.log.partition_for(u.encode()) for u, _, _ in first).items()}
    assert {p: o for p, o in saved["positions"].items() if o} == ends_a
    assert sum(saved["outputs"]["totals-out"].values()) == len(first)
    listed = s.cli("savepoints", "totals")
    assert listed.returncode == 0 and "before-b" in listed.stdout

    # code of version 2 with a migration, started from the savepoint of version 1
    v2 = s.write(code(2, migrate=True))
    since = int(time.time() * 1000)
    proc = s.start(v2, "--from-savepoint", "before-b")
    try:
        s.wait(proc, ("totals", None), since_ms=since)
    finally:
        proc.send_signal(signal.SIGKILL)  # and a kill -9 in the new run: its outputs stay exactly once
        proc.wait()
    third = s.send(100)
    s.run(v2)
    manifest = s.manifest("totals")
    assert manifest["run"] == "2" and manifest["restored"]["savepoint"] == "before-b" and s.version("totals") == 2
    want = totals(first + second + third)
    assert {k: v["total"] for k, v in s.served("totals", "totals").items()} == want
    outputs = read_stream(s.log, "totals-out")
    run2 = [r for r in outputs if r["id"].startswith("totals/2/")]
    assert len({r["id"] for r in run2}) == len(run2) == len(second) + len(third)  # B again, then C, each once
    assert len(outputs) - len(run2) == len(first) + len(second)  # run 1's outputs stay


def test_a_savepoint_of_a_stopped_pipeline_with_a_repartition_stage(tmp_path: Path) -> None:
    s = setup(tmp_path)
    spec = s.write(STAGED, "staged")
    wait = (("groups", None), ("groups--r1", "groups--r1"))
    first = s.send(250)
    s.run(spec, wait=wait)
    taken = s.cli("savepoint", "groups", "--id", "sp1")  # stopped: copied directly
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.strip() == "sp1"
    meta = orjson.loads((s.processors / "groups" / "savepoints" / "sp1" / "savepoint.json").read_bytes())
    assert set(meta["processors"]) == {"groups", "groups--r1"}
    second = s.send(150)
    s.run(spec, wait=wait)  # the old run goes on past the savepoint: its stage counts the second batch
    s.run(spec, "--from-savepoint", "sp1", wait=wait)
    assert s.manifest("groups")["run"] == "2" and s.manifest("groups--r1")["run"] == "2"
    want = Counter(g for _, _, g in first + second)
    assert {k: v["n"] for k, v in s.served("groups", "groups--r1").items()} == want  # nothing counted twice


def test_a_missing_savepoint_and_a_running_savepoint_request_of_an_unknown_processor_fail_clearly(
    tmp_path: Path,
) -> None:
    s = setup(tmp_path)
    s.send(20)
    spec = s.write(code(1))
    s.run(spec)
    missing = s.cli(spec, "--from-savepoint", "nope")
    assert missing.returncode != 0 and "nope" in missing.stderr
    unknown = s.cli("savepoint", "ghost")
    assert unknown.returncode != 0 and "ghost" in unknown.stderr


def test_a_running_pipeline_with_a_stage_saved_then_asked_to_start_from_the_savepoint(tmp_path: Path) -> None:
    s = setup(tmp_path)
    spec = s.write(STAGED, "staged")
    wait = (("groups", None), ("groups--r1", "groups--r1"))
    first = s.send(200)
    proc = s.start(spec)
    try:
        s.wait(proc, *wait)
        taken = s.cli("savepoint", "groups", "--id", "live")
        assert taken.returncode == 0, taken.stderr + s.logs()
        second = s.send(120)
        s.wait(proc, *wait)
        since = int(time.time() * 1000)
        asked = s.cli("--replay", "groups", "--from-savepoint", "live")  # the running worker restarts both
        assert asked.returncode == 0, asked.stderr
        s.wait(proc, *wait, since_ms=since)
        assert s.manifest("groups")["run"] == "2" and s.manifest("groups--r1")["run"] == "2"
        third = s.send(80)
        s.wait(proc, *wait)
    finally:
        stop(proc)
    assert proc.returncode == 0, s.logs()
    want = Counter(g for _, _, g in first + second + third)
    assert {k: v["n"] for k, v in s.served("groups", "groups--r1").items()} == want


def test_a_privacy_erasure_reaches_the_state_kept_in_savepoints(tmp_path: Path) -> None:
    from headwater.core.erasure import Erasure, ErasureSet
    from headwater.processing.savepoints import erase_savepoints

    s = setup(tmp_path)
    s.send(70)
    s.run(s.write(code(1)))
    assert s.cli("savepoint", "totals", "--id", "kept").returncode == 0
    saved = s.processors / "totals" / "savepoints" / "kept" / "totals.db"
    assert b"u3" in saved.read_bytes()
    settings = make_settings(s.data_dir)
    done = erase_savepoints(settings, Erasure(1, "req-1", ErasureSet.of(["u3"])))
    assert done == {"files": 1, "state": 1, "served": 1}
    assert b"u3" not in saved.read_bytes()
    assert erase_savepoints(settings, Erasure(1, "req-1", ErasureSet.of(["u3"])))["files"] == 0  # once


# Runs one processor of a pipeline alone (0: the pipeline, 1: its stage) until caught up; with "crash", its
# last checkpoint exits with 9 once the outputs are durable and before the state commit.
ALONE = """
import os, sys
from headwater.core.settings import load_settings
from headwater.log import open_log
from headwater.processing.runtime import ProcessorRunner
from headwater.processing.worker import load_pipelines

settings = load_settings()
pipeline = load_pipelines(sys.argv[1])[int(sys.argv[2])]
runner = ProcessorRunner(pipeline, open_log(settings), settings.processors_dir, checkpoint_interval_ms=10**9)
while runner.poll(0.05) or runner.lag():
    pass
if sys.argv[3] == "crash":
    runner.state.apply = lambda *args, **kwargs: os._exit(9)
runner.checkpoint()
runner.close()
"""


def test_a_savepoint_after_a_crash_between_outputs_and_state_leaves_the_stage_exact(tmp_path: Path) -> None:
    s = setup(tmp_path)
    spec = s.write(STAGED, "staged")
    wait = (("groups", None), ("groups--r1", "groups--r1"))
    first = s.send(150)
    s.run(spec, wait=wait)
    second = s.send(90)

    def alone(index: int, how: str) -> int:
        args = [sys.executable, "-c", ALONE, spec, str(index), how]
        return subprocess.run(args, env=s.env, capture_output=True, timeout=120, check=False).returncode

    ends = {p: o for p, o in s.log.stream("groups--r1").admin().end_offsets().items()}
    assert alone(0, "crash") == 9  # the second batch's repartitioned records are in the stream, not in the state
    assert sum(s.log.stream("groups--r1").admin().end_offsets().values()) == sum(ends.values()) + len(second)
    assert s.cli("savepoint", "groups", "--id", "sp").returncode == 0
    meta = orjson.loads((s.processors / "groups" / "savepoints" / "sp" / "savepoint.json").read_bytes())
    assert meta["processors"]["groups"]["outputs"]["groups--r1"] == {str(p): o for p, o in ends.items()}
    assert alone(1, "run") == 0  # the stage alone reads them: now its state holds what its upstream's does not
    refused = s.cli("savepoint", "groups", "--id", "late")
    assert refused.returncode != 0 and "catches up" in " ".join(refused.stderr.split())
    third = s.send(60)
    s.run(spec, "--from-savepoint", "sp", wait=wait)
    want = Counter(g for _, _, g in first + second + third)
    assert {k: v["n"] for k, v in s.served("groups", "groups--r1").items()} == want
