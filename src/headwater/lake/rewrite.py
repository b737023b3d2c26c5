"""Copy-on-write rewrites of just the data files that hold certain rows: privacy deletions, GA4 day replaces.

Why copy-on-write and not Iceberg delete files: measured in bench/privacy.py (README, "Privacy and retention").
A deletion is complete only when no file holds the rows any more, so merge-on-read would have to be followed by
the same rewrite (compaction) anyway; and Headwater's readers (DuckDB views over file lists, rollups per
immutable file) stay as simple and fast as they are. Only files that can hold the rows are read (the caller's
`candidates`, from rollups and column statistics), a file whose rows all stay is left alone, and the rest are
rewritten in the file's own order with their rollups derived from the old ones (`subtract_rollup`).

Commit: one overwrite snapshot swaps every rewritten file (and adds `add`'s new rows), carrying the table's log
offsets, so the lake writer's exactly-once bookkeeping holds across it. Ingestion goes on meanwhile: when a
writer commits first, the table is refreshed and, when every file this rewrite replaces is still live, the
same new files are committed again; when compaction replaced one of them, the replacement is a candidate in its
turn and the rewrite goes on from there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from headwater.core.errors import LakeError
from headwater.lake.layout import FileWriter
from headwater.lake.rollups import compute_rollup, subtract_rollup
from headwater.lake.shredding import shreds
from headwater.lake.tables import carried_offsets

log = logging.getLogger(__name__)
COMMIT_ATTEMPTS = 50


class RowRule(Protocol):
    """Which rows of a file go, and how kept rows change (None: they do not). `columns(schema)` are the columns
    that decide both in a file of that schema: a file is first read with only those, and read whole only when
    something goes or changes (None: read it whole at once, e.g. when the candidates are known to hold rows)."""

    def columns(self, schema: pa.Schema) -> list[str] | None: ...

    def remove(self, rows: pa.Table) -> pa.Array | pa.ChunkedArray: ...

    def change(self, rows: pa.Table) -> tuple[pa.Table, int] | None: ...


@dataclass
class RewriteStats:
    files_read: int = 0
    files_rewritten: int = 0
    rows_removed: int = 0
    rows_changed: int = 0
    rows_added: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    conflicts: int = 0
    snapshot_id: int | None = None
    replaced_paths: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("replaced_paths")
        return out


@dataclass
class _Outcome:
    old: DataFile
    new: list[DataFile]
    removed: int
    changed: int

    @property
    def touched(self) -> bool:
        return bool(self.removed or self.changed)


Candidates = Callable[[Table, list[DataFile]], Iterable[DataFile]]
Progress = Callable[[int, int], None]


def live_files(table: Table) -> list[DataFile]:
    """The data files of the table's current snapshot."""
    return [task.file for task in table.scan().plan_files()]


class Rewriter:
    """Rewrites the files of one table (see the module docstring)."""

    def __init__(self, table: Table, writer: FileWriter, threads: int = 2) -> None:
        self.table = table
        self.writer = writer
        self.threads = max(1, threads)
        self._lock = threading.Lock()

    def run(
        self, rule: RowRule, candidates: Candidates, add: pa.Table | None = None,
        properties: dict[str, str] | None = None, progress: Progress | None = None,
    ) -> RewriteStats:  # fmt: skip
        """Rewrite the candidates rule touches, add `add`, commit once; return what it did."""
        stats = RewriteStats()
        done: dict[str, _Outcome] = {}
        added: list[DataFile] = []
        if add is not None and add.num_rows:
            added = self.writer.write(self.table, add)
            stats.rows_added = add.num_rows
            stats.bytes_written += sum(f.file_size_in_bytes for f in added)
        for attempt in range(COMMIT_ATTEMPTS):
            live = {f.file_path: f for f in live_files(self.table)}
            for path in [p for p in done if p not in live]:  # replaced meanwhile (compaction): its successor is due
                del done[path]
            todo = [f for f in candidates(self.table, list(live.values())) if f.file_path not in done]
            self._rewrite_all(rule, todo, done, stats, progress)
            touched = [o for o in done.values() if o.touched]
            if not touched and not added:
                return stats
            try:
                self.writer.replace(
                    self.table, [o.old for o in touched], [f for o in touched for f in o.new] + added,
                    {**carried_offsets(self.table), **(properties or {})},
                )  # fmt: skip
            except CommitFailedException:
                stats.conflicts += 1
                time.sleep(min(1.0, 0.02 * (attempt + 1)))
                self.table.refresh()
                continue
            snapshot = self.table.current_snapshot()
            stats.snapshot_id = snapshot.snapshot_id if snapshot else None
            stats.files_rewritten = len(touched)
            stats.rows_removed = sum(o.removed for o in touched)
            stats.rows_changed = sum(o.changed for o in touched)
            stats.bytes_written += sum(f.file_size_in_bytes for o in touched for f in o.new)
            stats.replaced_paths = tuple(o.old.file_path for o in touched)
            return stats
        raise LakeError(f"{self.table.name()}: rewrite gave up after {COMMIT_ATTEMPTS} conflicting commits")

    def _rewrite_all(
        self, rule: RowRule, todo: list[DataFile], done: dict[str, _Outcome], stats: RewriteStats,
        progress: Progress | None,
    ) -> None:  # fmt: skip
        if not todo:
            return
        finished = 0

        def one(data_file: DataFile) -> None:
            nonlocal finished
            outcome = self._rewrite_file(rule, data_file)
            with self._lock:
                done[data_file.file_path] = outcome
                stats.files_read += 1
                stats.bytes_read += data_file.file_size_in_bytes
                finished += 1
                if progress is not None:
                    progress(finished, len(todo))

        if self.threads == 1 or len(todo) == 1:
            for data_file in todo:
                one(data_file)
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="rewrite") as pool:
            for future in [pool.submit(one, f) for f in todo]:
                future.result()

    def _rewrite_file(self, rule: RowRule, data_file: DataFile) -> _Outcome:
        table = self.table
        with table.io.new_input(data_file.file_path).open() as stream:
            parquet = pq.ParquetFile(stream)
            deciding = rule.columns(parquet.schema_arrow)
            if deciding is not None and not deciding:  # none of the columns the rule reads: nothing can go
                return _Outcome(data_file, [], 0, 0)
            if deciding is not None and len(deciding) < len(parquet.schema_arrow.names):
                probe = parquet.read(columns=deciding)
                if not pc.any(pc.fill_null(rule.remove(probe), False)).as_py() and rule.change(probe) is None:
                    return _Outcome(data_file, [], 0, 0)
            rows = parquet.read()
        mask = pc.fill_null(rule.remove(rows), False)
        removed_count = int(pc.sum(mask).as_py() or 0)
        kept = rows.filter(pc.invert(mask)) if removed_count else rows
        changed = rule.change(kept)
        changed_count = 0
        if changed is not None:
            kept, changed_count = changed
        if not removed_count and not changed_count:
            return _Outcome(data_file, [], 0, 0)
        if kept.num_rows == 0:
            return _Outcome(data_file, [], removed_count, changed_count)
        writer = self.writer
        rollup = None
        if writer.rollups is not None and writer.persons is not None and not changed_count:
            old = writer.rollups.raw([data_file.file_path]).get(data_file.file_path)
            removed = rows.filter(mask)
            derived = subtract_rollup(old, kept, removed, writer.persons) if old is not None else None
            if derived is not None:
                whole = kept.num_rows

                def rollup(piece: pa.Table) -> bytes:
                    if piece.num_rows == whole:
                        return derived
                    assert writer.persons is not None
                    writer.persons.prepare(piece.column("user_id"), piece.column("anonymous_id"))
                    return compute_rollup(piece, writer.persons)

        present = set(kept.column_names)
        complete = all(
            s.text in present and (s.number is None or s.number in present) for s in shreds(table.schema()).values()
        )
        fill = bool(changed_count) or not complete
        new = writer.write(table, kept, presorted=True, one_partition=True, fill=fill, rollup=rollup)
        return _Outcome(data_file, new, removed_count, changed_count)
