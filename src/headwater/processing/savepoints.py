"""State versions and savepoints of processors.

**Versions.** A pipeline declares `state_version` (default 1); its state file records the version it was
written with (`meta` table; a file from before versions is version 1). At start, `ensure_state_version`:
same version, the state is kept whatever the code became; an older one with `migrate_state`, every entry
is rewritten in one SQLite transaction that also records the new version (kill -9 midway leaves the file
as it was, and the next start migrates again: each entry is migrated once); otherwise (no migration, or
the state is newer than the code) the processor refuses to start and says what to do.

**Savepoints.** `take` copies a processor's state file (and its repartition stages'), the input
positions they hold, and the end of every stream they write into
`<processors_dir>/<name>/savepoints/<id>/` — a temporary folder renamed into place once `savepoint.json`
is written, so a savepoint exists whole or not at all. A running processor is asked through
`savepoint-request.json` (its worker stops the pipeline's runners at a checkpoint, takes the savepoint and
starts them again); a stopped one is copied directly, under its `StateLock`.

**Starting from one** (`--from-savepoint ID`, which is `--from savepoint:ID` of a replay) is a new run,
as a replay is: its state file is the savepoint's copy, its inputs are read again from the saved
positions, and its outputs carry the new run's ids (exactly once within the run, the fence of
`processing.runtime`). The old run's outputs of inputs after the savepoint stay where they are; the
savepoint's `outputs` (stream -> partition -> offset) tell consumers where they begin: the stream's end
when the savepoint was taken, or before it the outputs a processor killed between the two steps of a
checkpoint wrote for inputs its state does not include. A repartition stage skips its input records from
there up to the restart (`Superseded`): its upstream writes them again in the new run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from headwater.core.errors import ProcessingError
from headwater.log.base import EventLog, Record
from headwater.processing.state import StateLock, StateStore

if TYPE_CHECKING:
    from headwater.core.erasure import Erasure
    from headwater.core.settings import Settings
    from headwater.processing.api import Pipeline

log = logging.getLogger(__name__)
REQUEST = "savepoint-request.json"
PREFIX = "savepoint:"
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
TAIL_CHUNK = 1000
ERASURE_STORE = "__erasure"  # processing.erasure's store: never handed to migrate_state


class SavepointBusy(ProcessingError):
    """A state file of the pipeline is in use by a running processor."""


# -- versions -------------------------------------------------------------------------------------
def ensure_state_version(
    state: StateStore, pipeline: Pipeline, run_id: str, processors_dir: Path, changelog: bool
) -> int:
    """Check (and migrate) the state file against the code's `state_version`; returns the version."""
    want = pipeline.state_version
    found = state.state_version()
    if found is None or found == want:
        state.set_state_version(want)  # a file from before versions gets its marker too
        return want
    migrate = pipeline.migrate_state
    if migrate is None or found > want or changelog:
        why = (
            "and no migrate_state" if migrate is None
            else "older than the state's (migrations run forward only)" if found > want
            else "but state on Kafka is rebuilt from changelog topics: migrating in place is not supported"
        )  # fmt: skip
        matching = [s["id"] for s in list_savepoints(processors_dir, pipeline.root_pipeline().name)
                    if s["processors"].get(pipeline.name, {}).get("state_version") == want]  # fmt: skip
        hint = f" (savepoints with version {want}: {', '.join(matching)})" if matching else ""
        raise ProcessingError(
            f"processor {pipeline.name}: its state (run {run_id}) was written with state_version {found}; this code "
            f"declares state_version {want} {why}. Start it from a savepoint taken with version {want} "
            f"(`headwater process FILE:NAME --from-savepoint ID`{hint}) or from fresh state, re-reading its input "
            "(`headwater process FILE:NAME --reset-state [--from earliest|latest|ISO time]`)"
        )
    started = time.monotonic()
    log.info("processor %s: migrating state from version %d to %d", pipeline.name, found, want)

    def progress(seen: int) -> None:
        log.info("processor %s: state migration: %d entries", pipeline.name, seen)

    def guarded(version: int, key: Any, value: Any) -> Any:
        try:
            return migrate(version, key._replace(processor=pipeline.name), value)
        except Exception as exc:
            raise ProcessingError(
                f"processor {pipeline.name}: migrate_state({version}, {key!r}, ...) failed: {type(exc).__name__}: "
                f"{exc}; the state is left at version {found}"
            ) from exc

    done = state.migrate(want, guarded, frozenset({ERASURE_STORE}), progress)
    if done is not None:
        log.info(
            "processor %s: state migrated from version %d to %d (%d entries, %.1f s)",
            pipeline.name, done[0], want, done[1], time.monotonic() - started,
        )  # fmt: skip
    return want


# -- where savepoints live ------------------------------------------------------------------------
def check_id(sp_id: str) -> str:
    if not ID.match(sp_id):
        raise ProcessingError(f"savepoint id {sp_id!r}: use 1-63 letters, digits, '_', '.' or '-'")
    return sp_id


def new_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:4]


def folder(processors_dir: Path, name: str) -> Path:
    return processors_dir / name / "savepoints"


def read(processors_dir: Path, name: str, sp_id: str) -> dict[str, Any]:
    """The savepoint's `savepoint.json` (ProcessingError naming those there are when it is not)."""
    path = folder(processors_dir, name) / check_id(sp_id) / "savepoint.json"
    try:
        return dict(orjson.loads(path.read_bytes()))
    except FileNotFoundError:
        have = [s["id"] for s in list_savepoints(processors_dir, name)]
        raise ProcessingError(
            f"processor {name}: no savepoint {sp_id!r} (savepoints: {', '.join(have) or 'none'})"
        ) from None


def list_savepoints(processors_dir: Path, name: str) -> list[dict[str, Any]]:
    """Complete savepoints of `name`, oldest first."""
    out = []
    for meta in sorted(folder(processors_dir, name).glob("*/savepoint.json")):
        try:
            out.append(dict(orjson.loads(meta.read_bytes())))
        except ValueError:
            continue
    return sorted(out, key=lambda s: (s.get("created_at", ""), s.get("id", "")))


def members(processors_dir: Path, name: str) -> list[str]:
    """The processor and its repartition stages (`<name>--r<n>`, stages of stages too), as they ran."""
    if not (processors_dir / name / "manifest.json").exists():
        raise ProcessingError(f"no processor named {name!r} has run in {processors_dir.parent}")
    stages = [p.name for p in processors_dir.glob(f"{name}--r*") if (p / "manifest.json").exists()]
    return [name, *sorted(s for s in stages if re.fullmatch(r"(--r\d+)+", s[len(name) :]))]


def output_streams(name: str, outputs: dict[str, list[str]]) -> list[str]:
    """Every log stream a processor writes (its manifest's outputs, the table and sink streams, late, errors)."""
    return [
        *outputs.get("streams", []),
        *(f"{name}.table.{t}" for t in outputs.get("tables", [])),
        *(f"{name}.sink.{s}" for s in outputs.get("sinks", [])),
        f"{name}.late",
        f"{name}.errors",
    ]


def _ends(event_log: EventLog, stream: str) -> dict[int, int]:
    admin = event_log.stream(stream).admin()
    try:
        return admin.end_offsets()
    finally:
        admin.close()


# -- taking one -----------------------------------------------------------------------------------
def take(settings: Settings, event_log: EventLog, name: str, sp_id: str | None = None) -> dict[str, Any]:
    """Savepoint of a stopped processor (and its stages); SavepointBusy when one of them is running."""
    if settings.log_backend == "kafka":
        raise ProcessingError("savepoints need the embedded log; on Kafka, replay instead (--replay NAME --from ...)")
    sp_id = check_id(sp_id or new_id())
    processors_dir = settings.processors_dir
    names = members(processors_dir, name)
    target = folder(processors_dir, name) / sp_id
    if target.exists():
        raise ProcessingError(f"processor {name}: savepoint {sp_id!r} exists already")
    locks: list[StateLock] = []
    tmp = folder(processors_dir, name) / f".tmp-{sp_id}-{uuid.uuid4().hex[:6]}"
    try:
        manifests = {}
        for member in names:
            manifest = dict(orjson.loads((processors_dir / member / "manifest.json").read_bytes()))
            lock = StateLock(processors_dir / member / f"state-{manifest['run']}.db")
            if not lock.acquire(exclusive=True, wait=False):
                raise SavepointBusy(f"processor {member} is running (run {manifest['run']})")
            locks.append(lock)
            manifests[member] = manifest
        tmp.mkdir(parents=True)
        entries = {member: _copy_member(processors_dir, event_log, member, manifests[member], tmp) for member in names}
        _check_stages(entries)
        meta = {
            "id": sp_id, "processor": name, "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "log_backend": settings.log_backend, "processors": entries,
        }  # fmt: skip
        (tmp / "savepoint.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        tmp.rename(target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for lock in locks:
            lock.release()
    log.info("processor %s: savepoint %s taken (%s)", name, sp_id, ", ".join(names))
    return meta


def _copy_member(
    processors_dir: Path, event_log: EventLog, name: str, manifest: dict[str, Any], into: Path
) -> dict[str, Any]:
    path = processors_dir / name / f"state-{manifest['run']}.db"
    state = StateStore(path)
    try:
        state.backup_to(into / f"{name}.db")
        checkpoints = {p: state.checkpoint_of(p) for p in state.partitions()}
        version = state.state_version()
    finally:
        state.close()
    return {
        "run": str(manifest["run"]), "input": manifest.get("input"), "file": f"{name}.db", "state_version": version,
        "positions": {str(p): c[0] for p, c in checkpoints.items() if c is not None},
        "stream_times": {str(p): c[1] for p, c in checkpoints.items() if c is not None},
        "outputs": {s: {str(p): o for p, o in _superseded_from(event_log, s, f"{name}/{manifest['run']}/",
                                                                  checkpoints).items()}
                    for s in output_streams(name, manifest.get("outputs") or {})},
        "min_event_time": manifest.get("min_event_time"), "lake": manifest.get("lake"),
    }  # fmt: skip


def _check_stages(entries: dict[str, dict[str, Any]]) -> None:
    """A stage must not hold what its upstream's saved state does not: the new run writes that again."""
    for name, entry in entries.items():
        for upstream, other in entries.items():
            ends = other["outputs"].get(entry["input"])
            if ends is None or upstream == name:
                continue
            ahead = [p for p, o in entry["positions"].items() if o > int(ends.get(p, 0))]
            if ahead:
                raise ProcessingError(
                    f"processor {name} has read outputs of {upstream} that {upstream}'s state does not include (it "
                    f"was stopped between writing outputs and committing its state): run the pipeline until it "
                    "catches up, then take the savepoint"
                )


def _superseded_from(
    event_log: EventLog, stream: str, prefix: str, checkpoints: dict[int, tuple[int, int] | None]
) -> dict[int, int]:
    """Per partition of `stream`, where the outputs of inputs after the saved positions begin: its end, or
    before it the records this run wrote for inputs its state does not include (kill -9 between the steps of
    a checkpoint: those are the tail the last checkpoint appended)."""

    def after(record: Record) -> bool:
        try:
            output_id = str(orjson.loads(record.value)["id"])
        except (ValueError, KeyError, TypeError):
            return False
        if not output_id.startswith(prefix):
            return False
        partition, _, position = output_id[len(prefix) :].partition("/")
        applied = checkpoints.get(int(partition))
        return int(position) >> 20 >= (applied[0] if applied else 0)

    reader = event_log.stream(stream).reader()
    out: dict[int, int] = {}
    try:
        for partition, end in reader.end_offsets().items():
            first = end
            while first > 0:
                position, records = max(0, first - TAIL_CHUNK), list[Record]()
                while position < first:
                    got = [r for r in reader.read(partition, position, first - position) if r.offset < first]
                    if not got:
                        break
                    records.extend(got)
                    position = got[-1].offset + 1
                kept = [r.offset for r in records if not after(r)]
                last_kept = max(kept, default=-1)
                tail = [r.offset for r in records if r.offset > last_kept]
                if not tail:
                    break
                first = min(tail)
                if kept:
                    break
            out[partition] = first
    finally:
        reader.close()
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def request(
    settings: Settings, event_log: EventLog, name: str, sp_id: str | None = None, timeout_s: float = 120
) -> dict[str, Any]:
    """Take a savepoint of `name` whether it runs (ask its worker, wait for it) or not (copy directly)."""
    sp_id = check_id(sp_id or new_id())
    path = settings.processors_dir / name / REQUEST
    done = folder(settings.processors_dir, name) / sp_id / "savepoint.json"
    failed = folder(settings.processors_dir, name) / f"{sp_id}.failed"
    deadline = time.monotonic() + timeout_s
    asked = 0.0
    while True:
        if done.exists():
            return dict(orjson.loads(done.read_bytes()))
        if failed.exists():
            reason = failed.read_text()
            failed.unlink(missing_ok=True)
            raise ProcessingError(f"processor {name}: savepoint {sp_id} failed: {reason}")
        # first, and when no worker claimed the request for a while (the processor stopped since): directly
        if not asked or (time.monotonic() - asked > 5 and claim(settings.processors_dir, name)):
            try:
                return take(settings, event_log, name, sp_id)
            except SavepointBusy:
                path.write_bytes(orjson.dumps({"id": sp_id}))  # a running worker looks every second
                asked = time.monotonic()
        if time.monotonic() > deadline:
            path.unlink(missing_ok=True)
            raise ProcessingError(f"processor {name}: savepoint {sp_id} not taken in {timeout_s:.0f} s")
        time.sleep(0.1)


def read_request(processors_dir: Path, name: str) -> str | None:
    """The id a savepoint request (from `request`) asks for, or None."""
    try:
        return check_id(str(orjson.loads((processors_dir / name / REQUEST).read_bytes())["id"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, ProcessingError):
        log.error("ignoring a malformed savepoint request of %s", name)
        (processors_dir / name / REQUEST).unlink(missing_ok=True)
        return None


def claim(processors_dir: Path, name: str) -> bool:
    """Take the request away (an atomic rename): the worker or the asker, never both, answers it."""
    path = processors_dir / name / REQUEST
    try:
        path.rename(path.with_name(f".{REQUEST}.{uuid.uuid4().hex[:6]}"))
    except FileNotFoundError:
        return False
    for claimed in path.parent.glob(f".{REQUEST}.*"):
        claimed.unlink(missing_ok=True)
    return True


def answer_request(settings: Settings, event_log: EventLog, name: str, sp_id: str) -> None:
    """Take the requested savepoint (the worker claimed it and stopped the runners); a failure is written
    for the asker."""
    try:
        take(settings, event_log, name, sp_id)
    except ProcessingError as exc:
        log.error("processor %s: savepoint %s failed: %s", name, sp_id, exc)
        failed = folder(settings.processors_dir, name) / f"{sp_id}.failed"
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(str(exc))


# -- starting from one ----------------------------------------------------------------------------
def seed(processors_dir: Path, pipeline: Pipeline, sp_id: str, state_path: Path, event_log: EventLog) -> dict[str, Any]:
    """Copy the savepoint's state of `pipeline` to `state_path` (a new run's file); return what the run
    starts from: positions, min_event_time, lake, and for a stage the `skip` of `Superseded`."""
    root = pipeline.root_pipeline().name
    meta = read(processors_dir, root, sp_id)
    entries = meta["processors"]
    entry = entries.get(pipeline.name)
    if entry is None:
        raise ProcessingError(
            f"savepoint {sp_id} of {root} holds no state of {pipeline.name} (it holds {', '.join(entries)}): "
            "the pipeline's repartition stages changed since"
        )
    source = folder(processors_dir, root) / sp_id / entry["file"]
    tmp = state_path.with_name(f".{state_path.name}.{uuid.uuid4().hex[:6]}.tmp")
    shutil.copyfile(source, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    for suffix in ("-wal", "-shm"):
        state_path.with_name(state_path.name + suffix).unlink(missing_ok=True)
    tmp.replace(state_path)
    out: dict[str, Any] = {
        "savepoint": sp_id, "positions": entry["positions"], "min_event_time": entry.get("min_event_time"),
        "lake": entry.get("lake"), "skip": None,
    }  # fmt: skip
    parent = pipeline.parent
    if parent is not None and parent.name in entries:
        upstream = entries[parent.name]
        out["skip"] = {
            "ends": upstream["outputs"].get(pipeline.input, {}),
            "until": {str(p): o for p, o in _ends(event_log, pipeline.input).items()},
        }
    return out


class Superseded:
    """Input records of a restored stage that its upstream's new run writes again: those its old run wrote
    from inputs after the savepoint, i.e. offsets [ends, until) (`until`: the input's end at the restart)."""

    def __init__(self, skip: dict[str, Any]) -> None:
        self.ends = {int(p): int(o) for p, o in skip["ends"].items()}
        self.until = {int(p): int(o) for p, o in skip["until"].items()}

    def keep(self, partition: int, records: list[Record]) -> list[Record]:
        until = self.until.get(partition, 0)
        if not records or records[0].offset >= until:
            return records
        end = self.ends.get(partition, until)
        return [r for r in records if not end <= r.offset < until]


# -- privacy --------------------------------------------------------------------------------------
def erase_savepoints(settings: Settings, erasure: Erasure) -> dict[str, int]:
    """Apply a privacy erasure to every savepoint's state files (idempotent: per-partition sequence numbers)."""
    from headwater.processing.erasure import erase_state_file

    totals = {"files": 0, "state": 0, "served": 0}
    for path in sorted(settings.processors_dir.glob("*/savepoints/*/*.db")):
        counts = erase_state_file(path, erasure)
        if counts is not None:
            totals["files"] += 1
            totals["state"] += counts["state"]
            totals["served"] += counts["served"]
    return totals


def describe(meta: dict[str, Any]) -> str:
    """One line per savepoint for the CLI."""
    parts = [
        f"{n} run {e['run']} v{e['state_version']} at {json.dumps(e['positions'])}"
        for n, e in meta["processors"].items()
    ]
    return f"{meta['id']}  {meta['created_at']}  " + "; ".join(parts)


def parse(start: str) -> str | None:
    """'savepoint:ID' -> ID, else None."""
    return check_id(start[len(PREFIX) :]) if start.startswith(PREFIX) else None
