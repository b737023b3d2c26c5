"""Running a pipeline on the event log: a consumer group, one task per owned partition, checkpoints.

Commit order of a checkpoint (every `checkpoint_interval_ms`, and before stopping):

1. Log. The log's `Checkpointer` makes the outputs durable — the records each task buffered,
   per output stream, with positions ((input offset << 20) + n) that replaying the same input
   reproduces. Embedded log: appended under the fence `<processor>.<run>/<input partition>`,
   which drops records below the fence's mark. Kafka: one transaction holding the outputs, the
   state changes (to a compacted changelog topic, partition = input partition) and the input
   offsets (`send_offsets_to_transaction`), as Kafka Streams' EOS v2.
2. State. One SQLite transaction writes the same state changes, the served state tables and,
   per input partition, the next offset to apply, the stream time and (Kafka) the changelog
   offset reached.
3. Offsets. Embedded log: the group's offsets are committed (for lag and retention only).

Resuming (start, or a partition gained in a rebalance): Kafka first replays the changelog from
the offset the state file reached (a partition that moved from another machine is rebuilt
there), then reads from the group's committed offsets; the embedded log reads from the offsets
in the state file. kill -9 between 1 and 2: embedded, the same outputs are recomputed and the
fence drops them; Kafka, the state file is behind the changelog and catches up from it. A
member that lost its partitions has its transaction refused and drops its tasks. Wall-clock
timers are the exception to determinism: their outputs carry an idempotency key (timer, key,
due time) instead of relying on the fence.

Privacy erasures (`processing.erasure`): between two batches the runner applies erasures ready on the
board to its state and checkpoints at once, so the deletions and the erasure's sequence number commit
together; it acknowledges after that. It holds its state file's `StateLock` while it runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from headwater.core import metrics
from headwater.core.errors import LogError, ProcessingError
from headwater.core.settings import Settings
from headwater.log.base import Consumer, EventLog, OutputRecord, Record
from headwater.processing import savepoints
from headwater.processing.api import Pipeline
from headwater.processing.erasure import ProcessorErasures
from headwater.processing.records import Decoded, EventDecoder, decode_outputs, to_millis
from headwater.processing.replay import LakeRows
from headwater.processing.state import NO_OFFSET, StateLock, StateStore
from headwater.processing.task import Task

log = logging.getLogger(__name__)
EVENT_STREAMS = {"events"}
MAX_BUFFERED_OUTPUTS = 50_000  # checkpoint early rather than hold more outputs in memory


def parse_start(start: str) -> str | dict[int, int] | int:
    """--from: 'earliest', 'latest', 'P:O,P:O' (offsets), or an ISO time (events before it are skipped);
    'lake' or 'lake:ISO time' first reads the events table (see `replay`)."""
    if start in ("earliest", "latest"):
        return start
    if start.startswith(savepoints.PREFIX):
        return f"{savepoints.PREFIX}{savepoints.parse(start)}"
    if ":" in start and all(part.count(":") == 1 and part.replace(":", "").isdigit() for part in start.split(",")):
        return {int(p): int(o) for p, o in (part.split(":") for part in start.split(","))}
    try:
        return to_millis(start)
    except ValueError:
        raise ProcessingError(
            f"--from {start!r}: use 'earliest', 'latest', offsets like '0:120,1:98', an ISO time, or 'lake[:ISO time]'"
        ) from None


def split_lake(start: str) -> tuple[bool, str | dict[int, int] | int]:
    """'lake' / 'lake:ISO-time' -> (True, where the log part starts); anything else -> (False, parsed)."""
    if start == "lake" or start.startswith("lake:"):
        return True, parse_start(start.removeprefix("lake").removeprefix(":") or "earliest")
    return False, parse_start(start)


def _write_atomically(path: Path, text: str) -> None:
    """Write then rename (several workers of one processor may share the folder)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def group_name(pipeline: str, run_id: str) -> str:
    return f"processor.{pipeline}.{run_id}"


class Manifest:
    """`<state_dir>/<processor>/manifest.json`: the current run, input, outputs (read by the API)."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self.folder = state_dir / name
        self.path = self.folder / "manifest.json"

    def read(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write(self, data: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.path, json.dumps(data, indent=2))

    def state_path(self, run_id: str) -> Path:
        return self.folder / f"state-{run_id}.db"


class ProcessorRunner:
    """Runs `pipeline` against `event_log` until stopped; state under `state_dir/<name>/`."""

    def __init__(
        self,
        pipeline: Pipeline,
        event_log: EventLog,
        state_dir: Path,
        *,
        checkpoint_interval_ms: int = 50,
        max_batch: int = 5000,
        new_run: bool = False,
        start: str = "earliest",
        run_id: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.event_log = event_log
        self.checkpoint_interval = checkpoint_interval_ms / 1000
        self.max_batch = max_batch
        self.manifest = Manifest(state_dir, pipeline.name)
        previous = self.manifest.read()
        if run_id is not None:
            self.run_id = run_id
        elif previous is None:
            self.run_id = "1"  # the same on every worker: in a cluster they form one group
        elif new_run:  # a replay: the next number, so workers asked to replay agree again
            self.run_id = str(int(previous["run"]) + 1) if str(previous["run"]).isdigit() else uuid.uuid4().hex[:8]
        else:
            self.run_id = str(previous["run"])
        self.input_log = event_log if pipeline.input in EVENT_STREAMS else event_log.stream(pipeline.input)
        self._decoder = EventDecoder(self.input_log.log_id)
        self._decode = self._events if pipeline.input in EVENT_STREAMS else self._any
        # held shared while running: erase_stopped_processors leaves a file in use to this process
        self._state_lock = StateLock(self.manifest.state_path(self.run_id))
        self._state_lock.acquire()
        same_run = previous is not None and previous.get("run") == self.run_id
        restored: dict[str, Any] | None = None
        savepoint = savepoints.parse(start)
        if savepoint is not None:  # a new run whose state file is the savepoint's copy
            restored = savepoints.seed(state_dir, pipeline, savepoint, self.manifest.state_path(self.run_id), event_log)
            start = "earliest"
        elif same_run and previous:
            restored = previous.get("restored")  # a restart of a restored run keeps what it skips
        self.state = StateStore(self.manifest.state_path(self.run_id))
        self.erasures = ProcessorErasures(pipeline.name, settings.effective_catalog_uri) if settings else None
        lake, where = split_lake(start)
        self.lake_plan: dict[str, Any] | None = previous.get("lake") if previous and not new_run else None
        if lake:
            if pipeline.input not in EVENT_STREAMS or settings is None:
                raise ProcessingError(f"processor {pipeline.name}: replay from the lake needs the events stream")
            from headwater.processing.replay import plan

            self.lake_plan = plan(settings, event_log, where if isinstance(where, int) else None)
        self._settings = settings
        self.min_event_time = where if isinstance(where, int) else None
        if same_run and previous and self.min_event_time is None:
            self.min_event_time = previous.get("min_event_time")  # a restart keeps the run's --from time
        if savepoint is not None and restored is not None:
            where = {int(p): int(o) for p, o in restored["positions"].items()}
            self.lake_plan, self.min_event_time = restored["lake"], restored["min_event_time"]
        self.superseded = savepoints.Superseded(restored["skip"]) if restored and restored.get("skip") else None
        self.consumer: Consumer = self.input_log.consumer(group_name(pipeline.name, self.run_id))
        self.checkpointer = event_log.checkpointer(f"{pipeline.name}.{self.run_id}", self.consumer)
        try:
            self.state_version = savepoints.ensure_state_version(
                self.state, pipeline, self.run_id, state_dir, self.checkpointer.changelog
            )
        except BaseException:
            self.close()
            raise
        self.manifest.write(
            {
                "lake": self.lake_plan, "min_event_time": self.min_event_time,
                "processor": pipeline.name, "description": pipeline.description, "run": self.run_id,
                "input": pipeline.input, "partitions": self.input_log.partitions, "outputs": pipeline.outputs(),
                "started_at": int(time.time() * 1000), "state_version": self.state_version, "restored": restored,
                "previous_run": (previous.get("previous_run") if same_run else previous["run"]) if previous else None,
            }
        )  # fmt: skip
        self.start_from: dict[int, int] = where if isinstance(where, dict) else {}
        if where == "latest":
            admin = self.input_log.admin()
            try:
                self.start_from = admin.end_offsets()
            finally:
                admin.close()
        elif where != "latest" and not self.start_from:
            self.start_from = dict.fromkeys(range(self.input_log.partitions), 0)
        self.tasks: dict[int, Task] = {}
        self.generation = -1
        self._last_checkpoint = time.monotonic()
        self._last_tick = 0.0
        self._lake_rows: LakeRows | None = None
        self.checkpoints = 0
        self.stats = {"in": 0, "out": 0, "late": 0, "errors": 0}
        self.last_error: str | None = None
        for table in pipeline.tables.values():
            table.refresh(force=True)

    def _events(self, records: list[Record]) -> Iterator[Decoded]:
        return self._decoder.decode(records)

    def _any(self, records: list[Record]) -> Iterator[Decoded]:
        """Another stream: processor outputs, or collector envelopes (a stream a source feeds)."""
        if records and records[0].value.startswith(b'{"m":'):
            return self._decoder.decode(records)
        return decode_outputs(records)

    # -- partitions -------------------------------------------------------------------------------
    def _sync_assignment(self) -> None:
        """After a rebalance: drop tasks of partitions we lost (unsaved work is redone by the new
        owner from the last checkpoint), and start tasks for new ones from their checkpoint."""
        owned = set(self.consumer.assignment())
        for partition in list(self.tasks):
            if partition not in owned:
                del self.tasks[partition]
        gained = sorted(owned - set(self.tasks))
        committed = self.checkpointer.committed() if gained and self.checkpointer.offsets_in_log else {}
        for partition in gained:
            if self.checkpointer.changelog:
                self._restore(partition)
            task = Task(self.pipeline, partition, self.state, self.pipeline.tables, self.run_id)
            self.tasks[partition] = task
            resume = committed.get(partition) if self.checkpointer.offsets_in_log else None
            if self.lake_plan is not None and resume is None:
                resume = self._replay_lake(task)
            if resume is None and task.checkpoint is not None:
                resume = task.checkpoint[0]
            if resume is None:
                resume = self.start_from.get(partition)
                if resume is not None:
                    task.next_offset = resume  # the first checkpoint keeps where this run started
            if resume is not None:
                self.consumer.seek(partition, resume)
        self.generation = self.consumer.generation

    def _replay_lake(self, task: Task) -> int | None:
        """Apply the lake rows of the task's partition; return the log offset to go on from."""
        from headwater.processing.replay import load_rows

        assert self.lake_plan is not None and self._settings is not None
        end = int(self.lake_plan["offsets"].get(str(task.partition), 0))
        if task.checkpoint is not None and task.checkpoint[0] >= end:
            return None  # done before a restart
        if self._lake_rows is None:
            self._lake_rows = load_rows(self._settings, self.event_log, self.lake_plan)
        rows = self._lake_rows.get(task.partition, [])
        base = end - len(rows)
        for index, (key, value, ts) in enumerate(rows):
            task.process(key, value, ts, base + index)  # skips what a checkpoint before a crash holds
        task.next_offset = max(task.next_offset, end)
        log.info(
            "processor %s partition %d: replayed %d rows from the lake", self.pipeline.name, task.partition, len(rows)
        )
        return end

    def _restore(self, partition: int) -> None:
        """Bring this worker's state file up to the changelog (partitions move between workers)."""
        start = self.state.changelog_offset(partition)
        if start > 0 and self.checkpointer.changelog_end(partition) > start:
            # another worker wrote it since: compaction may have dropped deletes we never saw, so
            # rebuild the partition from the whole (compacted) changelog instead of catching up
            self.state.forget(partition)
            start = 0
        restored = 0
        for end, records in self.checkpointer.restore(partition, start):
            restored += self.state.apply({partition: records}, {partition: end})
        if restored:
            log.info("processor %s partition %d: restored %d state changes", self.pipeline.name, partition, restored)

    # -- the loop ---------------------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.05) -> int:
        """Read and apply one batch; checkpoint when due. Returns records read."""
        if self.generation != self.consumer.generation or not self.tasks:
            self._sync_assignment()
        records = self.consumer.poll(self.max_batch, timeout_s)
        if self.consumer.generation != self.generation:
            # the batch may straddle a rebalance: drop it, and every task, and read again from what
            # was committed (a partition kept through the rebalance too: its position moved past it)
            self.tasks.clear()
            self._sync_assignment()
            return 0
        by_partition: dict[int, list[Record]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        for partition, batch in by_partition.items():
            task = self.tasks.get(partition)
            if task is None:
                continue
            floor = self.min_event_time
            kept = self.superseded.keep(partition, batch) if self.superseded is not None else batch
            for key, value, ts, offset in self._decode(kept) if kept else ():
                if floor is None or ts >= floor:
                    task.process(key, value, ts, offset)
            task.next_offset = max(task.next_offset, batch[-1].offset + 1)
        if self.erasures is not None and self.erasures.due(self.tasks):
            self._apply_erasures()
        now = time.monotonic()
        if now - self._last_tick >= 0.1:
            self._last_tick = now
            for table in self.pipeline.tables.values():
                table.refresh()
            for task in self.tasks.values():
                task.tick()
        if now - self._last_checkpoint >= self.checkpoint_interval or self._buffered() > MAX_BUFFERED_OUTPUTS:
            self.checkpoint()
        return len(records)

    def _apply_erasures(self) -> None:
        """Privacy erasures ready on the board: delete in memory, checkpoint (deletions, tombstones and
        the applied sequence numbers commit together), then acknowledge (`processing.erasure`)."""
        assert self.erasures is not None
        done, changed = self.erasures.apply(self.tasks, self.state)
        if changed and self.checkpoint() and done:
            self.state.truncate_wal()
            self.erasures.acknowledge(done, sorted(self.tasks))

    def _buffered(self) -> int:
        return sum(len(items) for task in self.tasks.values() for items in task.outputs.values())

    def checkpoint(self) -> bool:
        """Outputs (with, on Kafka, the changelog and offsets), then the state file, then group
        offsets (see the module docstring). A refused Kafka transaction (this member lost its
        partitions) drops the tasks: they restart from what was committed (returns False)."""
        started = time.perf_counter()
        self._last_checkpoint = time.monotonic()
        outputs: dict[str, list[OutputRecord]] = {}
        changes: dict[int, list[tuple[bytes, bytes | None]]] = {}
        offsets: dict[int, int] = {}
        for partition, task in self.tasks.items():
            for stream, items in task.take_outputs().items():
                outputs.setdefault(stream, []).extend(items)
            checkpoint = (task.next_offset, task.stream_time) if task.next_offset != NO_OFFSET else None
            changes[partition] = self.state.collect(task.stores(), task.served(), checkpoint)
            if checkpoint is not None and checkpoint[0] >= 0:  # negative: still replaying rows from the lake
                offsets[partition] = checkpoint[0]
        for items in outputs.values():
            # in event-time order across input partitions: a stage reading this stream (after a
            # repartition) then sees time move forward as smoothly as its inputs allow
            items.sort(key=lambda item: item.timestamp)
        try:
            ends = self.checkpointer.write(outputs, changes if self.checkpointer.changelog else {}, offsets)
        except LogError as exc:
            log.warning("processor %s: %s; resuming from the last checkpoint", self.pipeline.name, exc)
            self.tasks.clear()
            self.generation = -1
            return False
        self.state.apply(changes, ends if self.checkpointer.changelog else None)
        for task in self.tasks.values():
            self.state.saved(task.stores(), task.served())
        if offsets and not self.checkpointer.offsets_in_log:
            self.consumer.commit(offsets)
        self.checkpoints += 1
        self._report(time.perf_counter() - started)
        return True

    def _report(self, seconds: float) -> None:
        name = self.pipeline.name
        totals = {"in": 0, "out": 0, "late": 0, "errors": 0}
        for task in self.tasks.values():
            totals["in"] += task.records_in
            totals["out"] += task.records_out
            totals["late"] += task.late_count
            totals["errors"] += task.error_count
            self.last_error = task.last_error or self.last_error
        deltas = {k: max(0, totals[k] - self.stats[k]) for k in totals}
        self.stats = totals
        metrics.PROCESSOR_RECORDS_IN.labels(name).inc(deltas["in"])
        metrics.PROCESSOR_RECORDS_OUT.labels(name).inc(deltas["out"])
        metrics.PROCESSOR_LATE.labels(name).inc(deltas["late"])
        metrics.PROCESSOR_ERRORS.labels(name).inc(deltas["errors"])
        metrics.PROCESSOR_CHECKPOINT_SECONDS.labels(name).observe(seconds)
        if self.checkpoints % 10 == 1:
            lag, state_bytes = self.lag(), self.state.size_bytes()
            metrics.PROCESSOR_STATE_BYTES.labels(name).set(state_bytes)
            metrics.PROCESSOR_LAG.labels(name).set(lag)
            self._write_status(lag, state_bytes)

    def lag(self) -> int:
        admin = self.input_log.admin()
        try:
            ends = admin.end_offsets()
        finally:
            admin.close()
        return sum(max(0, end - max(self.tasks[p].next_offset, 0)) for p, end in ends.items() if p in self.tasks)

    def _write_status(self, lag: int, state_bytes: int) -> None:
        status = {
            "run": self.run_id, "updated_at": int(time.time() * 1000), "checkpoints": self.checkpoints,
            "records_in": self.stats["in"], "records_out": self.stats["out"], "late": self.stats["late"],
            "errors": self.stats["errors"], "last_error": self.last_error, "lag": lag,
            "state_bytes": state_bytes, "partitions": sorted(self.tasks),
        }  # fmt: skip
        _write_atomically(self.manifest.folder / "status.json", json.dumps(status))

    def run(self, stop: threading.Event, idle_poll_s: float = 0.05) -> None:
        log.info("processor %s (run %s) reading %s", self.pipeline.name, self.run_id, self.pipeline.input)
        try:
            while not stop.is_set():
                self.poll(idle_poll_s)
            self.checkpoint()
        except ProcessingError:
            log.exception("processor %s stopped", self.pipeline.name)
            raise

    def close(self) -> None:
        self.checkpointer.close()
        self.consumer.close()
        self.state.close()
        self._state_lock.release()
